"""gateway/routing/fallback.py: other models when a model's deployments all fail.

Upstream failures (unavailable, timed out, rate limited, refused credentials,
every deployment busy) go down ``fallbacks`` in order, each model with its own
retries, never its own fallbacks; ``context_length_exceeded`` goes down
``context_fallbacks``; any other refusal is the client's. ``served_model`` names
the model that answered.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import respx

from gateway.errors import UpstreamRejected, UpstreamUnavailable
from gateway.routing.call import RoutedCall
from tests.routing.conftest import GatewayFactory
from tests.routing.support import (
    chat,
    completion,
    embed,
    error,
    names,
    openai_providers,
    read_all,
    url,
)

CHAIN = """
providers:
  demo: {type: mock}
  chat-only: {type: anthropic, base_url: 'https://chat-only.test', api_key: sk-anthropic-x}
models:
  primary:
    routing: {retries: {attempts: 2, backoff_ms: 1}}
    fallbacks: [second, talk, third]
    deployments: [{provider: demo, model: p1}, {provider: demo, model: p2}]
  second:
    routing: {retries: {attempts: 3, backoff_ms: 1}}
    fallbacks: [fourth]
    deployments: [{provider: demo, model: s}]
  talk:
    deployments: [{provider: chat-only, model: claude-x}]
  third:
    deployments: [{provider: demo, model: t}]
  fourth:
    deployments: [{provider: demo, model: f}]
"""


def failing(*models: str, status: int = 500) -> dict[str, Any]:
    return {"models": {m: {"status": status} for m in models}}


@pytest.fixture(autouse=True)
def _seeded() -> None:
    random.seed(8)


async def test_when_a_models_deployments_fail_the_first_fallback_serves(
    gateway: GatewayFactory,
) -> None:
    gw = gateway(CHAIN)
    call = chat("primary", mock=failing("p1", "p2"))
    answered = await gw.answer(call)
    assert call.served_model == "second"
    assert sorted(names(call)[:2]) == ["demo/p1", "demo/p2"]
    assert names(call)[2:] == ["demo/s"]
    assert answered.attempt.target.model == "second"
    assert answered.body.model == "s"  # type: ignore[union-attr]


async def test_fallbacks_are_tried_in_order_each_with_its_own_retries(
    gateway: GatewayFactory, upstream: respx.Router
) -> None:
    gw = gateway(CHAIN)
    talk = upstream.post("https://chat-only.test/v1/messages").mock(return_value=error(529))
    call = chat("primary", mock=failing("p1", "p2", "s"))
    await gw.answer(call)
    assert call.served_model == "third"
    # primary's two attempts, second's three, talk's three, then third's answer.
    assert names(call)[2:] == ["demo/s"] * 3 + ["chat-only/claude-x"] * 3 + ["demo/t"]
    assert talk.call_count == 3


async def test_a_fallbacks_own_fallbacks_are_not_followed(gateway: GatewayFactory) -> None:
    gw = gateway(CHAIN.replace("fallbacks: [second, talk, third]", "fallbacks: [second]"))
    call = chat("primary", mock=failing("p1", "p2", "s"))
    with pytest.raises(UpstreamUnavailable) as raised:
        await gw.answer(call)
    assert "demo/f" not in names(call)
    assert names(call)[2:] == ["demo/s"] * 3
    assert raised.value.response_headers()["x-should-retry"] == "false"


@pytest.mark.parametrize("status", [401, 403, 429, 503, 504])
async def test_the_upstreams_failures_fall_back(gateway: GatewayFactory, status: int) -> None:
    gw = gateway(CHAIN)
    call = chat("primary", mock=failing("p1", "p2", status=status))
    await gw.answer(call)
    assert call.served_model == "second"


async def test_a_refused_request_is_the_clients_and_does_not_fall_back(
    gateway: GatewayFactory,
) -> None:
    gw = gateway(CHAIN)
    call = chat("primary", mock={"status": 400, "message": "bad temperature"})
    with pytest.raises(UpstreamRejected) as raised:
        await gw.answer(call)
    assert (raised.value.status, raised.value.message) == (400, "bad temperature")
    assert len(call.attempts) == 1
    assert call.served_model == "primary"
    assert "x-should-retry" not in raised.value.response_headers()


CONTEXT = f"""
providers:
{openai_providers("a", "b", "c", "d")}
models:
  small:
    routing: {{retries: {{attempts: 1}}}}
    fallbacks: [other]
    context_fallbacks: [big, bigger]
    deployments: [{{provider: a, model: up-a}}]
  other: {{deployments: [{{provider: b, model: up-b}}]}}
  big: {{deployments: [{{provider: c, model: up-c}}]}}
  bigger: {{deployments: [{{provider: d, model: up-d}}]}}
"""


async def test_a_prompt_too_long_goes_down_the_context_fallbacks(
    gateway: GatewayFactory, upstream: respx.Router
) -> None:
    gw = gateway(CONTEXT)
    too_long = error(400, "context_length_exceeded")
    a = upstream.post(url("a")).mock(return_value=too_long)
    b = upstream.post(url("b")).respond(200, json=completion("from other"))
    c = upstream.post(url("c")).mock(return_value=too_long)
    d = upstream.post(url("d")).respond(200, json=completion("from bigger"))
    call = chat("small")
    answered = await gw.answer(call)
    assert answered.body.choices[0].message.content == "from bigger"  # type: ignore[union-attr]
    assert call.served_model == "bigger"
    assert (a.call_count, b.call_count, c.call_count, d.call_count) == (1, 0, 1, 1)


async def test_a_streamed_call_falls_back_before_its_first_output(
    gateway: GatewayFactory,
) -> None:
    gw = gateway(CHAIN)
    stream = await gw.stream(chat("primary", stream=True, mock=failing("p1", "p2")))
    opened = await stream.open()
    assert stream.call.served_model == "second"
    assert opened.attempt.target.name == "demo/s"
    items = await read_all(opened)
    assert items[-1].usage is not None
    await stream.close(None, items[-1].usage, len(items), left=False)


async def test_every_deployment_busy_falls_back(gateway: GatewayFactory) -> None:
    gw = gateway(
        CHAIN.replace(
            "deployments: [{provider: demo, model: p1}, {provider: demo, model: p2}]",
            "deployments: [{provider: demo, model: p1, max_parallel: 1}]",
        )
    )
    held = await gw.stream(chat("primary", stream=True))
    await held.open()
    call = chat("primary")
    await gw.answer(call)
    assert call.served_model == "second"
    assert names(call) == ["demo/s"]
    await held.close(None, None, 1, left=False)


async def test_an_embeddings_call_skips_the_fallbacks_that_do_not_embed(
    gateway: GatewayFactory, upstream: respx.Router
) -> None:
    gw = gateway(CHAIN)
    call: RoutedCall = embed("primary", mock=failing("p1", "p2", "s"))
    await gw.answer(call)
    assert call.served_model == "third"
    assert "chat-only/claude-x" not in names(call)
    assert upstream.calls.call_count == 0
