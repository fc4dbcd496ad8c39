"""OpenAI's API, and every server that speaks it (vLLM, Ollama, LM Studio, ...).

Requests are forwarded as the client sent them, unknown fields included; only
``model`` becomes the deployment's upstream name, and a stream always asks for
usage (``stream_options.include_usage``) so the gateway can count it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from pydantic import BaseModel, ValidationError
from pydantic_core import to_json

from gateway.config import ProviderConfig
from gateway.errors import Reason, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.providers.base import CallContext
from gateway.providers.failures import error_from_response, malformed, raise_transport_error
from gateway.providers.redact import Redactor
from gateway.providers.sse import SSEEvent, SSEStream
from gateway.schemas.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    EmbeddingRequest,
    EmbeddingResponse,
)
from gateway.transport import Upstream, read_body

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Enough of an error body to show its message; the rest is not read.
_ERROR_BODY_LIMIT = 64 * 1024


class OpenAIProvider:
    needs_http = True

    def __init__(self, name: str, config: ProviderConfig, upstream: Upstream) -> None:
        self.name = name
        self._upstream = upstream
        base = (config.base_url or DEFAULT_BASE_URL).rstrip("/")
        self._chat_url = httpx.URL(f"{base}/chat/completions")
        self._embed_url = httpx.URL(f"{base}/embeddings")
        self._secret = config.api_key.get_secret_value() if config.api_key else None
        # Every configured header may carry a credential (an org id, a proxy's key):
        # all of them are kept out of what the upstream's errors relay.
        self._redactor = Redactor([self._secret, *config.headers.values()])
        # How a 404 names the call, without the host (nor any credential in its URL).
        self._routes = {url: f"POST {url.path}" for url in (self._chat_url, self._embed_url)}
        headers = {
            "content-type": "application/json",
            "accept-encoding": "identity",
            **{k.lower(): v for k, v in config.headers.items()},
        }
        if self._secret:
            headers["authorization"] = f"Bearer {self._secret}"
        # Built once, with Host, as bytes: httpx.Request(stream=...) then takes them as
        # they are (its documented path for transports) instead of normalising and
        # auto-filling headers on every call, which cost ~30 µs of CPU a request.
        self._headers = [(b"host", self._chat_url.netloc)] + [
            (name.encode("ascii"), value.encode("ascii")) for name, value in headers.items()
        ]

    async def aclose(self) -> None:
        return None  # the Upstream is the app's to close

    def _request(self, url: httpx.URL, body: bytes, ctx: CallContext) -> httpx.Request:
        timeouts = ctx.timeouts
        headers = [
            *self._headers,
            (b"content-length", b"%d" % len(body)),
            (b"x-request-id", ctx.request_id.encode("ascii")),
        ]
        return httpx.Request(
            "POST",
            url,
            headers=headers,
            stream=httpx.ByteStream(body),
            extensions={
                "timeout": {
                    "connect": timeouts.connect,
                    "read": max(timeouts.first_token, timeouts.idle),
                    "write": timeouts.idle,
                    "pool": timeouts.connect,
                }
            },
        )

    def _body(self, request: BaseModel, ctx: CallContext, *, stream: bool | None = None) -> bytes:
        payload = request.model_dump(mode="json", exclude_unset=True)
        payload["model"] = ctx.deployment.model
        if stream is not None:
            payload["stream"] = stream
        if stream:
            options = payload.get("stream_options") or {}
            payload["stream_options"] = {**options, "include_usage": True}
        return to_json(payload)

    def _error(self, url: httpx.URL, response: httpx.Response, body: bytes) -> UpstreamError:
        return error_from_response(
            response.status_code,
            body,
            response.headers,
            self._redactor,
            route=self._routes.get(url),
        )

    async def _call(self, url: httpx.URL, body: bytes, ctx: CallContext) -> bytes:
        """A non-streaming call: the answer's body, or the error it maps to."""
        try:
            async with asyncio.timeout(ctx.timeouts.total):
                response = await self._upstream.send(self._request(url, body, ctx))
                try:
                    content = await read_body(response)
                finally:
                    await response.aclose()
        except TimeoutError:  # asyncio's: the whole call's deadline
            raise UpstreamTimeout(
                "the upstream did not answer in time", reason=Reason.TIMEOUT_TOTAL
            ) from None
        except Exception as exc:
            raise_transport_error(exc)
        if response.status_code >= 400:
            raise self._error(url, response, content)
        return content

    async def chat(self, request: ChatCompletionRequest, ctx: CallContext) -> ChatCompletion:
        content = await self._call(self._chat_url, self._body(request, ctx, stream=False), ctx)
        try:
            return ChatCompletion.model_validate_json(content)
        except ValidationError as exc:
            raise malformed(exc) from None

    async def embed(self, request: EmbeddingRequest, ctx: CallContext) -> EmbeddingResponse:
        content = await self._call(self._embed_url, self._body(request, ctx), ctx)
        try:
            return EmbeddingResponse.model_validate_json(content)
        except ValidationError as exc:
            raise malformed(exc) from None

    @asynccontextmanager
    async def stream(
        self, request: ChatCompletionRequest, ctx: CallContext
    ) -> AsyncIterator[AsyncIterator[ChatCompletionChunk]]:
        deadline = ctx.deadline()
        http_request = self._request(self._chat_url, self._body(request, ctx, stream=True), ctx)
        try:
            async with asyncio.timeout(ctx.timeouts.first_token):
                response = await self._upstream.send(http_request)
        except Exception as exc:
            raise_transport_error(exc)
        try:
            if response.status_code >= 400:
                raise self._error(self._chat_url, response, await _read_some(response))
            chunks = _Chunks(_raw_body(response), ctx, deadline)
            try:
                yield chunks
            finally:
                chunks.close()
        finally:
            await response.aclose()


