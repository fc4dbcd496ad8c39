"""gateway/providers/anthropic/: requests, answers and streams, over a respx router
injected as the transport (the seam the app uses), replaying the recorded wire
samples of tests/fixtures/anthropic/ (the Messages API's documented answers and
streams). Every translated answer and chunk is read back with the ``openai``
SDK's own models, and streamed tool calls are reassembled with its accumulator.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import httpx
import openai.types.chat as sdk
import pytest
import respx
from openai.lib.streaming.chat import ChatCompletionStreamState

from gateway.config import Deployment, ProviderConfig
from gateway.errors import (
    InvalidRequest,
    Reason,
    UpstreamAuthFailed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.anthropic.request import DEFAULT_MAX_TOKENS, JSON_INSTRUCTION
from gateway.providers.base import CallContext
from gateway.providers.registry import provider_class
from gateway.schemas.openai import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from gateway.transport import Upstream, build_upstream

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "anthropic"
BASE_URL = "https://anthropic.test"
SECRET = "sk-ant-provider-secret-0123456789abcdef"
UPSTREAM_MODEL = "claude-sonnet-4-5-20250929"
PNG_DATA = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}


class Body(httpx.AsyncByteStream):
    """A response body that arrives in pieces, each after its delay."""

    def __init__(self, parts: Iterable[bytes], *, delay: float = 0.0) -> None:
        self.parts = list(parts)
        self.delay = delay

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            if self.delay:
                await asyncio.sleep(self.delay)
            yield part


def pieces(data: bytes, size: int = 37) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def sse_response(data: bytes, size: int = 37) -> httpx.Response:
    return httpx.Response(
        200, headers={"content-type": "text/event-stream"}, stream=Body(pieces(data, size))
    )


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def events(*objects: dict[str, Any]) -> bytes:
    return b"".join(
        b"event: " + o["type"].encode() + b"\ndata: " + json.dumps(o).encode() + b"\n\n"
        for o in objects
    )


def message_start(**usage: int) -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": UPSTREAM_MODEL,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage or {"input_tokens": 10, "output_tokens": 1},
        },
    }


def text_delta(text: str, index: int = 0) -> dict[str, Any]:
    return {
        "type": "content_block_delta",
        "index": index,
        "delta": {"type": "text_delta", "text": text},
    }


def message_delta(stop_reason: str | None = "end_turn", **usage: int) -> dict[str, Any]:
    return {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": usage or {"output_tokens": 5},
    }


MESSAGE_STOP = {"type": "message_stop"}


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(base_url=BASE_URL, assert_all_mocked=True)


@pytest.fixture
async def upstream(router: respx.Router) -> AsyncIterator[Upstream]:
    config = ProviderConfig(type="anthropic", base_url=BASE_URL, api_key=SECRET)
    upstream = build_upstream(config, transport=httpx.MockTransport(router.async_handler))
    yield upstream
    await upstream.aclose()


def make_provider(upstream: Upstream, **config: Any) -> AnthropicProvider:
    settings = {"type": "anthropic", "base_url": BASE_URL + "/", "api_key": SECRET, **config}
    return AnthropicProvider("claude", ProviderConfig(**settings), upstream)


@pytest.fixture
def provider(upstream: Upstream) -> AnthropicProvider:
    return make_provider(upstream)


def context(
    timeout: float | dict[str, float] = 5.0, client_headers: dict[str, str] | None = None
) -> CallContext:
    deployment = Deployment.model_validate(
        {"provider": "claude", "model": UPSTREAM_MODEL, "timeout": timeout}
    )
    return CallContext(
        request_id="req-abc123", deployment=deployment, client_headers=client_headers
    )


def chat_request(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "claude", "messages": [{"role": "user", "content": "Hi"}], **fields}
    return ChatCompletionRequest.model_validate_json(json.dumps(body))


async def collect(
    provider: AnthropicProvider, request: ChatCompletionRequest, ctx: CallContext | None = None
) -> list[ChatCompletionChunk]:
    async with provider.stream(request, ctx or context()) as chunks:
        return [c async for c in chunks]


def sent_json(route: respx.Route) -> dict[str, Any]:
    return json.loads(route.calls.last.request.content)


def as_sdk_answer(answer: ChatCompletion) -> sdk.ChatCompletion:
    """The answer as a client reads it: its JSON, parsed by the openai SDK."""
    return sdk.ChatCompletion.model_validate(json.loads(answer.model_dump_json(exclude_unset=True)))


def as_sdk_chunks(chunks: list[ChatCompletionChunk]) -> list[sdk.ChatCompletionChunk]:
    return [
        sdk.ChatCompletionChunk.model_validate(json.loads(c.model_dump_json(exclude_unset=True)))
        for c in chunks
    ]


def accumulate(chunks: list[sdk.ChatCompletionChunk]) -> sdk.ChatCompletion:
    """The openai SDK's own reassembly of a stream (what ``.stream()`` clients get)."""
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(chunk)
    return state.get_final_completion()


