"""A lean HTTP/1.1 client transport: asyncio Protocols and httptools' response parser.

An ``httpx.AsyncBaseTransport`` (providers see only httpx, STYLE 4) without
what the gateway never uses: redirects, cookies, proxies, HTTP/2, request
bodies larger than memory, write timeouts.

- One keep-alive pool per (scheme, host, port) of at most ``max_connections``;
  callers beyond it queue (bounded by the ``pool`` timeout). A connection the
  server closed while idle is marked dead by ``connection_lost``.
- A request goes out in one ``transport.write``: head, ``Content-Length`` from
  the body, and the body.
- A body of known length up to 1 MiB comes back in memory (an ``httpx.ByteStream``),
  its connection pooled at once. Others stream as they arrive; ``aclose()`` pools the connection if the
  body was read to its end and aborts it otherwise, so an upstream sees an
  abandoned stream go at once.
- ``timeout`` extension: ``connect`` bounds connecting, ``read`` the wait for
  the head and every gap between body bytes, watched by one timer per
  connection re-armed only when it fires, not a timeout context per read.
- Failures surface as httpx exceptions only.

Retry: a request on a *reused* connection that the server closed before any
byte of the answer arrived (it closed it as we wrote: the keep-alive race) is
sent once more on a fresh connection. Not provably safe for non-idempotent
requests: a server that read the request and then died without a byte of
answer sees it twice. Nothing is retried after a byte of response, on a new
connection, after a read timeout (the server may still be working on it) or
when the transport is closing.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator

import httptools
import httpx

EAGER_BODY_MAX = 1024 * 1024
_HIGH_WATER = 256 * 1024  # buffered stream bytes before we stop reading the socket
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NO_LIMIT = float("inf")
_MAX_HEAD = 64 * 1024  # bytes before the end of a response head


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; the state of its response in flight lives here too."""

    def __init__(self, pool: _Pool) -> None:
        self.pool, self.loop, self.parser = pool, pool.loop, httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.dead = self.busy = self.in_pool = self.paused = False
        self.served = 0  # responses completed on this connection
        self.timer: asyncio.TimerHandle | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.error: Exception | None = None
        self.request: httpx.Request | None = None
        self.complete = self.head = self.framed = self.keep_alive = False
        self.dropped = False  # the server closed it before answering (the keep-alive race)
        self.received = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.read_timeout, self.length, self.status, self.last, self.timer_at = None, None, 0, 0, 0
        self.skip_body, self.buffered, self.high_water = False, 0, _NO_LIMIT

    def start(self, request: httpx.Request, data: bytes, read_timeout: float | None) -> None:
        self.busy, self.request, self.read_timeout = True, request, read_timeout
        self.head = self.complete = self.keep_alive = self.framed = False
        self.received = 0  # bytes of this response
        self.skip_body = request.method == "HEAD"
        self.status, self.length, self.error = 0, None, None
        self.dropped = False
        self.headers, self.body = [], []
        self.buffered, self.high_water = 0, _NO_LIMIT
        self.last = now = self.loop.time()
        if self.dead or self.transport is None or self.transport.is_closing():
            self._lost(None)
            return
        if read_timeout is not None and (self.timer is None or self.timer_at > now + read_timeout):
            self._arm(now + read_timeout)
        self.transport.write(data)

    async def wait(self) -> None:
        self.waiter = waiter = self.loop.create_future()
        await waiter

    async def until(self, flag: str) -> None:
        """Wait for the head or the whole body, or a failure; cancelled, drop the connection."""
        try:
            while not getattr(self, flag) and self.error is None:
                await self.wait()
        except BaseException:
            self.abort()
            self.pool.release(self)
            raise

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def fail(self, exc: Exception) -> None:
        if self.error is None and not self.complete:
            self.error = exc
        self.abort()
        self._wake()

    def abort(self) -> None:
        self.dead = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.abort()  # a no-op once the connection is lost

    def resume(self) -> None:
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.last = self.loop.time()
            self.transport.resume_reading()

    def _arm(self, at: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_at = at
        self.timer = self.loop.call_at(at, self._check)

    def _check(self) -> None:
        self.timer = None
        if not self.busy or self.complete or self.error is not None or self.read_timeout is None:
            return  # idle: the next exchange arms it again
        now = self.loop.time()
        if self.paused:  # the reader is behind, not the server
            self._arm(now + self.read_timeout)
        elif now >= self.last + self.read_timeout:
            phase = "a response body" if self.head else "the response"
            self.fail(httpx.ReadTimeout(f"timed out waiting for {phase}", request=self.request))
        else:
            self._arm(self.last + self.read_timeout)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.abort()
        # The parser holds our bound callbacks: break the cycle, so a closed
        # connection is freed at once rather than by the garbage collector.
        self.parser = None  # type: ignore[assignment]
        if self.in_pool:
            self.pool.drop_idle(self)
        elif self.busy:
            self._lost(exc)

    def _lost(self, exc: Exception | None) -> None:
        self.dead = True
        if not self.complete and self.error is None:
            if self.head and not self.framed and exc is None:
                self.complete = True  # a body delimited by the end of the connection
            elif isinstance(exc, OSError):
                self.dropped = not self.received
                self.error = httpx.ReadError(str(exc) or repr(exc), request=self.request)
            else:
                self.dropped = not self.received
                what = "the rest of the body" if self.received else "a response"
                self.error = httpx.RemoteProtocolError(
                    f"server disconnected without sending {what}", request=self.request
                )
        self._wake()

    def data_received(self, data: bytes) -> None:
        if not self.busy or self.complete:  # bytes nobody asked for: out of step
            self.keep_alive = False
            if not self.busy:
                self.abort()
            return
        self.received += len(data)
        self.last = self.loop.time()
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self.fail(httpx.RemoteProtocolError(f"bad response: {exc!r}", request=self.request))
            return
        if self.head:
            if self.buffered > self.high_water and not self.paused and self.transport:
                self.paused = True
                self.transport.pause_reading()
            self._wake()
        elif self.received > _MAX_HEAD:
            self.fail(httpx.RemoteProtocolError("response head too large", request=self.request))

    # httptools' callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head:
            return  # a trailer
        self.headers.append((name, value))
        size = len(name)  # llhttp has validated the framing headers
        if size == 14 and name.lower() == b"content-length":
            self.framed, self.length = True, int(value)
        elif size == 17 and name.lower() == b"transfer-encoding":
            self.framed = True

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        self.status = self.parser.get_status_code()
        if self.status < 200:
            return  # an interim answer (103 Early Hints): its end resets us
        self.head = True
        self.keep_alive = self.parser.should_keep_alive()
        if self.skip_body:  # the parser cannot be told about HEAD: finish, do not reuse
            self.complete, self.keep_alive, self.length = True, False, 0

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self.body.append(body)
            self.buffered += len(body)

    def on_message_complete(self) -> None:
        if self.complete:
            return
        if not self.head:  # interim answer done; the real one follows
            self.headers, self.framed, self.length = [], False, None
            return
        self.complete = True
        self.keep_alive = self.keep_alive and self.parser.should_keep_alive()


class _Pool:
    """Keep-alive connections to one origin, at most ``limit`` of them open or opening."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None, limit: int, expiry: float):
        self.loop = asyncio.get_running_loop()
        self.host, self.port, self.ssl = host, port, tls
        self.limit, self.expiry = limit, expiry
        self.count = 0  # connections open or being opened: the slots taken
        self.idle: list[_Connection] = []
        self.connections: set[_Connection] = set()
        self.waiters: deque[asyncio.Future[_Connection | None]] = deque()

    async def acquire(self, wait_limit: float | None, request: httpx.Request) -> _Connection | None:
        """A pooled connection, or None: a slot is ours and we must connect."""
        if self.idle:
            conn = self.idle.pop()
            conn.in_pool = False
            if not conn.dead and self.loop.time() - conn.last < self.expiry:
                return conn
            self.close_keeping_slot(conn)
            return None  # its slot is ours
        if self.count < self.limit:
            self.count += 1
            return None
        waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
        self.waiters.append(waiter)
        try:
            async with asyncio.timeout(wait_limit):
                return await waiter
        except BaseException as exc:
            if not waiter.done():
                waiter.cancel()
            elif not waiter.cancelled() and (handed := waiter.result()) is not None:
                self.release(handed)  # handed over as we left: pass it on
            elif not waiter.cancelled():
                self._free_slot()
            if isinstance(exc, TimeoutError):
                raise httpx.PoolTimeout("no connection free in the pool", request=request) from None
            raise

    async def connect(self, limit: float | None, request: httpx.Request) -> _Connection:
        """Open a connection in a slot already taken; the slot is freed if this fails."""
        try:
            async with asyncio.timeout(limit):
                name = self.host if self.ssl else None
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=name,
                )
        except BaseException as exc:
            self._free_slot()
            if isinstance(exc, TimeoutError):
                raise httpx.ConnectTimeout("timed out connecting", request=request) from None
            if isinstance(exc, OSError):
                raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
            raise
        self.connections.add(conn)
        return conn

    def release(self, conn: _Connection) -> None:
        """The exchange on ``conn`` is over: pool it if it can serve another, else close it."""
        conn.busy, conn.request = False, None
        if conn.dead or not (conn.complete and conn.keep_alive):
            self.discard(conn)
            return
        conn.served += 1
        conn.body = []
        conn.resume()
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                conn.busy = True  # handed over: the new owner starts its exchange
                waiter.set_result(conn)
                return
        conn.in_pool = True
        self.idle.append(conn)

    def discard(self, conn: _Connection) -> None:
        self.close_keeping_slot(conn)
        self._free_slot()

    def drop_idle(self, conn: _Connection) -> None:
        """A pooled connection closed by the server."""
        conn.in_pool = False
        self.idle.remove(conn)
        self.discard(conn)

    def close_keeping_slot(self, conn: _Connection) -> None:
        self.connections.discard(conn)
        if not conn.dead:
            conn.abort()

    def _free_slot(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to this waiter
                return
        self.count -= 1

    def close(self) -> None:
        for conn in self.idle:
            conn.in_pool = False
        for conn in list(self.connections):
            conn.fail(httpx.ReadError("transport closed", request=conn.request))
        self.connections.clear()
        self.idle.clear()
        while self.waiters:
            self.waiters.popleft().cancel()


class _Body(httpx.AsyncByteStream):
    """A streamed body, straight from the connection's parser."""

    __slots__ = ("_conn",)

    def __init__(self, conn: _Connection) -> None:
        self._conn: _Connection | None = conn

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            raise httpx.StreamClosed()
        conn.high_water = _HIGH_WATER
        while True:
            body = conn.body
            if body:
                conn.body = []
                conn.resume()
                yield body[0] if len(body) == 1 else b"".join(body)
            elif conn.complete:
                return
            elif conn.error is not None:
                raise conn.error
            else:  # conn.wait(), inlined: one coroutine less per chunk
                conn.waiter = waiter = conn.loop.create_future()
                await waiter

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.pool.release(conn)  # an unfinished body aborts the connection


class LeanTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over asyncio Protocols; see the module docstring."""

    def __init__(
        self,
        *,
        max_connections: int = 256,
        keepalive_expiry: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._limit, self._expiry, self._ssl = max_connections, keepalive_expiry, ssl_context
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._closed = False

    def _pool(self, url: httpx.URL) -> _Pool:
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
            pool = self._pools[key] = _Pool(key[1], key[2], tls, self._limit, self._expiry)
        return pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        pool = self._pool(request.url)
        timeouts = request.extensions.get("timeout") or {}
        read = timeouts.get("read")
        data = await _serialize(request)
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
            conn.status, headers=conn.headers, stream=_Body(conn), request=request
        )

    async def aclose(self) -> None:
        self._closed = True
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close()


_SKIPPED = (b"content-length", b"transfer-encoding")


async def _serialize(request: httpx.Request) -> bytes:
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
