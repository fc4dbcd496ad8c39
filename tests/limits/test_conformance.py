"""One suite, both stores: the embedded and the Redis backend must mean the same thing.

Every test takes the ``store`` fixture (or ``stores``), so it runs once per
backend (docs/limits.md). Budgets have their suite in ``test_budget.py``.
Costs are binary fractions (0.125, 0.25, ...), so budget arithmetic is exact in
both backends and a boundary can be probed precisely.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.config import Limits
from gateway.errors import QuotaExceeded, RateLimited, TooManyInFlight
from gateway.limits.base import Grant, Store, today
from gateway.limits.embedded import EmbeddedStore
from gateway.limits.keys import KeyRecord, hash_key
from gateway.schemas.admin import UsageCounters
from tests.limits.conftest import StoreFactory
from tests.limits.support import (
    LEASE_TTL_MS,
    SHORT_LEASE_TTL_MS,
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


async def test_rpm_admits_exactly_n_then_refuses_with_retry_after(store: Store) -> None:
    n = 5
    key = await registered(store, Limits(rpm=n))
    for i in range(n):
        grant = await store.admit(admission(key))
        assert grant.limits.rpm_limit == n
        assert requests_left(grant) == n - i - 1

    for _ in range(3):
        with pytest.raises(RateLimited) as refused:
            await store.admit(admission(key))
        error = refused.value
        assert type(error) is RateLimited
        assert error.code == "rate_limit_exceeded"
        assert error.status == 429
        assert 1 <= error.retry_after <= 60
        assert error.limits.rpm_limit == n
        assert requests_left(error) == 0
        assert 1 <= int(error.response_headers()["retry-after"]) <= 60

    # The refusals took nothing: with room for 3 more, exactly 3 more pass.
    wider = with_limits(key, Limits(rpm=n + 3))
    for i in range(3):
        grant = await store.admit(admission(wider))
        assert requests_left(grant) == 2 - i
    with pytest.raises(RateLimited):
        await store.admit(admission(wider))


async def test_rpm_is_exact_under_200_concurrent_admits(store: Store) -> None:
    key = await registered(store, Limits(rpm=50))
    results = await asyncio.gather(
        *(store.admit(admission(key)) for _ in range(200)), return_exceptions=True
    )
    grants = [r for r in results if isinstance(r, Grant)]
    refused = [r for r in results if not isinstance(r, Grant)]
    assert len(grants) == 50
    assert all(type(r) is RateLimited for r in refused), {type(r) for r in refused}
    assert not any(g.local for g in grants)  # the shared limiter decided, not a fallback
    assert await store.status() == "ok"


# ---------------------------------------------------------------- tpm


async def test_tpm_reservation_larger_than_the_limit_is_a_quota_error(store: Store) -> None:
    key = await registered(store, Limits(tpm=1000))
    with pytest.raises(QuotaExceeded) as refused:
        await store.admit(admission(key, tokens=1001))
    assert refused.value.code == "insufficient_quota"
    assert refused.value.response_headers()["x-should-retry"] == "false"
    # Nothing was reserved by the refusal: the whole limit is still there.
    grant = await store.admit(admission(key, tokens=1000))
    assert tokens_left(grant) == 0


async def test_tpm_reservations_and_settle_give_back_the_difference(store: Store) -> None:
    key = await registered(store, Limits(tpm=1000))
    first = await store.admit(admission(key, tokens=600))
    assert first.limits.tpm_limit == 1000
    assert tokens_left(first) == 400

    with pytest.raises(RateLimited) as refused:
        await store.admit(admission(key, tokens=600))
    error = refused.value
    assert type(error) is RateLimited
    assert error.code == "rate_limit_exceeded"
    assert 1 <= error.retry_after <= 60
    assert "retry-after" in error.response_headers()
    assert tokens_left(error) == 400

    # The first request used 100 of its 600: 500 come back, and 600 fit again.
    await store.settle(first, [event(input_tokens=30, output_tokens=70)])
    second = await store.admit(admission(key, tokens=600))
    assert tokens_left(second) == 300
    with pytest.raises(RateLimited):
        await store.admit(admission(key, tokens=301))
    third = await store.admit(admission(key, tokens=300))
    assert tokens_left(third) == 0


# ---------------------------------------------------------------- max_parallel


async def test_max_parallel_refuses_the_third_and_settle_frees_a_slot(store: Store) -> None:
    key = await registered(store, Limits(max_parallel=2))
    first = await store.admit(admission(key))
    await store.admit(admission(key))
    assert (await store.standing(key)).in_flight == 2

    with pytest.raises(TooManyInFlight) as refused:
        await store.admit(admission(key))
    assert refused.value.code == "max_parallel_exceeded"
    assert refused.value.status == 429
    assert (await store.standing(key)).in_flight == 2  # the refusal took no lease

    await store.settle(first, [event()])
    assert (await store.standing(key)).in_flight == 1
    await store.admit(admission(key))
    assert (await store.standing(key)).in_flight == 2


async def test_an_unsettled_lease_expires_by_itself(stores: StoreFactory) -> None:
    # A request whose instance crashed is never settled: its lease, and the budget
    # reservation riding on it, go by themselves once the lease's TTL has passed.
    store = await stores(lease_ttl_ms=SHORT_LEASE_TTL_MS)
    parallel = await registered(store, Limits(max_parallel=1))
    budget = await registered(store, Limits(budget_usd=1.0))
    await store.admit(admission(parallel))
    await store.admit(admission(budget, cost=2.0))
    with pytest.raises(TooManyInFlight):
        await store.admit(admission(parallel))
    with pytest.raises(RateLimited):
        await store.admit(admission(budget, cost=0.5))

    await _admitted_within(store, parallel, SHORT_TTL + 5)
    await _admitted_within(store, budget, SHORT_TTL + 5, cost=0.5)


async def _admitted_within(store: Store, key: KeyRecord, seconds: float, cost: float = 0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            await store.admit(admission(key, cost=cost))
            return
        except RateLimited:  # TooManyInFlight included
            assert time.monotonic() < deadline, f"still refused after {seconds}s"
            await asyncio.sleep(0.1)


async def test_in_flight_stops_counting_a_lease_the_moment_it_expires(
    stores: StoreFactory,
) -> None:
    # Expiry is to the millisecond: a count that rounded its clock down to whole seconds
    # would see a lease for up to a second after it expired. An attempt takes a lease
    # 100 ms into a wall-clock second and counts again 250 ms after it expired, inside the
    # second it expired in. One the machine delayed out of those windows proves nothing
    # either way, and is made again.
    ttl = 0.4
    store = await stores(lease_ttl_ms=int(ttl * 1000))
    for _ in range(10):
        key = await registered(store, Limits(max_parallel=3))
        await _at_fraction_of_second(0.1)
        before = time.time()
        await store.admit(admission(key))
        admitted = time.time()
        first = (await store.standing(key)).in_flight
        first_at = time.time()
        # The lease expires between before + ttl and admitted + ttl.
        await asyncio.sleep(max(0.0, admitted + ttl + 0.25 - time.time()))
        start = time.time()
        second = (await store.standing(key)).in_flight
        end = time.time()
        if (
            first_at < before + ttl
            and start > admitted + ttl
            and int(end) == int(before + ttl) == int(admitted + ttl)
        ):
            assert first == 1
            assert second == 0
            return
    pytest.fail("the machine was too slow to place the counts in ten attempts")


async def test_renew_keeps_a_lease_and_its_reservation_past_their_ttl(
    stores: StoreFactory,
) -> None:
    store = await stores(lease_ttl_ms=SHORT_LEASE_TTL_MS)
    parallel = await registered(store, Limits(max_parallel=1))
    budget = await registered(store, Limits(budget_usd=1.0))
    grants = [
        await store.admit(admission(parallel)),
        await store.admit(admission(budget, cost=2.0)),
    ]
    assert all(g.lease for g in grants)  # a budget reservation rides on a lease too
    started = time.monotonic()
    # Renewed every quarter of the TTL: three quarters of it are the slack.
    while time.monotonic() - started < SHORT_TTL * 1.5:
        await asyncio.sleep(SHORT_TTL / 4)
        await store.renew(grants)
    assert (await store.standing(parallel)).in_flight == 1
    assert (await store.standing(budget)).in_flight == 1
    with pytest.raises(TooManyInFlight):
        await store.admit(admission(parallel))
    with pytest.raises(RateLimited) as held:
        await store.admit(admission(budget, cost=0.5))
    assert type(held.value) is RateLimited

    for grant in grants:
        await store.settle(grant, [event()])
    await store.renew(grants)  # renewing a released lease does not bring it back
    assert (await store.standing(parallel)).in_flight == 0
    assert (await store.standing(budget)).in_flight == 0
    await store.admit(admission(parallel))
    await store.admit(admission(budget, cost=0.5))


# ---------------------------------------------------------------- usage


USAGE_EVENTS = [
    # model, day, input (cache reads and writes included), output, cost, error,
    # cache read, cache write
    ("model-a", "2025-03-01", 100, 20, 0.25, False, 0, 0),
    ("model-a", "2025-03-01", 7, 0, 0.0, True, 0, 0),
    ("model-b", "2025-03-01", 50, 50, 0.125, False, 40, 0),
    ("model-a", "2025-03-02", 1000, 333, 0.001, False, 0, 900),
    ("model-b", "2025-03-02", 1, 2, 0.0003, False, 0, 0),
    ("model-b", "2025-03-02", 0, 0, 0.0, True, 0, 0),
    ("model-a", "2025-03-02", 3000, 10, 0.5, False, 2048, 512),
]


def _expected(rows: list[tuple]) -> UsageCounters:
    return UsageCounters(
        requests=len(rows),
        input_tokens=sum(r[2] for r in rows),
        output_tokens=sum(r[3] for r in rows),
        cost_usd=sum(r[4] for r in rows),
        errors=sum(1 for r in rows if r[5]),
        cache_read_tokens=sum(r[6] for r in rows),
        cache_write_tokens=sum(r[7] for r in rows),
    )


def _counts(c: UsageCounters) -> tuple[int, ...]:
    return (
        c.requests,
        c.input_tokens,
        c.output_tokens,
        c.errors,
        c.cache_read_tokens,
        c.cache_write_tokens,
    )


def _assert_counters(actual: UsageCounters, expected: UsageCounters) -> None:
    assert _counts(actual) == _counts(expected)
    assert actual.cost_usd == pytest.approx(expected.cost_usd, rel=1e-9, abs=1e-12)


async def test_usage_per_key_model_and_day(store: Store) -> None:
    key = await registered(store, Limits(rpm=100, tpm=100_000, max_parallel=10))
    other = await registered(store)
    for model, day, inp, out, cost, error, read, write in USAGE_EVENTS:
        grant = await store.admit(admission(key, tokens=4000, cost=cost))
        await store.settle(
            grant,
            [
                event(
                    model, inp, out, cost, error=error, day=day, cache_read=read, cache_write=write
                )
            ],
        )
    await store.settle(await store.admit(admission(other)), [event("model-a", 5, 5, 1.0)])

    doc = await store.usage(key.id)
    assert doc.key_id == key.id
    _assert_counters(doc, _expected(USAGE_EVENTS))

    assert [m.model for m in doc.by_model] == ["model-a", "model-b"]
    for row in doc.by_model:
        _assert_counters(row, _expected([e for e in USAGE_EVENTS if e[0] == row.model]))
    assert [d.day for d in doc.by_day] == ["2025-03-01", "2025-03-02"]
    for row in doc.by_day:
        _assert_counters(row, _expected([e for e in USAGE_EVENTS if e[1] == row.day]))

    assert (await store.usage(other.id)).requests == 1
    empty = await store.usage("key_never_used")
    assert (empty.requests, empty.by_model, empty.by_day) == (0, [], [])


# ---------------------------------------------------------------- keys


async def test_keys_put_get_by_hash_and_pages(store: Store) -> None:
    base = datetime(2025, 1, 1, tzinfo=UTC)
    keys = [
        make_key(Limits(rpm=i + 1), name=f"key {i}", created_at=base + timedelta(seconds=i))
        for i in range(5)
    ]
    for key in reversed(keys):  # stored out of order; listed by creation
        await store.put_key(key, hash_key(f"sk-secret-{key.id}"))

    assert await store.get_key(keys[2].id) == keys[2]
    assert await store.key_by_hash(hash_key(f"sk-secret-{keys[3].id}")) == keys[3]
    assert await store.key_by_hash(hash_key("sk-nobody")) is None
    assert await store.get_key("key_missing") is None

    ids = [k.id for k in keys]
    page, more = await store.list_keys(2, None)
    assert ([k.id for k in page], more) == (ids[0:2], True)
    page, more = await store.list_keys(2, ids[1])
    assert ([k.id for k in page], more) == (ids[2:4], True)
    page, more = await store.list_keys(2, ids[3])
    assert ([k.id for k in page], more) == (ids[4:], False)
    page, more = await store.list_keys(5, None)
    assert ([k.id for k in page], more) == (ids, False)
    assert page == keys
    page, more = await store.list_keys(2, ids[4])
    assert (page, more) == ([], False)

    # An update without a digest changes the record; the key's hash still finds it.
    renamed = keys[1].model_copy(update={"name": "renamed", "limits": Limits(tpm=77)})
    await store.put_key(renamed)
    assert await store.get_key(keys[1].id) == renamed
    assert await store.key_by_hash(hash_key(f"sk-secret-{keys[1].id}")) == renamed
    page, _ = await store.list_keys(10, None)
    assert [k.id for k in page] == ids


async def test_last_used_is_set_by_settle(store: Store) -> None:
    key = await registered(store, Limits(rpm=10))
    assert await store.last_used(key.id) is None
    fetched = await store.get_key(key.id)
    assert fetched is not None
    assert fetched.last_used_at is None

    before = datetime.now(UTC)
    await store.settle(await store.admit(admission(key)), [event()])
    after = datetime.now(UTC)
    used = await store.last_used(key.id)
    assert used is not None
    assert before - timedelta(seconds=1) <= used <= after + timedelta(seconds=1)
    fetched = await store.get_key(key.id)
    assert fetched is not None
    assert fetched.last_used_at == used

    # Updating the record keeps the key's last use.
    await store.put_key(key.model_copy(update={"name": "renamed"}))
    fetched = await store.get_key(key.id)
    assert fetched is not None
    assert fetched.name == "renamed"
    assert fetched.last_used_at == used


# ---------------------------------------------------------------- embedded only


async def test_embedded_restart_keeps_keys_usage_and_spend(tmp_path: Path) -> None:
    key = make_key(Limits(budget_usd=1.0, budget_period="day"))
    digest = hash_key("sk-secret-restart")
    first = EmbeddedStore(tmp_path, lease_ttl_ms=LEASE_TTL_MS)
    await first.start()
    await first.put_key(key, digest)
    grant = await first.admit(admission(key, cost=0.5))
    # Shut down with a request in flight: its reservation is not kept, its cost is.
    await first.admit(admission(key, cost=0.5))
    await first.settle(grant, [event("model-a", 10, 20, 0.75, day=today())])
    await first.aclose()  # usage is written on close, not only on the next flush

    second = EmbeddedStore(tmp_path, lease_ttl_ms=LEASE_TTL_MS)
    await second.start()
    try:
        assert await second.get_key(key.id) is not None
        assert (await second.key_by_hash(digest)).id == key.id
        doc = await second.usage(key.id)
        assert (doc.requests, doc.input_tokens, doc.output_tokens) == (1, 10, 20)
        assert doc.cost_usd == pytest.approx(0.75)
        assert await second.last_used(key.id) is not None

        # 0.75 spent today, this month and in total, whichever budget the key has now:
        # 0.25 more may be held, no more.
        for period in ("day", "month", "total"):
            budgeted = with_limits(key, Limits(budget_usd=1.0, budget_period=period))
            held = await second.admit(admission(budgeted, cost=0.25))
            with pytest.raises(RateLimited):
                await second.admit(admission(budgeted, cost=0.0625))
            await second.settle(held, [event(cost=0.0)])
        budgeted = with_limits(key, Limits(budget_usd=1.0, budget_period="day"))
        await second.settle(await second.admit(admission(budgeted, cost=2.0)), [event(cost=0.25)])
        with pytest.raises(QuotaExceeded):
            await second.admit(admission(budgeted))
    finally:
        await second.aclose()


async def _at_fraction_of_second(fraction: float) -> None:
    """Wait until the wall clock is ``fraction`` of a second past a whole second."""
    wait = (fraction - time.time() % 1) % 1
    await asyncio.sleep(wait)


async def test_embedded_flush_cancelled_mid_write_counts_once(tmp_path: Path) -> None:
    # Shutdown cancels the flusher; the write it started still lands in its thread, and
    # the next flush must not write the same usage again.
    store = EmbeddedStore(tmp_path, lease_ttl_ms=LEASE_TTL_MS)
    await store.start()
    try:
        key = make_key()
        await store.put_key(key, hash_key("sk-secret-flush"))
        grant = await store.admit(admission(key))
        await store.settle(grant, [event("model-a", 10, 20)])
        # Another writer holds the database, so the write waits in its thread (a slow disk).
        other = sqlite3.connect(store.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            flushing = asyncio.create_task(store.flush())
            await asyncio.sleep(0.1)
            flushing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await flushing
        finally:
            other.execute("COMMIT")  # the write in its thread goes through now
            other.close()
        await store.flush()
        doc = await store.usage(key.id)
        assert (doc.requests, doc.input_tokens, doc.output_tokens) == (1, 10, 20)
    finally:
        await store.aclose()