def reply(router: respx.Router, name: str) -> respx.Route:
    if name.endswith(".sse"):
        return router.post("/v1/messages").mock(
            side_effect=lambda request: sse_response(fixture(name))
        )
    return router.post("/v1/messages").respond(200, content=fixture(name))


# ---------------------------------------------------------------- registration and headers


def test_registered_as_type_anthropic() -> None:
    assert provider_class("anthropic") is AnthropicProvider


async def test_headers_and_url(router: respx.Router, provider: AnthropicProvider) -> None:
    route = reply(router, "message.json")
    await provider.chat(chat_request(), context())
    sent = route.calls.last.request
    assert sent.url == f"{BASE_URL}/v1/messages"
    assert sent.headers["x-api-key"] == SECRET
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["x-request-id"] == "req-abc123"
    assert "authorization" not in sent.headers
    assert "anthropic-beta" not in sent.headers


def test_default_base_url_is_the_bare_origin(upstream: Upstream) -> None:
    provider = AnthropicProvider("c", ProviderConfig(type="anthropic", api_key=SECRET), upstream)
    assert str(provider.messages_endpoint.url) == "https://api.anthropic.com/v1/messages"
    assert provider.messages_endpoint.route == "POST /v1/messages"


async def test_client_version_and_beta_headers_are_forwarded(
    router: respx.Router, provider: AnthropicProvider
) -> None:
    route = reply(router, "message.json")
    ctx = context(
        client_headers={
            "anthropic-version": "2023-01-01",
            "anthropic-beta": "context-1m-2025-08-07,fine-grained-tool-streaming-2025-05-14",
            "x-api-key": "sk-the-clients-gateway-key",
        }
    )
    await provider.chat(chat_request(), ctx)
    headers = route.calls.last.request.headers
    assert headers.get_list("anthropic-version") == ["2023-01-01"]
    assert headers.get_list("anthropic-beta") == [
        "context-1m-2025-08-07,fine-grained-tool-streaming-2025-05-14"
    ]
    assert headers.get_list("x-api-key") == [SECRET]

    await provider.chat(chat_request(), context(client_headers={"anthropic-beta": "b1"}))
    headers = route.calls.last.request.headers
    assert headers.get_list("anthropic-version") == ["2023-06-01"]
    assert headers.get_list("anthropic-beta") == ["b1"]


async def test_configured_headers_win_over_the_clients_and_are_sent_once(
    router: respx.Router, upstream: Upstream
) -> None:
    provider = make_provider(
        upstream, headers={"Anthropic-Version": "2024-01-01", "anthropic-beta": "conf-beta"}
    )
    route = reply(router, "message.json")
    for ctx in (
        context(),
        context(client_headers={"anthropic-version": "2023-01-01", "anthropic-beta": "b1"}),
    ):
        await provider.chat(chat_request(), ctx)
        headers = route.calls.last.request.headers
        assert headers.get_list("anthropic-version") == ["2024-01-01"]
        assert headers.get_list("anthropic-beta") == ["conf-beta"]


async def test_a_client_header_that_cannot_be_sent_is_refused(
    router: respx.Router, provider: AnthropicProvider
) -> None:
    route = router.post("/v1/messages")
    with pytest.raises(InvalidRequest) as info:
        await provider.chat(chat_request(), context(client_headers={"anthropic-beta": "a\u2028b"}))
    assert info.value.param == "anthropic-beta"
    assert not route.called


# ---------------------------------------------------------------- requests


async def test_a_whole_conversation_is_translated(
    router: respx.Router, provider: AnthropicProvider
) -> None:
    route = reply(router, "message.json")
    request = chat_request(
        messages=[
            {"role": "system", "content": "Be brief."},
            {
                "role": "developer",
                "content": [
                    {
                        "type": "text",
                        "text": "Metric units.",
                        "cache_control": {"type": "ephemeral"},
                    }
                ],
            },
            {"role": "user", "content": "What is in these?", "name": "ann"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look:"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    {
                        "type": "image_url",
                        "image_url": {"url": f"data:image/png;base64,{PNG_DATA}", "detail": "low"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                    },
                    {
                        "id": "toolu_2",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": ""},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C, sunny"},
            {
                "role": "tool",
                "tool_call_id": "toolu_2",
                "content": [{"type": "text", "text": "9:00"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "Sunny, 18C, at 9:00."}]},
            {"role": "user", "content": "Thanks", "cache_control": {"type": "ephemeral"}},
        ],
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        stop="END",
        temperature=1.5,
        top_p=0.9,
        max_tokens=100,
        max_completion_tokens=200,
        user="user-42",
        seed=7,
        frequency_penalty=0,
        n=1,
        stream_options={"include_usage": True},
        mock={"status": 500},
        top_k=40,
        metadata={"trace": "t1"},
    )
    await provider.chat(request, context())
    assert sent_json(route) == {
        "model": UPSTREAM_MODEL,
        "max_tokens": 200,
        "system": [
            {"type": "text", "text": "Be brief."},
            {"type": "text", "text": "Metric units.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these?"},
                    {"type": "text", "text": "Look:"},
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/a.png"},
                    },
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG_DATA},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"location": "Paris"},
                    },
                    {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C, sunny"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": [{"type": "text", "text": "9:00"}],
                    },
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "Sunny, 18C, at 9:00."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Thanks", "cache_control": {"type": "ephemeral"}}
                ],
            },
        ],
        "tools": [
            {
                "name": "get_weather",
                "description": "The weather in a city",
                "input_schema": WEATHER["function"]["parameters"],
            },
            {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
        ],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"],
        "temperature": 1,
        "top_p": 0.9,
        "metadata": {"user_id": "user-42"},
        "top_k": 40,
    }


