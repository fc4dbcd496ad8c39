"""What a request costs, to the cent: a real gateway on each store, a real mock upstream
answering under the names of priced models (docs/limits.md, "Budgets": prices).

The usage document's ``cost_usd`` is the tokens the upstream reported times the
price per million: the packaged ``configs/prices.yaml`` by upstream model name,
or a deployment's own ``price:``.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.stores import STORES, auth, create_key, gateway_on, usage
from tests.servers import ServerProcess

CONFIGURED = {"input": 3.75, "output": 17.5}


def _packaged_price(model: str) -> dict[str, float]:
    text = resources.files("gateway").joinpath("configs", "prices.yaml").read_text()
    return yaml.safe_load(text)["models"][model]


def _config(upstream: ServerProcess) -> dict[str, Any]:
    def on_upstream(model: str, **deployment: Any) -> dict[str, Any]:
        return {"deployments": [{"provider": "upstream", "model": model, **deployment}]}

    return {
        "providers": {
            "upstream": {
                "type": "openai",
                "base_url": f"{upstream.url}/v1",
                "api_key": "sk-upstream-secret",
            }
        },
        "models": {
            # The mock answers any model name: these are priced by prices.yaml.
            "gpt-4o": on_upstream("gpt-4o"),
            "embed-small": on_upstream("text-embedding-3-small"),
            "configured": on_upstream("mock-chat", price=CONFIGURED),
        },
    }


@pytest.fixture(scope="module", params=STORES)
def gw(
    request: pytest.FixtureRequest,
    upstream: ServerProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    with gateway_on(request.param, tmp_path_factory.mktemp("cost"), _config(upstream)) as g:
        yield g


def _dollars(tokens_in: int, tokens_out: int, price: dict[str, float]) -> float:
    return (tokens_in * price["input"] + tokens_out * price["output"]) / 1_000_000


# A long prompt and a long answer, so the cost is cents, not fractions of one.
LONG = [{"role": "user", "content": "measure the cost of this prompt " * 1200}]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_cost_of_a_chat_request_from_prices_yaml(gw: ServerProcess, stream: bool) -> None:
    price = _packaged_price("gpt-4o")
    # The list the gateway ships; the mock reports no cache reads, so cache_read is unused.
    assert price == {"input": 2.5, "output": 10.0, "cache_read": 1.25}
    key_id, secret = create_key(gw.url, {})
    body = {"model": "gpt-4o", "messages": LONG, "mock": {"chunks": 3000}}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=auth(secret), timeout=30)
    assert r.status_code == 200, r.text
    if stream:
        chunks = [line[6:] for line in r.text.split("\n") if line.startswith("data: {")]
        reported = httpx.Response(200, content=chunks[-1]).json()["usage"]
    else:
        reported = r.json()["usage"]
    tokens_in, tokens_out = reported["prompt_tokens"], reported["completion_tokens"]
    assert tokens_out == 3000
    expected = _dollars(tokens_in, tokens_out, price)
    assert expected > 0.04  # 3000 tokens at $10 per million, plus the prompt

    doc = usage(gw.url, key_id)
    assert (doc["requests"], doc["input_tokens"], doc["output_tokens"]) == (1, tokens_in, 3000)
    assert round(doc["cost_usd"], 2) == round(expected, 2)  # to the cent
    assert doc["cost_usd"] == pytest.approx(expected, rel=1e-9)  # and well below it
    assert doc["by_model"][0]["cost_usd"] == pytest.approx(expected, rel=1e-9)


def test_cost_of_a_deployment_with_its_own_price(gw: ServerProcess) -> None:
    key_id, secret = create_key(gw.url, {})
    total = 0.0
    for i in range(3):
        body = {"model": "configured", "messages": LONG, "mock": {"chunks": 1000 + i}}
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=auth(secret), timeout=30)
        assert r.status_code == 200, r.text
        reported = r.json()["usage"]
        total += _dollars(reported["prompt_tokens"], reported["completion_tokens"], CONFIGURED)
    doc = usage(gw.url, key_id)
    assert doc["requests"] == 3
    assert round(doc["cost_usd"], 2) == round(total, 2)
    assert doc["cost_usd"] == pytest.approx(total, rel=1e-9)


def test_cost_of_an_embedding_request_from_prices_yaml(gw: ServerProcess) -> None:
    price = _packaged_price("text-embedding-3-small")
    key_id, secret = create_key(gw.url, {})
    body = {"model": "embed-small", "input": ["embed this text " * 1000] * 10}
    r = httpx.post(f"{gw.url}/v1/embeddings", json=body, headers=auth(secret), timeout=30)
    assert r.status_code == 200, r.text
    tokens = r.json()["usage"]["prompt_tokens"]
    expected = _dollars(tokens, 0, price)  # $0.02 per million: a fraction of a cent
    assert expected > 0
    doc = usage(gw.url, key_id)
    assert (doc["input_tokens"], doc["output_tokens"]) == (tokens, 0)
    assert doc["cost_usd"] == pytest.approx(expected, rel=1e-9)
