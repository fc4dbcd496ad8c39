"""A lean, pipelined Redis connection for the request path.

Every request makes two Redis calls (admit, settle), so their cost is the
gateway's. redis-py's asyncio client spends most of each call outside Redis:
a pool checkout and release, an ``asyncio.wait_for`` per socket operation,
retry wrappers and command packing — about 78 µs of CPU per call against 30
µs here (README.md, "Performance"). This keeps one connection per process and lets
any number of calls be in flight on it at once (Redis answers in order, so
replies are matched to callers first-in first-out), packs and parses with
hiredis, and bounds every call with ONE watchdog per connection instead of a
timer per call: a reply older than ``timeout`` means the connection is dead,
every caller gets ``RedisDown`` at once, and the next call reconnects.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import hiredis


class RedisDown(ConnectionError):
    """Redis did not answer: refused, closed, or slower than the timeout."""


class ReplyError(Exception):
    """Redis answered with an error."""


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script, called by its SHA1 and loaded on demand (also after a Redis restart)."""

    source: str
    sha: str

    @classmethod
    def of(cls, source: str) -> Script:
        return cls(source, hashlib.sha1(source.encode()).hexdigest())


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        # Kept: on Python 3.11 every asyncio.get_running_loop() is a getpid() system call.
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(replyError=ReplyError)
        self.waiters: deque[tuple[asyncio.Future[object], float]] = deque()
        self.lost = False
        self._outgoing: list[bytes] = []

    def write(self, data: bytes) -> None:
        """Queue a command; everything queued in one loop iteration goes in one write.

        Each write to Redis is a system call that also wakes Redis; under load
        many requests issue their command in the same iteration, and corking
        them saves both.
        """
        if not self._outgoing:
            self.loop.call_soon(self._flush)
        self._outgoing.append(data)

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if self.transport is not None and not self.lost:
            self.transport.write(outgoing[0] if len(outgoing) == 1 else b"".join(outgoing))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader, waiters = self.reader, self.waiters
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            if not waiters:  # a reply nobody waits for: the stream is out of step
                self.fail(RedisDown("unexpected reply from Redis"))
                return
            future, _ = waiters.popleft()
            if not future.done():
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisDown(f"connection to Redis lost: {exc or 'closed'}"))

    def fail(self, exc: Exception) -> None:
        self.lost = True
        while self.waiters:
            future, _ = self.waiters.popleft()
            if not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()


@dataclass(frozen=True, slots=True)
class Credentials:
    """How every connection of a client introduces itself (kept out of reprs and logs)."""

    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    ssl: ssl.SSLContext | None = field(default=None, repr=False)


class RedisConnection:
    """One pipelined connection to one Redis node, that reconnects on demand. Safe for
    concurrent callers."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        credentials: Credentials = Credentials(),
        db: int = 0,
        timeout: float = 0.25,
    ) -> None:
        self.address = (host, port)
        self.credentials = credentials
        self.db = db
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        host, port = self.address
        return f"{host}:{port}"

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        hello: list[tuple[object, ...]] = []
        login = self.credentials
        if login.password is not None:
            auth = (login.username, login.password) if login.username else (login.password,)
            hello.append(("AUTH", *auth))
        if self.db:
            hello.append(("SELECT", self.db))
        protocol: _Protocol | None = None
        try:
            # The handshake is bounded as a whole: a hung Redis still accepts connections.
            async with asyncio.timeout(self.timeout):
                _, protocol = await loop.create_connection(_Protocol, *self.address, ssl=login.ssl)
                for command in hello:
                    await self._send(protocol, command)
        except (OSError, TimeoutError) as exc:
            if protocol is not None:
                protocol.fail(RedisDown("handshake with Redis failed"))
            raise RedisDown(
                f"cannot connect to Redis at {self.name}: {exc or type(exc).__name__}"
            ) from exc
        except ReplyError as exc:
            # WRONGPASS, NOAUTH, an unknown user: Redis's words name no secret.
            protocol.fail(RedisDown("handshake with Redis failed"))  # type: ignore[union-attr]
            raise RedisDown(f"Redis at {self.name} refused the gateway's login: {exc}") from None
        except BaseException:
            if protocol is not None:
                protocol.fail(RedisDown("handshake with Redis failed"))
            raise
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.create_task(self._watch(), name="gateway-redis-watchdog")
        return protocol

    def _connected(self, future: asyncio.Future[_Protocol]) -> None:
        self._connecting = None
        if not future.cancelled() and future.exception() is None:
            self._protocol = future.result()

    async def _ready(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and not protocol.lost:
            return protocol
        # One reconnect at a time, shared: a caller that is cancelled stops waiting for
        # it, but does not cancel it for the others.
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    async def _send(self, protocol: _Protocol, args: tuple[object, ...]) -> object:
        loop = protocol.loop
        future = loop.create_future()
        protocol.waiters.append((future, loop.time()))
        protocol.write(hiredis.pack_command(args))  # C: a third of the Python's cost
        reply = await future
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def execute(self, *args: object) -> object:
        """One command; raises ``RedisDown`` or ``ReplyError``."""
        return await self._send(await self._ready(), args)

    async def execute_asking(self, *args: object) -> object:
        """``args`` right behind an ``ASKING`` (a cluster slot being migrated here): both
        leave in the same write, so nothing of another caller comes between them."""
        protocol = await self._ready()
        loop = protocol.loop
        asked, answered = loop.create_future(), loop.create_future()
        now = loop.time()
        protocol.waiters.append((asked, now))
        protocol.waiters.append((answered, now))
        protocol.write(hiredis.pack_command(("ASKING",)) + hiredis.pack_command(args))
        for reply in (await asked, await answered):
            if isinstance(reply, ReplyError):
                raise reply
        return answered.result()

    async def evalsha(
        self, script: Script, keys: Sequence[str], args: Sequence[object], *, asking: bool = False
    ) -> object:
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            if asking:
                return await self.execute_asking(*command)
            # The request path's call (two per request): straight to the connection.
            return await self._send(await self._ready(), command)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        # A fresh or restarted Redis (or a cluster node that never ran it): load it and
        # run it once more.
        await self.execute("SCRIPT", "LOAD", script.source)
        return await (self.execute_asking(*command) if asking else self.execute(*command))

    async def ping(self) -> None:
        """Whether this Redis answers, as ``RedisDown`` (or a ``ReplyError``) if not."""
        await self.execute("PING")

    async def _watch(self) -> None:
        """Fail the connection when its oldest call has waited longer than the timeout."""
        interval = self.timeout / 4
        while True:
            await asyncio.sleep(interval)
            protocol = self._protocol
            if protocol is None or protocol.lost or not protocol.waiters:
                continue
            _, sent_at = protocol.waiters[0]
            if asyncio.get_running_loop().time() - sent_at > self.timeout:
                protocol.fail(
                    RedisDown(f"Redis did not answer within {self.timeout * 1000:.0f} ms")
                )

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
