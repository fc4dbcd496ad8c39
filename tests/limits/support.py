"""Helpers of the limits tests: keys, admissions, usage events, private Redis servers."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from gateway.config import Limits
from gateway.limits.base import Admission, Grant, LimitsState, Store, UsageEvent, today
from gateway.limits.keys import KeyRecord, hash_key, new_key_id
from tests.servers import free_port

REDIS_URL = "redis://127.0.0.1:6379/0"
# The stores of the tests keep the real lease TTL, so a stalled test machine never lets a
# lease expire under a test; a test that watches one expire asks for a short one.
LEASE_TTL_MS = 30_000
SHORT_LEASE_TTL_MS = 2_000  # still seconds: a check that it holds has them as slack


def make_key(
    limits: Limits | None = None,
    *,
    key_id: str | None = None,
    name: str = "test key",
    created_at: datetime | None = None,
) -> KeyRecord:
    return KeyRecord(
        id=key_id or new_key_id(),
        name=name,
        key_hint="sk-...test",
        limits=limits or Limits(),
        created_at=created_at or datetime.now(UTC),
    )


async def registered(store: Store, limits: Limits | None = None, **kw: object) -> KeyRecord:
    """A new key, stored in ``store``."""
    key = make_key(limits, **kw)  # type: ignore[arg-type]
    await store.put_key(key, hash_key(f"sk-secret-{key.id}"))
    return key


def with_limits(key: KeyRecord, limits: Limits) -> KeyRecord:
    """The same key (same id, so the same counters) with other limits."""
    return key.model_copy(update={"limits": limits})


def admission(key: KeyRecord, tokens: int = 0, cost: float = 0.0, calls: int = 1) -> Admission:
    return Admission(key, uuid.uuid4().hex, tokens, cost, calls)


def requests_left(answer: Grant | Exception) -> int:
    """What a grant's (or a refusal's) limits state leaves of the key's rpm."""
    state: LimitsState = answer.limits  # type: ignore[union-attr, assignment]
    return max(0, (state.rpm_limit or 0) - state.rpm_used)


def tokens_left(answer: Grant | Exception) -> int:
    """What a grant's (or a refusal's) limits state leaves of the key's tpm."""
    state: LimitsState = answer.limits  # type: ignore[union-attr, assignment]
    return max(0, (state.tpm_limit or 0) - state.tpm_used)


def event(
    model: str = "test-model",
    input_tokens: int = 0,
    output_tokens: int = 0,
    cost: float = 0.0,
    *,
    error: bool = False,
    day: str | None = None,
    cache_read: int = 0,
    cache_write: int = 0,
) -> UsageEvent:
    return UsageEvent(
        model, input_tokens, output_tokens, cost, error, day or today(), cache_read, cache_write
    )


class RedisServer:
    """A redis-server of a test's own on a free loopback port; restartable on that port."""

    def __init__(self, directory: Path, *extra: str, password: str | None = None) -> None:
        self.port = free_port()
        self.directory = directory
        self.extra = extra
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def start(self, *once: str, timeout: float = 5.0) -> RedisServer:
        """Start (again, on the same port, empty); ``once``: arguments for this run only."""
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed", pytrace=False)
        log = (self.directory / f"redis-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                *self.extra,
                *(("--requirepass", self.password) if self.password else ()),
                *once,
            ],
            cwd=self.directory,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        client = redis.Redis(
            port=self.port, password=self.password, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    pytest.fail(f"redis-server on port {self.port} exited", pytrace=False)
                try:
                    client.ping()
                    return self
                except (redis.ConnectionError, redis.TimeoutError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        finally:
            client.close()

    def client(self) -> redis.Redis:
        return redis.Redis(
            port=self.port, password=self.password, socket_timeout=2, socket_connect_timeout=2
        )

    def kill(self) -> None:
        """Gone at once, as in a crash: no shutdown, no goodbye to clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def pause(self) -> None:
        """Still accepting connections, never answering: a hung server."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class ReplyStall:
    """A loopback proxy in front of Redis that can hold Redis's replies back: commands
    still reach Redis and run, but their answers are late, as on a stalled network."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.flowing = asyncio.Event()  # cleared: replies are held
        self.flowing.set()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ReplyStall:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self.redis_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, held: bool) -> None:
            try:
                while data := await src.read(65536):
                    if held:
                        await self.flowing.wait()
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(client_r, redis_w, False), pump(redis_r, client_w, True))
