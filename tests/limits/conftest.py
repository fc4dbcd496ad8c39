"""Stores for the limits tests: both backends behind one fixture, and private Redis servers.

``store`` runs a test against the embedded store and against Redis (the one on
127.0.0.1:6379, under a prefix of its own that is deleted afterwards); ``stores``
makes more of the same backend, e.g. with a short lease TTL. A Redis that is
not there fails the redis case: a skipped case would prove nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from gateway.limits.base import Store
from gateway.limits.embedded import EmbeddedStore
from gateway.limits.redis import RedisStore
from tests.limits.support import LEASE_TTL_MS, REDIS_URL, RedisServer


async def _delete_prefix(client: aioredis.Redis, prefix: str) -> None:
    names = [name async for name in client.scan_iter(match=f"{prefix}*", count=500)]
    if names:
        await client.delete(*names)


StoreFactory = Callable[..., Awaitable[Store]]


@pytest.fixture(params=["embedded", "redis"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Makes started stores of one backend (the test runs once per backend); ``lease_ttl_ms``
    is the only choice. Each has data of its own, deleted or closed afterwards."""
    made: list[Store] = []
    prefixes: list[str] = []
    admin: aioredis.Redis | None = None
    if request.param == "redis":
        admin = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
        try:
            await admin.ping()
        except (redis.RedisError, OSError) as exc:
            await admin.aclose()
            pytest.fail(
                f"Redis is not reachable at {REDIS_URL} ({exc}); the redis backend cannot be "
                'tested. Start it: redis-server --daemonize yes --port 6379 --save "" '
                "--appendonly no",
                pytrace=False,
            )

    async def make(*, lease_ttl_ms: int = LEASE_TTL_MS) -> Store:
        store: Store
        if request.param == "embedded":
            store = EmbeddedStore(tmp_path / f"store-{len(made)}", lease_ttl_ms=lease_ttl_ms)
        else:
            prefixes.append(f"gwtest-{uuid.uuid4().hex}:")
            store = RedisStore(REDIS_URL, prefix=prefixes[-1], lease_ttl_ms=lease_ttl_ms)
        await store.start()
        made.append(store)
        return store

    try:
        yield make
    finally:
        for store in made:
            await store.aclose()
        if admin is not None:
            for prefix in prefixes:
                await _delete_prefix(admin, prefix)
            await admin.aclose()


@pytest.fixture
async def store(stores: StoreFactory) -> Store:
    """A started store of each backend, with the real lease TTL."""
    return await stores()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Starts redis-servers (extra arguments as given); every one is stopped afterwards."""
    servers: list[RedisServer] = []

    def start(*extra: str, password: str | None = None) -> RedisServer:
        server = RedisServer(tmp_path, *extra, password=password)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()
