"""gateway/providers/mock.py: deterministic answers, usage, embeddings and scripted faults."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

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
    provider: MockProvider, request: ChatCompletionRequest
) -> list[ChatCompletionChunk]:
    async with provider.stream(request, CTX) as chunks:
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
