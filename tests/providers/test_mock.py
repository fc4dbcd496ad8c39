"""gateway/providers/mock.py: deterministic answers, tool calls, usage, embeddings and
scripted faults."""

from __future__ import annotations

import base64
import datetime
import enum
import json
import re
import struct
import time
from typing import Any

import openai
import openai.types.chat as openai_types
import pydantic
import pytest

from gateway.config import Deployment, ProviderConfig
from gateway.errors import (
    InvalidRequest,
    UpstreamAuthFailed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.providers.base import CallContext
from gateway.providers.mock import MockProvider
from gateway.schemas.openai import ChatCompletionChunk, ChatCompletionRequest, EmbeddingRequest


@pytest.fixture
def provider() -> MockProvider:
    return MockProvider("demo", ProviderConfig(type="mock"))


CTX = CallContext(request_id="req-1", deployment=Deployment(provider="demo", model="mock-chat"))


def chat(prompt: str = "Say hello", **fields: Any) -> ChatCompletionRequest:
    body = {"model": "mock-chat", "messages": [{"role": "user", "content": prompt}], **fields}
    return ChatCompletionRequest.model_validate_json(json.dumps(body))


async def stream_all(
    provider: MockProvider, request: ChatCompletionRequest, context: CallContext | None = None
) -> list[ChatCompletionChunk]:
    async with provider.stream(request, context or CTX) as chunks:
        return [c async for c in chunks]


def text_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def test_same_prompt_same_text(provider: MockProvider) -> None:
    a = await provider.chat(chat("What is the capital of France?"), CTX)
    b = await provider.chat(chat("What is the capital of France?"), CTX)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].message.content
    assert a.model == "mock-chat"


async def test_different_prompt_different_text(provider: MockProvider) -> None:
    a = await provider.chat(chat("What is the capital of France?"), CTX)
    b = await provider.chat(chat("What is the capital of Spain?"), CTX)
    assert a.choices[0].message.content != b.choices[0].message.content


async def test_stream_says_what_chat_says(provider: MockProvider) -> None:
    request = chat("Tell me a story")
    answer = await provider.chat(request, CTX)
    chunks = await stream_all(provider, request)
    assert text_of(chunks) == answer.choices[0].message.content
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"


async def test_default_answer_is_twelve_tokens(provider: MockProvider) -> None:
    chunks = await stream_all(provider, chat())
    # 12 content chunks, one finish chunk, one usage-only chunk.
    assert len(chunks) == 14
    assert [c.choices[0].finish_reason for c in chunks[:13]] == [None] * 12 + ["stop"]
    assert chunks[12].choices[0].delta.content is None
    assert chunks[13].choices == []
    assert chunks[13].usage is not None
    assert chunks[13].usage.completion_tokens == 12


async def test_chunks_sets_the_length(provider: MockProvider) -> None:
    chunks = await stream_all(provider, chat(mock={"chunks": 5}))
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) == 5
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert len(text_of(chunks).split()) == 5


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_cuts_with_length(provider: MockProvider, field: str) -> None:
    request = chat(**{field: 3})
    chunks = await stream_all(provider, request)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 3
    assert chunks[-2].choices[0].finish_reason == "length"
    answer = await provider.chat(request, CTX)
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 3
    assert len(answer.choices[0].message.content.split()) == 3


async def test_max_tokens_above_chunks_stops_normally(provider: MockProvider) -> None:
    answer = await provider.chat(chat(max_tokens=50, mock={"chunks": 4}), CTX)
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 4


async def test_usage_matches_the_text(provider: MockProvider) -> None:
    answer = await provider.chat(chat("hello world", mock={"chunks": 7}), CTX)
    usage = answer.usage
    assert usage is not None
    assert usage.completion_tokens == len(answer.choices[0].message.content.split()) == 7
    # About four bytes a token ("hello world" is 11 bytes -> 3) plus 3 per message.
    assert usage.prompt_tokens == 3 + 3
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    longer = await provider.chat(chat("hello world " * 40), CTX)
    assert longer.usage is not None
    assert longer.usage.prompt_tokens > usage.prompt_tokens


async def test_stream_usage_equals_chat_usage(provider: MockProvider) -> None:
    request = chat("count me", mock={"chunks": 9})
    answer = await provider.chat(request, CTX)
    chunks = await stream_all(provider, request)
    assert chunks[-1].usage == answer.usage


