"""Budgets, on both stores (docs/limits.md, "Budgets").

A request is admitted while settled spend + the reservations of requests in
flight is below the budget; each admission reserves its upper-bound cost until
it settles to its real cost. Settled spend at the budget: insufficient_quota,
for good. Reservations alone: a retryable 429. Costs are binary fractions, so
the arithmetic is exact in both backends and a boundary can be probed exactly.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from gateway.config import Limits
from gateway.errors import QuotaExceeded, RateLimited
from gateway.limits.base import Grant, Store, today
from tests.limits.support import admission, event, registered, with_limits


def _assert_used_up(error: BaseException) -> None:
    assert type(error) is QuotaExceeded, repr(error)
    assert error.code == "insufficient_quota"
    assert error.response_headers()["x-should-retry"] == "false"
    assert "retry-after" not in error.response_headers()
    assert "used up" in error.message


def _assert_held(error: BaseException) -> None:
    assert type(error) is RateLimited, repr(error)
    assert error.code == "rate_limit_exceeded"
    assert error.retry_after is not None
    assert error.retry_after >= 1
    assert int(error.response_headers()["retry-after"]) >= 1
    assert "x-should-retry" not in error.response_headers()
    assert "in flight" in error.message


async def test_a_fresh_key_is_served_whatever_its_reservation(store: Store) -> None:
    # One request's worst case far above the whole budget: still served, the budget is
    # untouched until it settles.
    tiny = await registered(store, Limits(budget_usd=0.001, budget_period="day"))
    grant = await store.admit(admission(tiny, cost=0.041))
    assert (grant.cost, grant.period, grant.lease) == (0.041, f"d{today()}", True)
    assert (await store.standing(tiny)).in_flight == 1
    await store.settle(grant, [event(cost=0.0001)])
    await store.settle(await store.admit(admission(tiny, cost=0.041)), [event(cost=0.0001)])

    fifty = await registered(store, Limits(budget_usd=50.0, budget_period="month"))
    await store.admit(admission(fifty, cost=80.0))


async def test_settled_spend_at_the_budget_is_used_up(store: Store) -> None:
    key = await registered(store, Limits(budget_usd=1.0, budget_period="day"))
    await store.settle(await store.admit(admission(key, cost=4.0)), [event(cost=0.5)])
    await store.settle(await store.admit(admission(key, cost=4.0)), [event(cost=0.4375)])
    # 0.9375 spent, below the budget: served, however large its reservation.
    last = await store.admit(admission(key, cost=4.0))
    await store.settle(last, [event(cost=0.0625)])  # 1.0 spent: the budget exactly
    for cost in (4.0, 0.0):
        with pytest.raises(QuotaExceeded) as refused:
            await store.admit(admission(key, cost=cost))
        _assert_used_up(refused.value)
    assert (await store.usage(key.id)).cost_usd == pytest.approx(1.0)


async def test_reservations_in_flight_alone_refuse_with_retry_after(store: Store) -> None:
    key = await registered(store, Limits(budget_usd=1.0, budget_period="total"))
    half = await store.admit(admission(key, cost=0.5))
    other = await store.admit(admission(key, cost=0.5))  # 0.5 held: below, admitted
    # 0 spent + 1.0 held: not below the budget (strictly), so refused, for now.
    for cost in (0.0625, 0.0):
        with pytest.raises(RateLimited) as refused:
            await store.admit(admission(key, cost=cost))
        _assert_held(refused.value)

    # One settles for less than it reserved: what it took is given back, and it is served.
    await store.settle(half, [event(cost=0.125)])
    third = await store.admit(admission(key, cost=0.375))  # 0.125 + 0.5 held
    with pytest.raises(RateLimited) as refused:  # 0.125 + 0.875 held
        await store.admit(admission(key, cost=0.0625))
    _assert_held(refused.value)
    await store.settle(other, [event(cost=0.5)])
    await store.settle(third, [event(cost=0.375)])
    with pytest.raises(QuotaExceeded) as refused:  # 1.0 settled
        await store.admit(admission(key, cost=0.0625))
    _assert_used_up(refused.value)


async def test_settle_gives_back_exactly_its_reservation_and_only_once(store: Store) -> None:
    key = await registered(store, Limits(budget_usd=1.0, budget_period="day"))
    big = await store.admit(admission(key, cost=0.75))
    small = await store.admit(admission(key, cost=0.125))  # 0.875 held
    await store.settle(big, [event(cost=0.0)])
    await store.settle(big, [event(cost=0.0)])  # twice: given back once
    # Held now: small's 0.125, not less. 0.125 + 0.875 held reach the budget.
    await store.admit(admission(key, cost=0.875))
    with pytest.raises(RateLimited) as refused:
        await store.admit(admission(key, cost=0.0))
    _assert_held(refused.value)
    await store.settle(small, [event(cost=0.0)])
    await store.admit(admission(key, cost=0.0))  # 0.875 held: below again


async def test_concurrent_admits_cannot_spend_the_budget_together(store: Store) -> None:
    # A budget for about three requests; fifty arrive at once, each reserving 1.0 and
    # costing 0.875. The spend may pass the budget by at most one request's cost.
    key = await registered(store, Limits(budget_usd=3.0, budget_period="day"))
    spent, served = 0.0, 0
    for _ in range(10):  # waves, until the budget is used up
        results = await asyncio.gather(
            *(store.admit(admission(key, cost=1.0)) for _ in range(50)), return_exceptions=True
        )
        grants = [r for r in results if isinstance(r, Grant)]
        refusals = [r for r in results if not isinstance(r, Grant)]
        if not grants:
            for error in refusals:
                _assert_used_up(error)
            break
        assert len(grants) == math.ceil((3.0 - spent) / 1.0), (spent, len(grants))
        for error in refusals:
            _assert_held(error)
        for grant in grants:
            await store.settle(grant, [event(cost=0.875)])
        spent += 0.875 * len(grants)
        served += len(grants)
    assert spent >= 3.0
    assert spent < 3.0 + 0.875
    assert served == 4  # 3 at once (0, 1, 2 held), then one more on 2.625 settled
    assert (await store.usage(key.id)).cost_usd == pytest.approx(spent)


@pytest.mark.parametrize("period", ["day", "month", "total"])
async def test_costs_count_toward_a_budget_the_key_gets_later(store: Store, period: str) -> None:
    key = await registered(store)  # no budget yet
    grant = await store.admit(admission(key, cost=0.5))
    assert grant.period == ""  # nothing to reserve against
    assert not grant.lease
    await store.settle(grant, [event(cost=0.375)])

    budgeted = with_limits(key, Limits(budget_usd=1.0, budget_period=period))
    await store.put_key(budgeted)
    key = await store.get_key(key.id)
    assert key is not None
    assert key.limits.budget_usd == 1.0

    # 0.375 already spent in this period: 0.5 + 0.125 more may be held, no more.
    first = await store.admit(admission(key, cost=0.5))
    second = await store.admit(admission(key, cost=0.125))
    with pytest.raises(RateLimited) as refused:
        await store.admit(admission(key, cost=0.0625))
    _assert_held(refused.value)
    await store.settle(first, [event(cost=0.5)])
    await store.settle(second, [event(cost=0.125)])
    with pytest.raises(QuotaExceeded) as refused:
        await store.admit(admission(key, cost=0.0625))
    _assert_used_up(refused.value)
