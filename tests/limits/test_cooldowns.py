"""gateway/limits/cooldowns.py: a cooldown one process starts reaches the others through Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from gateway.config import Cooldown
from gateway.errors import UpstreamUnavailable
from gateway.limits.cooldowns import SharedCooldowns
from gateway.limits.redis import RedisStore
from gateway.routing.state import RoutingState
from tests.limits.support import REDIS_URL

POLICY = Cooldown(failures=2, seconds=30)


@pytest.fixture
async def two_processes() -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    """Two stores on one Redis under one fresh prefix, as two gateway processes are."""
    prefix = f"gwtest-{uuid.uuid4().hex}:"
    a = RedisStore(REDIS_URL, prefix=prefix)
    b = RedisStore(REDIS_URL, prefix=prefix)
    await a.start()
    await b.start()
    if a.degraded:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}", pytrace=False)
    try:
        yield a, b
    finally:
        await a.command("DEL", f"{prefix}cooldowns")
        await a.aclose()
        await b.aclose()


async def test_a_cooldown_started_in_one_process_is_seen_by_another(
    two_processes: tuple[RedisStore, RedisStore],
) -> None:
    a, b = two_processes
    here, there = RoutingState(), RoutingState()
    here.board = SharedCooldowns(a)
    board_b = SharedCooldowns(b)

    for _ in range(POLICY.failures):  # two failures in a row on this process
        here.started("up/model-a")
        here.ended("up/model-a", UpstreamUnavailable("503"), POLICY)
    assert here["up/model-a"].cooling(time.time())
    assert not there["up/model-a"].cooling(time.time())

    for _ in range(50):  # the write is in the background: read until it has landed
        seen = await board_b.read()
        if seen:
            break
        await asyncio.sleep(0.02)
    assert [name for name, _ in seen] == ["up/model-a"]
    there.merge(seen)
    assert there["up/model-a"].cooling(time.time())
    assert there["up/model-a"].cooldown_until == pytest.approx(here["up/model-a"].cooldown_until)
    assert not there["up/model-b"].cooling(time.time())


async def test_a_cooldown_that_ended_is_dropped_and_a_longer_one_kept(
    two_processes: tuple[RedisStore, RedisStore],
) -> None:
    a, _ = two_processes
    board = SharedCooldowns(a)
    now = time.time()
    await board._write("up/over", now - 1)
    await board._write("up/long", now + 60)
    await board._write("up/long", now + 5)  # shorter: the longer one stays
    assert await board.read() == [("up/long", pytest.approx(now + 60))]