async def test_embeddings_float(provider: MockProvider) -> None:
    request = EmbeddingRequest(model="mock-embedding", input=["a", "b"], dimensions=8)
    answer = await provider.embed(request, CTX)
    assert [d.index for d in answer.data] == [0, 1]
    assert all(isinstance(d.embedding, list) and len(d.embedding) == 8 for d in answer.data)
    assert answer.data[0].embedding != answer.data[1].embedding
    again = await provider.embed(request, CTX)
    assert again.data[0].embedding == answer.data[0].embedding
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == 2


async def test_embeddings_bounded_in_numbers_made(provider: MockProvider) -> None:
    # 2,048 inputs at 16,384 dimensions is within the API's bounds; the mock, which
    # answers the demo key, makes at most MAX_EMBEDDING_NUMBERS numbers an answer.
    inputs = ["x"] * 2_048
    with pytest.raises(InvalidRequest) as refused:
        await provider.embed(EmbeddingRequest(model="m", input=inputs, dimensions=16_384), CTX)
    assert refused.value.param == "dimensions"
    answer = await provider.embed(EmbeddingRequest(model="m", input=inputs, dimensions=128), CTX)
    assert len(answer.data) == 2_048


async def test_embeddings_base64_decode_to_the_floats(provider: MockProvider) -> None:
    floats = await provider.embed(EmbeddingRequest(model="m", input="hello"), CTX)
    packed = await provider.embed(
        EmbeddingRequest(model="m", input="hello", encoding_format="base64"), CTX
    )
    vector = floats.data[0].embedding
    encoded = packed.data[0].embedding
    assert isinstance(vector, list)
    assert len(vector) == 16
    assert isinstance(encoded, str)
    raw = base64.b64decode(encoded)
    assert len(raw) == 4 * len(vector)
    assert list(struct.unpack(f"<{len(vector)}f", raw)) == pytest.approx(vector, rel=1e-6)