async def test_max_tokens_is_always_sent(router: respx.Router, provider: AnthropicProvider) -> None:
    route = reply(router, "message.json")
    await provider.chat(chat_request(), context())
    assert sent_json(route)["max_tokens"] == DEFAULT_MAX_TOKENS
    await provider.chat(chat_request(max_tokens=77), context())
    assert sent_json(route)["max_tokens"] == 77
    assert "stream" not in sent_json(route)


async def test_stream_asks_for_a_stream(router: respx.Router, provider: AnthropicProvider) -> None:
    route = reply(router, "stream_text.sse")
    await collect(provider, chat_request(stream=True, stop=["a", "b"], temperature=0.2))
    body = sent_json(route)
    assert body["stream"] is True
    assert body["stop_sequences"] == ["a", "b"]
    assert body["temperature"] == 0.2


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({"tool_choice": "auto"}, {"type": "auto"}, id="auto"),
        pytest.param({"tool_choice": "required"}, {"type": "any"}, id="required"),
        pytest.param({"tool_choice": "none"}, {"type": "none"}, id="none"),
        pytest.param(
            {"tool_choice": "none", "parallel_tool_calls": False},
            {"type": "none"},
            id="none-serial",
        ),
        pytest.param(
            {"parallel_tool_calls": False},
            {"type": "auto", "disable_parallel_tool_use": True},
            id="serial",
        ),
        pytest.param(
            {"tool_choice": "required", "parallel_tool_calls": True}, {"type": "any"}, id="parallel"
        ),
        pytest.param({}, None, id="absent"),
    ],
)
async def test_tool_choice(
    router: respx.Router,
    provider: AnthropicProvider,
    fields: dict[str, Any],
    expected: dict[str, Any] | None,
) -> None:
    route = reply(router, "message.json")
    await provider.chat(chat_request(tools=[WEATHER, TIME], **fields), context())
    body = sent_json(route)
    assert body.get("tool_choice") == expected
    assert [tool["name"] for tool in body["tools"]] == ["get_weather", "get_time"]


async def test_allowed_tools_restrict_the_tools(
    router: respx.Router, provider: AnthropicProvider
) -> None:
    route = reply(router, "message.json")
    choice = {
        "type": "allowed_tools",
        "allowed_tools": {
            "mode": "required",
            "tools": [{"type": "function", "function": {"name": "get_time"}}],
        },
    }
    await provider.chat(chat_request(tools=[WEATHER, TIME], tool_choice=choice), context())
    body = sent_json(route)
    assert [tool["name"] for tool in body["tools"]] == ["get_time"]
    assert body["tool_choice"] == {"type": "any"}


async def test_without_tools_no_tool_choice_is_sent(
    router: respx.Router, provider: AnthropicProvider
) -> None:
    route = reply(router, "message.json")
    await provider.chat(chat_request(tool_choice="none", parallel_tool_calls=False), context())
    assert "tool_choice" not in sent_json(route)
    assert "tools" not in sent_json(route)


async def test_strict_tools_and_cache_control_on_tools(
    router: respx.Router, provider: AnthropicProvider
) -> None:
    route = reply(router, "message.json")
    tool = {
        "type": "function",
        "function": {"name": "f", "parameters": {"properties": {}}, "strict": True},
        "cache_control": {"type": "ephemeral"},
    }
    await provider.chat(chat_request(tools=[tool]), context())
    assert sent_json(route)["tools"] == [
        {
            "name": "f",
            "input_schema": {"type": "object", "properties": {}},
            "strict": True,
            "cache_control": {"type": "ephemeral"},
        }
    ]


