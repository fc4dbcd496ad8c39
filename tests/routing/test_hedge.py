"""gateway/routing/hedge.py: the next deployment after ``hedge_after_ms`` without output.

A stalled upstream here never answers (respx handlers that wait for an event no
one sets), so a test passes only if the hedge started another deployment; the
first to produce output wins, and the others are cancelled: their upstream
request given up or their stream closed, and marked superseded.
"""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest
import respx

from gateway.errors import UpstreamRejected, UpstreamUnavailable
from gateway.routing.hedge import Hedge
from tests.routing.conftest import GatewayFactory
from tests.routing.support import (
    FIRST,
    LAST,
    Body,
    Clock,
    Stall,
    chat,
    chunk,
    completion,
    error,
    frame,
    names,
    openai_providers,
    read_all,
    sse,
    url,
    whole_stream,
)


def hedged(after_ms: int = 10, deployments: int = 2) -> str:
    # Weights that make the order of starts a, b, c but for one call in a million.
    weights = [FIRST, 1000, 1][:deployments]
    listed = "".join(
        f"      - {{provider: {p}, model: up-{p}, weight: {w}}}\n"
        for p, w in zip("abc", weights, strict=False)
    )
    return f"""
providers:
{openai_providers("a", "b", "c")}
models:
  m:
    routing: {{strategy: hedge, hedge_after_ms: {after_ms}, retries: {{attempts: 1}}}}
    deployments:
{listed}"""


@pytest.fixture(autouse=True)
def _seeded() -> None:
    random.seed(42)


async def test_a_stalled_call_is_hedged_and_the_loser_given_up(
    gateway: GatewayFactory, upstream: respx.Router
) -> None:
    gw = gateway(hedged())
    assert isinstance(gw.route("m").caller, Hedge)
    stall = Stall()
    upstream.post(url("a")).mock(side_effect=stall)
    upstream.post(url("b")).respond(200, json=completion("from b"))
    call = chat("m")
    answered = await gw.answer(call)
    assert answered.body.choices[0].message.content == "from b"  # type: ignore[union-attr]
    assert names(call) == ["a/up-a", "b/up-b"]
    loser, winner = call.attempts
    assert answered.attempt is winner
    assert (loser.cancelled, loser.superseded, loser.error) == (True, True, None)
    assert (winner.cancelled, winner.superseded) == (False, False)
    assert (stall.calls, stall.cancelled) == (1, 1)  # its request was given up
    a = gw.state["a/up-a"]
    assert (a.in_flight, a.failures, a.latency) == (0, 0, None)  # nothing learnt of it
    assert gw.state["b/up-b"].latency is not None


async def test_a_stalled_stream_is_hedged_and_the_losers_stream_closed(
    gateway: GatewayFactory, upstream: respx.Router
) -> None:
    gw = gateway(hedged())
    silent = Body([asyncio.Event()])  # headers sent, then nothing
    answering = Body(whole_stream("Hi", " there"))
    upstream.post(url("a")).mock(return_value=sse(silent))
    upstream.post(url("b")).mock(return_value=sse(answering))
    stream = await gw.stream(chat("m", stream=True))
    opened = await stream.open()
    assert names(stream.call) == ["a/up-a", "b/up-b"]
    assert silent.closed
    assert not answering.closed
    assert stream.call.attempts[0].superseded
    assert opened.attempt is stream.call.attempts[1]
    items = await read_all(opened)
    assert "".join(c.choices[0].delta.content or "" for c in items if c.choices) == "Hi there"
    await stream.close(None, items[-1].usage, len(items), left=False)
    assert answering.closed
    assert gw.state["a/up-a"].in_flight == gw.state["b/up-b"].in_flight == 0


async def test_a_hedge_goes_on_to_each_deployment_in_turn(
    gateway: GatewayFactory, upstream: respx.Router
) -> None:
    gw = gateway(hedged(deployments=3))
    stalls = Stall(), Stall()
    upstream.post(url("a")).mock(side_effect=stalls[0])
    upstream.post(url("b")).mock(side_effect=stalls[1])
    upstream.post(url("c")).respond(200, json=completion("from c"))
    call = chat("m")
    await gw.answer(call)
    assert names(call) == ["a/up-a", "b/up-b", "c/up-c"]
    assert [a.superseded for a in call.attempts] == [True, True, False]
    assert [s.cancelled for s in stalls] == [1, 1]