@pytest.mark.parametrize(
    ("script", "param", "message"),
    [
        ({"chunks": 0}, "mock.chunks", "mock.chunks: Input should be greater than or equal to 1"),
        ({"chunkz": 3}, "mock.chunkz", "mock.chunkz: Extra inputs are not permitted"),
        (
            {"status": 200},
            "mock.status",
            "mock.status: Input should be greater than or equal to 400",
        ),
        (
            {"ttft_ms": -1},
            "mock.ttft_ms",
            "mock.ttft_ms: Input should be greater than or equal to 0",
        ),
        (
            {"ttft_ms": 600_001},
            "mock.ttft_ms",
            "mock.ttft_ms: Input should be less than or equal to 600000",
        ),
        (
            {"delay_ms": 1e12},
            "mock.delay_ms",
            "mock.delay_ms: Input should be less than or equal to 600000",
        ),
        (
            {"delay_ms": float("inf")},
            "mock.delay_ms",
            "mock.delay_ms: Input should be a finite number",
        ),
        (
            {"ttft_ms": float("nan")},
            "mock.ttft_ms",
            "mock.ttft_ms: Input should be a finite number",
        ),
        (
            {"tokens_per_s": 1e-9},
            "mock.tokens_per_s",
            "mock.tokens_per_s: Input should be greater than or equal to 0.1",
        ),
        (
            {"chunks": 100_001},
            "mock.chunks",
            "mock.chunks: Input should be less than or equal to 100000",
        ),
        (
            {"status": 429, "retry_after": float("inf")},
            "mock.retry_after",
            "mock.retry_after: Input should be a finite number",
        ),
        (
            {"status": 429, "retry_after": 3601},
            "mock.retry_after",
            "mock.retry_after: Input should be less than or equal to 3600",
        ),
        (
            {"chunks": 100_000, "tokens_per_s": 100},
            "mock",
            "mock: the scripted answer would take 1,000 s; a script may take at most 600 s",
        ),
        (
            {"delay_ms": 400_000, "ttft_ms": 400_000},
            "mock",
            "mock: the scripted answer would take 800 s; a script may take at most 600 s",
        ),
        (
            {"cut_after": 10**30},
            "mock.cut_after",
            "mock.cut_after: Input should be less than or equal to 100002",
        ),
        (
            {"models": {"bad-b": {"status": 200}}},
            "mock.models.bad-b.status",
            "mock.models.bad-b.status: Input should be greater than or equal to 400",
        ),
        (
            {"models": {"a": {"models": {}}}},
            "mock.models.a.models",
            "mock.models.a.models: Extra inputs are not permitted",
        ),
        (
            {"models": {f"m{i}": {} for i in range(17)}},
            "mock.models",
            "mock.models: Dictionary should have at most 16 items after validation, not more",
        ),
        (
            {"models": {"x" * 257: {"status": 200}}},
            "mock.models",
            "mock.models: String should have at most 256 characters (a model name)",
        ),
        (
            {"models": {"": {}}},
            "mock.models",
            "mock.models: String should have at least 1 character (a model name)",
        ),
        (
            {"models": ["slow-a"]},
            "mock.models",
            "mock.models: Input should be a valid dictionary",
        ),
        (  # the entry's knobs over the top-level ones (100,000 chunks at 100/s), refused
            # though this request is for another model
            {"tokens_per_s": 100, "models": {"slow-a": {"chunks": 100_000}}},
            "mock.models.slow-a",
            "mock.models.slow-a: the scripted answer would take 1,000 s; "
            "a script may take at most 600 s",
        ),
    ],
)
@pytest.mark.parametrize("call", ["chat", "stream", "embed"])
async def test_bad_script_is_invalid_request(
    provider: MockProvider, script: dict[str, Any], param: str, message: str, call: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        if call == "chat":
            await provider.chat(chat(mock=script), CTX)
        elif call == "stream":
            await stream_all(provider, chat(mock=script))
        else:
            request = EmbeddingRequest.model_validate({"model": "m", "input": "x", "mock": script})
            await provider.embed(request, CTX)
    assert info.value.param == param
    assert info.value.message == message
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("script", "kind", "status", "retry_after"),
    [
        ({"status": 500}, UpstreamUnavailable, 502, None),
        ({"status": 503}, UpstreamUnavailable, 502, None),
        ({"status": 401}, UpstreamAuthFailed, 502, None),
        ({"status": 408}, UpstreamTimeout, 504, None),
        ({"status": 429, "retry_after": 3}, UpstreamRateLimited, 429, 3.0),
        ({"status": 422, "message": "bad temperature"}, UpstreamRejected, 400, None),
    ],
)
@pytest.mark.parametrize("call", ["chat", "stream", "embed"])
async def test_scripted_status_maps_like_an_upstream(
    provider: MockProvider,
    script: dict[str, Any],
    kind: type[Exception],
    status: int,
    retry_after: float | None,
    call: str,
) -> None:
    with pytest.raises(kind) as info:
        if call == "chat":
            await provider.chat(chat(mock=script), CTX)
        elif call == "stream":
            async with provider.stream(chat(mock=script), CTX):
                pytest.fail("the stream must fail on entry")
        else:
            request = EmbeddingRequest.model_validate({"model": "m", "input": "x", "mock": script})
            await provider.embed(request, CTX)
    error = info.value
    assert type(error) is kind
    assert error.status == status  # type: ignore[attr-defined]
    assert error.retry_after == retry_after  # type: ignore[attr-defined]
    if kind is UpstreamRejected:
        assert error.message == "bad temperature"  # type: ignore[attr-defined]
    if kind is UpstreamUnavailable:  # a 5xx: the gateway's words, not the upstream's
        code = script["status"]
        assert error.message == f"the upstream failed with status {code}"  # type: ignore[attr-defined]
    assert error.reason == "upstream_status"  # type: ignore[attr-defined]
    assert error.upstream_status == script["status"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("field", "n", "message"),
    [
        ("cut_after", 0, "the upstream closed the connection mid-answer (mock fault)"),
        ("cut_after", 3, "the upstream closed the connection mid-answer (mock fault)"),
        ("malformed_after", 2, "the upstream sent a malformed chunk (mock fault)"),
        ("malformed_after", 13, "the upstream sent a malformed chunk (mock fault)"),
    ],
)
async def test_stream_faults_after_exactly_n_chunks(
    provider: MockProvider, field: str, n: int, message: str
) -> None:
    got: list[ChatCompletionChunk] = []
    with pytest.raises(UpstreamUnavailable) as info:
        async with provider.stream(chat(mock={field: n}), CTX) as chunks:
            async for c in chunks:
                got.append(c)
    assert len(got) == n
    assert info.value.message == message
    assert info.value.reason == ("stream_cut" if field == "cut_after" else "malformed")


