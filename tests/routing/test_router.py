"""gateway/routing/router.py: each model's wrappers as its config asks, and ``run``.

Per model, innermost first: Deployments, Hedge (strategy hedge, more than one
deployment), Retry (more than one attempt), Fallback (any fallbacks). A route's
prices are every price a call may meet: its deployments' and its fallbacks'.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.config import Price
from gateway.errors import ModelNotFound, UpstreamUnavailable
from gateway.routing.deployments import Deployments
from gateway.routing.fallback import Fallback
from gateway.routing.hedge import Hedge
from gateway.routing.retry import Retry
from gateway.routing.router import RoutedStream
from tests.routing.conftest import GatewayFactory
from tests.routing.support import chat, read_all

CONFIG = """
providers:
  demo: {type: mock}
  other: {type: mock}
  disabled: {type: openai, base_url: 'https://disabled.test/v1', api_key: ''}
models:
  plain:
    deployments: [{provider: demo, model: plain-up, price: {input: 1, output: 2}}]
  once:
    routing: {retries: {attempts: 1}}
    deployments: [{provider: demo, model: once-up}]
  hedged:
    routing: {strategy: hedge, hedge_after_ms: 100}
    deployments: [{provider: demo, model: h1}, {provider: other, model: h2}]
  hedged-alone:
    routing: {strategy: hedge, hedge_after_ms: 100, retries: {attempts: 1}}
    deployments: [{provider: demo, model: h1}]
  partly-off:
    deployments:
      - {provider: demo, model: on-up, price: {input: 3, output: 4}}
      - {provider: disabled, model: off-up, price: {input: 100, output: 100}}
  all-off:
    deployments: [{provider: disabled, model: off-up, price: {input: 200, output: 200}}]
  falling:
    routing: {retries: {attempts: 1}}
    fallbacks: [plain, all-off]
    context_fallbacks: [listed-price]
    deployments: [{provider: demo, model: falling-up, price: {input: 5, output: 6}}]
  listed-price:
    deployments: [{provider: demo, model: gpt-4o}]
prices:
  gpt-4o: {input: 7, output: 8}
"""


def chain(caller: object) -> list[type]:
    """The wrapper types of a route, outermost first."""
    kinds = []
    while True:
        kinds.append(type(caller))
        if isinstance(caller, Deployments):
            return kinds
        caller = caller.primary if isinstance(caller, Fallback) else caller.inner  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("model", "wrappers"),
    [
        ("plain", [Retry, Deployments]),
        ("once", [Deployments]),
        ("hedged", [Retry, Hedge, Deployments]),
        ("hedged-alone", [Deployments]),
        ("falling", [Fallback, Deployments]),
    ],
)
def test_each_model_gets_the_wrappers_its_config_asks_for(
    gateway: GatewayFactory, model: str, wrappers: list[type]
) -> None:
    gw = gateway(CONFIG)
    assert chain(gw.route(model).caller) == wrappers


def test_only_models_and_deployments_on_enabled_providers_are_routed(
    gateway: GatewayFactory,
) -> None:
    gw = gateway(CONFIG)
    assert "all-off" not in gw.router.names()
    assert [t.name for t in gw.route("partly-off").targets] == ["demo/on-up"]
    with pytest.raises(ModelNotFound) as raised:
        gw.route("all-off")
    assert (raised.value.status, raised.value.param) == (404, "model")


def test_a_routes_prices_include_its_fallbacks(gateway: GatewayFactory) -> None:
    gw = gateway(CONFIG)
    assert set(gw.route("falling").prices) == {
        Price(input=5, output=6),  # its own
        Price(input=1, output=2),  # plain, a fallback
        Price(input=7, output=8),  # listed-price, a context fallback, priced by `prices`
    }  # all-off is not reachable: its provider is off
    assert gw.route("plain").prices == (Price(input=1, output=2),)
    assert gw.route("partly-off").prices == (Price(input=3, output=4),)
    assert gw.route("once").prices == ()


async def test_run_answers_and_names_the_model_that_served(gateway: GatewayFactory) -> None:
    gw = gateway(CONFIG)
    call = chat("falling", mock={"models": {"falling-up": {"status": 502}}})
    loop = asyncio.get_running_loop()
    before = loop.time()
    answered = await gw.answer(call)
    assert call.served_model == "plain"
    assert answered.attempt.target.name == "demo/plain-up"
    # The primary's retries bound the call (60 s by default), fallbacks included.
    assert before + 60 <= call.deadline <= loop.time() + 60


async def test_run_hands_a_stream_back_unopened(gateway: GatewayFactory) -> None:
    gw = gateway(CONFIG)
    stream = await gw.router.run(chat("plain", stream=True))
    assert isinstance(stream, RoutedStream)
    assert stream.opened is None
    assert stream.call.attempts == []
    assert gw.state["demo/plain-up"].in_flight == 0
    opened = await stream.open()
    assert gw.state["demo/plain-up"].in_flight == 1
    items = await read_all(opened)
    await stream.close(None, items[-1].usage, len(items), left=False)
    attempt = stream.call.attempts[0]
    assert (attempt.usage, attempt.outputs) == (items[-1].usage, len(items))
    assert gw.state["demo/plain-up"].in_flight == 0


COOLS = """
providers:
  demo: {type: mock}
models:
  m:
    routing: {cooldown: {failures: 1, seconds: 30}}
    deployments: [{provider: demo, model: a}]
"""


async def test_a_stream_that_fails_after_its_first_output_counts_against_its_deployment(
    gateway: GatewayFactory,
) -> None:
    gw = gateway(COOLS)
    stream = await gw.stream(chat("m", stream=True, mock={"cut_after": 2}))
    opened = await stream.open()
    with pytest.raises(UpstreamUnavailable) as raised:
        await read_all(opened)
    await stream.close(raised.value, None, 2, left=False)
    attempt = stream.call.attempts[0]
    assert (attempt.error, attempt.outputs, attempt.cancelled) == (raised.value, 2, False)
    assert gw.state["demo/a"].cooling(gw.state.clock())
    assert len(stream.call.attempts) == 1  # not retried


async def test_a_stream_its_client_left_says_nothing_of_its_deployment(
    gateway: GatewayFactory,
) -> None:
    gw = gateway(COOLS)
    stream = await gw.stream(chat("m", stream=True))
    await stream.open()
    await stream.close(None, None, 1, left=True)
    attempt = stream.call.attempts[0]
    assert (attempt.cancelled, attempt.error, attempt.outputs) == (True, None, 1)
    state = gw.state["demo/a"]
    assert (state.in_flight, state.failures) == (0, 0)
    assert not state.cooling(gw.state.clock())
