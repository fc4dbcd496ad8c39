"""gateway/routing/state.py: what routing learns of each deployment, and the cooldown rules.

The rules (docs/configuration.md, "models", ``routing.cooldown``): a deployment that
fails ``failures`` times in a row, or answers 429, is skipped for ``seconds`` (a
429's Retry-After when longer), then tried again afresh. Only what says something
about the deployment counts: a refused request or a call the gateway gave up
does not. Time is the state's injected clock.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.config import Cooldown
from gateway.errors import (
    GatewayError,
    UpstreamAuthFailed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.routing.call import Attempt
from gateway.routing.state import EWMA_ALPHA, RoutingState
from tests.routing.conftest import GatewayFactory
from tests.routing.support import Clock

POLICY = Cooldown(failures=3, seconds=30)
NAME = "demo/a"


def fail(state: RoutingState, error: GatewayError, times: int = 1) -> None:
    for _ in range(times):
        state.started(NAME)
        state.ended(NAME, error, POLICY)


def succeed(state: RoutingState) -> None:
    state.started(NAME)
    state.ended(NAME, None, POLICY)


def cooling(state: RoutingState) -> bool:
    return state[NAME].cooling(state.clock())


def unavailable() -> UpstreamUnavailable:
    return UpstreamUnavailable("the upstream failed with status 500")


@pytest.mark.parametrize(
    "error",
    [unavailable(), UpstreamTimeout("timed out"), UpstreamAuthFailed("bad key")],
    ids=["5xx", "timeout", "auth"],
)
def test_failures_in_a_row_cool_a_deployment_for_its_seconds(error: GatewayError) -> None:
    clock = Clock()
    state = RoutingState(clock)
    fail(state, error, POLICY.failures - 1)
    assert not cooling(state)
    fail(state, error)
    assert state[NAME].cooldown_until == 1_030.0
    clock.now = 1_029.9
    assert cooling(state)
    clock.now = 1_030.0
    assert not cooling(state)


def test_a_success_breaks_the_run_of_failures() -> None:
    state = RoutingState(Clock())
    fail(state, unavailable(), 2)
    succeed(state)
    fail(state, unavailable(), 2)
    assert not cooling(state)
    fail(state, unavailable())
    assert cooling(state)


@pytest.mark.parametrize(
    ("retry_after", "until"), [(None, 1_030.0), (5.0, 1_030.0), (120.0, 1_120.0)]
)
def test_a_429_cools_at_once_for_the_longer_of_seconds_and_retry_after(
    retry_after: float | None, until: float
) -> None:
    state = RoutingState(Clock())
    fail(state, UpstreamRateLimited("429", retry_after=retry_after))
    assert state[NAME].cooldown_until == until


def test_a_refused_request_says_nothing_of_the_deployment() -> None:
    state = RoutingState(Clock())
    fail(state, UpstreamRejected("prompt too long", status=400), POLICY.failures * 2)
    assert not cooling(state)
    assert state[NAME].failures == 0


def test_a_call_given_up_neither_counts_nor_breaks_the_run() -> None:
    state = RoutingState(Clock())
    fail(state, unavailable(), 2)
    state.started(NAME)
    state.ended(NAME, None, POLICY, cancelled=True)
    assert not cooling(state)
    fail(state, unavailable())
    assert cooling(state)


def test_after_a_cooldown_the_count_starts_afresh() -> None:
    clock = Clock()
    state = RoutingState(clock)
    fail(state, unavailable(), POLICY.failures)
    clock.now += POLICY.seconds
    assert not cooling(state)
    fail(state, unavailable(), POLICY.failures - 1)
    assert not cooling(state)  # not cooled again by the first failure after it
    fail(state, unavailable())
    assert state[NAME].cooldown_until == clock.now + POLICY.seconds


def test_a_shorter_cooldown_does_not_cut_a_longer_one() -> None:
    state = RoutingState(Clock())
    fail(state, UpstreamRateLimited("429", retry_after=600))
    fail(state, UpstreamRateLimited("429", retry_after=1))
    assert state[NAME].cooldown_until == 1_600.0


def test_cooldowns_are_published_and_merged_the_longer_winning() -> None:
    published: list[tuple[str, float]] = []

    class Board:
        def publish(self, name: str, until: float) -> None:
            published.append((name, until))

    state = RoutingState(Clock())
    state.board = Board()
    fail(state, UpstreamRateLimited("429"))
    assert published == [(NAME, 1_030.0)]
    state.merge([(NAME, 1_010.0), ("other/b", 1_050.0)])
    assert state[NAME].cooldown_until == 1_030.0  # an earlier end from elsewhere is ignored
    assert state["other/b"].cooldown_until == 1_050.0
    state.merge([(NAME, 1_090.0)])
    assert state[NAME].cooldown_until == 1_090.0
    assert published == [(NAME, 1_030.0)]  # what came from the board is not sent back


def test_latency_is_a_moving_average_one_slow_call_does_not_flip() -> None:
    state = RoutingState()
    state.answered(NAME, 0.100)
    assert state[NAME].latency == pytest.approx(0.100)
    state.answered(NAME, 0.400)
    assert state[NAME].latency == pytest.approx(0.100 + EWMA_ALPHA * 0.300)
    # Against a steady 0.2 s deployment, one 0.4 s call leaves this one faster...
    state.answered("other/b", 0.200)
    assert state[NAME].latency < state["other/b"].latency
    # ...while a deployment that has slowed down is seen within a few calls.
    for _ in range(3):
        state.answered(NAME, 0.400)
    assert state[NAME].latency > state["other/b"].latency


# ---------------------------------------------------------------- finish


MOCK = """
providers:
  demo: {type: mock}
models:
  m:
    routing: {cooldown: {failures: 1, seconds: 30}}
    deployments: [{provider: demo, model: a}]
"""


@pytest.mark.parametrize(
    ("exc", "error", "cancelled", "cools"),
    [
        (None, False, False, False),
        (unavailable(), True, False, True),
        (asyncio.CancelledError(), False, True, False),
        (RuntimeError("a failure of ours"), False, False, False),
    ],
    ids=["answered", "upstream-failed", "cancelled", "our-failure"],
)
def test_finish_records_how_an_attempt_ended_once(
    gateway: GatewayFactory,
    exc: BaseException | None,
    error: bool,
    cancelled: bool,
    cools: bool,
) -> None:
    gw = gateway(MOCK, clock=Clock())
    (target,) = gw.route("m").targets
    state = gw.state
    attempt = Attempt(target)
    state.started(target.name)
    state.started(target.name)  # another call in flight on it
    state.finish(attempt, exc)
    state.finish(attempt, unavailable())  # a second report of the same end is ignored
    assert state[target.name].in_flight == 1
    assert (attempt.error is not None, attempt.cancelled) == (error, cancelled)
    assert state[target.name].cooling(state.clock()) is cools
