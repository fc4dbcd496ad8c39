"""Keep-alive connections to one origin, bounded, with a queue for callers beyond the bound."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

import httpx

from gateway.httpclient.connection import Connection


class Pool:
    """Keep-alive connections to one origin, at most ``limit`` of them open or opening."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None, limit: int, expiry: float):
        self.loop = asyncio.get_running_loop()
        self.host, self.port, self.ssl = host, port, tls
        self.limit, self.expiry = limit, expiry
        self.count = 0  # connections open or being opened: the slots taken
        self.idle: list[Connection] = []
        self.connections: set[Connection] = set()
        self.waiters: deque[asyncio.Future[Connection | None]] = deque()

    async def acquire(self, wait_limit: float | None, request: httpx.Request) -> Connection | None:
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
        waiter: asyncio.Future[Connection | None] = self.loop.create_future()
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

    async def connect(self, limit: float | None, request: httpx.Request) -> Connection:
        """Open a connection in a slot already taken; the slot is freed if this fails."""
        try:
            async with asyncio.timeout(limit):
                name = self.host if self.ssl else None
                _, conn = await self.loop.create_connection(
                    lambda: Connection(self),
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

    def release(self, conn: Connection) -> None:
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

    def discard(self, conn: Connection) -> None:
        self.close_keeping_slot(conn)
        self._free_slot()

    def drop_idle(self, conn: Connection) -> None:
        """A pooled connection closed by the server."""
        conn.in_pool = False
        self.idle.remove(conn)
        self.discard(conn)

    def close_keeping_slot(self, conn: Connection) -> None:
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