@pytest.mark.parametrize(
    ("fields", "system", "output_config"),
    [
        pytest.param(
            {"response_format": {"type": "json_object"}},
            [{"type": "text", "text": JSON_INSTRUCTION}],
            None,
            id="json_object",
        ),
        pytest.param(
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                ],
                "response_format": {"type": "json_object"},
            },
            [{"type": "text", "text": "Be brief."}, {"type": "text", "text": JSON_INSTRUCTION}],
            None,
            id="json_object-after-system",
        ),
        pytest.param(
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "answer",
                        "strict": True,
                        "schema": {
                            "type": "object",
                            "properties": {"a": {"type": "integer"}},
                            "required": ["a"],
                            "additionalProperties": False,
                        },
                    },
                }
            },
            None,
            {
                "format": {
                    "type": "json_schema",
                    "schema": {
                        "type": "object",
                        "properties": {"a": {"type": "integer"}},
                        "required": ["a"],
                        "additionalProperties": False,
                    },
                }
            },
            id="json_schema",
        ),
        pytest.param(
            {"response_format": {"type": "json_schema", "json_schema": {"name": "any"}}},
            [{"type": "text", "text": JSON_INSTRUCTION}],
            None,
            id="json_schema-without-schema",
        ),
        pytest.param({"response_format": {"type": "text"}}, None, None, id="text"),
        pytest.param({"reasoning_effort": "high"}, None, {"effort": "high"}, id="effort"),
        pytest.param({"reasoning_effort": "minimal"}, None, {"effort": "low"}, id="minimal"),
        pytest.param({"reasoning_effort": "none"}, None, None, id="no-effort"),
    ],
)
async def test_response_format_and_effort(
    router: respx.Router,
    provider: AnthropicProvider,
    fields: dict[str, Any],
    system: list[dict[str, Any]] | None,
    output_config: dict[str, Any] | None,
) -> None:
    route = reply(router, "message.json")
    await provider.chat(chat_request(**fields), context())
    body = sent_json(route)
    assert body.get("system") == system
    assert body.get("output_config") == output_config


async def test_native_fields_pass_and_others_do_not(
    router: respx.Router, provider: AnthropicProvider
) -> None:
    route = reply(router, "message.json")
    thinking = {"type": "enabled", "budget_tokens": 2048}
    await provider.chat(
        chat_request(
            thinking=thinking,
            cache_control={"type": "ephemeral"},
            service_tier="standard_only",
            store=True,
            prediction={"type": "content", "content": "x"},
        ),
        context(),
    )
    body = sent_json(route)
    assert body["thinking"] == thinking
    assert body["cache_control"] == {"type": "ephemeral"}
    assert body["service_tier"] == "standard_only"
    assert "store" not in body
    assert "prediction" not in body
    await provider.chat(chat_request(service_tier="flex"), context())
    assert "service_tier" not in sent_json(route)


async def test_a_pdf_file_becomes_a_document(
    router: respx.Router, provider: AnthropicProvider
) -> None:
    route = reply(router, "message.json")
    part = {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0x"}}
    await provider.chat(chat_request(messages=[{"role": "user", "content": [part]}]), context())
    assert sent_json(route)["messages"][0]["content"] == [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"},
        }
    ]


async def test_assistant_refusal_and_empty_turns(
    router: respx.Router, provider: AnthropicProvider
) -> None:
    route = reply(router, "message.json")
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": None},  # nothing in it: left out, the users merge
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": None, "refusal": "I can't help with that."},
        {"role": "user", "content": "c"},
    ]
    await provider.chat(chat_request(messages=messages), context())
    assert sent_json(route)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "I can't help with that."}]},
        {"role": "user", "content": [{"type": "text", "text": "c"}]},
    ]