async def test_earliest_fault_wins(provider: MockProvider) -> None:
    got: list[ChatCompletionChunk] = []
    with pytest.raises(UpstreamUnavailable) as info:
        async with provider.stream(chat(mock={"cut_after": 5, "malformed_after": 2}), CTX) as s:
            async for c in s:
                got.append(c)
    assert len(got) == 2
    assert "malformed" in info.value.message


@pytest.mark.parametrize("field", ["cut_after", "malformed_after"])
async def test_stream_faults_fail_a_chat(provider: MockProvider, field: str) -> None:
    with pytest.raises(UpstreamUnavailable):
        await provider.chat(chat(mock={field: 3}), CTX)


# ---------------------------------------------------------------- per-model scripts


def ctx(model: str) -> CallContext:
    """A call to the deployment whose upstream model is ``model``."""
    return CallContext(request_id="req-1", deployment=Deployment(provider="demo", model=model))


ROUTED = {"chunks": 3, "models": {"slow-a": {"chunks": 5}, "bad-b": {"status": 500}}}


async def test_a_model_entry_applies_to_its_model_only(provider: MockProvider) -> None:
    a = await provider.chat(chat(mock=ROUTED), ctx("slow-a"))
    assert a.usage.completion_tokens == 5
    assert a.model == "slow-a"
    other = await provider.chat(chat(mock=ROUTED), ctx("good-c"))
    assert other.usage.completion_tokens == 3  # the top-level knobs
    with pytest.raises(UpstreamUnavailable) as info:
        await provider.chat(chat(mock=ROUTED), ctx("bad-b"))
    assert info.value.upstream_status == 500


async def test_a_model_entry_applies_to_streams_and_embeddings(provider: MockProvider) -> None:
    chunks = await stream_all(provider, chat(mock=ROUTED, stream=True), ctx("slow-a"))
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 5
    with pytest.raises(UpstreamUnavailable):
        async with provider.stream(chat(mock=ROUTED, stream=True), ctx("bad-b")):
            pytest.fail("the stream must fail on entry")
    embedding = EmbeddingRequest.model_validate({"model": "m", "input": "x", "mock": ROUTED})
    assert len((await provider.embed(embedding, ctx("good-c"))).data) == 1
    with pytest.raises(UpstreamUnavailable):
        await provider.embed(embedding, ctx("bad-b"))


async def test_the_deployment_model_picks_the_entry_not_the_requested_name(
    provider: MockProvider,
) -> None:
    """In-process the request keeps the name the client asked for; the upstream model
    is the deployment's, as ``gateway mock-upstream`` receives it."""
    request = chat(mock={"models": {"mock-chat": {"status": 500}}})
    assert request.model == "mock-chat"
    answer = await provider.chat(request, ctx("bad-b"))
    assert answer.choices[0].message.content


async def test_an_entry_keeps_the_knobs_it_does_not_set(provider: MockProvider) -> None:
    script = {"chunks": 4, "models": {"cut-a": {"cut_after": 2}}}
    got: list[ChatCompletionChunk] = []
    with pytest.raises(UpstreamUnavailable) as info:
        async with provider.stream(chat(mock=script), ctx("cut-a")) as chunks:
            async for c in chunks:
                got.append(c)
    assert info.value.reason == "stream_cut"
    assert len(got) == 2
    whole = await stream_all(provider, chat(mock=script), ctx("other"))
    assert sum(1 for c in whole if c.choices and c.choices[0].delta.content) == 4
    paced = await provider.chat(
        chat(mock={"chunks": 4, "models": {"a": {"tokens_per_s": 1000}}}), ctx("a")
    )
    assert paced.usage.completion_tokens == 4  # the top-level chunks


async def test_an_entry_setting_null_clears_the_top_level_knob(provider: MockProvider) -> None:
    script = {"status": 503, "models": {"good-a": {"status": None}}}
    answer = await provider.chat(chat(mock=script), ctx("good-a"))
    assert answer.choices[0].finish_reason == "stop"
    with pytest.raises(UpstreamUnavailable) as info:
        await provider.chat(chat(mock=script), ctx("other"))
    assert info.value.upstream_status == 503


