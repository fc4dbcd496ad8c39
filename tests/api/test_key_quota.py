"""``GET /admin/keys/{id}/quota``: where a key stands against its limits right now, as
both stores count it (embedded, and Redis under a prefix of its own), read by a served
gateway after real traffic."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.stores import ADMIN, STORES, gateway_on
from tests.servers import SLACK, ServerProcess, wait_for

PRICE = {"input": 1000.0, "output": 2000.0}  # USD per 1M tokens: cents a request


@pytest.fixture(scope="module", params=STORES)
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    config = {
        "providers": {"demo": {"type": "mock"}},
        "models": {"priced": {"deployments": [{"provider": "demo", "model": "m", "price": PRICE}]}},
    }
    directory = tmp_path_factory.mktemp(f"quota-{request.param}")
    with gateway_on(request.param, directory, config) as server:
        yield server


def create(gateway: ServerProcess, **fields: Any) -> dict[str, Any]:
    r = httpx.post(
        f"{gateway.url}/admin/keys",
        json={"name": f"quota-{uuid.uuid4().hex[:8]}", **fields},
        headers=ADMIN,
        timeout=5,
    )
    assert r.status_code == 201, r.text
    return r.json()


def quota(gateway: ServerProcess, key_id: str) -> dict[str, Any]:
    r = httpx.get(f"{gateway.url}/admin/keys/{key_id}/quota", headers=ADMIN, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def chat(gateway: ServerProcess, key: str, **extra: Any) -> httpx.Response:
    body = {"model": "priced", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={**body, **extra},
        headers={"authorization": f"Bearer {key}"},
        timeout=SLACK * 2,
    )


def test_a_fresh_key_stands_at_zero(gateway: ServerProcess) -> None:
    key = create(gateway, limits={"rpm": 5, "tpm": 1000, "max_parallel": 2, "budget_usd": 1})
    assert quota(gateway, key["id"]) == {
        "object": "gateway.key_quota",
        "key_id": key["id"],
        "requests": {"limit": 5, "used": 0, "remaining": 5, "reset_seconds": 0.0},
        "tokens": {"limit": 1000, "used": 0, "remaining": 1000, "reset_seconds": 0.0},
        "parallel": {"limit": 2, "in_flight": 0, "remaining": 2},
        "budget": {
            "limit_usd": 1.0,
            "period": "total",
            "spent_usd": 0.0,
            "held_usd": 0.0,
            "remaining_usd": 1.0,
        },
    }


def test_requests_tokens_and_spend_are_counted_as_admitted(gateway: ServerProcess) -> None:
    key = create(gateway, limits={"rpm": 3, "tpm": 5000, "budget_usd": 10, "budget_period": "day"})
    answers = [chat(gateway, key["key"]) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    usage = [a.json()["usage"] for a in answers]
    spent = sum(u["prompt_tokens"] * 1000 + u["completion_tokens"] * 2000 for u in usage) / 1e6

    # Settled after the answer: read once both are in.
    now = wait_for(
        "both requests settled",
        lambda: (
            (q := quota(gateway, key["id"]))["budget"]["spent_usd"] > 0
            and q["budget"]["held_usd"] == 0
            and q
        ),
    )
    assert now["requests"]["limit"] == 3
    assert now["requests"]["used"] == 2
    assert now["requests"]["remaining"] == 1
    assert 0 < now["requests"]["reset_seconds"] <= 60
    # tpm holds what the requests used once settled (the reservation given back).
    assert now["tokens"]["used"] == sum(u["total_tokens"] for u in usage)
    assert now["tokens"]["remaining"] == 5000 - now["tokens"]["used"]
    assert 0 < now["tokens"]["reset_seconds"] <= 60
    assert now["budget"]["period"] == "day"
    assert now["budget"]["spent_usd"] == pytest.approx(spent)
    assert now["budget"]["remaining_usd"] == pytest.approx(10 - spent)
    # The rate-limit headers of the next answer agree.
    third = chat(gateway, key["key"])
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    assert quota(gateway, key["id"])["requests"]["remaining"] == 0


def test_requests_in_flight_and_their_reservations_are_shown(gateway: ServerProcess) -> None:
    key = create(gateway, limits={"max_parallel": 3, "budget_usd": 100})
    done = threading.Event()

    def slow() -> None:
        try:
            chat(gateway, key["key"], mock={"delay_ms": 2000})
        finally:
            done.set()

    threading.Thread(target=slow, daemon=True).start()
    during = wait_for(
        "the slow request in flight",
        lambda: (q := quota(gateway, key["id"]))["parallel"]["in_flight"] == 1 and q,
    )
    assert during["parallel"]["remaining"] == 2
    # Its worst case is held against the budget until it settles.
    assert during["budget"]["held_usd"] > 0
    assert during["budget"]["remaining_usd"] == pytest.approx(100 - during["budget"]["held_usd"])
    assert done.wait(SLACK * 2)
    after = wait_for(
        "the request settled",
        lambda: (q := quota(gateway, key["id"]))["parallel"]["in_flight"] == 0 and q,
    )
    assert after["budget"]["held_usd"] == 0
    assert after["budget"]["spent_usd"] > 0


def test_a_key_without_limits_has_none_to_show(gateway: ServerProcess) -> None:
    key = create(gateway)
    assert chat(gateway, key["key"]).status_code == 200
    now = quota(gateway, key["id"])
    assert now["requests"] == {"limit": None, "used": 0, "remaining": None, "reset_seconds": 0.0}
    assert now["tokens"]["limit"] is None
    assert now["tokens"]["remaining"] is None
    assert now["parallel"] == {"limit": None, "in_flight": 0, "remaining": None}
    assert now["budget"]["limit_usd"] is None
    assert now["budget"]["period"] is None


def test_only_the_master_key_reads_a_known_key(gateway: ServerProcess) -> None:
    key = create(gateway)
    path = f"{gateway.url}/admin/keys/{key['id']}/quota"
    as_app = httpx.get(path, headers={"authorization": f"Bearer {key['key']}"}, timeout=5)
    assert as_app.status_code == 401
    unknown = httpx.get(f"{gateway.url}/admin/keys/nope/quota", headers=ADMIN, timeout=5)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "key_not_found"
    odd = httpx.get(path + "?window=5", headers=ADMIN, timeout=5)
    assert odd.status_code == 400