def _raw_body(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body as it arrives; one already read into memory (MockTransport, respx) is replayed."""
    if response.is_stream_consumed:
        return _replay(response.content)
    # The transport's byte stream itself: httpx's aiter_raw only adds layers here
    # (the gateway asks for identity encoding, so there is nothing to decode).
    return aiter(response.stream)  # type: ignore[arg-type]


async def _replay(content: bytes) -> AsyncIterator[bytes]:
    yield content


async def _read_some(response: httpx.Response) -> bytes:
    if response.is_stream_consumed:
        return response.content[:_ERROR_BODY_LIMIT]
    body = b""
    try:
        async for data in response.aiter_raw():
            body += data
            if len(body) >= _ERROR_BODY_LIMIT:
                break
    except httpx.HTTPError:
        pass
    return body


class _Chunks(SSEStream):
    """OpenAI stream events -> ``ChatCompletionChunk``s, ending at ``[DONE]``."""

    __slots__ = ("_finished",)

    def __init__(self, raw: AsyncIterator[bytes], ctx: CallContext, deadline: float) -> None:
        timeouts = ctx.timeouts
        super().__init__(
            raw, first_token=timeouts.first_token, idle=timeouts.idle, deadline=deadline
        )
        self._finished = False  # a choice has reported its finish_reason

    def translate(self, event: SSEEvent) -> ChatCompletionChunk:
        data = event.data
        if data == b"[DONE]":
            raise StopAsyncIteration
        try:
            chunk = ChatCompletionChunk.model_validate_json(data)
        except ValidationError as exc:
            raise self._error_event(data) or malformed(exc) from None
        if not self._finished:
            for choice in chunk.choices:  # a loop, not any(genexpr): this runs per chunk
                if choice.finish_reason:
                    self._finished = True
                    break
        return chunk

    def ended(self) -> None:
        if not self._finished:  # some servers end without [DONE], but not midway
            raise UpstreamUnavailable(
                "the upstream stream ended before it was complete", reason=Reason.STREAM_CUT
            )

    def _error_event(self, data: bytes) -> UpstreamError | None:
        """An upstream that fails mid-stream sends ``{"error": {...}}`` as data.

        Its text is not relayed: it came after a 200, so it is the upstream's own
        failure (what a 5xx would say), not a verdict on the request.
        """
        if b'"error"' not in data:
            return None
        return UpstreamUnavailable(
            "the upstream reported an error mid-answer", reason=Reason.ERROR_EVENT
        )
