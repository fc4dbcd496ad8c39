"""gateway/providers/openai.py, driven through a respx router injected as the transport.

respx's default patching does not reach the gateway's transport, so every test
hands ``httpx.MockTransport(router.async_handler)`` to ``build_upstream``, the
same seam the app uses. Streamed bodies are served as real byte streams, cut
at arbitrary places, the way a socket delivers them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from gateway.config import Deployment, ProviderConfig
from gateway.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.providers.base import CallContext
from gateway.providers.openai import OpenAIProvider
from gateway.schemas.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    EmbeddingRequest,
)
from gateway.transport import Upstream, build_upstream

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "openai"
BASE_URL = "https://upstream.test/v1"
SECRET = "sk-provider-secret-0123456789abcdef"
UPSTREAM_MODEL = "gpt-4o-mini-2024-07-18"


class Body(httpx.AsyncByteStream):
    """A response body that arrives in pieces, each after its delay."""

    def __init__(self, parts: Iterable[bytes], *, delay: float = 0.0, first: float = 0.0) -> None:
        self.parts = list(parts)
        self.delay, self.first = delay, first
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i, part in enumerate(self.parts):
            pause = self.first if i == 0 else self.delay
            if pause:
                await asyncio.sleep(pause)
            yield part

    async def aclose(self) -> None:
        self.closed = True


def pieces(data: bytes, size: int = 37) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def sse_response(data: bytes, **kwargs: Any) -> httpx.Response:
    return httpx.Response(
        200, headers={"content-type": "text/event-stream"}, stream=Body(pieces(data), **kwargs)
    )


def frames(*objects: Any, done: bool = True) -> bytes:
    out = b"".join(b"data: " + json.dumps(o).encode() + b"\n\n" for o in objects)
    return out + (b"data: [DONE]\n\n" if done else b"")


def chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1741569952,
        "model": UPSTREAM_MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(base_url=BASE_URL, assert_all_mocked=True)


@pytest.fixture
async def upstream(router: respx.Router) -> AsyncIterator[Upstream]:
    config = ProviderConfig(type="openai", base_url=BASE_URL, api_key=SECRET)
    upstream = build_upstream(config, transport=httpx.MockTransport(router.async_handler))
    yield upstream
    await upstream.aclose()


@pytest.fixture
def provider(upstream: Upstream) -> OpenAIProvider:
    config = ProviderConfig(
        type="openai", base_url=BASE_URL + "/", api_key=SECRET, headers={"OpenAI-Project": "p1"}
    )
    return OpenAIProvider("up", config, upstream)


def context(timeout: float | dict[str, float] = 5.0) -> CallContext:
    deployment = Deployment.model_validate(
        {"provider": "up", "model": UPSTREAM_MODEL, "timeout": timeout}
    )
    return CallContext(request_id="req-abc123", deployment=deployment)


def chat_request(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], **fields}
    return ChatCompletionRequest.model_validate_json(json.dumps(body))


async def collect(
    provider: OpenAIProvider, request: ChatCompletionRequest, ctx: CallContext
) -> list[ChatCompletionChunk]:
    async with provider.stream(request, ctx) as chunks:
        return [c async for c in chunks]


def sent_json(route: respx.Route) -> dict[str, Any]:
    return json.loads(route.calls.last.request.content)


# ---------------------------------------------------------------- requests


async def test_chat_forwards_unknown_fields_and_replaces_model(
    router: respx.Router, provider: OpenAIProvider
) -> None:
    route = router.post("/chat/completions").respond(
        200, content=(FIXTURES / "chat.json").read_bytes()
    )
    request = chat_request(
        mock={"status": 500, "chunks": 3},
        foo_bar=[1, 2],
        temperature=0.3,
        response_format={"type": "json_object"},
    )
    await provider.chat(request, context())
    assert route.call_count == 1
    assert sent_json(route) == {
        "model": UPSTREAM_MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "mock": {"status": 500, "chunks": 3},
        "foo_bar": [1, 2],
        "temperature": 0.3,
        "response_format": {"type": "json_object"},
        "stream": False,
    }


async def test_chat_headers(router: respx.Router, provider: OpenAIProvider) -> None:
    route = router.post("/chat/completions").respond(
        200, content=(FIXTURES / "chat.json").read_bytes()
    )
    await provider.chat(chat_request(), context())
    sent = route.calls.last.request
    assert sent.url == f"{BASE_URL}/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {SECRET}"
    assert sent.headers["x-request-id"] == "req-abc123"
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["openai-project"] == "p1"


async def test_provider_without_key_sends_no_authorization(
    router: respx.Router, upstream: Upstream
) -> None:
    route = router.post("/chat/completions").respond(
        200, content=(FIXTURES / "chat.json").read_bytes()
    )
    provider = OpenAIProvider("local", ProviderConfig(type="openai", base_url=BASE_URL), upstream)
    await provider.chat(chat_request(), context())
    assert "authorization" not in route.calls.last.request.headers


async def test_stream_forces_include_usage_and_keeps_other_options(
    router: respx.Router, provider: OpenAIProvider
) -> None:
    route = router.post("/chat/completions").mock(
        side_effect=lambda request: sse_response((FIXTURES / "chat_stream.sse").read_bytes())
    )
    request = chat_request(
        stream=True,
        stream_options={"include_usage": False, "include_obfuscation": False},
        foo_bar=[1, 2],
    )
    await collect(provider, request, context())
    assert sent_json(route) == {
        "model": UPSTREAM_MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
        "stream_options": {"include_usage": True, "include_obfuscation": False},
        "foo_bar": [1, 2],
    }
    headers = route.calls.last.request.headers
    assert headers["authorization"] == f"Bearer {SECRET}"
    assert headers["x-request-id"] == "req-abc123"


async def test_stream_without_stream_options_asks_for_usage(
    router: respx.Router, provider: OpenAIProvider
) -> None:
    route = router.post("/chat/completions").mock(
        side_effect=lambda request: sse_response((FIXTURES / "chat_stream.sse").read_bytes())
    )
    await collect(provider, chat_request(), context())
    body = sent_json(route)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


# ---------------------------------------------------------------- answers


async def test_chat_answer_is_parsed_with_extra_fields(
    router: respx.Router, provider: OpenAIProvider
) -> None:
    router.post("/chat/completions").respond(200, content=(FIXTURES / "chat.json").read_bytes())
    answer = await provider.chat(chat_request(), context())
    assert isinstance(answer, ChatCompletion)
    assert answer.id == "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"
    assert answer.model == UPSTREAM_MODEL
    assert answer.choices[0].message.content == "The capital of France is Paris."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (24, 8)
    dumped = json.loads(answer.model_dump_json(exclude_unset=True))
    assert dumped["system_fingerprint"] == "fp_06737a9306"
    assert dumped["choices"][0]["message"]["refusal"] is None
    assert dumped == json.loads((FIXTURES / "chat.json").read_bytes())


async def test_recorded_stream_yields_chunks_in_order(
    router: respx.Router, provider: OpenAIProvider
) -> None:
    router.post("/chat/completions").mock(
        side_effect=lambda request: sse_response((FIXTURES / "chat_stream.sse").read_bytes())
    )
    chunks = await collect(provider, chat_request(stream=True), context())
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert len(chunks) == 12
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello! How can I assist you today?"
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * 10 + ["stop"]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        19,
        10,
        29,
    )
    assert {c.id for c in chunks} == {"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT"}
    # Fields the gateway does not model are kept for the client.
    assert chunks[1].model_dump()["system_fingerprint"] == "fp_06737a9306"


async def test_recorded_stream_with_crlf_and_one_byte_reads(
    router: respx.Router, provider: OpenAIProvider
) -> None:
    wire = (FIXTURES / "chat_stream.sse").read_bytes().replace(b"\n", b"\r\n")
    router.post("/chat/completions").mock(
        side_effect=lambda request: httpx.Response(200, stream=Body(pieces(wire, 1)))
    )
    chunks = await collect(provider, chat_request(stream=True), context())
    assert len(chunks) == 12
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Hello! How can I assist you today?"
    )


async def test_stream_replays_an_in_memory_body(
    router: respx.Router, provider: OpenAIProvider
) -> None:
    # The plainest respx mock: the whole recorded body in memory. respx (and
    # httpx) have read such a body before the provider sees the response.
    router.post("/chat/completions").respond(
        200,
        content=(FIXTURES / "chat_stream.sse").read_bytes(),
        headers={"content-type": "text/event-stream"},
    )
    chunks = await collect(provider, chat_request(stream=True), context())
    assert len(chunks) == 12
    assert chunks[-1].usage is not None


async def test_stream_error_from_an_in_memory_body(
    router: respx.Router, provider: OpenAIProvider
) -> None:
    router.post("/chat/completions").respond(
        429, json=error_body("Rate limit reached", "requests"), headers={"retry-after": "2"}
    )
    with pytest.raises(UpstreamRateLimited) as info:
        await collect(provider, chat_request(stream=True), context())
    assert info.value.message == "the upstream is rate limiting the gateway (429)"
    assert info.value.retry_after == 2.0


async def test_stream_ending_after_finish_reason_without_done_is_complete(
    router: respx.Router, provider: OpenAIProvider
) -> None:
    wire = frames(chunk("Hi"), chunk(None, "stop"), done=False)
    router.post("/chat/completions").mock(side_effect=lambda request: sse_response(wire))
    chunks = await collect(provider, chat_request(stream=True), context())
    assert [c.choices[0].finish_reason for c in chunks] == [None, "stop"]


async def test_events_after_done_are_ignored(
    router: respx.Router, provider: OpenAIProvider
) -> None:
    wire = frames(chunk("Hi", "stop")) + b"data: not json at all\n\n"
    router.post("/chat/completions").mock(side_effect=lambda request: sse_response(wire))
    chunks = await collect(provider, chat_request(stream=True), context())
    assert len(chunks) == 1


async def test_embeddings(router: respx.Router, provider: OpenAIProvider) -> None:
    route = router.post("/embeddings").respond(
        200,
        json={
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 2, "total_tokens": 2},
        },
    )
    request = EmbeddingRequest.model_validate(
        {"model": "emb", "input": "hello", "dimensions": 2, "user": "u-1"}
    )
    answer = await provider.embed(request, context())
    assert answer.data[0].embedding == [0.1, -0.2]
    assert answer.usage.prompt_tokens == 2
    assert sent_json(route) == {
        "model": UPSTREAM_MODEL,
        "input": "hello",
        "dimensions": 2,
        "user": "u-1",
    }


# ---------------------------------------------------------------- upstream errors


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None):
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


@pytest.mark.parametrize("streaming", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        pytest.param(
            400,
            error_body(
                "This model's maximum context length is 128000 tokens.",
                "invalid_request_error",
                "context_length_exceeded",
                "messages",
            ),
            {},
            (
                UpstreamRejected,
                400,
                {
                    "message": "This model's maximum context length is 128000 tokens.",
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "context_length_exceeded",
                },
            ),
            id="400",
        ),
        pytest.param(
            404,
            error_body(
                "The model `gpt-9` does not exist", "invalid_request_error", "model_not_found"
            ),
            {},
            (
                UpstreamRejected,
                404,
                {
                    "message": "The model `gpt-9` does not exist",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "model_not_found",
                },
            ),
            id="404",
        ),
        pytest.param(
            422,
            {"error": {"message": "temperature: must be <= 2", "type": "BadRequestError"}},
            {},
            (
                UpstreamRejected,
                400,
                {
                    "message": "temperature: must be <= 2",
                    "type": "BadRequestError",
                    "param": None,
                    "code": None,
                },
            ),
            id="422",
        ),
        pytest.param(
            403,
            error_body("Project does not have access to model", "invalid_request_error"),
            {},
            (
                UpstreamAuthFailed,
                502,
                {
                    "message": "the upstream refused the gateway's credentials (403)",
                    "type": "api_error",
                    "param": None,
                    "code": "upstream_auth_failed",
                },
            ),
            id="403",
        ),
        pytest.param(
            429,
            error_body("Rate limit reached for gpt-4o-mini", "requests", "rate_limit_exceeded"),
            {"retry-after": "7"},
            (
                UpstreamRateLimited,
                429,
                {
                    "message": "the upstream is rate limiting the gateway (429)",
                    "type": "rate_limit_error",
                    "param": None,
                    "code": "upstream_rate_limited",
                },
            ),
            id="429",
        ),
        pytest.param(
            500,
            error_body("The server had an error while processing your request.", "server_error"),
            {},
            (
                UpstreamUnavailable,
                502,
                {
                    "message": "the upstream failed with status 500",
                    "type": "api_error",
                    "param": None,
                    "code": "upstream_error",
                },
            ),
            id="500",
        ),
        pytest.param(
            502,
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
            {"content-type": "text/html"},
            (
                UpstreamUnavailable,
                502,
                {
                    "message": "the upstream failed with status 502",
                    "type": "api_error",
                    "param": None,
                    "code": "upstream_error",
                },
            ),
            id="502-html",
        ),
        pytest.param(
            503,
            "",
            {},
            (
                UpstreamUnavailable,
                502,
                {
                    "message": "the upstream failed with status 503",
                    "type": "api_error",
                    "param": None,
                    "code": "upstream_error",
                },
            ),
            id="503-empty",
        ),
    ],
)
async def test_upstream_error_statuses(
    router: respx.Router,
    provider: OpenAIProvider,
    streaming: bool,
    status: int,
    body: Any,
    headers: dict[str, str],
    expected: tuple[type[UpstreamError], int, dict[str, Any]],
) -> None:
    data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    router.post("/chat/completions").mock(
        side_effect=lambda request: httpx.Response(
            status, headers=headers, stream=Body(pieces(data))
        )
    )
    kind, gateway_status, error_object = expected
    with pytest.raises(UpstreamError) as info:
        if streaming:
            await collect(provider, chat_request(stream=True), context())
        else:
            await provider.chat(chat_request(), context())
    assert type(info.value) is kind
    assert info.value.status == gateway_status
    assert info.value.to_dict() == error_object
    if status == 429:
        assert info.value.retry_after == 7.0
        assert info.value.response_headers() == {"retry-after": "7"}


async def test_retry_after_ms_wins(router: respx.Router, provider: OpenAIProvider) -> None:
    router.post("/chat/completions").respond(
        429,
        json=error_body("slow down", "requests"),
        headers={"retry-after-ms": "1500", "retry-after": "9"},
    )
    with pytest.raises(UpstreamRateLimited) as info:
        await provider.chat(chat_request(), context())
    assert info.value.retry_after == 1.5
    assert info.value.response_headers() == {"retry-after": "2"}


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failure_never_exposes_the_provider_key(
    router: respx.Router, provider: OpenAIProvider, status: int
) -> None:
    router.post("/chat/completions").respond(
        status,
        json=error_body(
            f"Incorrect API key provided: {SECRET}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            "invalid_api_key",
        ),
    )
    with pytest.raises(UpstreamAuthFailed) as info:
        await provider.chat(chat_request(), context())
    rendered = json.dumps(info.value.to_dict()) + str(info.value)
    assert SECRET not in rendered
    assert "Incorrect API key" not in rendered
    assert info.value.status == 502


async def test_rejection_message_with_the_provider_key_is_redacted(
    router: respx.Router, provider: OpenAIProvider
) -> None:
    router.post("/chat/completions").respond(
        400,
        json=error_body(
            f"Invalid header value 'Bearer {SECRET}' for organization",
            "invalid_request_error",
        ),
    )
    with pytest.raises(UpstreamRejected) as info:
        await provider.chat(chat_request(), context())
    assert info.value.message == "Invalid header value 'Bearer [redacted]' for organization"
    assert SECRET not in json.dumps(info.value.to_dict())


async def test_stream_ending_early_is_unavailable(
    router: respx.Router, provider: OpenAIProvider
) -> None:
    wire = frames(chunk("Hel"), chunk("lo"), done=False)
    router.post("/chat/completions").mock(side_effect=lambda request: sse_response(wire))
    got: list[ChatCompletionChunk] = []
    with pytest.raises(UpstreamUnavailable) as info:
        async with provider.stream(chat_request(stream=True), context()) as chunks:
            async for c in chunks:
                got.append(c)
    assert [c.choices[0].delta.content for c in got] == ["Hel", "lo"]
    assert info.value.message == "the upstream stream ended before it was complete"
    assert info.value.status == 502


async def test_error_event_mid_stream(router: respx.Router, provider: OpenAIProvider) -> None:
    wire = frames(
        chunk("Hel"),
        error_body(f"The server had an error ({SECRET})", "server_error"),
        done=False,
    )
    router.post("/chat/completions").mock(side_effect=lambda request: sse_response(wire))
    got: list[ChatCompletionChunk] = []
    with pytest.raises(UpstreamError) as info:
        async with provider.stream(chat_request(stream=True), context()) as chunks:
            async for c in chunks:
                got.append(c)
    assert len(got) == 1
    assert info.value.status == 502
    assert info.value.code == "upstream_error"
    assert info.value.message == "the upstream reported an error mid-answer"
    assert info.value.reason == "error_event"


@pytest.mark.parametrize(
    "bad",
    [
        b'data: {"id": "chatcmpl-1", "choices": [\n\n',
        b'data: {"id": "chatcmpl-1", "object": "chat.completion.chunk"}\n\n',
        b"data: <html>oops</html>\n\n",
    ],
    ids=["truncated-json", "missing-fields", "not-json"],
)
async def test_malformed_chunk_is_unavailable(
    router: respx.Router, provider: OpenAIProvider, bad: bytes
) -> None:
    wire = frames(chunk("Hi"), done=False) + bad + b"data: [DONE]\n\n"
    router.post("/chat/completions").mock(side_effect=lambda request: sse_response(wire))
    got: list[ChatCompletionChunk] = []
    with pytest.raises(UpstreamUnavailable) as info:
        async with provider.stream(chat_request(stream=True), context()) as chunks:
            async for c in chunks:
                got.append(c)
    assert len(got) == 1
    assert info.value.message == "the upstream sent a malformed answer (ValidationError)"


async def test_malformed_chat_answer_is_unavailable(
    router: respx.Router, provider: OpenAIProvider
) -> None:
    router.post("/chat/completions").respond(200, content=b'{"id": "chatcmpl-1", "choices": [')
    with pytest.raises(UpstreamUnavailable) as info:
        await provider.chat(chat_request(), context())
    assert info.value.message == "the upstream sent a malformed answer (ValidationError)"
    assert info.value.status == 502


@pytest.mark.parametrize("streaming", [False, True], ids=["chat", "stream"])
async def test_connect_error_is_unavailable(
    router: respx.Router, provider: OpenAIProvider, streaming: bool
) -> None:
    router.post("/chat/completions").mock(side_effect=httpx.ConnectError("Connection refused"))
    with pytest.raises(UpstreamUnavailable) as info:
        if streaming:
            await collect(provider, chat_request(stream=True), context())
        else:
            await provider.chat(chat_request(), context())
    assert info.value.message == "could not reach the upstream: connection refused"
    assert info.value.reason == "connect_refused"
    assert info.value.retryable


async def test_read_error_mid_stream_is_unavailable(
    router: respx.Router, provider: OpenAIProvider
) -> None:
    class Broken(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield frames(chunk("Hi"), done=False)
            raise httpx.RemoteProtocolError("peer closed connection")

    router.post("/chat/completions").mock(
        side_effect=lambda request: httpx.Response(200, stream=Broken())
    )
    got: list[ChatCompletionChunk] = []
    with pytest.raises(UpstreamUnavailable) as info:
        async with provider.stream(chat_request(stream=True), context()) as chunks:
            async for c in chunks:
                got.append(c)
    assert len(got) == 1
    assert info.value.message == "the upstream closed the connection mid-answer"
    assert info.value.reason == "stream_cut"


async def slow_answer(request: httpx.Request) -> httpx.Response:
    await asyncio.sleep(2)
    return httpx.Response(200, content=(FIXTURES / "chat.json").read_bytes())


@pytest.mark.parametrize("streaming", [False, True], ids=["chat", "stream"])
async def test_slow_first_byte_is_a_timeout(
    router: respx.Router, provider: OpenAIProvider, streaming: bool
) -> None:
    router.post("/chat/completions").mock(side_effect=slow_answer)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamTimeout) as info:
        if streaming:
            await collect(provider, chat_request(stream=True), context(timeout=0.2))
        else:
            await provider.chat(chat_request(), context(timeout=0.2))
    assert loop.time() - started < 1.5
    assert info.value.status == 504
    assert info.value.message == "the upstream did not answer in time"


async def test_slow_first_event_is_a_timeout(
    router: respx.Router, provider: OpenAIProvider
) -> None:
    # Headers at once, then nothing within first_token.
    body = Body([frames(chunk("Hi", "stop"))], first=2)
    router.post("/chat/completions").mock(
        side_effect=lambda request: httpx.Response(200, stream=body)
    )
    with pytest.raises(UpstreamTimeout) as info:
        await collect(provider, chat_request(stream=True), context(timeout=0.2))
    assert info.value.message == "the upstream timed out waiting for the first token"
    assert info.value.reason == "timeout_first_token"
    assert body.closed  # the upstream response is closed on the way out


async def test_stalled_stream_is_an_idle_timeout(
    router: respx.Router, provider: OpenAIProvider
) -> None:
    body = Body([frames(chunk("Hi"), done=False), frames(chunk(None, "stop"))], delay=2)
    router.post("/chat/completions").mock(
        side_effect=lambda request: httpx.Response(200, stream=body)
    )
    ctx = context(timeout={"first_token": 5, "idle": 0.2, "total": 10})
    got: list[ChatCompletionChunk] = []
    with pytest.raises(UpstreamTimeout) as info:
        async with provider.stream(chat_request(stream=True), ctx) as chunks:
            async for c in chunks:
                got.append(c)
    assert len(got) == 1
    assert info.value.message == "the upstream sent nothing for longer than the idle timeout"
    assert info.value.reason == "timeout_idle"
    assert body.closed


async def test_abandoned_stream_closes_the_response(
    router: respx.Router, provider: OpenAIProvider
) -> None:
    body = Body(pieces((FIXTURES / "chat_stream.sse").read_bytes()))
    router.post("/chat/completions").mock(
        side_effect=lambda request: httpx.Response(200, stream=body)
    )
    async with provider.stream(chat_request(stream=True), context()) as chunks:
        first = await anext(chunks)
    assert first.choices[0].delta.role == "assistant"
    assert body.closed


# ---------------------------------------------------------------- secrets and hints

HEADER_SECRET = "org-header-secret-9f8e7d6c5b4a"


def echoing(status: int, size: int | None = None):
    """An upstream that answers ``status`` with an error repeating the request's headers."""

    def answer(request: httpx.Request) -> httpx.Response:
        echoed = "; ".join(f"{k}: {v}" for k, v in request.headers.items())
        message = f"bad request, headers were {echoed}"
        if size is not None:  # the secret straddles where a naive cut would fall
            message = "x" * size + message
        return httpx.Response(status, json={"error": {"message": message, "type": "bad"}})

    return answer


