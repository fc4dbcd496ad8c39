"""The base of every provider that calls an HTTP API: openai, azure, anthropic, gemini.

``HTTPProvider`` owns what every such adapter does alike: the request built
from prebuilt byte headers (``Host`` per URL, since an adapter may call several
hosts and paths) plus any per-request ones, the non-streamed call within the
deployment's timeouts, the stream opened with its status checked, a bounded
read of an error body, the raw body iterator, transport failures mapped
(``failures.py``), and the ``Redactor`` built from the configured secrets.

An adapter supplies what is its own:

- ``default_base_url`` and its URLs, as ``Endpoint``s (``endpoint(url)``, built
  once per URL): ``chat_endpoint(ctx, stream=...)``;
- ``auth_headers(secret)``, and ``static_headers`` sent on every call;
- ``parse_error(endpoint, response, body)``: its error bodies -> ``UpstreamError``;
- ``request_headers(request, ctx)``: per-request headers (``anthropic-version``,
  ``anthropic-beta``), None for none;
- translation: ``chat_body`` (canonical request -> body bytes), ``chat_answer``
  (body -> ``ChatCompletion``) and ``chat_chunks`` (the raw body -> an ``SSEStream``
  subclass yielding ``ChatCompletionChunk``s).

Requests are ``httpx.Request(stream=ByteStream(...))`` with headers already as
bytes, so httpx takes them as they are instead of normalising and auto-filling
them per call (README.md, "Performance"; ~30 µs of CPU a request).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import ClassVar

import httpx
from pydantic import BaseModel

from gateway.config import ProviderConfig
from gateway.errors import InvalidRequest, Reason, UpstreamError, UpstreamTimeout
from gateway.providers.base import CallContext
from gateway.providers.failures import raise_transport_error, status_error
from gateway.providers.redact import Redactor
from gateway.providers.sse import SSEStream
from gateway.schemas.openai import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from gateway.transport import Upstream, read_body

__all__ = [
    "ERROR_BODY_LIMIT",
    "Endpoint",
    "HTTPProvider",
    "HeaderList",
    "forward_header",
    "raw_body",
    "read_some",
]

# Enough of an error body to show its message; the rest is not read.
ERROR_BODY_LIMIT = 64 * 1024

HeaderList = Sequence[tuple[bytes, bytes]]


class Endpoint:
    """One upstream URL, its prebuilt headers (``Host`` first) and its name in errors."""

    __slots__ = ("headers", "route", "url")

    def __init__(self, url: httpx.URL, headers: tuple[tuple[bytes, bytes], ...]) -> None:
        self.url = url
        self.headers = headers
        # How errors name the call: the path only, never the host nor the query
        # (either may carry a credential).
        self.route = f"POST {url.path}"

    def __repr__(self) -> str:
        return f"Endpoint({self.route!r})"


def forward_header(name: str, value: str) -> tuple[bytes, bytes]:
    """A header taken from the client's request, ready for ``request_headers``.

    The value is the client's: one that could not be sent as it is (a line break,
    a control character, non-Latin-1 text) is a 400 naming the header, rather than
    a malformed request upstream.
    """
    if value.isprintable():
        try:
            return name.encode("ascii"), value.encode("latin-1")
        except UnicodeEncodeError:
            pass
    raise InvalidRequest(f"the {name} header has characters that cannot be sent", param=name)


class HTTPProvider:
    """An upstream HTTP API; see the module docstring for what an adapter supplies.

    Implements the ``Provider`` protocol's ``chat``, ``stream`` and ``aclose``
    from the adapter's hooks; an adapter with more calls (embeddings, a
    pass-through) uses ``post`` and ``open_stream`` with its own endpoints.
    """

    needs_http: ClassVar[bool] = True
    default_base_url: ClassVar[str] = ""
    # Sent on every call, before the configured headers (which may override them).
    static_headers: ClassVar[Mapping[str, str]] = {}
    error_body_limit: ClassVar[int] = ERROR_BODY_LIMIT

    def __init__(self, name: str, config: ProviderConfig, upstream: Upstream) -> None:
        self.name = name
        self.upstream = upstream
        self.base_url = (config.base_url or self.default_base_url).rstrip("/")
        secret = config.api_key.get_secret_value() if config.api_key else None
        # Every configured header may carry a credential (an org id, a proxy's key):
        # all of them are kept out of what the upstream's errors relay.
        self.redactor = Redactor([secret, *config.headers.values()])
        headers = {
            "content-type": "application/json",
            "accept-encoding": "identity",
            **{k.lower(): v for k, v in self.static_headers.items()},
            **{k.lower(): v for k, v in config.headers.items()},
        }
        if secret:
            headers.update({k.lower(): v for k, v in self.auth_headers(secret).items()})
        self._common = tuple(
            (key.encode("ascii"), value.encode("ascii")) for key, value in headers.items()
        )
        self._endpoints: dict[str, Endpoint] = {}

    # ------------------------------------------------------------ adapter hooks

    def auth_headers(self, secret: str) -> Mapping[str, str]:
        """The headers that carry the provider's API key (e.g. ``authorization``)."""
        raise NotImplementedError

    def chat_endpoint(self, ctx: CallContext, *, stream: bool) -> Endpoint:
        """Where a chat call of this deployment goes."""
        raise NotImplementedError

    def chat_body(self, request: ChatCompletionRequest, ctx: CallContext, *, stream: bool) -> bytes:
        """The canonical request translated into the upstream's body."""
        raise NotImplementedError

    def chat_answer(self, content: bytes, ctx: CallContext) -> ChatCompletion:
        """The upstream's non-streamed answer translated; ``failures.malformed`` if unreadable."""
        raise NotImplementedError

    def chat_chunks(
        self, raw: AsyncIterator[bytes], ctx: CallContext, deadline: float
    ) -> SSEStream:
        """The stream's translation: an ``SSEStream`` over ``raw`` yielding chunks, built
        with the deployment's timeouts (``ctx.timeouts``) and ``deadline``."""
        raise NotImplementedError

    def request_headers(self, request: BaseModel, ctx: CallContext) -> HeaderList | None:
        """Headers for this request only, sent after the prebuilt ones (an adapter that
        sets a header per request leaves it out of ``static_headers``). None: none."""
        return None

    def parse_error(
        self, endpoint: Endpoint, response: httpx.Response, body: bytes
    ) -> UpstreamError:
        """An error answer (status >= 400) -> the gateway error for it. ``body`` is at
        most ``error_body_limit`` bytes of it for a stream. The default reads no
        structure: the status decides, with the body as text for a refusal."""
        return status_error(response.status_code, response.headers, self.redactor, body=body)

    # ------------------------------------------------------------ the calls

    def endpoint(self, url: str | httpx.URL) -> Endpoint:
        """The endpoint of ``url``, built once: call with the few fixed URLs an
        adapter has (or a handful per deployment), not a new one per request."""
        key = str(url)
        found = self._endpoints.get(key)
        if found is None:
            parsed = httpx.URL(url)
            found = self._endpoints[key] = Endpoint(
                parsed, ((b"host", parsed.netloc), *self._common)
            )
        return found

    def build_request(
        self, endpoint: Endpoint, body: bytes, ctx: CallContext, headers: HeaderList | None = None
    ) -> httpx.Request:
        timeouts = ctx.timeouts
        sent = [
            *endpoint.headers,
            (b"content-length", b"%d" % len(body)),
            (b"x-request-id", ctx.request_id.encode("ascii")),
        ]
        if headers:
            sent.extend(headers)
        return httpx.Request(
            "POST",
            endpoint.url,
            headers=sent,
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

    async def post(
        self, endpoint: Endpoint, body: bytes, ctx: CallContext, headers: HeaderList | None = None
    ) -> bytes:
        """A non-streamed call within the deployment's total timeout: the answer's body,
        or the error ``parse_error`` makes of it."""
        try:
            async with asyncio.timeout(ctx.timeouts.total):
                response = await self.upstream.send(
                    self.build_request(endpoint, body, ctx, headers)
                )
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
            raise self.parse_error(endpoint, response, content)
        return content

    async def open_stream(
        self, endpoint: Endpoint, body: bytes, ctx: CallContext, headers: HeaderList | None = None
    ) -> httpx.Response:
        """A streamed call, its head within the first-token timeout and its status checked
        (an error's body read up to ``error_body_limit`` for ``parse_error``). The
        response is the caller's to close; read it with ``raw_body``."""
        request = self.build_request(endpoint, body, ctx, headers)
        try:
            async with asyncio.timeout(ctx.timeouts.first_token):
                response = await self.upstream.send(request)
        except Exception as exc:
            raise_transport_error(exc)
        if response.status_code >= 400:
            try:
                raise self.parse_error(
                    endpoint, response, await read_some(response, self.error_body_limit)
                )
            finally:
                await response.aclose()
        return response

    async def chat(self, request: ChatCompletionRequest, ctx: CallContext) -> ChatCompletion:
        content = await self.post(
            self.chat_endpoint(ctx, stream=False),
            self.chat_body(request, ctx, stream=False),
            ctx,
            self.request_headers(request, ctx),
        )
        return self.chat_answer(content, ctx)

    @asynccontextmanager
    async def stream(
        self, request: ChatCompletionRequest, ctx: CallContext
    ) -> AsyncIterator[AsyncIterator[ChatCompletionChunk]]:
        deadline = ctx.deadline()
        response = await self.open_stream(
            self.chat_endpoint(ctx, stream=True),
            self.chat_body(request, ctx, stream=True),
            ctx,
            self.request_headers(request, ctx),
        )
        try:
            chunks = self.chat_chunks(raw_body(response), ctx, deadline)
            try:
                yield chunks
            finally:
                chunks.close()
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        return None  # the Upstream is the app's to close


def raw_body(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body as it arrives; one already read into memory (MockTransport, respx) is replayed."""
    if response.is_stream_consumed:
        return _replay(response.content)
    # The transport's byte stream itself: httpx's aiter_raw only adds layers here
    # (the gateway asks for identity encoding, so there is nothing to decode).
    return aiter(response.stream)  # type: ignore[arg-type]


async def _replay(content: bytes) -> AsyncIterator[bytes]:
    yield content


async def read_some(response: httpx.Response, limit: int = ERROR_BODY_LIMIT) -> bytes:
    """Up to about ``limit`` bytes of a streamed body (an error's): the rest is never read."""
    if response.is_stream_consumed:
        return response.content[:limit]
    body = b""
    try:
        async for data in response.aiter_raw():
            body += data
            if len(body) >= limit:
                break
    except httpx.HTTPError:
        pass
    return body[:limit]
