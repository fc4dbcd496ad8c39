"""Redis going away and coming back: noticed fast, never a hang, nothing lost
(docs/limits.md, "When the store is down").

Each test has a redis-server of its own, which it kills (a crash), pauses with
SIGSTOP (a hung server), fills up (OOM) or feeds a bad key, then brings back on
the same port, empty. Every store call is bounded with
``asyncio.wait_for(..., 2)``: a call that hangs fails the test instead of
hanging it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
import redis

from gateway.config import Limits
from gateway.errors import RateLimited, StoreUnavailable, TooManyInFlight
from gateway.limits.keys import hash_key
from gateway.limits.redis import RedisStore
from tests.limits.support import RedisServer, ReplyStall, admission, event, make_key, requests_left

T = TypeVar("T")


async def bounded(call: Awaitable[T]) -> T:
    return await asyncio.wait_for(call, 2)


async def eventually_ok(store: RedisStore, within: float = 5.0) -> float:
    started = time.monotonic()
    while await store.status() != "ok":
        assert time.monotonic() - started < within, f"still {await store.status()!r}"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def new_store(server: RedisServer, *, fail_open: bool) -> RedisStore:
    return RedisStore(
        server.url, fail_open=fail_open, prefix=f"gwtest-{uuid.uuid4().hex}:", lease_ttl_ms=5_000
    )


@asynccontextmanager
async def running(store: RedisStore) -> AsyncIterator[RedisStore]:
    """``store`` started (also against a dead Redis), and closed however the test ends."""
    await bounded(store.start())
    try:
        yield store
    finally:
        await bounded(store.aclose())


async def test_fail_open_serves_locally_buffers_usage_and_recovers(
    redis_server: Callable[..., RedisServer],
) -> None:
    server = redis_server()
    async with running(new_store(server, fail_open=True)) as store:
        key = make_key(Limits(rpm=100, max_parallel=2))
        in_flight = await bounded(store.admit(admission(key)))  # admitted by Redis
        assert not in_flight.local
        assert await store.status() == "ok"

        server.kill()

        started = time.monotonic()
        grant = await bounded(store.admit(admission(key)))
        assert time.monotonic() - started < 1.5  # noticed within the socket timeout (0.25 s)
        assert grant.local
        assert await store.status() == "degraded"
        assert (await bounded(store.admit(admission(key)))).local  # no retrying Redis each time

        # Per-process limits while Redis is away: max_parallel 2 holds locally.
        with pytest.raises(TooManyInFlight):
            await bounded(store.admit(admission(key)))

        # Usage settled meanwhile, also of the request Redis admitted, is buffered.
        await bounded(store.settle(grant, [event("model-a", 10, 5, 0.25, cache_read=6)]))
        await bounded(
            store.settle(in_flight, [event("model-b", 3, 4, 0.125, error=True, cache_write=2)])
        )
        await bounded(store.renew([grant, in_flight]))  # renewing while down does not hang
        with pytest.raises(StoreUnavailable):
            await bounded(store.usage(key.id))

        server.start()  # the same port, no data
        await eventually_ok(store)

        doc = await bounded(store.usage(key.id))
        assert (doc.requests, doc.input_tokens, doc.output_tokens, doc.errors) == (2, 13, 9, 1)
        assert (doc.cache_read_tokens, doc.cache_write_tokens) == (6, 2)
        assert doc.cost_usd == pytest.approx(0.375)
        assert [m.model for m in doc.by_model] == ["model-a", "model-b"]
        assert [(m.cache_read_tokens, m.cache_write_tokens) for m in doc.by_model] == [
            (6, 0),
            (0, 2),
        ]

        # Back on the shared limiter: Redis admits again (its scripts were reloaded).
        again = await bounded(store.admit(admission(key)))
        assert not again.local
        assert requests_left(again) == 99  # Redis came back empty
        await bounded(store.settle(again, [event("model-a", 1, 1, 0.0)]))
        assert (await bounded(store.usage(key.id))).requests == 3


async def test_fail_closed_refuses_while_down_and_recovers(
    redis_server: Callable[..., RedisServer],
) -> None:
    server = redis_server()
    async with running(new_store(server, fail_open=False)) as store:
        key = make_key(Limits(rpm=100))
        held = await bounded(store.admit(admission(key)))
        assert not held.local

        server.kill()

        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as refused:
                await bounded(store.admit(admission(key)))
            assert time.monotonic() - started < 1.5
            assert refused.value.status == 503
            assert refused.value.code == "store_unavailable"
        assert await store.status() == "unavailable"
        await bounded(store.settle(held, [event("model-a", 7, 8, 0.5)]))  # buffered, not lost

        server.start()
        await eventually_ok(store)
        grant = await bounded(store.admit(admission(key)))
        assert not grant.local
        doc = await bounded(store.usage(key.id))
        assert (doc.requests, doc.input_tokens, doc.output_tokens) == (1, 7, 8)
        assert doc.cost_usd == pytest.approx(0.5)


async def test_a_store_started_while_redis_is_down_recovers(
    redis_server: Callable[..., RedisServer],
) -> None:
    server = redis_server()
    server.kill()
    async with running(new_store(server, fail_open=True)) as store:
        assert await store.status() == "degraded"
        key = make_key(Limits(rpm=5))
        assert (await bounded(store.admit(admission(key)))).local
        server.start()
        await eventually_ok(store)
        assert not (await bounded(store.admit(admission(key)))).local


def drop_connections(server: RedisServer) -> None:
    """Close every client connection, as an idle timeout or a load balancer would."""
    admin = redis.Redis(port=server.port, password=server.password, socket_timeout=2)
    admin.client_kill_filter(_type="normal", skipme=True)
    admin.close()


@pytest.mark.parametrize(
    ("db", "password"), [(0, None), (3, None), (0, "s3cret")], ids=["plain", "db3", "password"]
)
async def test_a_hung_redis_never_hangs_a_call(
    redis_server: Callable[..., RedisServer], db: int, password: str | None
) -> None:
    # The store's connection was closed while all was well, then Redis hangs (SIGSTOP).
    # A hung Redis still completes TCP handshakes, so reconnecting "works" and only a
    # command shows it is gone. URLs with a database or a password send one (SELECT,
    # AUTH) while connecting: that one must be bounded like every other.
    server = redis_server(password=password)
    async with running(
        RedisStore(server.url_for(db), prefix=f"gwtest-{uuid.uuid4().hex}:", lease_ttl_ms=5_000)
    ) as store:
        key = make_key(Limits(rpm=100))
        await bounded(store.put_key(key, hash_key("sk-hung")))
        assert not (await bounded(store.admit(admission(key)))).local

        drop_connections(server)
        await asyncio.sleep(0.1)
        server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await bounded(store.key_by_hash(hash_key("sk-hung")))
            assert time.monotonic() - started < 1.5
            assert await bounded(store.status()) == "degraded"

            grant = await bounded(store.admit(admission(key)))
            assert grant.local
            await bounded(store.settle(grant, [event("model-a", 2, 3, 0.0)]))
            with pytest.raises(StoreUnavailable):
                await bounded(store.usage(key.id))
        finally:
            server.resume()

        await eventually_ok(store)
        assert (await bounded(store.key_by_hash(hash_key("sk-hung")))).id == key.id
        again = await bounded(store.admit(admission(key)))
        assert not again.local
        doc = await bounded(store.usage(key.id))
        assert (doc.requests, doc.input_tokens, doc.output_tokens) == (1, 2, 3)


async def test_a_cancelled_caller_does_not_fail_the_others(
    redis_server: Callable[..., RedisServer],
) -> None:
    # Two calls wait for the same reconnect; the first is cancelled (its client went
    # away). The other was not cancelled, so it must get an answer, not CancelledError.
    # (Database 3, so connecting includes a SELECT that a hung Redis leaves unanswered.)
    server = redis_server()
    async with running(
        RedisStore(server.url_for(3), prefix=f"gwtest-{uuid.uuid4().hex}:")
    ) as store:
        key = make_key(Limits(rpm=100))
        await bounded(store.admit(admission(key)))
        drop_connections(server)
        await asyncio.sleep(0.1)
        server.pause()
        try:
            first = asyncio.create_task(store.key_by_hash(hash_key("sk-a")))
            second = asyncio.create_task(store.key_by_hash(hash_key("sk-b")))
            await asyncio.sleep(0.05)  # both are waiting for the reconnect
            first.cancel()
            (outcome,) = await asyncio.wait_for(asyncio.gather(second, return_exceptions=True), 2)
            assert not second.cancelled()
            assert isinstance(outcome, StoreUnavailable), repr(outcome)
        finally:
            server.resume()


async def test_recovery_outlasts_a_redis_that_refuses_writes(
    redis_server: Callable[..., RedisServer],
) -> None:
    # Redis comes back but answers errors for a while (full: OOM; a restart with data:
    # LOADING). Recovery must keep trying, not give up for good on the first error.
    server = redis_server()
    async with running(new_store(server, fail_open=True)) as store:
        key = make_key(Limits(rpm=100))
        server.kill()
        grant = await bounded(store.admit(admission(key)))
        assert grant.local
        await bounded(store.settle(grant, [event("model-a", 4, 6, 0.0)]))

        server.start("--maxmemory", "1")  # every write is refused with OOM
        await asyncio.sleep(1.5)  # a few recovery attempts meet the error
        assert await store.status() == "degraded"  # usage not written: still degraded

        admin = redis.Redis(port=server.port, socket_timeout=2)
        admin.config_set("maxmemory", 0)
        admin.close()
        await eventually_ok(store)
        doc = await bounded(store.usage(key.id))
        assert (doc.requests, doc.input_tokens, doc.output_tokens) == (1, 4, 6)


async def test_a_partly_failed_flush_resends_only_what_failed(
    redis_server: Callable[..., RedisServer],
) -> None:
    # Buffered usage of two keys; writing one key's fails (its usage hash is a string:
    # WRONGTYPE). The other's is written once and never again, however often the
    # failed part is retried; once the fault is gone, the rest is written too.
    server = redis_server()
    prefix = f"gwtest-{uuid.uuid4().hex}:"
    store = RedisStore(server.url, prefix=prefix, lease_ttl_ms=5_000)
    await store.start()
    admin = redis.Redis(port=server.port, socket_timeout=2)
    try:
        good, bad, trigger = make_key(), make_key(), make_key()
        poisoned = store.keys.tagged(bad.id, "usage")
        admin.set(poisoned, "not a hash")

        server.pause()
        try:
            assert (await bounded(store.admit(admission(trigger)))).local
            for grant_key in (good, bad, good, bad):
                grant = await bounded(store.admit(admission(grant_key)))
                await bounded(store.settle(grant, [event("model-a", 1, 1, 0.0)]))
        finally:
            server.resume()

        await asyncio.sleep(2.0)  # several recovery attempts
        assert await store.status() == "degraded"  # not all written yet
        # The store answers nothing while degraded: read the good key's counters directly.
        written = admin.hgetall(store.keys.tagged(good.id, "usage"))
        assert sum(int(v) for f, v in written.items() if f.endswith(b"|requests")) == 2

        admin.delete(poisoned)
        await eventually_ok(store)
        assert (await bounded(store.usage(good.id))).requests == 2
        assert (await bounded(store.usage(bad.id))).requests == 2
    finally:
        admin.close()
        await bounded(store.aclose())


async def test_a_settle_written_back_releases_its_reservation_in_its_own_day(
    redis_server: Callable[..., RedisServer],
) -> None:
    # A request Redis admitted reserved its worst-case cost; its settle came while Redis
    # hung, was buffered, and written back after midnight (the event is dated the day
    # before). Written back, it must still release the reservation, and its real cost
    # must count in the day it was spent: today's budget is then whole again.
    server = redis_server()
    async with running(new_store(server, fail_open=True)) as store:
        key = make_key(Limits(budget_usd=1.0, budget_period="day"))
        reserved = await bounded(store.admit(admission(key, cost=0.5)))
        assert not reserved.local
        yesterday = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")

        server.pause()
        try:
            await bounded(store.settle(reserved, [event("model-a", 10, 5, 0.25, day=yesterday)]))
            assert await store.status() == "degraded"  # buffered, not written
        finally:
            server.resume()
        await eventually_ok(store)

        # Today: nothing spent and nothing held. Had the 0.5 stayed held, or the 0.25
        # counted today, 0.75 more held would reach the budget and refuse the next one.
        held = await bounded(store.admit(admission(key, cost=0.75)))
        assert not held.local
        assert not (await bounded(store.admit(admission(key, cost=0.0625)))).local
        doc = await bounded(store.usage(key.id))
        assert [(d.day, d.cost_usd) for d in doc.by_day] == [(yesterday, 0.25)]


async def test_a_redis_still_loading_its_data_is_unavailable_not_an_error() -> None:
    # A restarted Redis answers "-LOADING" until its data is in memory: that is the
    # store being unavailable (503, or local limits when failing open), not a 500.
    async def loading(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(4096):
            writer.write(b"-LOADING Redis is loading the dataset in memory\r\n")
        writer.close()

    server = await asyncio.start_server(loading, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisStore(f"redis://127.0.0.1:{port}/0", prefix=f"gwtest-{uuid.uuid4().hex}:")
    try:
        with pytest.raises(StoreUnavailable):
            await bounded(store.key_by_hash(hash_key("sk-loading-0001")))
        assert await store.status() == "degraded"
        assert (await bounded(store.admit(admission(make_key())))).local
    finally:
        await bounded(store.aclose())
        server.close()
        await server.wait_closed()


async def test_an_admit_whose_reply_was_lost_gives_back_its_lease_and_budget(
    redis_server: Callable[..., RedisServer],
) -> None:
    # Redis runs the admit (a lease and half the day's budget taken) but its reply is held
    # past the timeout: the gateway admits on its local limits instead. When Redis is back,
    # that request's settle must give back what the lost admit took in Redis, or the key
    # would be short of a slot for the lease's life and of the budget for the whole day.
    server = redis_server()
    async with ReplyStall(server.port) as stall:
        store = RedisStore(
            f"redis://127.0.0.1:{stall.port}/0",
            fail_open=True,
            prefix=f"gwtest-{uuid.uuid4().hex}:",
            lease_ttl_ms=30_000,
        )
        async with running(store):
            key = make_key(Limits(max_parallel=1, budget_usd=1.0, budget_period="day"))
            await bounded(store.admit(admission(make_key())))  # the scripts are loaded
            stall.flowing.clear()
            lost = await bounded(store.admit(admission(key, cost=0.5)))
            stall.flowing.set()
            assert lost.local
            await bounded(store.settle(lost, [event("model-a", 10, 5, 0.1)]))
            await eventually_ok(store)

            # The slot is free (the lease would hold it for 30 s) and nothing is held
            # of the budget: 0.1 spent, so 0.5 held leaves room for one more. Had the
            # lost admit's 0.5 stayed held, the second would be refused.
            again = await bounded(store.admit(admission(key, cost=0.5)))
            assert not again.local
            await bounded(store.settle(again, [event("model-a", 1, 1, 0.0)]))
            wide = key.model_copy(update={"limits": Limits(budget_usd=1.0, budget_period="day")})
            assert not (await bounded(store.admit(admission(wide, cost=0.5)))).local
            assert not (await bounded(store.admit(admission(wide, cost=0.5)))).local
            with pytest.raises(RateLimited):  # 0.1 spent + 1.0 held
                await bounded(store.admit(admission(wide, cost=0.5)))
            doc = await bounded(store.usage(key.id))
            assert (doc.requests, doc.cost_usd) == (2, pytest.approx(0.1))