# ---------------------------------------------------------------- tool calls

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
                "detail": {"type": "number"},
                "alerts": {"type": "boolean"},
                "where": {"type": "object"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "optional_note": {"type": "string"},
            },
            "required": ["city", "unit", "days", "detail", "alerts", "where", "tags"],
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time"}}  # no parameters at all
TOOLS = [WEATHER, CLOCK]


def tools_chat(prompt: str = "What is the weather in Paris?", **fields: Any):
    return chat(prompt, tools=TOOLS, **fields)


def reassembled(chunks: list[ChatCompletionChunk]) -> dict[int, dict[str, Any]]:
    """Tool calls put together from their deltas, as a client does: by index."""
    calls: dict[int, dict[str, Any]] = {}
    for c in chunks:
        for delta_call in (
            (c.choices[0].delta.model_extra or {}).get("tool_calls", []) if c.choices else []
        ):
            call = calls.setdefault(delta_call["index"], {"arguments": ""})
            for key in ("id", "type"):
                if key in delta_call:
                    call[key] = delta_call[key]
            function = delta_call.get("function", {})
            if "name" in function:
                call["name"] = function["name"]
            call["arguments"] += function.get("arguments", "")
    return calls


def sdk_completion(answer) -> openai_types.ChatCompletion:
    return openai_types.ChatCompletion.model_validate_json(
        answer.model_dump_json(exclude_unset=True)
    )


async def test_required_tool_choice_calls_the_first_tool(provider: MockProvider) -> None:
    answer = sdk_completion(await provider.chat(tools_chat(tool_choice="required"), CTX))
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert re.fullmatch(r"call_[0-9a-f]{24}", call.id)
    assert call.type == "function"
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert arguments == {
        "city": arguments["city"],
        "unit": "celsius",
        "days": 1,
        "detail": 1,
        "alerts": True,
        "where": {},
        "tags": [],
    }
    assert isinstance(arguments["city"], str)
    assert arguments["city"]
    assert answer.usage is not None
    assert answer.usage.completion_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


async def test_tool_calls_are_deterministic(provider: MockProvider) -> None:
    a = await provider.chat(tools_chat(tool_choice="required"), CTX)
    b = await provider.chat(tools_chat(tool_choice="required"), CTX)
    other = await provider.chat(tools_chat("And in Rome?", tool_choice="required"), CTX)
    calls = [x.choices[0].message.model_extra["tool_calls"] for x in (a, b, other)]
    assert calls[0] == calls[1]
    assert calls[0][0]["id"] != calls[2][0]["id"]


async def test_named_function_is_the_one_called(provider: MockProvider) -> None:
    choice = {"type": "function", "function": {"name": "get_time"}}
    answer = sdk_completion(await provider.chat(tools_chat(tool_choice=choice), CTX))
    [call] = answer.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    assert call.function.arguments == "{}"


async def test_named_function_not_among_the_tools_is_refused(provider: MockProvider) -> None:
    choice = {"type": "function", "function": {"name": "launch"}}
    with pytest.raises(InvalidRequest) as info:
        await provider.chat(tools_chat(tool_choice=choice), CTX)
    assert info.value.param == "tool_choice.function.name"


async def test_allowed_tools_in_required_mode_calls_the_first_allowed(
    provider: MockProvider,
) -> None:
    allowed = {
        "mode": "required",
        "tools": [{"type": "function", "function": {"name": "get_time"}}],
    }
    choice = {"type": "allowed_tools", "allowed_tools": allowed}
    answer = sdk_completion(await provider.chat(tools_chat(tool_choice=choice), CTX))
    assert [c.function.name for c in answer.choices[0].message.tool_calls] == ["get_time"]
    auto = {"type": "allowed_tools", "allowed_tools": {**allowed, "mode": "auto"}}
    answer = sdk_completion(await provider.chat(tools_chat(tool_choice=auto), CTX))
    assert answer.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("tool_choice", [None, "auto", "none"])
async def test_tools_without_a_demand_get_text(provider: MockProvider, tool_choice) -> None:
    fields = {} if tool_choice is None else {"tool_choice": tool_choice}
    answer = await provider.chat(tools_chat(**fields), CTX)
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content
    assert "tool_calls" not in (answer.choices[0].message.model_extra or {})