async def test_a_failure_before_any_output_starts_the_next_at_once(
    gateway: GatewayFactory, upstream: respx.Router
) -> None:
    # The hedge's delay is a minute: the second deployment starts on the failure.
    gw = gateway(hedged(after_ms=60_000))
    upstream.post(url("a")).mock(return_value=error(500))
    upstream.post(url("b")).respond(200, json=completion("from b"))
    call = chat("m")
    await asyncio.wait_for(gw.answer(call), 30)  # a guard against a hang, not a measure
    assert names(call) == ["a/up-a", "b/up-b"]
    failed = call.attempts[0]
    assert isinstance(failed.error, UpstreamUnavailable)
    assert (failed.cancelled, failed.superseded) == (False, False)


async def test_a_refused_request_ends_the_hedge_at_once(
    gateway: GatewayFactory, upstream: respx.Router
) -> None:
    # A 400 is the request's fault: every deployment would refuse it too.
    gw = gateway(hedged(after_ms=60_000))
    upstream.post(url("a")).mock(return_value=error(400))
    upstream.post(url("b")).respond(200, json=completion("from b"))
    call = chat("m")
    with pytest.raises(UpstreamRejected):
        await asyncio.wait_for(gw.answer(call), 30)
    assert names(call) == ["a/up-a"]
    assert not upstream.routes[1].called


async def test_when_every_attempt_fails_the_error_says_not_to_retry(
    gateway: GatewayFactory, upstream: respx.Router
) -> None:
    gw = gateway(hedged())
    upstream.post(url("a")).mock(return_value=error(500))
    upstream.post(url("b")).mock(return_value=error(503))
    call = chat("m")
    with pytest.raises(UpstreamUnavailable) as raised:
        await gw.answer(call)
    assert sorted(names(call)) == ["a/up-a", "b/up-b"]
    assert not any(a.superseded or a.cancelled for a in call.attempts)
    assert raised.value.response_headers()["x-should-retry"] == "false"


async def test_two_streams_answering_together_leave_one_winner(
    gateway: GatewayFactory, upstream: respx.Router
) -> None:
    gw = gateway(hedged())
    go = asyncio.Event()
    late = Body([go, frame(chunk({"content": "from a"})), asyncio.Event()])
    soon = Body([frame(chunk({"content": "from b"})), asyncio.Event()])

    def start_b(request: httpx.Request) -> httpx.Response:
        go.set()  # a's first output is now on its way too
        return sse(soon)

    upstream.post(url("a")).mock(return_value=sse(late))
    upstream.post(url("b")).mock(side_effect=start_b)
    stream = await gw.stream(chat("m", stream=True))
    opened = await stream.open()
    winner = opened.attempt
    (loser,) = [a for a in stream.call.attempts if a is not winner]
    assert (loser.superseded, loser.cancelled, winner.superseded) == (True, True, False)
    bodies = {"a/up-a": late, "b/up-b": soon}
    assert bodies[loser.target.name].closed
    assert not bodies[winner.target.name].closed
    assert gw.state[loser.target.name].in_flight == 0
    await stream.close(None, None, 1, left=True)
    assert bodies[winner.target.name].closed


async def test_a_call_given_up_cancels_every_attempt_and_supersedes_none(
    gateway: GatewayFactory, upstream: respx.Router
) -> None:
    gw = gateway(hedged())
    stalls = Stall(), Stall()
    upstream.post(url("a")).mock(side_effect=stalls[0])
    upstream.post(url("b")).mock(side_effect=stalls[1])
    call = chat("m")
    task = asyncio.create_task(gw.answer(call))
    await stalls[1].entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert names(call) == ["a/up-a", "b/up-b"]
    assert all(a.cancelled and not a.superseded for a in call.attempts)
    assert [s.cancelled for s in stalls] == [1, 1]
    assert gw.state["a/up-a"].in_flight == gw.state["b/up-b"].in_flight == 0


async def test_a_hedge_never_starts_the_same_deployment_twice(gateway: GatewayFactory) -> None:
    # b cools after one failure; then a fails: with no other deployment usable, the
    # hedge has nothing to start (a second call to a would be a retry without its
    # backoff, on a model configured for one attempt).
    clock = Clock()
    gw = gateway(
        f"""
providers:
  demo: {{type: mock}}
models:
  m:
    routing:
      strategy: hedge
      hedge_after_ms: 60000
      retries: {{attempts: 1}}
      cooldown: {{failures: 1, seconds: 30}}
    deployments:
      - {{provider: demo, model: a, weight: {LAST}}}
      - {{provider: demo, model: b, weight: {FIRST}}}
""",
        clock=clock,
    )
    first = chat("m", mock={"models": {"b": {"status": 500}}})
    await gw.answer(first)
    assert names(first) == ["demo/b", "demo/a"]
    call = chat("m", mock={"status": 500})
    with pytest.raises(UpstreamUnavailable):
        await asyncio.wait_for(gw.answer(call), 30)  # a guard against a hang
    assert names(call) == ["demo/a"]