CALL = {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        pytest.param({"n": 2}, "n", id="n"),
        pytest.param({"logprobs": True}, "logprobs", id="logprobs"),
        pytest.param({"logit_bias": {"50256": -100}}, "logit_bias", id="logit_bias"),
        pytest.param({"presence_penalty": 0.5}, "presence_penalty", id="presence_penalty"),
        pytest.param({"frequency_penalty": -1}, "frequency_penalty", id="frequency_penalty"),
        pytest.param({"functions": [{"name": "f"}]}, "functions", id="functions"),
        pytest.param({"function_call": "auto"}, "function_call", id="function_call"),
        pytest.param(
            {"tools": [{"type": "custom", "custom": {"name": "grammar"}}]},
            "tools[0].type",
            id="custom-tool",
        ),
        pytest.param(
            {"tools": [WEATHER, {"type": "web_search_preview"}]}, "tools[1].type", id="other-tool"
        ),
        pytest.param(
            {"tools": [WEATHER], "tool_choice": {"type": "custom", "custom": {"name": "g"}}},
            "tool_choice.type",
            id="custom-choice",
        ),
        pytest.param(
            {
                "tools": [WEATHER],
                "tool_choice": {
                    "type": "allowed_tools",
                    "allowed_tools": {"mode": "auto", "tools": [{"type": "mcp", "server": "x"}]},
                },
            },
            "tool_choice.allowed_tools.tools[0]",
            id="allowed-non-function",
        ),
        pytest.param(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "hear"},
                            {
                                "type": "input_audio",
                                "input_audio": {"data": "AAA", "format": "wav"},
                            },
                        ],
                    }
                ]
            },
            "messages[0].content[1].type",
            id="audio",
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": "x"}]}]},
            "messages[0].content[0].type",
            id="unknown-part",
        ),
        pytest.param(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/svg+xml;base64,PHN2Zz4="},
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].image_url.url",
            id="svg",
        ),
        pytest.param(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}
                ]
            },
            "messages[0].content[0].file.file_id",
            id="file-id",
        ),
        pytest.param(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "file", "file": {"file_data": "data:text/csv;base64,YQ=="}}
                        ],
                    }
                ]
            },
            "messages[0].content[0].file.file_data",
            id="file-csv",
        ),
        pytest.param(
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {**CALL, "function": {"name": "f", "arguments": "{'a': 1}"}}
                        ],
                    },
                ]
            },
            "messages[1].tool_calls[0].function.arguments",
            id="arguments-not-json",
        ),
        pytest.param(
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            CALL,
                            {**CALL, "function": {"name": "f", "arguments": "[1]"}},
                        ],
                    },
                ]
            },
            "messages[1].tool_calls[1].function.arguments",
            id="arguments-not-object",
        ),
        pytest.param(
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c", "type": "custom", "custom": {"name": "g", "input": "x"}}
                        ],
                    },
                ]
            },
            "messages[1].tool_calls[0].type",
            id="custom-call",
        ),
        pytest.param(
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
                ]
            },
            "messages[1].function_call",
            id="legacy-call",
        ),
        pytest.param(
            {"messages": [{"role": "function", "name": "f", "content": "1"}]},
            "messages[0].role",
            id="function-role",
        ),
        pytest.param(
            {"messages": [{"role": "system", "content": [{"type": "image", "x": 1}]}]},
            "messages[0].content[0].type",
            id="system-other-part",
        ),
    ],
)
async def test_what_anthropic_cannot_carry_is_refused(
    router: respx.Router, provider: AnthropicProvider, fields: dict[str, Any], param: str
) -> None:
    route = router.post("/v1/messages")
    for streaming in (False, True):
        with pytest.raises(InvalidRequest) as info:
            if streaming:
                await collect(provider, chat_request(stream=True, **fields))
            else:
                await provider.chat(chat_request(**fields), context())
        assert info.value.status == 400
        assert info.value.param == param
    assert not route.called


# ---------------------------------------------------------------- answers


async def test_text_answer(router: respx.Router, provider: AnthropicProvider) -> None:
    reply(router, "message.json")
    answer = await provider.chat(chat_request(), context())
    parsed = as_sdk_answer(answer)
    assert parsed.id == "msg_013Zva2CMHLNnXjNJJKqJ2EF"
    assert parsed.object == "chat.completion"
    assert parsed.model == UPSTREAM_MODEL
    choice = parsed.choices[0]
    assert (choice.index, choice.finish_reason) == (0, "stop")
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hi! My name is Claude."
    assert choice.message.tool_calls is None
    assert parsed.usage is not None
    assert (parsed.usage.prompt_tokens, parsed.usage.completion_tokens) == (2095, 503)
    assert parsed.usage.total_tokens == 2598
    assert parsed.usage.prompt_tokens_details is not None
    assert parsed.usage.prompt_tokens_details.cached_tokens == 0


async def test_tool_use_answer(router: respx.Router, provider: AnthropicProvider) -> None:
    reply(router, "message_tool_use.json")
    parsed = as_sdk_answer(await provider.chat(chat_request(tools=[WEATHER]), context()))
    choice = parsed.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "I'll check the current weather in San Francisco for you."
    (call,) = choice.message.tool_calls or []
    assert call.id == "toolu_01A09q90qw90lq917835lq9"
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {
        "location": "San Francisco, CA",
        "unit": "celsius",
    }


async def test_parallel_tool_calls_and_cache_usage(
    router: respx.Router, provider: AnthropicProvider
) -> None:
    reply(router, "message_parallel_tools.json")
    answer = await provider.chat(chat_request(tools=[WEATHER, TIME]), context())
    parsed = as_sdk_answer(answer)
    calls = parsed.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("toolu_01WHJgMMwQZqYkMkzmDZ9vf6", "get_weather", {"location": "San Francisco, CA"}),
        ("toolu_01FrcDgZwzsVhGY5JqkRJRqv", "get_time", {"timezone": "America/Los_Angeles"}),
    ]
    usage = parsed.usage
    assert usage is not None
    # input_tokens (21) leaves the cache out; prompt_tokens counts it all.
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (2009, 393, 2402)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 1800
    assert usage.prompt_tokens_details.cache_write_tokens == 188


