"""gateway/limits/resp.py and the Redis store's admit: a command leaves before its caller waits.

The request path starts its admission, builds the upstream request, and only
then awaits the grant; these tests hold the event loop (a blocking sleep, no
await) and look at the real Redis from a second, synchronous client to see
that the command ran all the same.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import redis

from gateway.config import Limits
from gateway.limits.redis import RedisStore
from gateway.limits.resp import RedisConnection, Script
from tests.limits.support import REDIS_URL, admission, event, make_key

INCR = Script.of("return redis.call('INCRBY', KEYS[1], ARGV[1])")


@pytest.fixture
def prefix() -> str:
    return f"gwtest-{uuid.uuid4().hex}:"


@pytest.fixture
def observer(prefix: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc})", pytrace=False)
    yield client
    names = list(client.scan_iter(match=f"{prefix}*"))
    if names:
        client.delete(*names)
    client.close()


@pytest.fixture
async def connection() -> AsyncIterator[RedisConnection]:
    conn = RedisConnection(REDIS_URL, timeout=2)
    await conn.execute("SCRIPT", "LOAD", INCR.source)
    yield conn
    await conn.aclose()


def seen_within(check: Callable[[], bool], seconds: float = 2.0) -> bool:
    """Poll ``check`` with the event loop held (a blocking sleep, no await)."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        if check():
            return True
        time.sleep(0.005)
    return False


async def test_a_script_runs_before_its_caller_awaits_the_reply(
    connection: RedisConnection, observer: redis.Redis, prefix: str
) -> None:
    name = f"{prefix}counter"
    reply = connection.evalsha(INCR, [name], [5])
    assert seen_within(lambda: observer.get(name) == b"5")
    assert await reply == 5


async def test_calls_made_together_are_answered_in_order(
    connection: RedisConnection, observer: redis.Redis, prefix: str
) -> None:
    # The first goes out at once; the others, issued while its reply is pending,
    # leave together on the next turn of the loop. Each gets its own reply.
    name = f"{prefix}counter"
    replies = [connection.evalsha(INCR, [name], [step]) for step in (1, 10, 100, 1000)]
    assert await asyncio.gather(*replies) == [1, 11, 111, 1111]
    assert observer.get(name) == b"1111"


async def test_the_store_takes_the_lease_before_the_grant_is_awaited(
    observer: redis.Redis, prefix: str
) -> None:
    store = RedisStore(REDIS_URL, prefix=prefix)
    await store.start()
    try:
        key = make_key(Limits(max_parallel=2))
        await store.settle(await store.admit(admission(key)), event())  # the script is loaded
        pending = store.admit(admission(key))
        lease = store.keys.tagged(key.id, "lease")
        assert seen_within(lambda: observer.zcard(lease) == 1)
        grant = await pending
        assert grant.lease
        assert await store.in_flight(key.id) == 1
    finally:
        await store.aclose()