async def test_script_asks_for_n_calls_to_the_tools_in_order(provider: MockProvider) -> None:
    answer = sdk_completion(await provider.chat(tools_chat(mock={"tool_calls": 3}), CTX))
    calls = answer.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time", "get_weather"]
    assert len({c.id for c in calls}) == 3
    assert answer.choices[0].finish_reason == "tool_calls"


async def test_script_with_a_named_function_calls_it_n_times(provider: MockProvider) -> None:
    choice = {"type": "function", "function": {"name": "get_time"}}
    request = tools_chat(tool_choice=choice, mock={"tool_calls": 2})
    answer = sdk_completion(await provider.chat(request, CTX))
    assert [c.function.name for c in answer.choices[0].message.tool_calls] == ["get_time"] * 2


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"mock": {"tool_calls": 1}}, "mock.tool_calls"),
        (
            {
                "tools": [{"type": "custom", "custom": {"name": "grep"}}],
                "mock": {"tool_calls": 1},
            },
            "mock.tool_calls",
        ),
        (
            {"tools": [{"type": "custom", "custom": {"name": "grep"}}], "tool_choice": "required"},
            "tool_choice",
        ),
    ],
)
@pytest.mark.parametrize("call", ["chat", "stream"])
async def test_calls_without_function_tools_are_refused(
    provider: MockProvider, fields: dict[str, Any], param: str, call: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        if call == "chat":
            await provider.chat(chat(**fields), CTX)
        else:
            async with provider.stream(chat(**fields), CTX):
                pytest.fail("the stream must fail on entry")
    assert info.value.param == param


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ({"tool_calls": 0}, "mock.tool_calls: Input should be greater than or equal to 1"),
        ({"tool_calls": 17}, "mock.tool_calls: Input should be less than or equal to 16"),
        (
            {"tool_calls": 1.5},
            "mock.tool_calls: Input should be a valid integer, got a number with a fractional part",
        ),
    ],
)
async def test_tool_calls_script_is_bounded(
    provider: MockProvider, script: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        await provider.chat(tools_chat(mock=script), CTX)
    assert info.value.param == "mock.tool_calls"
    assert info.value.message == message


def conversation(answer) -> list[dict[str, Any]]:
    """The first turn, the assistant's tool calls and a result for each."""
    calls = answer.choices[0].message.model_extra["tool_calls"]
    return [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        *({"role": "tool", "tool_call_id": c["id"], "content": '{"temp": 21}'} for c in calls),
    ]


@pytest.mark.parametrize(
    "fields", [{"tool_choice": "required"}, {"mock": {"tool_calls": 2}}], ids=["choice", "script"]
)
async def test_a_tool_result_is_answered_with_text(
    provider: MockProvider, fields: dict[str, Any]
) -> None:
    first = await provider.chat(tools_chat(**fields), CTX)
    assert first.choices[0].finish_reason == "tool_calls"
    body = {"model": "mock-chat", "messages": conversation(first), "tools": TOOLS, **fields}
    second_request = ChatCompletionRequest.model_validate_json(json.dumps(body))
    second = sdk_completion(await provider.chat(second_request, CTX))
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content
    assert second.choices[0].message.tool_calls is None
    chunks = await stream_all(provider, second_request)
    assert text_of(chunks) == second.choices[0].message.content


async def test_streamed_tool_calls_in_openai_shape(provider: MockProvider) -> None:
    request = tools_chat(mock={"tool_calls": 2})
    answer = await provider.chat(request, CTX)
    chunks = await stream_all(provider, request)
    for c in chunks:  # each chunk is one the SDK reads
        openai_types.ChatCompletionChunk.model_validate_json(c.model_dump_json(exclude_unset=True))
    deltas = [c.choices[0].delta.model_extra["tool_calls"] for c in chunks[:-2]]
    assert all(len(d) == 1 for d in deltas)
    heads = [i for i, d in enumerate(deltas) if "id" in d[0]]
    assert len(heads) == 2
    for n, start in enumerate(heads):
        head = deltas[start][0]
        assert head == {
            "index": n,
            "id": head["id"],
            "type": "function",
            "function": {"name": head["function"]["name"], "arguments": ""},
        }
        end = heads[n + 1] if n + 1 < len(heads) else len(deltas)
        pieces = deltas[start + 1 : end]
        assert 2 <= len(pieces) <= 3
        assert all(p[0].keys() == {"index", "function"} and p[0]["index"] == n for p in pieces)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-2].choices[0].delta.model_dump(exclude_unset=True) == {}
    assert chunks[-1].choices == []
    assert chunks[-1].usage == answer.usage
    expected = answer.choices[0].message.model_extra["tool_calls"]
    got = reassembled(chunks)
    assert [
        {
            "id": c["id"],
            "type": "function",
            "function": {"name": c["name"], "arguments": c["arguments"]},
        }
        for _, c in sorted(got.items())
    ] == expected
    for call in got.values():
        assert isinstance(json.loads(call["arguments"]), dict)


