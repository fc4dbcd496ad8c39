"""Budgets that serve, end to end: a real gateway on each store, a real mock upstream
with a price (docs/limits.md, "Budgets").

A request is admitted while settled spend + the reservations of requests in
flight is below the key's budget; each reserves its upper-bound cost (prompt
estimate + output cap, times n, at the model's price) until it settles to its
real cost. Settled spend at the budget: 429 insufficient_quota, not to be
retried. Reservations alone: 429 rate_limit_exceeded with Retry-After.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.limits import estimate
from gateway.schemas.openai import ChatCompletionRequest
from tests.integration.stores import STORES, auth, create_key, error_of, gateway_on, usage
from tests.servers import ServerProcess

PRICE_IN, PRICE_OUT = 2.5, 10.0  # USD per million tokens, as gpt-4o
DEFAULT_MAX_OUTPUT = 4096
HI = [{"role": "user", "content": "hi"}]


def _config(upstream: ServerProcess) -> dict[str, Any]:
    return {
        "providers": {
            "upstream": {
                "type": "openai",
                "base_url": f"{upstream.url}/v1",
                "api_key": "sk-upstream-secret",
            }
        },
        "models": {
            "priced": {
                "deployments": [
                    {
                        "provider": "upstream",
                        "model": "mock-chat",
                        "price": {"input": PRICE_IN, "output": PRICE_OUT},
                    }
                ]
            }
        },
        "server": {"default_max_output_tokens": DEFAULT_MAX_OUTPUT},
    }


@pytest.fixture(scope="module", params=STORES)
def gw(
    request: pytest.FixtureRequest,
    upstream: ServerProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    with gateway_on(request.param, tmp_path_factory.mktemp("budgets"), _config(upstream)) as g:
        yield g


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": "priced", "messages": HI, **extra}


def _cost(prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * PRICE_IN + completion_tokens * PRICE_OUT) / 1_000_000


def _reservation(body: dict[str, Any], output_cap: int) -> float:
    prompt = estimate.prompt_tokens(ChatCompletionRequest.model_validate(body))
    return _cost(prompt, output_cap * body.get("n", 1))


def _one_request_cost(gw: ServerProcess, body: dict[str, Any]) -> float:
    """What ``body`` costs, from an unlimited key's answer: the mock is deterministic."""
    _, secret = create_key(gw.url, {})
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=auth(secret), timeout=10)
    assert r.status_code == 200, r.text
    return _cost(r.json()["usage"]["prompt_tokens"], r.json()["usage"]["completion_tokens"])


