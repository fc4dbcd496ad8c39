"""GET /metrics in process: the counts add up to the traffic sent (docs/operations.md, "Metrics").

The app runs in process (lifespan and all, the mock provider, the embedded
store in tmp_path); each test sends scripted traffic, scrapes /metrics and
reads it with prometheus-client's own parser.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import load_settings
from gateway.observability.metrics import Metrics, route_of
from tests.observability.samples import Samples, assert_histograms_sane, parse, select, value
from tests.servers import free_port

TEAM = "sk-metrics-team-a-0001"
FAN = "sk-metrics-fan-00002"
LIMITED = "sk-metrics-limited-03"
PROVIDER_SECRET = "sk-provider-secret-metrics-0004"
HI = [{"role": "user", "content": "hi there"}]


def config(metrics: bool = True) -> str:
    # `paid` is an OpenAI-type provider on a closed port: its calls are refused.
    return f"""
providers:
  demo: {{type: mock}}
  paid: {{type: openai, base_url: "http://127.0.0.1:{free_port()}/v1", api_key: {PROVIDER_SECRET}}}
models:
  mock-chat: {{deployments: [{{provider: demo, model: mock-chat, price: {{input: 1, output: 2}}}}]}}
  other-chat: {{deployments: [{{provider: demo, model: other}}]}}
  flaky:
    deployments: [{{provider: demo, model: flaky-up}}]
    routing: {{retries: {{attempts: 2, backoff_ms: 1}}, cooldown: {{failures: 2, seconds: 60}}}}
    fallbacks: [mock-chat]
  hedged:
    deployments:
      - {{provider: demo, model: slow-up, weight: 1000000000}}
      - {{provider: demo, model: fast-up, weight: 0.000000001}}
    routing: {{strategy: hedge, hedge_after_ms: 50}}
  paid-chat:
    deployments: [{{provider: paid, model: gpt-4o}}]
    routing: {{retries: {{attempts: 1}}}}
keys:
  - {{name: team-a, key: {TEAM}}}
  - {{name: fan, key: {FAN}}}
  - {{name: limited, key: {LIMITED}, limits: {{rpm: 2}}}}
server:
  data_dir: data
  metrics: {"true" if metrics else "false"}