async def test_thinking_answer(router: respx.Router, provider: AnthropicProvider) -> None:
    reply(router, "message_thinking.json")
    answer = await provider.chat(chat_request(), context())
    parsed = as_sdk_answer(answer)
    choice = parsed.choices[0]
    assert choice.finish_reason == "length"
    assert (
        choice.message.content
        == "Yes, there are infinitely many prime numbers such that n mod 4 = 3."
    )
    dumped = json.loads(answer.model_dump_json(exclude_unset=True))["choices"][0]["message"]
    assert dumped["reasoning_content"].startswith("To approach this")
    assert "signature" not in json.dumps(dumped)
    assert "EmwKAhgB" not in json.dumps(dumped)  # redacted thinking is dropped
    assert parsed.usage is not None
    assert parsed.usage.completion_tokens_details is not None
    assert parsed.usage.completion_tokens_details.reasoning_tokens == 980


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("a_reason_from_the_future", "stop"),
        (None, "stop"),
    ],
)
async def test_stop_reasons(
    router: respx.Router, provider: AnthropicProvider, stop_reason: str | None, finish_reason: str
) -> None:
    body = json.loads(fixture("message.json"))
    body["stop_reason"] = stop_reason
    router.post("/v1/messages").respond(200, json=body)
    assert (
        as_sdk_answer(await provider.chat(chat_request(), context())).choices[0].finish_reason
        == finish_reason
    )

    wire = events(message_start(), text_delta("Hi"), message_delta(stop_reason), MESSAGE_STOP)
    router.post("/v1/messages").mock(side_effect=lambda request: sse_response(wire))
    chunks = as_sdk_chunks(await collect(provider, chat_request(stream=True)))
    assert [c.choices[0].finish_reason for c in chunks if c.choices] == [None, None, finish_reason]


async def test_an_answer_without_text_has_null_content(
    router: respx.Router, provider: AnthropicProvider
) -> None:
    body = json.loads(fixture("message_tool_use.json"))
    body["content"] = body["content"][1:]
    router.post("/v1/messages").respond(200, json=body)
    dumped = json.loads((await provider.chat(chat_request(), context())).model_dump_json())
    assert dumped["choices"][0]["message"]["content"] is None


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"id": "msg_1", "model": "m"}',
        b'{"id": "msg_1", "model": "m", "content": [{"type": "text"}]}',
        b'{"id": "msg_1", "model": "m", "content": [{"type": "tool_use", "id": "t"}]}',
        b'{"id": "msg_1", "model": "m", "content": "text"}',
    ],
)
async def test_malformed_answer(
    router: respx.Router, provider: AnthropicProvider, body: bytes
) -> None:
    router.post("/v1/messages").respond(200, content=body)
    with pytest.raises(UpstreamUnavailable) as info:
        await provider.chat(chat_request(), context())
    assert info.value.reason == Reason.MALFORMED
    assert info.value.retryable


# ---------------------------------------------------------------- streams


async def test_text_stream(router: respx.Router, provider: AnthropicProvider) -> None:
    reply(router, "stream_text.sse")
    chunks = as_sdk_chunks(await collect(provider, chat_request(stream=True)))
    assert {c.id for c in chunks} == {"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY"}
    assert {c.model for c in chunks} == {UPSTREAM_MODEL}
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    first = chunks[0].choices[0]
    assert (first.delta.role, first.delta.content) == ("assistant", "")
    deltas = [c.choices[0] for c in chunks[:-1]]
    assert [d.delta.content for d in deltas] == ["", "Hello", "!", None]
    assert [d.finish_reason for d in deltas] == [None, None, None, "stop"]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        25,
        15,
        40,
    )
    final = accumulate(chunks)
    assert final.choices[0].message.content == "Hello!"
    assert final.choices[0].finish_reason == "stop"


async def test_tool_use_stream(router: respx.Router, provider: AnthropicProvider) -> None:
    reply(router, "stream_tool_use.sse")
    chunks = as_sdk_chunks(await collect(provider, chat_request(stream=True, tools=[WEATHER])))
    final = accumulate(chunks)
    message = final.choices[0].message
    assert message.content == "Okay, let's check the weather for San Francisco, CA:"
    (call,) = message.tool_calls or []
    assert (call.id, call.function.name) == ("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather")
    assert json.loads(call.function.arguments) == {
        "location": "San Francisco, CA",
        "unit": "fahrenheit",
    }
    assert final.choices[0].finish_reason == "tool_calls"
    start = next(c for c in chunks if c.choices and c.choices[0].delta.tool_calls)
    (opening,) = start.choices[0].delta.tool_calls or []
    assert opening.index == 0
    assert opening.type == "function"
    assert opening.function is not None
    assert opening.function.arguments == ""
    # Empty fragments make no chunk; the tool call's deltas name only its index.
    fragments = [
        c.choices[0].delta.tool_calls[0]
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls and c is not start
    ]
    assert len(fragments) == 8
    assert all(f.id is None and f.index == 0 for f in fragments)
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (472, 89)


