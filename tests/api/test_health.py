"""/ready in process: what it says about the store and the models (docs/operations.md,
"Health and readiness").

Cooldowns are made by real traffic: the mock provider answers 503 when the
request's script says so, and a model whose one deployment fails once cools
down (``cooldown.failures: 1``, no retries). The store outages run a Redis of
the test's own and kill it.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.config import load_settings
from tests.limits.support import RedisServer

KEY = "sk-test-ready-0123456789"
AUTH = {"authorization": f"Bearer {KEY}"}
TOUCHY = {"retries": {"attempts": 1}, "cooldown": {"failures": 1, "seconds": 120}}


def config(tmp_path: Path, **server: Any) -> Path:
    path = tmp_path / "gateway.yaml"
    data = {
        "providers": {
            "a": {"type": "mock"},
            "b": {"type": "mock"},
            "off": {"type": "openai", "api_key": "${GW_TEST_READY_UNSET:-}"},
        },
        "models": {
            "one": {"deployments": [{"provider": "a", "model": "m1"}], "routing": TOUCHY},
            "two": {
                "deployments": [
                    {"provider": "a", "model": "m2"},
                    {"provider": "b", "model": "m2"},
                ],
                "routing": TOUCHY,
            },
            # Served by a disabled provider only: not served, so not a fault.
            "dormant": {"deployments": [{"provider": "off", "model": "gpt-4o"}]},
        },
        "keys": [{"name": "tests", "key": KEY}],
        "server": {"data_dir": str(tmp_path / "data"), **server},
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(load_settings(config(tmp_path), env={}))) as client:
        yield client


def fail(client: TestClient, model: str) -> None:
    """One request that fails on the upstream (503): the deployment it was sent to (the
    strategy picks among those not cooling down) cools down."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "mock": {"status": 503},
    }
    response = client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 502, response.text


def test_ready_when_the_store_answers_and_every_model_can_be_served(client: TestClient) -> None:
    response = client.get("/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["store"] == {"backend": "embedded", "status": "ok"}
    assert body["models"] == {"total": 2, "unavailable": {}}
    assert body["config"]["generation"] == 1
    assert body["config"]["source"].endswith("gateway.yaml")


def test_a_model_whose_deployments_all_cool_down_is_named_and_degrades(
    client: TestClient,
) -> None:
    fail(client, "one")
    response = client.get("/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    why = body["models"]["unavailable"]["one"]
    assert why.startswith("every deployment is cooling down: a/m1 for "), why
    assert 110 <= int(why.split()[-2]) <= 120, why
    assert list(body["models"]["unavailable"]) == ["one"]

    # One of two's deployments cooling down leaves it usable.
    fail(client, "two")
    body = client.get("/ready").json()
    assert set(body["models"]["unavailable"]) == {"one"}, body


def test_no_usable_model_at_all_is_unavailable(client: TestClient) -> None:
    fail(client, "one")
    fail(client, "two")
    fail(client, "two")  # the other deployment: the strategy skips the cooling one
    response = client.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["models"]["total"] == 2
    # Both deployments, the one whose cooldown ends first first (which one the strategy
    # tried first is its own choice).
    why = body["models"]["unavailable"]["two"]
    assert re.fullmatch(
        r"every deployment is cooling down: ([ab])/m2 for 1[12]\d s, "
        r"(?!\1)[ab]/m2 for 1[12]\d s",
        why,
    ), why
    assert client.get("/health").json() == {"status": "ok"}  # liveness is not readiness


@pytest.mark.parametrize(
    ("fail_mode", "code", "status", "store"),
    [("open", 200, "degraded", "degraded"), ("closed", 503, "unavailable", "unavailable")],
)
def test_a_stopped_redis_is_degraded_or_unavailable_by_fail_mode(
    tmp_path: Path, fail_mode: str, code: int, status: str, store: str
) -> None:
    redis_server = RedisServer(tmp_path).start()
    try:
        prefix = f"gwtest-ready-{uuid.uuid4().hex[:8]}:"
        path = config(tmp_path, fail_mode=fail_mode, redis_prefix=prefix)
        settings = load_settings(path, env={"REDIS_URL": redis_server.url})
        with TestClient(create_app(settings)) as client:
            body = client.get("/ready").json()
            assert body["status"] == "ready"
            assert body["store"] == {"backend": "redis", "status": "ok"}

            redis_server.kill()
            deadline = time.monotonic() + 10
            while (response := client.get("/ready")).json()["status"] == "ready":
                assert time.monotonic() < deadline, response.text
                time.sleep(0.05)
            assert response.status_code == code
            body = response.json()
            assert body["status"] == status
            assert (body["store"]["backend"], body["store"]["status"]) == ("redis", store)
            assert body["store"]["error"].startswith("cannot connect to Redis at"), body
            assert body["models"] == {"total": 2, "unavailable": {}}

            redis_server.start()
            deadline = time.monotonic() + 10
            while (response := client.get("/ready")).json()["status"] != "ready":
                assert time.monotonic() < deadline, response.text
                time.sleep(0.05)
            assert response.status_code == 200
    finally:
        redis_server.kill()
