"""gateway/providers/openai.py: the forwarded body written from the request's own JSON.

``_forwarded`` must give the very bytes the dict it replaces gives (the client's
fields, ``model`` replaced, ``stream`` and ``stream_options`` set), or None and
leave the request to the dict. Checked against that dict on requests generated
with every shape that matters: key order, unknown fields at any depth, numbers,
escapes and non-ASCII text, and each way a client sends or leaves out ``stream``
and ``stream_options``.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_core import to_json

from gateway import fastpath
from gateway.providers.openai import _forwarded
from gateway.schemas.openai import ChatCompletionRequest, EmbeddingRequest


def _by_dict(request: BaseModel, model: str, stream: bool | None) -> bytes:
    # What OpenAIProvider._body built before, and still builds when _forwarded declines.
    payload = request.model_dump(mode="json", exclude_unset=True)
    payload["model"] = model
    if stream is not None:
        payload["stream"] = stream
    if stream:
        options = payload.get("stream_options") or {}
        payload["stream_options"] = {**options, "include_usage": True}
    return to_json(payload)


def _forward(request: BaseModel, model: str, stream: bool | None) -> bytes | None:
    sent = fastpath.model_json(type(request)).dump(request, exclude_unset=True)
    return _forwarded(sent, request, model, stream)


_VALUES: list[Any] = [
    0, -1, 2**40, -(2**63), 2**70, 0.0, -0.0, 1.0, 1.5, 1e300, 1e-300, 1e16,
    "", "é", "日本", "\u2028", "\x00", '"\\/', "\n\t", "😀", True, False, None,
]  # fmt: skip


def _value(rnd: random.Random, depth: int = 0) -> Any:
    kind = rnd.randrange(4 if depth < 2 else 2)
    if kind < 2:
        return rnd.choice(_VALUES)
    if kind == 2:
        return [_value(rnd, depth + 1) for _ in range(rnd.randrange(3))]
    return {
        f"{rnd.choice(['k', 'ü', 'a b', 'model'])}{i}": _value(rnd, depth + 1) for i in range(3)
    }


_OPTIONAL: dict[str, list[Any]] = {
    "stream": [True, False, None],
    "stream_options": [None, {}, {"include_usage": True}, {"include_usage": False},
                       {"x": 1, "include_usage": True}],
    "temperature": [0, 1, 0.5, 1.0],
    "max_tokens": [1, 100],
    "stop": ["x", ["a", "b"]],
    "logit_bias": [{"123": 5}, {"1": 1.5}],
    "tools": [[{"type": "function", "function": {"name": "f", "parameters": {"é": 1.0}}}]],
    "response_format": [
        {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}
    ],
    "metadata": [{"a": "b"}],
}  # fmt: skip


def _message(rnd: random.Random) -> dict[str, Any]:
    message: dict[str, Any] = rnd.choice(
        [
            {"role": "user", "content": "hi"},
            {"role": "user", "content": [{"type": "text", "text": "é"}, {"type": "video_url", "v": 1}]},
            {"role": "system", "content": "be brief"},
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "a", "content": "42"},
        ]
    )  # fmt: skip
    message = dict(message)
    if rnd.random() < 0.3:
        message["name"] = "n"
    if rnd.random() < 0.3:
        message["extra"] = _value(rnd)
    return message


def _requests(seed: int, count: int) -> list[ChatCompletionRequest]:
    rnd = random.Random(seed)
    made = []
    for _ in range(count):
        fields = [(k, rnd.choice(v)) for k, v in _OPTIONAL.items() if rnd.random() < 0.3]
        fields += [(k, _value(rnd)) for k in ("mock", "zz", "a_first") if rnd.random() < 0.5]
        fields.append(("messages", [_message(rnd) for _ in range(rnd.randrange(1, 3))]))
        fields.append(("model", rnd.choice(["m", "é-model", 'a"b'])))
        rnd.shuffle(fields)
        raw = json.dumps(dict(fields), ensure_ascii=rnd.random() < 0.5)
        made.append(ChatCompletionRequest.model_validate_json(raw))
    return made


@pytest.mark.parametrize("bypass", [True, False])
def test_the_same_bytes_as_the_dict(bypass: bool) -> None:
    before = fastpath.selected()
    fastpath.select(bypass)
    try:
        written = 0
        for request in _requests(seed=7, count=600):
            for stream in (False, True):
                for model in ("up-model", 'é"x'):
                    forwarded = _forward(request, model, stream)
                    if forwarded is not None:
                        written += 1
                        assert forwarded == _by_dict(request, model, stream)
        assert written > 1500  # most requests are written from their own JSON
    finally:
        fastpath.select(before)


def _chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


@pytest.mark.parametrize(
    ("fields", "stream"),
    [
        ({"stream": None}, False),  # null becomes false in place
        ({"stream": True}, False),
        ({"stream": False}, True),
        ({"stream": True, "stream_options": None}, True),
        ({"stream": True, "stream_options": {}}, True),
        ({"stream": True, "stream_options": {"include_usage": False}}, True),
    ],
)
def test_a_value_the_client_sent_that_changes_is_left_to_the_dict(
    fields: dict[str, Any], stream: bool
) -> None:
    assert _forward(_chat(**fields), "up", stream) is None


def test_what_the_client_left_out_goes_last() -> None:
    assert _forward(_chat(mock={"a": 1}), "up", True) == (
        b'{"model":"up","messages":[{"role":"user","content":"hi"}],"mock":{"a":1},'
        b'"stream":true,"stream_options":{"include_usage":true}}'
    )
    assert _forward(_chat(stream=False, x=1), "up", False) == (
        b'{"model":"up","messages":[{"role":"user","content":"hi"}],"stream":false,"x":1}'
    )


def test_an_embedding_request_only_has_its_model_replaced() -> None:
    request = EmbeddingRequest.model_validate({"input": ["a", "é"], "model": "e", "zz": 1.0})
    forwarded = _forward(request, "up", None)
    assert forwarded == _by_dict(request, "up", None)
    assert forwarded == b'{"model":"up","input":["a","\xc3\xa9"],"zz":1.0}'