async def test_parallel_tool_calls_stream(
    router: respx.Router, provider: AnthropicProvider
) -> None:
    reply(router, "stream_parallel_tools.sse")
    chunks = as_sdk_chunks(
        await collect(provider, chat_request(stream=True, tools=[WEATHER, TIME]))
    )
    final = accumulate(chunks)
    calls = final.choices[0].message.tool_calls or []
    # Tool call indexes count the calls (0, 1), not the content blocks (1, 2).
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("toolu_01WHJgMMwQZqYkMkzmDZ9vf6", "get_weather", {"location": "San Francisco, CA"}),
        ("toolu_01FrcDgZwzsVhGY5JqkRJRqv", "get_time", {}),
    ]
    indexes = [
        call.index for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []
    ]
    assert indexes == [0, 0, 0, 1, 1]
    assert final.choices[0].finish_reason == "tool_calls"
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (2009, 74, 2083)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 1800
    assert usage.prompt_tokens_details.cache_write_tokens == 188


async def test_thinking_stream(router: respx.Router, provider: AnthropicProvider) -> None:
    reply(router, "stream_thinking.sse")
    chunks = await collect(provider, chat_request(stream=True))
    parsed = as_sdk_chunks(chunks)
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content", "")
        for c in parsed
        if c.choices
    )
    assert reasoning.startswith("Let me solve this step by step:")
    assert reasoning.endswith("= 12,231")
    assert accumulate(parsed).choices[0].message.content == "27 * 453 = 12,231"
    assert "EqQBCgIY" not in "".join(c.model_dump_json() for c in chunks)  # signatures dropped
    # The documented sample reports no usage: counted as zero, never missing.
    assert parsed[-1].usage is not None
    assert parsed[-1].usage.total_tokens == 0


async def test_usage_counts_of_message_delta_replace_those_of_message_start(
    router: respx.Router, provider: AnthropicProvider
) -> None:
    wire = events(
        message_start(input_tokens=100, cache_read_input_tokens=50, output_tokens=1),
        text_delta("Hi"),
        message_delta("end_turn", input_tokens=100, cache_read_input_tokens=60, output_tokens=30),
        MESSAGE_STOP,
    )
    router.post("/v1/messages").mock(side_effect=lambda request: sse_response(wire))
    usage = (await collect(provider, chat_request(stream=True)))[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (160, 30)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 60


async def test_counts_that_are_not_counts_are_zero(
    router: respx.Router, provider: AnthropicProvider
) -> None:
    body = json.loads(fixture("message.json"))
    body["usage"] = {"input_tokens": "12", "output_tokens": -3, "cache_read_input_tokens": None}
    router.post("/v1/messages").respond(200, json=body)
    usage = as_sdk_answer(await provider.chat(chat_request(), context())).usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (0, 0, 0)


async def test_stream_with_crlf_and_one_byte_reads(
    router: respx.Router, provider: AnthropicProvider
) -> None:
    wire = fixture("stream_tool_use.sse").replace(b"\n", b"\r\n")
    router.post("/v1/messages").mock(side_effect=lambda request: sse_response(wire, 1))
    final = accumulate(as_sdk_chunks(await collect(provider, chat_request(stream=True))))
    (call,) = final.choices[0].message.tool_calls or []
    assert json.loads(call.function.arguments)["unit"] == "fahrenheit"


async def test_stream_replays_an_in_memory_body(
    router: respx.Router, provider: AnthropicProvider
) -> None:
    router.post("/v1/messages").respond(
        200, content=fixture("stream_text.sse"), headers={"content-type": "text/event-stream"}
    )
    chunks = await collect(provider, chat_request(stream=True))
    assert len(chunks) == 5
    assert chunks[-1].usage is not None


async def test_events_after_message_stop_are_not_read(
    router: respx.Router, provider: AnthropicProvider
) -> None:
    wire = fixture("stream_text.sse") + b"event: content_block_delta\ndata: not json\n\n"
    router.post("/v1/messages").mock(side_effect=lambda request: sse_response(wire))
    assert len(await collect(provider, chat_request(stream=True))) == 5


async def test_unknown_events_and_deltas_are_ignored(
    router: respx.Router, provider: AnthropicProvider
) -> None:
    wire = events(
        message_start(),
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "citations_delta", "citation": {}},
        },
        {"type": "a_new_event", "payload": [1]},
        text_delta("Hi"),
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "redacted_thinking", "data": "x"},
        },
        {"type": "content_block_stop", "index": 1},
        message_delta(),
        MESSAGE_STOP,
    )
    router.post("/v1/messages").mock(side_effect=lambda request: sse_response(wire))
    chunks = as_sdk_chunks(await collect(provider, chat_request(stream=True)))
    assert accumulate(chunks).choices[0].message.content == "Hi"
    assert len(chunks) == 4


async def test_stream_cut_before_the_stop_reason_is_unavailable(
    router: respx.Router, provider: AnthropicProvider
) -> None:
    wire = events(message_start(), text_delta("Hel"), text_delta("lo"))
    router.post("/v1/messages").mock(side_effect=lambda request: sse_response(wire))
    got: list[ChatCompletionChunk] = []
    with pytest.raises(UpstreamUnavailable) as info:
        async with provider.stream(chat_request(stream=True), context()) as chunks:
            async for c in chunks:
                got.append(c)
    assert [c.choices[0].delta.content for c in got] == ["", "Hel", "lo"]
    assert info.value.reason == Reason.STREAM_CUT
    assert info.value.retryable