async def test_tool_call_stream_is_paced(provider: MockProvider) -> None:
    # One call to get_weather: its name and three pieces, 0.05 s apart after the first.
    request = tools_chat(tool_choice="required", mock={"tokens_per_s": 20, "ttft_ms": 50})
    started = time.monotonic()
    arrivals = []
    async with provider.stream(request, CTX) as chunks:
        async for _ in chunks:
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 4 + 2
    assert arrivals[0] >= 0.045
    assert arrivals[3] - arrivals[0] >= 0.14
    started = time.monotonic()
    await provider.chat(request, CTX)
    assert time.monotonic() - started >= 0.19


@pytest.mark.parametrize("n", [0, 2, 5])
async def test_tool_call_stream_cut_after_n_chunks(provider: MockProvider, n: int) -> None:
    got: list[ChatCompletionChunk] = []
    with pytest.raises(UpstreamUnavailable):
        async with provider.stream(tools_chat(mock={"tool_calls": 2, "cut_after": n}), CTX) as s:
            async for c in s:
                got.append(c)
    assert len(got) == n


async def test_tool_call_chat_fails_on_a_fault_within_it(provider: MockProvider) -> None:
    with pytest.raises(UpstreamUnavailable):
        await provider.chat(tools_chat(tool_choice="required", mock={"malformed_after": 5}), CTX)
    # A fault past the answer (4 chunks, finish, usage) never fires.
    answer = await provider.chat(tools_chat(tool_choice="required", mock={"cut_after": 6}), CTX)
    assert answer.choices[0].finish_reason == "tool_calls"


async def test_max_tokens_does_not_cut_tool_calls(provider: MockProvider) -> None:
    answer = sdk_completion(
        await provider.chat(tools_chat(tool_choice="required", max_tokens=1), CTX)
    )
    assert answer.choices[0].finish_reason == "tool_calls"
    json.loads(answer.choices[0].message.tool_calls[0].function.arguments)


class Anything:
    """Equal to any value ``check`` accepts."""

    def __init__(self, check: Any) -> None:
        self.check = check

    def __eq__(self, other: object) -> bool:
        return bool(self.check(other))


