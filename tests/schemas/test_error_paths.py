"""A refused request names the parameter at its path in the client's JSON.

Whichever provider serves the model, a bad value of a field the gateway knows
is a 400 ``invalid_request_error`` whose ``param`` is where it is in the body
(``messages[0].content[0].image_url.url``), never pydantic's union branch or
tag (gateway/schemas/error_paths.py), and whose message says what was wrong.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from starlette.testclient import TestClient

from gateway.schemas.openai import ChatCompletionRequest
from tests.schemas.support import PNG, chat, rich


def one_user_message(content: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}]}


BAD = [
    # (what replaces the valid body's fields, the param named, words of the message)
    ({"temperature": "hot"}, "temperature", "valid number"),
    ({"temperature": 2.5}, "temperature", "less than or equal to 2"),
    ({"temperature": True}, "temperature", "valid number"),
    ({"top_p": 1.01}, "top_p", "less than or equal to 1"),
    ({"n": 0}, "n", "greater than or equal to 1"),
    ({"n": 129}, "n", "less than or equal to 128"),
    ({"n": "2"}, "n", "valid integer"),
    ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ({"max_completion_tokens": 1.5}, "max_completion_tokens", "valid integer"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "array too long. Expected an array with "),
    ({"stop": ["a", 1]}, "stop[1]", "valid string"),
    ({"stop": 5}, "stop", "valid string"),
    ({"seed": 1.5}, "seed", "valid integer"),
    ({"seed": 2**64}, "seed", "less than"),
    ({"frequency_penalty": 2.5}, "frequency_penalty", "less than or equal to 2"),
    ({"presence_penalty": -3}, "presence_penalty", "greater than or equal to -2"),
    ({"logit_bias": {"hello": 1}}, "logit_bias.hello", "token id"),
    ({"logit_bias": {"42": 101}}, "logit_bias.42", "less than or equal to 100"),
    ({"logit_bias": [1]}, "logit_bias", "object"),
    ({"logprobs": "yes"}, "logprobs", "valid boolean"),
    ({"top_logprobs": 21}, "top_logprobs", "less than or equal to 20"),
    ({"user": 5}, "user", "valid string"),
    ({"stream": "true"}, "stream", "valid boolean"),
    ({"stream_options": {"include_usage": 1}}, "stream_options.include_usage", "boolean"),
    ({"response_format": {"type": "xml"}}, "response_format.type", "'json_schema'"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", None),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
        "response_format.json_schema.name",
        None,
    ),
    ({"response_format": "json"}, "response_format", "object"),
    ({"tools": [{"type": "function"}]}, "tools[0].function", None),
    # Any string is a type (an unknown one passes through); anything else is not.
    ({"tools": [{"type": 7}]}, "tools[0].type", "valid string"),
    ({"tools": [{"function": {"name": "f"}}]}, "tools[0].type", None),
    ({"tools": ["f"]}, "tools[0]", "object"),
    (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
        "tools[0].function.parameters",
        "object",
    ),
    ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name", None),
    ({"tool_choice": "sometimes"}, "tool_choice", "'none', 'auto' or 'required'"),
    ({"tool_choice": {"type": "function"}}, "tool_choice.function", None),
    ({"tool_choice": {"type": None}}, "tool_choice.type", "valid string"),
    ({"tool_choice": {"type": "function", "function": {}}}, "tool_choice.function.name", None),
    ({"parallel_tool_calls": "no"}, "parallel_tool_calls", "boolean"),
    ({"reasoning_effort": 1}, "reasoning_effort", "valid string"),
    ({"metadata": {"a": 1}}, "metadata.a", "valid string"),
    ({"store": 0}, "store", "boolean"),
    ({"service_tier": None, "functions": [{}]}, "functions[0].name", None),
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role", "'user'"),
    ({"messages": [{"content": "x"}]}, "messages[0].role", None),
    ({"messages": ["hi"]}, "messages[0]", "object"),
    ({"messages": [{"role": "user"}]}, "messages[0].content", None),
    (one_user_message(5), "messages[0].content", "valid string"),
    (
        {"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}]},
        "messages[1].tool_call_id",
        None,
    ),
    (
        one_user_message([{"type": "text", "text": "x"}, {"type": 5, "url": "v"}]),
        "messages[0].content[1].type",
        "valid string",
    ),
    (one_user_message([{"type": ["text"]}]), "messages[0].content[0].type", "valid string"),
    (one_user_message([{"text": "x"}]), "messages[0].content[0].type", None),
    (one_user_message(["x"]), "messages[0].content[0]", "object"),
    (
        one_user_message([{"type": "image_url", "image_url": "https://a.b/c.png"}]),
        "messages[0].content[0].image_url",
        "object",
    ),
    (
        one_user_message([{"type": "image_url", "image_url": {"url": "ftp://a/b.png"}}]),
        "messages[0].content[0].image_url.url",
        "an http(s) URL or a base64 data URL of an image",
    ),
    (
        one_user_message([{"type": "image_url", "image_url": {"url": "data:text/plain,hi"}}]),
        "messages[0].content[0].image_url.url",
        "base64 data URL",
    ),
    (one_user_message([{"type": "image_url"}]), "messages[0].content[0].image_url", None),
    (one_user_message([{"type": "text"}]), "messages[0].content[0].text", None),
    (
        {"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {}}]}]},
        "messages[0].content[0].type",
        "'text'",
    ),
    (
        {
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f"}}],
                }
            ]
        },
        "messages[0].tool_calls[0].function.arguments",
        None,
    ),
    (
        {"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": False}]}]},
        "messages[0].tool_calls[0].type",
        "valid string",
    ),
    (
        {"messages": [{"role": "tool", "tool_call_id": "c", "content": [{"type": "refusal"}]}]},
        "messages[0].content[0].type",
        "'text'",
    ),
    (
        {"messages": [{"role": "assistant", "content": [{"type": "image_url"}]}]},
        "messages[0].content[0].type",
        "'text' or 'refusal'",
    ),
    ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].name", None),
]


@pytest.mark.parametrize(("change", "param", "words"), BAD, ids=[b[1] for b in BAD])
def test_a_bad_value_is_a_400_naming_its_param(
    client: TestClient, change: dict[str, Any], param: str, words: str | None
) -> None:
    body = {"model": "mock-chat", "messages": [{"role": "user", "content": "hi"}], **change}
    response = chat(client, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["type"], error["code"]) == (
        param,
        "invalid_request_error",
        "invalid_value",
    )
    if words is None:  # a required field left out
        assert error["message"] == f"Missing required parameter: '{param}'."
    else:
        assert error["message"].startswith((f"Invalid value for '{param}': ", f"Invalid '{param}'"))
        assert words in error["message"], error["message"]


def test_a_refused_request_never_reaches_the_upstream(
    client: TestClient, upstream_bodies: list[dict[str, Any]]
) -> None:
    before = len(upstream_bodies)
    response = chat(client, {**rich(), "temperature": "hot"})  # an OpenAI-type model
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "temperature"
    assert len(upstream_bodies) == before


# ---------------------------------------------------------------- any refusal names a real path


def _places(value: Any, here: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield here
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _places(item, (*here, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _places(item, (*here, i))


RICH_PLACES = [place for place in _places(rich()) if place]
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.sampled_from(["text", "image_url", "function", "user", "tool", "json_schema", PNG]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["type", "role", "text", "url", "name", "x"]), inner)
    ),
    max_leaves=6,
)


def _at(value: Any, place: tuple[Any, ...]) -> Any:
    for key in place:
        value = value[key]
    return value


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=list(HealthCheck),
    phases=(Phase.explicit, Phase.generate),
)
@given(
    place=st.sampled_from(RICH_PLACES),
    how=st.sampled_from(["replace", "remove"]),
    value=JSON_VALUES,
)
def test_a_refusal_names_a_place_in_the_body_that_was_sent(
    place: tuple[Any, ...], how: str, value: Any
) -> None:
    body = copy.deepcopy(rich())
    parent = _at(body, place[:-1])
    if how == "remove" and isinstance(parent, dict):
        del parent[place[-1]]
    else:
        parent[place[-1]] = value
    try:
        ChatCompletionRequest.model_validate_json(json.dumps(body))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        container = _at(body, loc[:-1])  # every step but the last is in the body
        if first["type"] == "missing":
            assert loc[-1] not in container
        else:
            _at(body, loc)  # and so is the last