"""


def make_client(tmp_path: Path, metrics: bool = True) -> TestClient:
    path = tmp_path / "gateway.yaml"
    path.write_text(config(metrics))
    return TestClient(create_app(load_settings(path, env={})))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path) as client:
        yield client


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def chat(client: TestClient, model: str, key: str | None = TEAM, **fields: Any) -> Any:
    headers = auth(key) if key else {}
    body = {"model": model, "messages": HI, **fields}
    return client.post("/v1/chat/completions", json=body, headers=headers)


def scrape(client: TestClient) -> tuple[str, Samples]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text, parse(response.text)


# ---------------------------------------------------------------- the counts


def test_requests_add_up_by_route_model_key_and_status(client: TestClient) -> None:
    sent: Counter[tuple[str, str, str, str, str]] = Counter()  # route, model, provider, key, status
    tokens: Counter[str] = Counter()
    for _ in range(5):
        r = chat(client, "mock-chat")
        assert r.status_code == 200
        sent["chat", "mock-chat", "demo", "team-a", "200"] += 1
        tokens["input"] += r.json()["usage"]["prompt_tokens"]
        tokens["output"] += r.json()["usage"]["completion_tokens"]
    for _ in range(3):
        assert chat(client, "other-chat", stream=True).status_code == 200
        sent["chat", "other-chat", "demo", "team-a", "200"] += 1
    for _ in range(2):
        assert chat(client, "no-such-model").status_code == 404
        sent["chat", "", "", "team-a", "404"] += 1  # never what the client wrote
    for _ in range(2):
        assert chat(client, "mock-chat", key=None).status_code == 401
        sent["chat", "", "", "", "401"] += 1
    r = client.post(
        "/v1/messages",
        json={"model": "other-chat", "max_tokens": 20, "messages": HI},
        headers={"x-api-key": TEAM},
    )
    assert r.status_code == 200
    sent["messages", "other-chat", "demo", "team-a", "200"] += 1
    r = client.post(
        "/v1/fanout/chat/completions",
        json={"models": ["mock-chat", "other-chat"], "messages": HI},
        headers=auth(FAN),
    )
    assert r.status_code == 200
    sent["fanout", "fanout", "", "fan", "200"] += 1

    _, samples = scrape(client)
    counted = Counter(
        {
            (d["route"], d["model"], d["provider"], d["key"], d["status"]): v
            for d, v in (
                (dict(labels), v) for labels, v in select(samples, "gateway_requests_total").items()
            )
            if d["route"] in ("chat", "messages", "fanout")
        }
    )
    assert counted == sent
    # Tokens and cost per upstream call: the five mock-chat answers of team-a.
    for kind in ("input", "output"):
        mine = {"model": "mock-chat", "key": "team-a", "type": kind}
        assert value(samples, "gateway_tokens_total", **mine) == tokens[kind]
    assert math.isclose(
        value(samples, "gateway_cost_usd_total", model="mock-chat", provider="demo", key="team-a"),
        (tokens["input"] * 1 + tokens["output"] * 2) / 1e6,
    )
    # The fan-out's two calls are counted under their own models.
    assert value(samples, "gateway_tokens_total", model="other-chat", key="fan", type="output") > 0
    assert value(samples, "gateway_requests_in_flight") == 0
    assert value(samples, "gateway_streams_in_flight") == 0
    assert value(samples, "gateway_store_up") == 1


def test_rate_limited_counts_equal_the_429s(client: TestClient) -> None:
    statuses = Counter(chat(client, "mock-chat", key=LIMITED).status_code for _ in range(7))
    assert statuses == {200: 2, 429: 5}
    _, samples = scrape(client)
    assert select(samples, "gateway_rate_limited_total") == {
        frozenset({("limit", "rpm"), ("key", "limited")}): 5
    }
    assert value(samples, "gateway_requests_total", key="limited", status="429") == 5


def test_histograms_are_sane(client: TestClient) -> None:
    for _ in range(4):
        assert chat(client, "mock-chat").status_code == 200
    assert chat(client, "mock-chat", stream=True).status_code == 200
    assert chat(client, "no-such-model").status_code == 404
    _, samples = scrape(client)
    assert_histograms_sane(
        samples, "gateway_request_duration_seconds", "gateway_time_to_first_token_seconds"
    )
    # Six chat requests took some time; five had a first token.
    assert value(samples, "gateway_request_duration_seconds_count", route="chat") == 6
    assert value(samples, "gateway_time_to_first_token_seconds_count", model="mock-chat") == 5


def test_upstream_errors_retries_fallbacks_cooldowns_and_hedges(client: TestClient) -> None:
    # flaky-up fails twice (a retry), cools down, and mock-chat answers as the fallback.
    r = chat(client, "flaky", mock={"models": {"flaky-up": {"status": 500}}})
    assert r.status_code == 200
    assert r.headers["x-gateway-served-by"] == "demo/mock-chat"
    # slow-up is chosen first and hedged after 50 ms: fast-up answers first.
    r = chat(client, "hedged", mock={"models": {"slow-up": {"ttft_ms": 2000}}})
    assert r.status_code == 200
    assert r.headers["x-gateway-served-by"] == "demo/fast-up"
    assert chat(client, "paid-chat").status_code == 502
    _, samples = scrape(client)
    assert select(samples, "gateway_upstream_errors_total") == {
        frozenset({("deployment", "demo/flaky-up"), ("reason", "upstream_status")}): 2,
        frozenset({("deployment", "paid/gpt-4o"), ("reason", "connect_refused")}): 1,
    }
    assert select(samples, "gateway_retries_total") == {frozenset({("model", "flaky")}): 1}
    assert select(samples, "gateway_fallbacks_total") == {frozenset({("model", "mock-chat")}): 1}
    assert select(samples, "gateway_cooldowns_total") == {
        frozenset({("deployment", "demo/flaky-up")}): 1
    }
    assert select(samples, "gateway_hedges_won_total") == {frozenset({("model", "hedged")}): 1}
    assert value(samples, "gateway_requests_total", model="paid-chat", provider="paid") == 1


# ---------------------------------------------------------------- off, and secrets


def test_metrics_off_is_404_and_counts_nothing(tmp_path: Path) -> None:
    with make_client(tmp_path, metrics=False) as client:
        assert chat(client, "mock-chat").status_code == 200
        response = client.get("/metrics")
        unknown = client.get("/no-such-path")
        assert response.status_code == unknown.status_code == 404
        assert response.json()["error"]["code"] == unknown.json()["error"]["code"]
        assert Metrics.of(client.app_state["resources"].observer) is None


def test_no_secret_in_the_metrics(client: TestClient) -> None:
    assert chat(client, "mock-chat").status_code == 200
    assert chat(client, "mock-chat", key=LIMITED).status_code == 200
    assert chat(client, "paid-chat").status_code == 502
    assert chat(client, "mock-chat", key="sk-not-a-key-of-ours-005").status_code == 401
    text, _ = scrape(client)
    assert 'key="team-a"' in text
    for secret in (TEAM, FAN, LIMITED, PROVIDER_SECRET, "sk-not-a-key-of-ours-005"):
        assert secret not in text


def test_route_labels_come_from_a_fixed_table() -> None:
    assert route_of("/v1/chat/completions") == "chat"
    assert route_of("/v1/models/mock-chat") == "models"
    assert route_of("/admin/keys/key_123/usage") == "admin"
    assert route_of("/ready") == "health"
    assert route_of("/v1/chat/completions/../../etc") == "other"
    assert route_of("/\x1b[31mred") == "other"
