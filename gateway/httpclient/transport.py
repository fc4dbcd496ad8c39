"""``LeanTransport``: the httpx transport over the pools; see the package docstring."""

from __future__ import annotations

import ssl

import httpx

from gateway.httpclient.connection import StreamedBody
from gateway.httpclient.pool import Pool

EAGER_BODY_MAX = 1024 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}


class LeanTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over asyncio Protocols; see the package docstring."""

    def __init__(
        self,
        *,
        max_connections: int = 256,
        keepalive_expiry: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._limit, self._expiry, self._ssl = max_connections, keepalive_expiry, ssl_context
        self._pools: dict[tuple[str, str, int], Pool] = {}
        self._closed = False

    def _pool(self, url: httpx.URL) -> Pool:
        scheme = url.scheme
        key = (scheme, url.host, url.port or _DEFAULT_PORTS.get(scheme, 80))
        pool = self._pools.get(key)
        if pool is None:
            if self._closed:
                raise RuntimeError("the transport is closed")
            if scheme not in _DEFAULT_PORTS:
                raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
            if scheme == "https" and self._ssl is None:
                self._ssl = ssl.create_default_context()
            tls = self._ssl if scheme == "https" else None
            pool = self._pools[key] = Pool(key[1], key[2], tls, self._limit, self._expiry)
        return pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        pool = self._pool(request.url)
        timeouts = request.extensions.get("timeout") or {}
        read = timeouts.get("read")
        data = await serialize(request)
        conn = await pool.acquire(timeouts.get("pool"), request)
        for attempt in (0, 1):
            if conn is None:
                conn = await pool.connect(timeouts.get("connect"), request)
            conn.start(request, data, read)
            await conn.until("head")
            if conn.error is None:
                break
            # Only the keep-alive race is retried: a timeout or a shutdown is not, as
            # the server may be working on the request.
            if attempt or not conn.dropped or not conn.served:
                pool.release(conn)
                raise conn.error
            # A reused connection the server had closed: once more on a fresh one,
            # in the same slot (another pooled one may be just as stale).
            conn.busy = False
            pool.close_keeping_slot(conn)
            conn = None
        length = conn.length
        if length is not None and length <= EAGER_BODY_MAX:
            await conn.until("complete")
            error, body = conn.error, conn.body
            status, headers = conn.status, conn.headers
            pool.release(conn)
            if error is not None:
                raise error
            content = body[0] if len(body) == 1 else b"".join(body)
            # In memory, but as a stream: Response(content=...) re-reads it through
            # httpx's decoders at once (~10 µs); read it with transport.read_body().
            return httpx.Response(
                status, headers=headers, stream=httpx.ByteStream(content), request=request
            )
        return httpx.Response(
            conn.status, headers=conn.headers, stream=StreamedBody(conn), request=request
        )

    async def aclose(self) -> None:
        self._closed = True
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close()


_SKIPPED = (b"content-length", b"transfer-encoding")


async def serialize(request: httpx.Request) -> bytes:
    """The whole request as one buffer: head, ``Content-Length`` and body."""
    stream = request.stream
    if isinstance(stream, httpx.ByteStream):
        body = b"".join(stream)  # in memory: no need for an async read
    else:
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = await request.aread()
    lines = [b"%s %s HTTP/1.1" % (request.method.encode(), request.url.raw_path)]
    for name, value in request.headers.raw:
        if len(name) in (14, 17) and name.lower() in _SKIPPED:
            continue
        lines.append(b"%s: %s" % (name, value))
    if body or request.method not in ("GET", "HEAD", "OPTIONS", "DELETE"):
        lines.append(b"Content-Length: %d" % len(body))
    head = b"\r\n".join(lines)
    if head.count(b"\n") != len(lines) - 1:
        raise httpx.LocalProtocolError("a header contains a line break", request=request)
    return b"%s\r\n\r\n%s" % (head, body) if body else head + b"\r\n\r\n"