def _assert_used_up(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    error = error_of(r)
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota"), error
    assert "used up" in error["message"]
    assert r.headers["x-should-retry"] == "false"


def _assert_held(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    error = error_of(r)
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded"), error
    assert "in flight" in error["message"]
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers.get("x-should-retry") != "false"


def test_a_fresh_key_is_served_until_settled_spend_reaches_its_budget(gw: ServerProcess) -> None:
    budget = 0.001
    body = _chat()
    # One request's worst case (4096 output tokens at $10 per million) is 40 times the
    # whole budget; its real cost a small part of it.
    assert _reservation(body, DEFAULT_MAX_OUTPUT) > 40 * budget
    cost = _one_request_cost(gw, body)
    assert cost < budget

    key_id, secret = create_key(gw.url, {"budget_usd": budget, "budget_period": "day"})
    served = 0
    with httpx.Client(timeout=10) as client:
        for _ in range(100):
            r = client.post(f"{gw.url}/v1/chat/completions", json=body, headers=auth(secret))
            if r.status_code != 200:
                break
            served += 1
        _assert_used_up(r)
        _assert_used_up(
            client.post(f"{gw.url}/v1/chat/completions", json=body, headers=auth(secret))
        )

    # Served while settled spend was below the budget, one at a time: the last one
    # passed it by less than its own cost.
    assert served == math.ceil(budget / cost), (served, cost)
    spent = usage(gw.url, key_id)["cost_usd"]
    assert spent == pytest.approx(served * cost, rel=1e-9)
    assert budget <= spent < budget + cost


async def _open_stream(
    client: httpx.AsyncClient, url: str, secret: str, body: dict[str, Any]
) -> tuple[httpx.Response, Any]:
    """A stream, read up to its first chunk: admitted, and in flight until closed."""
    request = client.build_request(
        "POST", f"{url}/v1/chat/completions", json=body, headers=auth(secret)
    )
    response = await client.send(request, stream=True)
    assert response.status_code == 200, await response.aread()
    lines = response.aiter_lines()  # kept: a dropped iterator closes the connection
    while not (await anext(lines)).startswith("data: "):
        pass
    return response, lines


async def test_reservations_in_flight_alone_give_a_retryable_429(gw: ServerProcess) -> None:
    budget = 0.01
    slow = _chat(stream=True, mock={"tokens_per_s": 4, "chunks": 80})
    assert _reservation(slow, DEFAULT_MAX_OUTPUT) > budget
    key_id, secret = create_key(gw.url, {"budget_usd": budget})
    url = f"{gw.url}/v1/chat/completions"
    async with httpx.AsyncClient(timeout=20) as client:
        response, lines = await _open_stream(client, gw.url, secret, slow)
        try:
            for _ in range(2):  # nothing is settled yet: held, not used up
                _assert_held(await client.post(url, json=_chat(), headers=auth(secret)))
        finally:
            await lines.aclose()
            await response.aclose()  # the client leaves: the gateway settles the stream

        # Its reservation goes when the gateway has settled it: then served again.
        deadline = time.monotonic() + 10
        while True:
            r = await client.post(url, json=_chat(), headers=auth(secret))
            if r.status_code == 200:
                break
            _assert_held(r)
            assert time.monotonic() < deadline, "still held 10 s after the stream ended"
            await asyncio.sleep(0.1)
    assert 0 < usage(gw.url, key_id)["cost_usd"] < budget


async def test_fifty_concurrent_requests_pass_the_budget_by_less_than_one_request(
    gw: ServerProcess,
) -> None:
    # Output capped at what the mock answers, so a reservation is near the real cost and
    # several fit at once; each answer takes 300 ms, so the admitted ones overlap.
    body = _chat(max_tokens=12, mock={"delay_ms": 300})
    cost = _one_request_cost(gw, body)
    reservation = _reservation(body, 12)
    assert cost <= reservation < 1.2 * cost
    budget = 3.5 * cost  # about three requests
    key_id, secret = create_key(gw.url, {"budget_usd": budget})

    async with httpx.AsyncClient(
        timeout=30, limits=httpx.Limits(max_connections=None, max_keepalive_connections=60)
    ) as client:
        answers = await asyncio.gather(
            *(
                client.post(f"{gw.url}/v1/chat/completions", json=body, headers=auth(secret))
                for _ in range(50)
            )
        )
        # Once settled: used up for good.
        after = await client.post(f"{gw.url}/v1/chat/completions", json=body, headers=auth(secret))
    outcomes = Counter((r.status_code, r.json().get("error", {}).get("code")) for r in answers)
    assert set(outcomes) <= {
        (200, None),
        (429, "rate_limit_exceeded"),
        (429, "insufficient_quota"),
    }, outcomes
    for r in answers:
        if r.status_code == 429:
            (_assert_held if error_of(r)["code"] == "rate_limit_exceeded" else _assert_used_up)(r)
    served = outcomes[(200, None)]
    spent = usage(gw.url, key_id)["cost_usd"]
    assert spent == pytest.approx(served * cost, rel=1e-9), (spent, served, outcomes)
    assert budget <= spent < budget + cost, (spent, served, outcomes)
    _assert_used_up(after)


@pytest.mark.parametrize("n", [1, 2])
async def test_the_cost_reservation_counts_every_choice(gw: ServerProcess, n: int) -> None:
    # In flight: a stream asking for n choices of up to 1000 tokens. Its reservation is
    # about $0.01 per choice; the budget, $0.015, has room for one choice's, not two.
    budget = 0.015
    slow = _chat(stream=True, n=n, max_tokens=1000, mock={"tokens_per_s": 4, "chunks": 80})
    assert _reservation({**slow, "n": 1}, 1000) < budget <= _reservation({**slow, "n": 2}, 1000)
    _, secret = create_key(gw.url, {"budget_usd": budget})
    async with httpx.AsyncClient(timeout=20) as client:
        response, lines = await _open_stream(client, gw.url, secret, slow)
        try:
            r = await client.post(
                f"{gw.url}/v1/chat/completions", json=_chat(), headers=auth(secret)
            )
        finally:
            await lines.aclose()
            await response.aclose()
    if n == 1:
        assert r.status_code == 200, r.text
    else:
        _assert_held(r)
