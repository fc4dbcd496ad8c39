"""``AiohttpTransport``: an httpx transport over aiohttp's client, for ``transport: aiohttp``.

The alternative to ``LeanTransport`` for an upstream the lean client does not
suit. aiohttp's exceptions are mapped back to httpx's here, so nothing above
this module knows aiohttp exists. Imported only when a provider's config asks
for it (``gateway.transport.build_upstream``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import httpx
from yarl import URL

from gateway.httpclient.transport import EAGER_BODY_MAX

__all__ = ["AiohttpTransport"]

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
