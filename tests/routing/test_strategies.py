"""gateway/routing/strategies.py: which deployment a call goes to.

Calls are routed by a Router built from YAML over the in-process mock provider;
the deployment that answered is on the answer's attempt. Randomness is seeded.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.routing.router import RoutedStream
from gateway.routing.strategies import EXPLORE, latency
from tests.routing.conftest import GatewayFactory
from tests.routing.support import FIRST, LAST, Gateway, chat


def config(strategy: str, *deployments: str) -> str:
    listed = "\n".join(f"      - {d}" for d in deployments)
    return f"""
providers:
  demo: {{type: mock}}
models:
  m:
    routing: {{strategy: {strategy}}}
    deployments:
{listed}
"""


async def served_by(gw: Gateway, **fields: object) -> str:
    answered = await gw.answer(chat("m", **fields))
    return answered.attempt.target.name


# ---------------------------------------------------------------- weighted


@pytest.mark.parametrize("strategy", ["weighted", "hedge"])
async def test_weights_hold_over_a_thousand_routed_calls(
    gateway: GatewayFactory, strategy: str
) -> None:
    extra = ", hedge_after_ms: 60000" if strategy == "hedge" else ""
    gw = gateway(
        config(
            f"{strategy}{extra}",
            "{provider: demo, model: a, weight: 1}",
            "{provider: demo, model: b, weight: 2}",
            "{provider: demo, model: c, weight: 7}",
        )
    )
    random.seed(20240611)
    counts = Counter([await served_by(gw) for _ in range(1000)])
    expected = {"demo/a": 100, "demo/b": 200, "demo/c": 700}
    chi2 = sum((counts[n] - e) ** 2 / e for n, e in expected.items())
    assert set(counts) == set(expected)
    assert chi2 < 13.82, counts  # chi-square, 2 degrees of freedom, p = 0.001


# ---------------------------------------------------------------- least-busy


async def test_least_busy_spreads_open_streams_one_each(gateway: GatewayFactory) -> None:
    gw = gateway(
        config(
            "least-busy",
            "{provider: demo, model: a}",
            "{provider: demo, model: b}",
            "{provider: demo, model: c}",
        )
    )
    streams: list[RoutedStream] = []
    for _ in range(6):
        stream = await gw.stream(chat("m", stream=True))
        await stream.open()
        streams.append(stream)
    held = [s.call.attempts[0].target.name for s in streams]
    assert sorted(held[:3]) == sorted(held[3:]) == ["demo/a", "demo/b", "demo/c"]
    for stream in streams:
        await stream.close(None, None, 1, left=True)
    assert all(gw.state[n].in_flight == 0 for n in held)


async def test_least_busy_sends_calls_to_the_idle_deployment(gateway: GatewayFactory) -> None:
    gw = gateway(config("least-busy", "{provider: demo, model: a}", "{provider: demo, model: b}"))
    held = await gw.stream(chat("m", stream=True))
    await held.open()
    busy = held.call.attempts[0].target.name
    idle = {"demo/a": "demo/b", "demo/b": "demo/a"}[busy]
    random.seed(7)
    assert {await served_by(gw) for _ in range(30)} == {idle}
    await held.close(None, None, 1, left=False)
    assert {await served_by(gw) for _ in range(30)} == {"demo/a", "demo/b"}


async def test_least_busy_breaks_ties_by_weight(gateway: GatewayFactory) -> None:
    gw = gateway(
        config(
            "least-busy",
            f"{{provider: demo, model: a, weight: {LAST}}}",
            f"{{provider: demo, model: b, weight: {FIRST}}}",
        )
    )
    random.seed(3)
    assert {await served_by(gw) for _ in range(30)} == {"demo/b"}


async def test_least_busy_counts_calls_in_flight_in_its_own_process(
    gateway: GatewayFactory,
) -> None:
    text = config(
        "least-busy",
        f"{{provider: demo, model: a, weight: {FIRST}}}",
        f"{{provider: demo, model: b, weight: {LAST}}}",
    )
    one, other = gateway(text), gateway(text)
    random.seed(5)
    held = await one.stream(chat("m", stream=True))
    await held.open()
    assert held.call.attempts[0].target.name == "demo/a"
    assert await served_by(one) == "demo/b"
    assert await served_by(other) == "demo/a"  # another process's streams are not its
    await held.close(None, None, 1, left=False)


# ---------------------------------------------------------------- latency


async def test_latency_tries_every_unmeasured_deployment_first(gateway: GatewayFactory) -> None:
    gw = gateway(
        config(
            "latency",
            f"{{provider: demo, model: a, weight: {FIRST}}}",
            f"{{provider: demo, model: b, weight: {LAST}}}",
            f"{{provider: demo, model: c, weight: {LAST}}}",
        )
    )
    random.seed(11)
    first = [await served_by(gw) for _ in range(3)]
    assert sorted(first) == ["demo/a", "demo/b", "demo/c"]


async def test_latency_prefers_the_deployment_quickest_to_answer(gateway: GatewayFactory) -> None:
    gw = gateway(
        config("latency", "{provider: demo, model: slow}", "{provider: demo, model: fast}")
    )
    script = {"models": {"slow": {"ttft_ms": 200}}}
    random.seed(13)
    warm = {await served_by(gw, mock=script) for _ in range(2)}
    assert warm == {"demo/slow", "demo/fast"}
    counts = Counter([await served_by(gw, mock=script) for _ in range(60)])
    assert counts["demo/fast"] >= 54, counts  # all but the few sent by weight to explore


def test_latency_explores_by_weight_one_call_in_twenty(gateway: GatewayFactory) -> None:
    gw = gateway(config("latency", "{provider: demo, model: a}", "{provider: demo, model: b}"))
    targets = gw.route("m").targets
    gw.state.answered("demo/a", 0.050)
    gw.state.answered("demo/b", 0.500)
    random.seed(17)
    counts = Counter(latency(targets, gw.state).name for _ in range(4000))
    share = counts["demo/b"] / 4000
    assert share == pytest.approx(EXPLORE / 2, abs=0.01), counts  # half of the explored calls
