"""One HTTP/1.1 connection (an asyncio Protocol fed to httptools' parser) and a body streamed from it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import httptools
import httpx

if TYPE_CHECKING:
    from gateway.httpclient.pool import Pool

_HIGH_WATER = 256 * 1024  # buffered stream bytes before we stop reading the socket
_NO_LIMIT = float("inf")
_MAX_HEAD = 64 * 1024  # bytes before the end of a response head


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; the state of its response in flight lives here too."""

    def __init__(self, pool: Pool) -> None:
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


class StreamedBody(httpx.AsyncByteStream):
    """A streamed body, straight from the connection's parser."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn: Connection | None = conn

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