# The arguments a schema gets: its required properties, filled by type.
@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        (None, {}),
        ({"type": "object", "properties": {}}, {}),
        ({"type": "object", "properties": {"a": {"type": "string"}}}, {}),  # not required
        (
            {
                "type": "object",
                "properties": {"n": {"type": "integer", "minimum": 5}},
                "required": ["n"],
            },
            {"n": 5},
        ),
        (
            {
                "type": "object",
                "properties": {
                    "low": {"type": "number", "maximum": 0.5},
                    "x": {"type": "integer", "exclusiveMinimum": 1},
                },
                "required": ["low", "x"],
            },
            {"low": 0.5, "x": 2},
        ),
        (
            {"type": "object", "properties": {"k": {"const": "fixed"}}, "required": ["k"]},
            {"k": "fixed"},
        ),
        (
            {"type": "object", "properties": {"e": {"enum": [3, "three"]}}, "required": ["e"]},
            {"e": 3},
        ),
        (
            {
                "type": "object",
                "properties": {"m": {"type": ["null", "boolean"]}, "z": {"type": "null"}},
                "required": ["m", "z"],
            },
            {"m": True, "z": None},
        ),
        (
            {
                "type": "object",
                "properties": {"o": {"anyOf": [{"type": "null"}, {"type": "integer"}]}},
                "required": ["o"],
            },
            {"o": 1},
        ),
        (
            {
                "type": "object",
                "properties": {
                    "inner": {
                        "type": "object",
                        "properties": {"flag": {"type": "boolean"}, "skip": {"type": "string"}},
                        "required": ["flag"],
                    },
                    "list": {"type": "array", "items": {"type": "integer"}, "minItems": 2},
                },
                "required": ["inner", "list"],
            },
            {"inner": {"flag": True}, "list": [1, 1]},
        ),
        (
            {
                "allOf": [
                    {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                    {"properties": {"b": {"type": "boolean"}}, "required": ["b"]},
                ]
            },
            {"a": 1, "b": True},
        ),
        (
            {
                "type": "object",
                "properties": {"p": {"$ref": "#/$defs/Point"}},
                "required": ["p"],
                "$defs": {
                    "Point": {
                        "type": "object",
                        "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                        "required": ["x", "y"],
                    }
                },
            },
            {"p": {"x": 1, "y": 1}},
        ),
        (
            {
                "type": "object",
                "properties": {
                    "at": {"type": "string", "format": "date-time"},
                    "code": {"type": "string", "minLength": 12},
                },
                "required": ["at", "code"],
            },
            {"at": "2025-01-01T00:00:00Z", "code": Anything(lambda v: len(v) == 12)},
        ),
        ({"type": "string"}, {}),  # not an object: the arguments are still one
    ],
)
async def test_arguments_follow_the_schema(
    provider: MockProvider, parameters: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    tool = {"type": "function", "function": {"name": "f"}}
    if parameters is not None:
        tool["function"]["parameters"] = parameters
    answer = await provider.chat(chat(tools=[tool], tool_choice="required"), CTX)
    [call] = answer.choices[0].message.model_extra["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == expected


async def test_arguments_of_a_recursive_schema_are_bounded(provider: MockProvider) -> None:
    node = {
        "type": "object",
        "properties": {"left": {"$ref": "#/$defs/Node"}, "right": {"$ref": "#/$defs/Node"}},
        "required": ["left", "right"],
    }
    parameters = {"$ref": "#/$defs/Node", "$defs": {"Node": node}}
    tool = {"type": "function", "function": {"name": "tree", "parameters": parameters}}
    started = time.monotonic()
    answer = await provider.chat(chat(tools=[tool], tool_choice="required"), CTX)
    assert time.monotonic() - started < 1
    [call] = answer.choices[0].message.model_extra["tool_calls"]
    arguments = json.loads(call["function"]["arguments"])
    assert set(arguments) == {"left", "right"}
    assert len(call["function"]["arguments"]) < 100_000


async def test_arguments_validate_against_a_pydantic_tool(provider: MockProvider) -> None:
    """The SDK's own strict tool (nested models, enums, $defs) parses the arguments."""

    class Unit(enum.StrEnum):
        celsius = "celsius"
        fahrenheit = "fahrenheit"

    class Place(pydantic.BaseModel):
        city: str
        country: str | None
        lat: float

    class Forecast(pydantic.BaseModel):
        place: Place
        unit: Unit
        days: int
        hourly: bool
        extras: list[str]
        start: datetime.date

    tool = openai.pydantic_function_tool(Forecast)
    answer = await provider.chat(chat(tools=[tool], tool_choice="required"), CTX)
    [call] = answer.choices[0].message.model_extra["tool_calls"]
    parsed = Forecast.model_validate_json(call["function"]["arguments"])
    assert parsed.unit is Unit.celsius
    assert parsed.days == 1


async def test_a_scripted_reply_is_the_answer_word_by_word(provider: MockProvider) -> None:
    reply = "Hello <b>there</b>,\n  two words"
    answer = await provider.chat(chat(mock={"reply": reply}), CTX)
    assert answer.choices[0].message.content == reply
    assert answer.usage.completion_tokens == 4
    chunks = await stream_all(provider, chat(mock={"reply": reply, "chunks": 99}))
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert texts == ["Hello", " <b>there</b>,", "\n  two", " words"]
    capped = await provider.chat(chat(max_tokens=2, mock={"reply": reply}), CTX)
    assert capped.choices[0].message.content == "Hello <b>there</b>,"
    assert capped.choices[0].finish_reason == "length"
    per_model = chat(mock={"models": {"mock-chat": {"reply": "only here"}}})
    assert (await provider.chat(per_model, CTX)).choices[0].message.content == "only here"
    with pytest.raises(InvalidRequest) as refused:
        await provider.chat(chat(mock={"reply": ""}), CTX)
    assert refused.value.param == "mock.reply"
