"""gateway/providers/http.py: the HTTP provider base, through a toy adapter.

The toy speaks a made-up API on two hosts (its chat on one, its stream on
another), with its own key header, error bodies, stream events and a
per-request header forwarded from the client. Its upstream is a respx router
injected as the transport, as the openai adapter's tests do.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import httpx
import pytest
import respx
from pydantic import BaseModel
from pydantic_core import to_json

from gateway.config import Deployment, ProviderConfig
from gateway.errors import (
    InvalidRequest,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.providers.base import (
    CallContext,
    EmbeddingProvider,
    Provider,
    supports_embeddings,
)
from gateway.providers.http import (
    ERROR_BODY_LIMIT,
    Endpoint,
    HeaderList,
    HTTPProvider,
    forward_header,
)
from gateway.providers.mock import MockProvider
from gateway.providers.openai import OpenAIProvider
from gateway.providers.sse import SSEEvent, SSEStream
from gateway.schemas.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionRequest,
    Choice,
    ChoiceDelta,
    ChunkChoice,
)
from gateway.transport import Upstream, build_upstream

CHAT_URL = "https://chat.toy.test/v2/chat"
STREAM_URL = "https://stream.toy.test:8443/v2/stream?alt=sse"
SECRET = "toy-secret-0123456789abcdef"


class ToyOverloaded(UpstreamUnavailable):
    pass


class ToyChunks(SSEStream):
    """``text`` events carry several parts, one chunk each; ``end`` ends the stream."""

    __slots__ = ()

    def translate(self, event: SSEEvent) -> ChatCompletionChunk | None:
        if event.event == "end":
            raise StopAsyncIteration
        if event.event != "text":
            return None
        parts = json.loads(event.data)["parts"]
        for part in parts[1:]:
            self.emit(_chunk(part))
        return _chunk(parts[0])


def _chunk(text: str) -> ChatCompletionChunk:
    return ChatCompletionChunk(
        id="toy-1",
        created=1,
        model="toy",
        choices=[ChunkChoice(index=0, delta=ChoiceDelta(content=text))],
    )


class Toy(HTTPProvider):
    default_base_url = "https://chat.toy.test/v2"
    static_headers = {"Toy-Version": "2024-01-01", "Toy-Client": "gateway"}

    def __init__(self, name: str, config: ProviderConfig, upstream: Upstream) -> None:
        super().__init__(name, config, upstream)
        self._chat = self.endpoint(f"{self.base_url}/chat")
        self._stream = self.endpoint(STREAM_URL)
        self.parsed: list[tuple[str, int, bytes]] = []

    def auth_headers(self, secret: str) -> Mapping[str, str]:
        return {"X-Toy-Key": secret}

    def chat_endpoint(self, ctx: CallContext, *, stream: bool) -> Endpoint:
        return self._stream if stream else self._chat

    def chat_body(self, request: ChatCompletionRequest, ctx: CallContext, *, stream: bool) -> bytes:
        return to_json({"engine": ctx.deployment.model, "turns": len(request.messages)})

    def chat_answer(self, content: bytes, ctx: CallContext) -> ChatCompletion:
        text = json.loads(content)["text"]
        return ChatCompletion(
            id="toy-1",
            created=1,
            model=ctx.deployment.model,
            choices=[
                Choice(
                    index=0,
                    message=ChatCompletionMessage(role="assistant", content=text),
                    finish_reason="stop",
                )
            ],
        )

    def chat_chunks(
        self, raw: AsyncIterator[bytes], ctx: CallContext, deadline: float
    ) -> SSEStream:
        t = ctx.timeouts
        return ToyChunks(raw, first_token=t.first_token, idle=t.idle, deadline=deadline)

    def request_headers(self, request: BaseModel, ctx: CallContext) -> HeaderList | None:
        beta = ctx.client_headers.get("toy-beta") if ctx.client_headers else None
        return [forward_header("toy-beta", beta)] if beta else None

    def parse_error(
        self, endpoint: Endpoint, response: httpx.Response, body: bytes
    ) -> UpstreamError:
        self.parsed.append((endpoint.route, response.status_code, body))
        problem = json.loads(body).get("problem", {}) if body.startswith(b"{") else {}
        if problem.get("kind") == "overloaded":
            return ToyOverloaded("the toy is overloaded")
        return super().parse_error(endpoint, response, body)


class Body(httpx.AsyncByteStream):
    """A response body in pieces, counting how many were read."""

    def __init__(self, parts: Iterable[bytes]) -> None:
        self.parts = list(parts)
        self.read = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            self.read += 1
            yield part

    async def aclose(self) -> None:
        self.closed = True


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(assert_all_mocked=True)


@pytest.fixture
async def upstream(router: respx.Router) -> AsyncIterator[Upstream]:
    config = ProviderConfig(type="openai", api_key=SECRET)
    upstream = build_upstream(config, transport=httpx.MockTransport(router.async_handler))
    yield upstream
    await upstream.aclose()


def toy(upstream: Upstream, **config: Any) -> Toy:
    return Toy("toy", ProviderConfig(type="toy", api_key=SECRET, **config), upstream)


def context(
    timeout: float | dict[str, float] = 5.0, client_headers: dict[str, str] | None = None
) -> CallContext:
    deployment = Deployment.model_validate(
        {"provider": "toy", "model": "toy-large", "timeout": timeout}
    )
    return CallContext(request_id="req-toy-1", deployment=deployment, client_headers=client_headers)


def chat_request() -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "toy", "messages": [{"role": "user", "content": "Hi"}]}
    )


def sse(*events: tuple[str, Any]) -> bytes:
    return b"".join(
        b"event: %s\ndata: %s\n\n" % (name.encode(), json.dumps(data).encode())
        for name, data in events
    )


def stream_ok(router: respx.Router, wire: bytes | None = None) -> respx.Route:
    wire = wire or sse(("text", {"parts": ["Hello"]}), ("end", {}))
    return router.post(STREAM_URL).mock(
        side_effect=lambda request: httpx.Response(200, stream=Body([wire]))
    )


async def collect(provider: Toy, ctx: CallContext) -> list[ChatCompletionChunk]:
    async with provider.stream(chat_request(), ctx) as chunks:
        return [c async for c in chunks]


# ---------------------------------------------------------------- requests


async def test_each_url_gets_its_own_host(router: respx.Router, upstream: Upstream) -> None:
    chat = router.post(CHAT_URL).respond(200, json={"text": "hi"})
    stream = stream_ok(router)
    provider = toy(upstream)
    await provider.chat(chat_request(), context())
    await collect(provider, context())
    assert chat.calls.last.request.headers.get_list("host") == ["chat.toy.test"]
    assert stream.calls.last.request.headers.get_list("host") == ["stream.toy.test:8443"]
    assert stream.calls.last.request.url == STREAM_URL


async def test_prebuilt_headers_and_body(router: respx.Router, upstream: Upstream) -> None:
    route = router.post(CHAT_URL).respond(200, json={"text": "hi"})
    answer = await toy(upstream).chat(chat_request(), context())
    assert answer.choices[0].message.content == "hi"
    sent = route.calls.last.request
    assert json.loads(sent.content) == {"engine": "toy-large", "turns": 1}
    assert sent.headers["content-length"] == str(len(sent.content))
    assert sent.headers["x-toy-key"] == SECRET
    assert sent.headers["x-request-id"] == "req-toy-1"
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["accept-encoding"] == "identity"
    assert sent.headers["toy-version"] == "2024-01-01"
    assert "authorization" not in sent.headers


async def test_configured_headers_override_static_ones_but_not_the_key(
    router: respx.Router, upstream: Upstream
) -> None:
    route = router.post(CHAT_URL).respond(200, json={"text": "hi"})
    provider = toy(upstream, headers={"Toy-Version": "2025-06-01", "X-Toy-Key": "not-this"})
    await provider.chat(chat_request(), context())
    sent = route.calls.last.request.headers
    assert sent.get_list("toy-version") == ["2025-06-01"]
    assert sent.get_list("toy-client") == ["gateway"]
    assert sent.get_list("x-toy-key") == [SECRET]


async def test_no_key_no_auth_header(router: respx.Router, upstream: Upstream) -> None:
    route = router.post(CHAT_URL).respond(200, json={"text": "hi"})
    provider = Toy("toy", ProviderConfig(type="toy"), upstream)
    await provider.chat(chat_request(), context())
    assert "x-toy-key" not in route.calls.last.request.headers


@pytest.mark.parametrize("call", ["chat", "stream"])
async def test_per_request_headers_come_from_the_adapter(
    router: respx.Router, upstream: Upstream, call: str
) -> None:
    chat = router.post(CHAT_URL).respond(200, json={"text": "hi"})
    stream = stream_ok(router)
    route = chat if call == "chat" else stream
    provider = toy(upstream)

    async def run(ctx: CallContext) -> None:
        if call == "chat":
            await provider.chat(chat_request(), ctx)
        else:
            await collect(provider, ctx)

    await run(context(client_headers={"toy-beta": "tools-2024, cache"}))
    assert route.calls.last.request.headers.get_list("toy-beta") == ["tools-2024, cache"]
    await run(context(client_headers={"other": "x"}))
    assert "toy-beta" not in route.calls.last.request.headers
    await run(context())
    assert "toy-beta" not in route.calls.last.request.headers


@pytest.mark.parametrize("value", ["a\r\nx-evil: 1", "a\nb", "nul\x00", "snow ☃"])
async def test_a_client_header_that_cannot_be_sent_is_a_400(
    router: respx.Router, upstream: Upstream, value: str
) -> None:
    route = router.post(CHAT_URL).respond(200, json={"text": "hi"})
    with pytest.raises(InvalidRequest) as info:
        await toy(upstream).chat(chat_request(), context(client_headers={"toy-beta": value}))
    assert info.value.param == "toy-beta"
    assert info.value.status == 400
    assert route.call_count == 0


def test_forward_header_keeps_latin1_text() -> None:
    assert forward_header("toy-beta", "caf\u00e9 1") == (b"toy-beta", b"caf\xe9 1")


def test_an_endpoint_is_built_once_and_named_without_host_or_query(upstream: Upstream) -> None:
    provider = toy(upstream)
    endpoint = provider.endpoint(STREAM_URL)
    assert provider.endpoint(STREAM_URL) is endpoint
    assert endpoint.route == "POST /v2/stream"
    assert endpoint.headers[0] == (b"host", b"stream.toy.test:8443")
    assert provider.endpoint(httpx.URL(STREAM_URL)) is endpoint


def test_the_timeout_extension_comes_from_the_deployment(upstream: Upstream) -> None:
    provider = toy(upstream)
    ctx = context({"connect": 1.5, "first_token": 7, "idle": 3, "total": 60})
    request = provider.build_request(provider.endpoint(CHAT_URL), b"{}", ctx)
    assert request.extensions["timeout"] == {"connect": 1.5, "read": 7, "write": 3, "pool": 1.5}


# ---------------------------------------------------------------- answers and errors


@pytest.mark.parametrize("call", ["chat", "stream"])
async def test_the_adapter_parses_its_error_bodies(
    router: respx.Router, upstream: Upstream, call: str
) -> None:
    body = json.dumps({"problem": {"kind": "overloaded", "text": "busy"}}).encode()
    router.post(CHAT_URL).respond(529, content=body)
    router.post(STREAM_URL).respond(529, content=body)
    provider = toy(upstream)
    with pytest.raises(ToyOverloaded):
        if call == "chat":
            await provider.chat(chat_request(), context())
        else:
            await collect(provider, context())
    route = "POST /v2/chat" if call == "chat" else "POST /v2/stream"
    assert provider.parsed == [(route, 529, body)]


async def test_the_default_parser_relays_a_refusal_cleaned(
    router: respx.Router, upstream: Upstream
) -> None:
    router.post(CHAT_URL).respond(400, content=f"no such engine; key {SECRET}".encode())
    with pytest.raises(UpstreamRejected) as info:
        await toy(upstream).chat(chat_request(), context())
    assert info.value.message == "no such engine; key [redacted]"


async def test_a_streamed_error_body_is_read_only_so_far(
    router: respx.Router, upstream: Upstream
) -> None:
    piece = b"x" * 16 * 1024
    body = Body([piece] * 64)  # 1 MiB
    router.post(STREAM_URL).mock(side_effect=lambda request: httpx.Response(500, stream=body))
    provider = toy(upstream)
    with pytest.raises(UpstreamUnavailable):
        await collect(provider, context())
    [(_, status, seen)] = provider.parsed
    assert status == 500
    assert len(seen) == ERROR_BODY_LIMIT
    assert body.read <= ERROR_BODY_LIMIT // len(piece) + 1
    assert body.closed


async def test_the_total_timeout_bounds_a_call(router: respx.Router, upstream: Upstream) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200, json={"text": "late"})

    router.post(CHAT_URL).mock(side_effect=slow)
    with pytest.raises(UpstreamTimeout) as info:
        await toy(upstream).chat(chat_request(), context({"total": 0.2}))
    assert info.value.reason == "timeout_total"


async def test_the_first_token_timeout_bounds_opening_a_stream(
    router: respx.Router, upstream: Upstream
) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200, stream=Body([]))

    router.post(STREAM_URL).mock(side_effect=slow)
    with pytest.raises(UpstreamTimeout) as info:
        await collect(toy(upstream), context({"first_token": 0.2}))
    assert info.value.reason == "timeout_first_token"


@pytest.mark.parametrize("call", ["chat", "stream"])
async def test_transport_failures_are_mapped(
    router: respx.Router, upstream: Upstream, call: str
) -> None:
    router.post(CHAT_URL).mock(side_effect=httpx.ConnectError("refused"))
    router.post(STREAM_URL).mock(side_effect=httpx.ConnectError("refused"))
    provider = toy(upstream)
    with pytest.raises(UpstreamUnavailable) as info:
        if call == "chat":
            await provider.chat(chat_request(), context())
        else:
            await collect(provider, context())
    assert info.value.reason == "connect_failed"


async def test_one_upstream_event_may_become_several_chunks(
    router: respx.Router, upstream: Upstream
) -> None:
    wire = sse(
        ("text", {"parts": ["a", "b", "c"]}),
        ("ping", {}),
        ("text", {"parts": ["d"]}),
        ("end", {}),
        ("text", {"parts": ["after the end"]}),
    )
    stream_ok(router, wire)
    chunks = await collect(toy(upstream), context())
    assert [c.choices[0].delta.content for c in chunks] == ["a", "b", "c", "d"]


async def test_a_stream_left_early_closes_the_response(
    router: respx.Router, upstream: Upstream
) -> None:
    body = Body([sse(("text", {"parts": ["a", "b"]})), sse(("text", {"parts": ["c"]}))])
    router.post(STREAM_URL).mock(side_effect=lambda request: httpx.Response(200, stream=body))
    async with toy(upstream).stream(chat_request(), context()) as chunks:
        first = await anext(chunks)
    assert first.choices[0].delta.content == "a"
    assert body.closed


# ---------------------------------------------------------------- capabilities


def test_embeddings_are_an_optional_capability(upstream: Upstream) -> None:
    plain = toy(upstream)
    openai = OpenAIProvider("o", ProviderConfig(type="openai", api_key=SECRET), upstream)
    mock = MockProvider("m", ProviderConfig(type="mock"))
    for provider in (plain, openai, mock):
        assert isinstance(provider, Provider)
    assert not supports_embeddings(plain)
    assert not isinstance(plain, EmbeddingProvider)
    assert supports_embeddings(openai)
    assert isinstance(openai, EmbeddingProvider)
    assert supports_embeddings(mock)
    assert isinstance(mock, EmbeddingProvider)


# ---------------------------------------------------------------- an adapter on an adapter


class AzureLike(OpenAIProvider):
    """The openai adapter with another URL scheme and key header, nothing copied."""

    def auth_headers(self, secret: str) -> Mapping[str, str]:
        return {"api-key": secret}

    def chat_endpoint(self, ctx: CallContext, *, stream: bool) -> Endpoint:
        return self.endpoint(
            f"{self.base_url}/openai/deployments/{ctx.deployment.model}"
            "/chat/completions?api-version=2024-10-21"
        )


async def test_an_openai_variant_needs_only_its_url_and_key_hooks(
    router: respx.Router, upstream: Upstream
) -> None:
    url = "https://res.azure.test/openai/deployments/toy-large/chat/completions"
    route = router.post(url, params={"api-version": "2024-10-21"}).respond(
        404, json={"error": {"code": "DeploymentNotFound", "message": f"no {SECRET}"}}
    )
    config = ProviderConfig(type="openai", base_url="https://res.azure.test", api_key=SECRET)
    provider = AzureLike("az", config, upstream)
    with pytest.raises(UpstreamRejected) as info:  # read as OpenAI's error bodies are
        await provider.chat(chat_request(), context())
    assert info.value.message == "no [redacted]"
    sent = route.calls.last.request.headers
    assert sent["api-key"] == SECRET
    assert sent["host"] == "res.azure.test"
    assert "authorization" not in sent