async def test_stream_ending_after_the_stop_reason_still_reports_usage(
    router: respx.Router, provider: AnthropicProvider
) -> None:
    wire = events(message_start(), text_delta("Hi"), message_delta("max_tokens", output_tokens=9))
    router.post("/v1/messages").mock(side_effect=lambda request: sse_response(wire))
    chunks = as_sdk_chunks(await collect(provider, chat_request(stream=True)))
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 9


async def test_message_stop_without_a_stop_reason_still_finishes(
    router: respx.Router, provider: AnthropicProvider
) -> None:
    wire = events(message_start(), text_delta("Hi"), MESSAGE_STOP)
    router.post("/v1/messages").mock(side_effect=lambda request: sse_response(wire))
    chunks = as_sdk_chunks(await collect(provider, chat_request(stream=True)))
    assert [c.choices[0].finish_reason for c in chunks if c.choices] == [None, None, "stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None


@pytest.mark.parametrize(
    ("error", "kind", "status"),
    [
        ({"type": "overloaded_error", "message": "Overloaded"}, UpstreamUnavailable, 502),
        ({"type": "api_error", "message": "Internal server error"}, UpstreamUnavailable, 502),
        ({"type": "rate_limit_error", "message": "Rate limited"}, UpstreamRateLimited, 429),
        ({"type": "authentication_error", "message": "invalid x-api-key"}, UpstreamAuthFailed, 502),
        ({"type": "timeout_error", "message": "Request timed out"}, UpstreamTimeout, 504),
        ({"type": "something_new", "message": "?"}, UpstreamUnavailable, 502),
        ({}, UpstreamUnavailable, 502),
    ],
)
async def test_error_event_mid_stream(
    router: respx.Router,
    provider: AnthropicProvider,
    error: dict[str, Any],
    kind: type[Exception],
    status: int,
) -> None:
    wire = events(message_start(), text_delta("Hel"), {"type": "error", "error": error})
    router.post("/v1/messages").mock(side_effect=lambda request: sse_response(wire))
    got: list[ChatCompletionChunk] = []
    with pytest.raises(kind) as info:
        async with provider.stream(chat_request(stream=True), context()) as chunks:
            async for c in chunks:
                got.append(c)
    assert len(got) == 2
    assert info.value.status == status  # type: ignore[attr-defined]
    assert info.value.reason == Reason.ERROR_EVENT  # type: ignore[attr-defined]


async def test_recorded_overloaded_stream(
    router: respx.Router, provider: AnthropicProvider
) -> None:
    reply(router, "stream_error.sse")
    with pytest.raises(UpstreamUnavailable) as info:
        await collect(provider, chat_request(stream=True))
    assert info.value.retryable
    assert info.value.message == "the upstream reported an error mid-answer (overloaded_error)"


async def test_a_refusal_event_is_visible_and_redacted(
    router: respx.Router, provider: AnthropicProvider
) -> None:
    error = {
        "type": "invalid_request_error",
        "message": f"Output blocked by content filtering policy ({SECRET})",
    }
    wire = events(message_start(), {"type": "error", "error": error})
    router.post("/v1/messages").mock(side_effect=lambda request: sse_response(wire))
    with pytest.raises(UpstreamRejected) as info:
        await collect(provider, chat_request(stream=True))
    assert info.value.status == 400
    assert info.value.to_dict() == {
        "message": "Output blocked by content filtering policy ([redacted])",
        "type": "invalid_request_error",
        "param": None,
        "code": "content_filter",
    }


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[1, 2]",
        b'{"type": "content_block_delta", "index": 0}',
        b'{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta"}}',
        b'{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": 5}}',
        b'{"type": "message_start", "message": {}}',
        b'{"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use"}}',
    ],
)
async def test_malformed_event(
    router: respx.Router, provider: AnthropicProvider, data: bytes
) -> None:
    wire = events(message_start()) + b"event: x\ndata: " + data + b"\n\n"
    router.post("/v1/messages").mock(side_effect=lambda request: sse_response(wire))
    with pytest.raises(UpstreamUnavailable) as info:
        await collect(provider, chat_request(stream=True))
    assert info.value.reason == Reason.MALFORMED


async def test_idle_stream_times_out(router: respx.Router, provider: AnthropicProvider) -> None:
    wire = fixture("stream_text.sse")
    router.post("/v1/messages").mock(
        side_effect=lambda request: httpx.Response(200, stream=Body(pieces(wire, 200), delay=0.3))
    )
    with pytest.raises(UpstreamTimeout):
        await collect(provider, chat_request(stream=True), context({"idle": 0.1, "first_token": 1}))
