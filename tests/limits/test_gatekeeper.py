"""The gatekeeper with Redis gone: how long a key's last-known record is trusted.

Two gatekeepers share one redis-server of the test's own, as two instances
would: A reaches it directly, B through a proxy that can hold Redis's replies
(a network partition, for B only). A key revoked on A while B cannot see Redis
keeps working on B only until ``server.stale_key_seconds`` after B last read
it; from then on B answers 503, and once Redis is back, 401.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from gateway.config import Limits, Settings
from gateway.errors import InvalidAPIKey, StoreUnavailable
from gateway.limits.gatekeeper import KEY_CACHE_SECONDS, Gatekeeper
from gateway.limits.redis import RedisStore
from tests.limits.support import RedisServer, ReplyStall

STALE = 4.0  # seconds; the checks on either side of it keep more than one of slack


def settings(**server: Any) -> Settings:
    return Settings.model_validate(
        {
            "providers": {"local": {"type": "mock"}},
            "models": {"m": {"deployments": [{"provider": "local", "model": "mock-chat"}]}},
            "server": server,
        }
    )


@asynccontextmanager
async def gatekeeper(url: str, prefix: str, **server: Any) -> AsyncIterator[Gatekeeper]:
    keeper = Gatekeeper(RedisStore(url, prefix=prefix), settings(**server))
    await asyncio.wait_for(keeper.start(), 2)
    try:
        yield keeper
    finally:
        await asyncio.wait_for(keeper.aclose(), 5)


async def _wait_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


async def test_a_key_revoked_elsewhere_stops_working_within_the_stale_bound(
    redis_server: Callable[..., RedisServer],
) -> None:
    server = redis_server()
    prefix = f"gwtest-{uuid.uuid4().hex}:"
    async with (
        ReplyStall(server.port) as partition,
        gatekeeper(server.url, prefix) as a,
        gatekeeper(f"redis://127.0.0.1:{partition.port}/0", prefix, stale_key_seconds=STALE) as b,
    ):
        secret, record = await a.create_key(
            name="revoked-elsewhere", models=["*"], limits=Limits(), expires_at=None, metadata={}
        )
        assert (await b.authenticate(secret)).id == record.id
        confirmed = time.monotonic()  # when B last read the key from Redis

        partition.flowing.clear()  # B's calls now get no answer
        await a.revoke_key(record.id)
        with pytest.raises(InvalidAPIKey):
            await a.authenticate(secret)

        # Past B's key cache, within the bound: B cannot ask Redis, so it goes on with
        # the record it last read, revocation unseen.
        await _wait_until(confirmed + KEY_CACHE_SECONDS + 0.2)
        assert (await b.authenticate(secret)).id == record.id
        assert time.monotonic() < confirmed + STALE, "too slow to check inside the bound"
        assert await b.store.status() == "degraded"

        # Past the bound: not trusted any more, so refused as a key it cannot check.
        await _wait_until(confirmed + STALE + 0.2)
        with pytest.raises(StoreUnavailable):
            await b.authenticate(secret)

        partition.flowing.set()
        deadline = time.monotonic() + 5
        while await b.store.status() != "ok":
            assert time.monotonic() < deadline, "B did not see Redis come back"
            await asyncio.sleep(0.05)
        with pytest.raises(InvalidAPIKey) as refused:
            await b.authenticate(secret)
        assert "revoked" in refused.value.message


async def test_fail_closed_trusts_no_cached_record(
    redis_server: Callable[..., RedisServer],
) -> None:
    server = redis_server()
    async with gatekeeper(
        server.url, f"gwtest-{uuid.uuid4().hex}:", fail_mode="closed", stale_key_seconds=STALE
    ) as keeper:
        secret, _ = await keeper.create_key(
            name="closed", models=["*"], limits=Limits(), expires_at=None, metadata={}
        )
        await keeper.authenticate(secret)
        confirmed = time.monotonic()
        server.kill()
        await _wait_until(confirmed + KEY_CACHE_SECONDS + 0.2)
        with pytest.raises(StoreUnavailable):
            await keeper.authenticate(secret)