def fragments(secret: str) -> list[str]:
    return [secret[i : i + 8] for i in range(len(secret) - 7)]


@pytest.fixture
def org_provider(upstream: Upstream) -> OpenAIProvider:
    config = ProviderConfig(
        type="openai",
        base_url=BASE_URL,
        api_key=SECRET,
        headers={"OpenAI-Organization": HEADER_SECRET, "OpenAI-Project": "p1"},
    )
    return OpenAIProvider("up", config, upstream)


@pytest.mark.parametrize("streaming", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize("status", [400, 422, 500, 503, 429])
@pytest.mark.parametrize("size", [None, 150, 180, 190, 200, 480, 495])
async def test_an_echoing_upstream_never_relays_a_secret(
    router: respx.Router,
    org_provider: OpenAIProvider,
    streaming: bool,
    status: int,
    size: int | None,
) -> None:
    router.post("/chat/completions").mock(side_effect=echoing(status, size))
    with pytest.raises(UpstreamError) as info:
        if streaming:
            await collect(org_provider, chat_request(stream=True), context())
        else:
            await org_provider.chat(chat_request(), context())
    shown = json.dumps(info.value.to_dict()) + str(info.value)
    assert HEADER_SECRET not in shown
    for piece in fragments(SECRET) + fragments(HEADER_SECRET):
        assert piece not in shown
    if status < 500 and status != 429:
        assert "bad" in info.value.message  # the rest is relayed (perhaps cut)
    else:
        assert "headers were" not in info.value.message


@pytest.mark.parametrize("path", ["/chat/completions", "/embeddings"])
@pytest.mark.parametrize(
    "body",
    [b"404 page not found", b'{"detail": "Not Found"}', b""],
    ids=["text", "json", "empty"],
)
async def test_a_base_url_without_v1_is_named_in_the_502(
    upstream: Upstream, path: str, body: bytes
) -> None:
    router = respx.Router(assert_all_mocked=True)
    router.post(f"https://user:hunter22-password@upstream.test{path}").respond(404, content=body)
    config = ProviderConfig(
        type="openai", base_url="https://user:hunter22-password@upstream.test", api_key=SECRET
    )
    raw = build_upstream(config, transport=httpx.MockTransport(router.async_handler))
    provider = OpenAIProvider("up", config, raw)
    try:
        with pytest.raises(UpstreamUnavailable) as info:
            if path == "/embeddings":
                request = EmbeddingRequest.model_validate({"model": "emb", "input": "hello"})
                await provider.embed(request, context())
            else:
                await provider.chat(chat_request(), context())
    finally:
        await raw.aclose()
    assert info.value.status == 502
    assert info.value.message == (
        f"the upstream answered 404 for POST {path}: is the provider's base_url missing '/v1'?"
    )
    assert "hunter22" not in info.value.message
    assert (info.value.reason, info.value.upstream_status) == ("upstream_status", 404)


async def test_a_stream_404_is_named_too(router: respx.Router, upstream: Upstream) -> None:
    config = ProviderConfig(type="openai", base_url="https://upstream.test", api_key=SECRET)
    router.post("https://upstream.test/chat/completions").respond(404, text="Not Found")
    with pytest.raises(UpstreamUnavailable) as info:
        await collect(OpenAIProvider("up", config, upstream), chat_request(stream=True), context())
    assert "is the provider's base_url missing '/v1'?" in info.value.message


async def test_a_slow_non_stream_answer_is_a_total_timeout(
    router: respx.Router, provider: OpenAIProvider
) -> None:
    router.post("/chat/completions").mock(side_effect=slow_answer)
    ctx = context(timeout={"first_token": 5, "idle": 5, "total": 0.2})
    with pytest.raises(UpstreamTimeout) as info:
        await provider.chat(chat_request(), ctx)
    assert info.value.reason == "timeout_total"


async def test_a_malformed_answer_is_named(router: respx.Router, provider: OpenAIProvider) -> None:
    router.post("/chat/completions").respond(200, content=b'{"id": "chatcmpl-1"')
    with pytest.raises(UpstreamUnavailable) as info:
        await provider.chat(chat_request(), context())
    assert info.value.reason == "malformed"


async def test_a_stream_ending_early_is_a_cut(
    router: respx.Router, provider: OpenAIProvider
) -> None:
    wire = frames(chunk("Hel"), done=False)
    router.post("/chat/completions").mock(side_effect=lambda request: sse_response(wire))
    with pytest.raises(UpstreamUnavailable) as info:
        await collect(provider, chat_request(stream=True), context())
    assert info.value.reason == "stream_cut"
