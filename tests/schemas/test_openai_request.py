"""The canonical chat request: typed, and passed on as the client sent it.

A client's request parses into typed messages, content parts, tools and tool
calls, and what the gateway does not know, at any level, reaches an OpenAI-type
upstream untouched: no defaults, no nulls, integers left integers; so do parts,
tools and tool calls of types it does not know (docs/wire-formats.md).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.schemas.messages import (
    AssistantMessage,
    AudioPart,
    CustomTool,
    CustomToolCall,
    FilePart,
    FunctionMessage,
    FunctionTool,
    FunctionToolCall,
    FunctionToolChoice,
    ImagePart,
    JSONSchemaFormat,
    OtherPart,
    OtherTool,
    OtherToolCall,
    OtherToolChoice,
    RefusalPart,
    SystemMessage,
    TextPart,
    ToolMessage,
    UserMessage,
)
from gateway.schemas.openai import ChatCompletionRequest
from tests.schemas.support import KEY, PNG, canonical, chat, rich

# ---------------------------------------------------------------- parsing


def test_a_rich_request_dumps_back_to_what_the_client_sent() -> None:
    body = rich()
    request = ChatCompletionRequest.model_validate_json(json.dumps(body))
    assert canonical(request.model_dump(mode="json", exclude_unset=True)) == canonical(body)
    assert canonical(json.loads(request.model_dump_json(exclude_unset=True))) == canonical(body)


def test_a_small_request_gains_no_defaults_and_no_nulls() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    request = ChatCompletionRequest.model_validate_json(json.dumps(body))
    assert request.model_dump(mode="json", exclude_unset=True) == body


def test_messages_parts_tools_and_calls_are_typed() -> None:
    request = ChatCompletionRequest.model_validate_json(json.dumps(rich()))
    system, developer, user, calling, result, _, answer, legacy, function, _ = request.messages
    assert isinstance(system, SystemMessage)
    assert system.name == "rules"
    assert isinstance(developer.content, list)
    assert isinstance(developer.content[0], TextPart)
    assert isinstance(user, UserMessage)
    assert isinstance(user.content, list)
    kinds = [type(part) for part in user.content]
    assert kinds == [TextPart, ImagePart, ImagePart, AudioPart, FilePart, FilePart]
    image = user.content[2]
    assert isinstance(image, ImagePart)
    assert image.image_url.url == PNG
    assert isinstance(calling, AssistantMessage)
    assert calling.content is None
    first, second = calling.tool_calls or []
    assert isinstance(first, FunctionToolCall)
    assert first.function.arguments == '{"city":"Paris"}'
    assert isinstance(second, CustomToolCall)
    assert second.custom.input == "1"
    assert isinstance(result, ToolMessage)
    assert result.tool_call_id == "call_1"
    assert isinstance(answer, AssistantMessage)
    assert isinstance(answer.content, list)
    assert isinstance(answer.content[1], RefusalPart)
    assert isinstance(legacy, AssistantMessage)
    assert legacy.function_call is not None
    assert isinstance(function, FunctionMessage)
    assert function.name == "get_weather"
    weather, sql = request.tools or []
    assert isinstance(weather, FunctionTool)
    assert weather.function.strict is True
    assert weather.function.parameters == rich()["tools"][0]["function"]["parameters"]
    assert isinstance(sql, CustomTool)
    assert sql.custom.name == "sql"
    assert isinstance(request.tool_choice, FunctionToolChoice)
    assert request.tool_choice.function.name == "get_weather"
    assert isinstance(request.response_format, JSONSchemaFormat)
    assert request.response_format.json_schema.schema_ == {"type": "object", "properties": {}}
    # Numbers keep their JSON type: an integer temperature stays one.
    assert (request.temperature, request.top_p, request.logit_bias) == (
        1,
        0.9,
        {"50256": -100, "1734": 2.5},
    )
    assert type(request.temperature) is int


@pytest.mark.parametrize(
    "messages",
    [
        # What real clients send that OpenAI's reference marks otherwise.
        [{"role": "assistant", "tool_calls": []}],
        [{"role": "assistant", "content": None, "name": "bot"}],
        [{"role": "tool", "tool_call_id": "c", "content": "", "name": "f"}],
        [{"role": "user", "content": []}],
        [{"role": "user", "content": [{"type": "text", "text": ""}]}],
        [{"role": "system", "content": [{"type": "text", "text": "x"}]}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "HTTPS://A.B"}}]}],
        [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/jpeg;name=a.jpg;base64,/9j/"},
                    }
                ],
            }
        ],
    ],
)
def test_lenient_shapes_are_accepted(messages: list[dict[str, Any]]) -> None:
    body = {"model": "m", "messages": messages}
    request = ChatCompletionRequest.model_validate_json(json.dumps(body))
    assert request.model_dump(mode="json", exclude_unset=True) == body


def test_python_dicts_build_the_same_typed_request() -> None:
    request = ChatCompletionRequest.model_validate(rich())
    assert isinstance(request.messages[2].content[1], ImagePart)  # type: ignore[index]
    assert canonical(request.model_dump(mode="json", exclude_unset=True)) == canonical(rich())


# ---------------------------------------------------------------- through the gateway


def test_an_openai_upstream_gets_what_the_client_sent(
    client: TestClient, upstream_bodies: list[dict[str, Any]]
) -> None:
    response = chat(client, rich())
    assert response.status_code == 200, response.text
    sent = {**rich(), "model": "upstream-model"}  # only the model is the deployment's
    assert canonical(upstream_bodies[-1]) == canonical(sent)


def test_a_rich_request_is_served_by_the_mock(client: TestClient) -> None:
    response = chat(client, {**rich(), "model": "mock-chat"})
    assert response.status_code == 200, response.text
    # The rich request names a function in tool_choice: the mock calls it.
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["name"]


# ---------------------------------------------------------------- types the gateway does not know

# A provider's own part (vLLM's video_url) and tool, a call of that tool, and a choice of
# it: their values of every JSON kind, floats that look like integers, non-ASCII text.
VIDEO = {
    "type": "video_url",
    "video_url": {"url": "https://example.com/v.mp4", "fps": 2.0, "frames": [1, None, True]},
    "x_caption": "Vidéo ü",
}
SEARCH_TOOL = {"type": "web_search", "web_search": {"max_results": 3, "filters": None}}
SEARCH_CALL = {"id": "call_9", "type": "web_search", "web_search": {"query": "Paris, 18 °C"}}
SEARCH_CHOICE = {"type": "web_search", "x_strict": 1.0}


def unknown_types() -> dict[str, Any]:
    return {
        "model": "relayed",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Brief."}, VIDEO]},
            {"role": "user", "content": [{"type": "text", "text": "What happens?"}, VIDEO]},
            {"role": "assistant", "content": [VIDEO], "tool_calls": [SEARCH_CALL]},
            {"role": "tool", "tool_call_id": "call_9", "content": "sunny"},
        ],
        "tools": [SEARCH_TOOL, rich()["tools"][0]],
        "tool_choice": SEARCH_CHOICE,
        "stream": False,  # what the relay sends: the body then matches it whole
    }


def compact(value: Any) -> bytes:
    # What a client's JSON library writes (httpx's own settings).
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def test_unknown_types_are_kept_as_open_objects() -> None:
    request = ChatCompletionRequest.model_validate_json(compact(unknown_types()))
    system, user, assistant, _ = request.messages
    assert isinstance(system.content, list)
    assert isinstance(user.content, list)
    assert [type(part) for part in user.content] == [TextPart, OtherPart]
    video = user.content[1]
    assert isinstance(video, OtherPart)
    assert (video.type, video.model_extra) == ("video_url", VIDEO)
    assert isinstance(system.content[1], OtherPart)
    assert isinstance(assistant, AssistantMessage)
    assert isinstance(assistant.content, list)
    assert isinstance(assistant.content[0], OtherPart)
    assert [type(call) for call in assistant.tool_calls or []] == [OtherToolCall]
    assert [type(tool) for tool in request.tools or []] == [OtherTool, FunctionTool]
    assert isinstance(request.tool_choice, OtherToolChoice)
    dumped = request.model_dump(mode="json", exclude_unset=True)
    assert canonical(dumped) == canonical(unknown_types())


def test_unknown_types_reach_an_openai_upstream_byte_for_byte(
    client: TestClient, upstream_raw: list[bytes]
) -> None:
    body = compact(unknown_types())
    response = client.post(
        "/v1/chat/completions",
        content=body,
        headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    sent = upstream_raw[-1]
    for value in (VIDEO, SEARCH_TOOL, SEARCH_CALL, SEARCH_CHOICE):
        assert sent.count(compact(value)) == (3 if value is VIDEO else 1), value
    assert canonical(json.loads(sent)) == canonical({**unknown_types(), "model": "upstream-model"})


def test_unknown_types_are_served_by_the_mock(client: TestClient) -> None:
    body = {**unknown_types(), "model": "mock-chat"}
    body["messages"][1]["content"].append({"type": "x_note", "text": {"not": "a string"}})
    response = chat(client, body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("part", "param"),
    [
        # A known type is held to its shape: it never passes as an unknown one.
        ({"type": "image_url", "image_url": {"url": "ftp://a/b.png"}}, "content[1].image_url.url"),
        ({"type": "image_url", "video_url": {"url": "https://a.b/v.mp4"}}, "content[1].image_url"),
        ({"type": "text", "text": None}, "content[1].text"),
        (
            {"type": "input_audio", "input_audio": {"data": "UklGRg=="}},
            "content[1].input_audio.format",
        ),
        # Only a string is a type.
        ({"type": None, "video_url": {}}, "content[1].type"),
        ({"video_url": {}}, "content[1].type"),
    ],
)
def test_a_malformed_part_among_unknown_ones_is_refused_at_its_path(
    client: TestClient, upstream_bodies: list[dict[str, Any]], part: dict[str, Any], param: str
) -> None:
    before = len(upstream_bodies)
    body = unknown_types()
    body["messages"][1]["content"] = [VIDEO, part, VIDEO]
    response = chat(client, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == f"messages[1].{param}"
    assert len(upstream_bodies) == before
