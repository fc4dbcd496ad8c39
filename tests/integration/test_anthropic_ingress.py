"""POST /v1/messages as the official ``anthropic`` SDK sees it: a real gateway process in
front of the real mock upstream (``up-chat``, an OpenAI-type provider over HTTP) and
the in-process mock (``local-chat``), both on free loopback ports."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from tests.servers import TEST_KEY, ServerProcess

MODELS = ["up-chat", "local-chat"]
HELLO: list[Any] = [{"role": "user", "content": "hello there"}]
TOOLS: list[Any] = [
    {
        "name": "get_weather",
        "description": "The weather in a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
    {
        "name": "get_time",
        "description": "The time in a timezone",
        "input_schema": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"],
        },
    },
]


@pytest.fixture
def client(gateway: ServerProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=TEST_KEY, max_retries=0)


@pytest.mark.parametrize("model", MODELS)
def test_text_and_its_stream(client: anthropic.Anthropic, model: str) -> None:
    answer = client.messages.create(model=model, max_tokens=100, messages=HELLO)
    assert answer.type == "message"
    assert answer.model == model
    assert answer.stop_reason == "end_turn"
    text = answer.content[0].text  # type: ignore[union-attr]
    assert text
    assert answer.usage.input_tokens > 0
    assert answer.usage.output_tokens == 12

    with client.messages.stream(model=model, max_tokens=100, messages=HELLO) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text
    assert final.model == model
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == answer.usage.output_tokens
    assert final.usage.input_tokens == answer.usage.input_tokens


@pytest.mark.parametrize("model", MODELS)
def test_two_tool_calls_stream_and_the_conversation_completes(
    client: anthropic.Anthropic, model: str
) -> None:
    messages = list(HELLO)
    with client.messages.stream(
        model=model,
        max_tokens=200,
        tools=TOOLS,
        messages=messages,
        extra_body={"mock": {"tool_calls": 2}},
    ) as stream:
        deltas = [
            event.delta.type  # type: ignore[union-attr]
            for event in stream
            if event.type == "content_block_delta"
        ]
        final = stream.get_final_message()
    assert "input_json_delta" in deltas
    assert final.stop_reason == "tool_use"
    calls = [block for block in final.content if block.type == "tool_use"]
    assert [call.name for call in calls] == ["get_weather", "get_time"]
    assert set(calls[0].input) >= {"city", "days"}  # type: ignore[arg-type]
    assert set(calls[1].input) >= {"timezone"}  # type: ignore[arg-type]
    assert len({call.id for call in calls}) == 2

    messages += [
        {"role": "assistant", "content": [block.model_dump() for block in final.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": f"result {k}"}
                for k, call in enumerate(calls)
            ],
        },
    ]
    answer = client.messages.create(model=model, max_tokens=100, tools=TOOLS, messages=messages)
    assert answer.stop_reason == "end_turn"
    assert answer.content[0].type == "text"


@pytest.mark.parametrize("model", MODELS)
def test_the_sdk_s_exception_classes(
    client: anthropic.Anthropic, gateway: ServerProcess, model: str
) -> None:
    stranger = anthropic.Anthropic(base_url=gateway.url, api_key="sk-nobody", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as unauthorised:
        stranger.messages.create(model=model, max_tokens=10, messages=HELLO)
    assert unauthorised.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model=f"{model}-missing", max_tokens=10, messages=HELLO)
    with pytest.raises(anthropic.PermissionDeniedError):
        client.messages.create(model="secret-model", max_tokens=10, messages=HELLO)
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(
            model=model, max_tokens=10, messages=HELLO, extra_body={"mock": {"status": 429}}
        )
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    with pytest.raises(anthropic.InternalServerError) as failed:
        client.messages.create(
            model=model, max_tokens=10, messages=HELLO, extra_body={"mock": {"status": 500}}
        )
    assert failed.value.status_code == 502
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(
            model=model, max_tokens=10, messages=HELLO, extra_body={"temperature": 1.5}
        )


def test_a_stream_that_fails_midway_raises_the_error_event(client: anthropic.Anthropic) -> None:
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(
            model="up-chat",
            max_tokens=100,
            messages=HELLO,
            extra_body={"mock": {"cut_after": 3}},
        ) as stream,
    ):
        for _ in stream:
            pass
    assert "api_error" in str(caught.value)
