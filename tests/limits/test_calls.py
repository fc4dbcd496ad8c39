"""One admission, several model calls (docs/limits.md, "Several calls under one admission").

A fan-out request admits one call per model at once, all or none: rpm and
max_parallel count each call; tokens and cost are the calls' totals. Its one
settle takes one usage event per call that reached an upstream. The conformance
tests run on both stores; the last ones on the Redis store's local fallback and
on the Redis store alone. Costs are binary fractions, so sums are exact.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from gateway.config import Limits
from gateway.errors import QuotaExceeded, RateLimited, TooManyInFlight
from gateway.limits.base import Store, today
from gateway.limits.redis import RedisStore
from tests.limits.conftest import StoreFactory
from tests.limits.support import (
    SHORT_LEASE_TTL_MS,
    RedisServer,
    ReplyStall,
    admission,
    event,
    make_key,
    registered,
    requests_left,
    tokens_left,
    with_limits,
)

SHORT_TTL = SHORT_LEASE_TTL_MS / 1000


# ---------------------------------------------------------------- rpm


async def test_a_three_call_admission_takes_three_of_rpm_all_or_none(store: Store) -> None:
    key = await registered(store, Limits(rpm=5))
    grant = await store.admit(admission(key, calls=3))
    assert requests_left(grant) == 2

    # Two left: three calls are refused whole, retryable, and take nothing.
    for _ in range(2):
        with pytest.raises(RateLimited) as refused:
            await store.admit(admission(key, calls=3))
        error = refused.value
        assert type(error) is RateLimited
        assert error.code == "rate_limit_exceeded"
        assert 1 <= int(error.response_headers()["retry-after"]) <= 60
        assert requests_left(error) == 2
    grant = await store.admit(admission(key, calls=2))
    assert requests_left(grant) == 0
    with pytest.raises(RateLimited):
        await store.admit(admission(key))


async def test_more_calls_than_the_whole_rpm_is_a_quota_error(store: Store) -> None:
    key = await registered(store, Limits(rpm=2))
    with pytest.raises(QuotaExceeded) as refused:
        await store.admit(admission(key, calls=3))
    assert refused.value.code == "insufficient_quota"
    assert refused.value.status == 429
    assert refused.value.response_headers()["x-should-retry"] == "false"
    assert "retry-after" not in refused.value.response_headers()
    grant = await store.admit(admission(key, calls=2))  # the refusal took nothing
    assert requests_left(grant) == 0


# ---------------------------------------------------------------- max_parallel


async def test_max_parallel_counts_each_call_and_settle_releases_them_all(store: Store) -> None:
    key = await registered(store, Limits(max_parallel=4))
    fan_out = await store.admit(admission(key, calls=3))
    assert (await store.standing(key)).in_flight == 3

    with pytest.raises(TooManyInFlight) as refused:
        await store.admit(admission(key, calls=2))
    assert refused.value.code == "max_parallel_exceeded"
    assert refused.value.response_headers()["retry-after"] == "1"
    assert (await store.standing(key)).in_flight == 3  # refused whole: no lease taken
    single = await store.admit(admission(key))
    assert (await store.standing(key)).in_flight == 4

    await store.settle(fan_out, [event("model-a"), event("model-b"), event("model-c")])
    assert (await store.standing(key)).in_flight == 1
    await store.settle(single, [event()])
    assert (await store.standing(key)).in_flight == 0
    await store.admit(admission(key, calls=4))
    assert (await store.standing(key)).in_flight == 4


async def test_more_calls_than_max_parallel_is_a_quota_error(store: Store) -> None:
    key = await registered(store, Limits(max_parallel=2))
    with pytest.raises(QuotaExceeded) as refused:
        await store.admit(admission(key, calls=3))
    assert refused.value.code == "insufficient_quota"
    assert refused.value.response_headers()["x-should-retry"] == "false"
    assert (await store.standing(key)).in_flight == 0
    await store.admit(admission(key, calls=2))
    assert (await store.standing(key)).in_flight == 2


# ---------------------------------------------------------------- settle


async def test_settle_of_three_calls_records_each_and_reconciles_their_sums(
    store: Store,
) -> None:
    key = await registered(
        store, Limits(rpm=10, tpm=10_000, max_parallel=3, budget_usd=1.0, budget_period="day")
    )
    grant = await store.admit(admission(key, tokens=3000, cost=0.75, calls=3))
    assert tokens_left(grant) == 7000
    assert (await store.standing(key)).in_flight == 3
    await store.settle(
        grant,
        [
            event("model-a", 100, 20, 0.125),
            event("model-b", 50, 10, 0.0625, cache_read=16),
            event("model-a", 7, 0, 0.0, error=True),  # reached the upstream, then failed
        ],
    )
    assert (await store.standing(key)).in_flight == 0

    doc = await store.usage(key.id)
    assert (doc.requests, doc.input_tokens, doc.output_tokens, doc.errors) == (3, 157, 30, 1)
    assert doc.cost_usd == 0.1875
    assert doc.cache_read_tokens == 16
    assert [
        (m.model, m.requests, m.input_tokens, m.output_tokens, m.cost_usd, m.errors)
        for m in doc.by_model
    ] == [("model-a", 2, 107, 20, 0.125, 1), ("model-b", 1, 50, 10, 0.0625, 0)]
    assert [(d.day, d.requests) for d in doc.by_day] == [(today(), 3)]

    # The three calls spent 0.1875 in the day, the month and all time: whichever period the
    # budget has, 0.8125 more may be held, and no more.
    for period in ("day", "month", "total"):
        budgeted = with_limits(key, key.limits.model_copy(update={"budget_period": period}))
        held = await store.admit(admission(budgeted, cost=0.8125))
        with pytest.raises(RateLimited) as refused:
            await store.admit(admission(budgeted, cost=0.0625))
        assert type(refused.value) is RateLimited
        await store.settle(held, [])

    # tpm holds the 187 tokens the calls used, not the 3000 reserved.
    after = await store.admit(admission(key, tokens=13))
    assert tokens_left(after) == 10_000 - 187 - 13
    await store.settle(after, [event("model-a", 10, 3, 0.8125)])
    with pytest.raises(QuotaExceeded):  # 1.0 spent: used up
        await store.admit(admission(key))


async def test_settle_with_no_events_gives_everything_back_and_records_nothing(
    store: Store,
) -> None:
    key = await registered(store, Limits(tpm=1000, max_parallel=3, budget_usd=1.0))
    grant = await store.admit(admission(key, tokens=800, cost=0.75, calls=2))
    assert (tokens_left(grant), (await store.standing(key)).in_flight) == (200, 2)
    await store.settle(grant, [])
    assert (await store.standing(key)).in_flight == 0
    assert (await store.usage(key.id)).requests == 0

    # The whole tpm, and the whole budget (no spend, nothing held), are there again.
    first = await store.admit(admission(key, tokens=1000, cost=0.5))
    assert tokens_left(first) == 0
    await store.admit(admission(key, cost=0.5))
    with pytest.raises(RateLimited) as held:  # 1.0 held now
        await store.admit(admission(key, cost=0.5))
    assert type(held.value) is RateLimited


async def test_a_multi_call_lease_is_renewed_whole_and_expires_whole(
    stores: StoreFactory,
) -> None:
    store = await stores(lease_ttl_ms=SHORT_LEASE_TTL_MS)
    renewed_key = await registered(store, Limits(max_parallel=3))
    left_key = await registered(store, Limits(max_parallel=3))
    renewed = await store.admit(admission(renewed_key, calls=3))
    await store.admit(admission(left_key, calls=3))  # never renewed nor settled: a crash
    started = time.monotonic()
    # Renewed every quarter of the TTL: three quarters of it are the slack.
    while time.monotonic() - started < SHORT_TTL * 1.5:
        await asyncio.sleep(SHORT_TTL / 4)
        await store.renew([renewed])
    assert (await store.standing(renewed_key)).in_flight == 3
    with pytest.raises(TooManyInFlight):
        await store.admit(admission(renewed_key))
    assert (await store.standing(left_key)).in_flight == 0  # all three of its slots expired

    await store.settle(renewed, [event("model-a"), event("model-b")])
    await store.renew([renewed])  # renewing a released lease does not bring it back
    assert (await store.standing(renewed_key)).in_flight == 0
    await store.admit(admission(renewed_key, calls=3))


# ---------------------------------------------------------------- Redis down: the local fallback


async def test_the_local_fallback_counts_calls_and_buffers_every_event(
    redis_server: Callable[..., RedisServer],
) -> None:
    server = redis_server()
    store = RedisStore(server.url, prefix=f"gwtest-{uuid.uuid4().hex}:", lease_ttl_ms=5_000)
    await asyncio.wait_for(store.start(), 2)
    try:
        key = make_key(Limits(rpm=4, max_parallel=3))
        server.kill()
        grant = await asyncio.wait_for(store.admit(admission(key, calls=3)), 2)
        assert grant.local
        assert requests_left(grant) == 1
        with pytest.raises(TooManyInFlight):  # three of three in flight, on this process
            await store.admit(admission(key))
        with pytest.raises(RateLimited) as refused:  # one of the minute's four left
            await store.admit(admission(key, calls=2))
        assert type(refused.value) is RateLimited
        await store.settle(
            grant,
            [event("model-a", 10, 5, 0.25), event("model-b", 3, 4, 0.125), event("model-a", 1, 1)],
        )
        assert store.degraded
        await store.admit(admission(key))  # its three local slots are back

        server.start()  # the same port, no data
        deadline = time.monotonic() + 5
        while await store.status() != "ok":
            assert time.monotonic() < deadline, "the store did not see Redis come back"
            await asyncio.sleep(0.05)
        doc = await store.usage(key.id)
        assert (doc.requests, doc.input_tokens, doc.output_tokens) == (3, 14, 10)
        assert doc.cost_usd == 0.375
        assert [(m.model, m.requests) for m in doc.by_model] == [("model-a", 2), ("model-b", 1)]
    finally:
        await asyncio.wait_for(store.aclose(), 5)


async def test_a_lost_multi_call_admit_gives_back_every_slot(
    redis_server: Callable[..., RedisServer],
) -> None:
    # Redis runs a 3-call admit, its reply is lost, the gateway admits locally. The settle
    # must release all three of the lease's entries in Redis, or the key would be short of
    # three slots for the lease's life.
    server = redis_server()
    async with ReplyStall(server.port) as stall:
        store = RedisStore(
            f"redis://127.0.0.1:{stall.port}/0",
            prefix=f"gwtest-{uuid.uuid4().hex}:",
            lease_ttl_ms=30_000,
        )
        await asyncio.wait_for(store.start(), 2)
        try:
            key = make_key(Limits(max_parallel=3))
            await store.admit(admission(make_key()))  # the scripts are loaded
            stall.flowing.clear()
            lost = await asyncio.wait_for(store.admit(admission(key, calls=3)), 2)
            stall.flowing.set()
            assert lost.local
            assert lost.unsure
            await store.settle(lost, [event("model-a", 1, 1)])
            deadline = time.monotonic() + 5
            while await store.status() != "ok":
                assert time.monotonic() < deadline, "the store did not see Redis come back"
                await asyncio.sleep(0.05)

            assert (await store.standing(key)).in_flight == 0
            again = await store.admit(admission(key, calls=3))
            assert not again.local
        finally:
            await asyncio.wait_for(store.aclose(), 5)


# ---------------------------------------------------------------- Redis only


async def test_redis_counts_each_calls_cost_in_its_own_day(
    redis_server: Callable[..., RedisServer],
) -> None:
    # Events of one settle may be of two days (a call that ended after midnight, or a
    # settle written back later): each call's cost counts in its own day. (The embedded
    # store counts a cost in the period it is settled in.)
    server = redis_server()
    store = RedisStore(server.url, prefix="gwtest:")
    await asyncio.wait_for(store.start(), 2)
    try:
        await _each_day(store)
    finally:
        await asyncio.wait_for(store.aclose(), 5)


async def _each_day(store: RedisStore) -> None:
    key = await registered(store, Limits(budget_usd=1.0, budget_period="day"))
    yesterday = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")
    grant = await store.admit(admission(key, cost=0.5, calls=3))
    await store.settle(
        grant,
        [
            event("model-a", 10, 1, 0.5, day=yesterday),
            event("model-a", 20, 2, 0.25, day=yesterday),
            event("model-b", 30, 3, 0.125),
        ],
    )
    doc = await store.usage(key.id)
    assert [(d.day, d.requests, d.cost_usd) for d in doc.by_day] == [
        (yesterday, 2, 0.75),
        (today(), 1, 0.125),
    ]
    assert [(m.model, m.requests, m.input_tokens) for m in doc.by_model] == [
        ("model-a", 2, 30),
        ("model-b", 1, 30),
    ]
    # Today 0.125 spent: 0.875 may be held, and no more.
    assert not (await store.admit(admission(key, cost=0.875))).local
    with pytest.raises(RateLimited):
        await store.admit(admission(key, cost=0.0625))
