"""The HTTP clients beneath the providers, and the one place their transport is chosen.

Providers see only httpx: an ``httpx.AsyncClient``, ``httpx.Request`` and
``httpx.Response``. Beneath it sits a transport chosen by measurement
(``build_upstream``): httpx's own costs several times more CPU per request
(README.md, "Performance"). The app owns the transport instance, so the hot path calls
``Upstream.send`` (the transport directly, with a prebuilt request) and skips
``AsyncClient.send``'s URL merging, cookie jar, auth and redirect layers.
Tests hand in any other transport, such as
``httpx.MockTransport(respx_router.async_handler)``.

This module also holds ``AiohttpTransport``, the aiohttp-based alternative,
with aiohttp's exceptions mapped back to httpx's, so nothing above it knows
aiohttp exists.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import httpx
from yarl import URL

from gateway.config import ProviderConfig
from gateway.httpclient import EAGER_BODY_MAX, LeanTransport

# One cached yarl.URL per distinct upstream URL: providers call a few fixed ones.
_URL_CACHE_MAX = 1024


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one aiohttp ``ClientSession`` and its keep-alive pool.

    Honours the request's ``timeout`` extension for ``connect`` and ``read``
    (the longest gap between two reads); whole-call deadlines are the caller's.
    Bodies are passed through undecoded: httpx decodes ``Content-Encoding``.
    """

    def __init__(self, *, max_connections: int = 256, keepalive_expiry: float = 30.0) -> None:
        connector = aiohttp.TCPConnector(
            limit=max_connections,
            limit_per_host=0,
            keepalive_timeout=keepalive_expiry,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        self._urls: dict[str, URL] = {}
        self._timeouts: dict[tuple[float | None, float | None], aiohttp.ClientTimeout] = {}

    def _url(self, url: httpx.URL) -> URL:
        key = str(url)
        cached = self._urls.get(key)
        if cached is None:
            if len(self._urls) >= _URL_CACHE_MAX:
                self._urls.clear()
            cached = self._urls[key] = URL(key, encoded=True)
        return cached

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout") or {}
        limits = (timeouts.get("connect"), timeouts.get("read"))
        timeout = self._timeouts.get(limits)
        if timeout is None:
            timeout = self._timeouts[limits] = aiohttp.ClientTimeout(
                total=None, sock_connect=limits[0], sock_read=limits[1]
            )
        try:
            body = await request.aread()
            response = await self._session.request(
                request.method,
                self._url(request.url),
                headers=request.headers.multi_items(),
                data=body or None,
                allow_redirects=False,
                timeout=timeout,
            )
        except Exception as exc:
            raise _to_httpx(exc, request, connecting=True) from exc
        # A small body of known length (a non-streamed answer, an error) is read
        # here in one go: cheaper than streaming it through httpx's layers. Event
        # streams come chunked, without a length, and stream.
        length = response.content_length
        if length is not None and length <= EAGER_BODY_MAX:
            try:
                body = await response.read()
            except Exception as exc:
                response.close()
                raise _to_httpx(exc, request, connecting=False) from exc
            response.release()
            return httpx.Response(
                response.status,
                headers=response.raw_headers,
                stream=httpx.ByteStream(body),
                request=request,
            )
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=_AiohttpStream(response, request),
            request=request,
        )

    async def aclose(self) -> None:
        await self._session.close()


class _AiohttpStream(httpx.AsyncByteStream):
    __slots__ = ("_request", "_response")

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            while True:
                data = await content.readany()
                if not data:
                    return
                yield data
        except Exception as exc:
            raise _to_httpx(exc, self._request, connecting=False) from exc

    async def aclose(self) -> None:
        response = self._response
        if response.content.at_eof():
            response.release()
        else:
            # Unread body: drop the connection so the upstream sees us go at once.
            response.close()


def _to_httpx(exc: Exception, request: httpx.Request, *, connecting: bool) -> Exception:
    if isinstance(exc, httpx.HTTPError):
        return exc
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(str(exc) or "connect timed out", request=request)
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return httpx.ReadTimeout(str(exc) or "read timed out", request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(str(exc), request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(str(exc) or type(exc).__name__, request=request)
    if isinstance(exc, aiohttp.ClientError | OSError):
        kind = httpx.ConnectError if connecting else httpx.ReadError
        return kind(str(exc) or type(exc).__name__, request=request)
    return exc


@dataclass(frozen=True, slots=True)
class Upstream:
    """One provider's HTTP client and the transport instance beneath it."""

    client: httpx.AsyncClient
    transport: httpx.AsyncBaseTransport

    async def send(self, request: httpx.Request) -> httpx.Response:
        """Send a prebuilt request; the response streams and must be closed."""
        return await self.transport.handle_async_request(request)

    async def aclose(self) -> None:
        await self.client.aclose()  # closes the transport too


async def read_body(response: httpx.Response) -> bytes:
    """The whole body of a response from ``Upstream.send``.

    Both transports hand back a small body of known length in memory, as an
    ``httpx.ByteStream``: joined here without a pass through httpx's decoders,
    which a body the gateway asked for in identity encoding does not need.
    """
    stream = response.stream
    if isinstance(stream, httpx.ByteStream) and "content-encoding" not in response.headers:
        return b"".join(stream)
    return await response.aread()


def build_upstream(
    config: ProviderConfig, transport: httpx.AsyncBaseTransport | None = None
) -> Upstream:
    """The client for one provider; ``transport`` replaces the default (tests).

    The default is ``LeanTransport`` (gateway/httpclient/), chosen by
    measurement against this module's ``AiohttpTransport``: 33 against 113 µs
    of CPU per non-streamed call and 15.5 against 34.8 µs per chunk arriving
    one at a time. ``transport: aiohttp`` in a provider's config keeps the
    latter, for an upstream the lean client does not suit.
    """
    if transport is None:
        if config.transport == "aiohttp":
            transport = AiohttpTransport(max_connections=config.max_connections)
        else:
            transport = LeanTransport(max_connections=config.max_connections)
    client = httpx.AsyncClient(transport=transport, timeout=None, follow_redirects=False)
    return Upstream(client=client, transport=transport)
