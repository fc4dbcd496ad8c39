"""Several gateway instances behind nginx, on one Redis Cluster (docs/operations.md,
"Redis: Cluster, Sentinel, TLS", and the README's serving guide).

Two gateway processes on two ports share a 3-primary cluster (with a replica
each, started once for the session: tests/redis_topologies.py) under a prefix
of this module's own; nginx, with the shipped deploy/nginx.conf aimed at both,
spreads the clients' requests over them. What holds for one Redis holds here:
rpm and max_parallel are exact across the instances, keys whose hash tags land on different
primaries are admitted and listed alike, and a key revoked through one instance
is refused by the other within its 1 s key cache.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.nginx import NginxProcess
from tests.redis_topologies import RedisCluster
from tests.servers import SLACK, ServerProcess, start_mock_upstream, wait_for, write_config

MASTER = "sk-master-" + uuid.uuid4().hex
ADMIN = {"authorization": f"Bearer {MASTER}"}
CHAT = {"model": "local-chat", "messages": [{"role": "user", "content": "hi"}]}


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def prefix(redis_cluster_session: RedisCluster) -> Iterator[str]:
    prefix = f"gwtest-scale-{uuid.uuid4().hex[:8]}:"
    yield prefix
    redis_cluster_session.flush_prefix(prefix)


@pytest.fixture(scope="module")
def stack(
    redis_cluster_session: RedisCluster, prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[NginxProcess, ServerProcess, ServerProcess]]:
    """nginx in front of two gateways on the cluster (seeded with one node each: the
    others are learnt from the slot map)."""
    redis_cluster_session.heal()
    upstream = start_mock_upstream()
    directory = tmp_path_factory.mktemp("scale-out")
    config = write_config(
        directory,
        {
            "providers": {"up": {"type": "openai", "base_url": f"{upstream.url}/v1"}},
            "models": {"local-chat": {"deployments": [{"provider": "up", "model": "mock-chat"}]}},
            "server": {"redis_prefix": prefix},
        },
    )
    seeds = redis_cluster_session.seeds
    gateways = [
        ServerProcess(
            ["serve", "--config", str(config)],
            env={"REDIS_URL": f"redis+cluster://{seed}", "GATEWAY_MASTER_KEY": MASTER},
        )
        for seed in (seeds[0], seeds[1])
    ]
    nginx = None
    try:
        for gateway in gateways:
            gateway.wait_ready("/ready", timeout=20 + SLACK)
        nginx = NginxProcess(directory, [g.port for g in gateways])
        nginx.wait_ready()
        yield nginx, gateways[0], gateways[1]
    finally:
        if nginx is not None:
            nginx.stop()
        for gateway in gateways:
            gateway.stop()
        upstream.stop()


def _create(url: str, name: str, **limits: Any) -> dict[str, Any]:
    r = httpx.post(
        f"{url}/admin/keys", json={"name": name, "limits": limits}, headers=ADMIN, timeout=10
    )
    assert r.status_code == 201, r.text
    return r.json()


def _served_by(gateway: ServerProcess, request_ids: set[str]) -> int:
    return sum(
        1
        for line in gateway.logs().splitlines()
        if "gateway.access" in line and any(f"request_id={rid} " in line for rid in request_ids)
    )


def test_rpm_is_exact_across_instances_behind_nginx(
    stack: tuple[NginxProcess, ServerProcess, ServerProcess],
) -> None:
    """200 requests at once, at a key with rpm 50, through nginx to both instances:
    exactly 50 pass, the rest are 429s with Retry-After."""
    nginx, a, b = stack
    key = _create(nginx.url, f"rpm50-{uuid.uuid4().hex[:6]}", rpm=50)["key"]
    run = uuid.uuid4().hex[:8]

    async def fire() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(timeout=30 + SLACK, limits=limits) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{nginx.url}/v1/chat/completions",
                        json=CHAT,
                        headers={**auth(key), "x-request-id": f"rpm-{run}-{i}"},
                    )
                    for i in range(200)
                )
            )

    responses = asyncio.run(fire())
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 50, 429: 150}, statuses
    assert all(int(r.headers["retry-after"]) >= 1 for r in responses if r.status_code == 429)
    ids = {f"rpm-{run}-{i}" for i in range(200)}

    def counted_by_each() -> tuple[int, int] | None:
        counts = (_served_by(a, ids), _served_by(b, ids))
        return counts if sum(counts) == 200 else None

    counted = wait_for("the access lines of all 200", counted_by_each)
    assert min(counted) > 0, f"nginx sent everything to one instance: {counted}"


def test_max_parallel_is_exact_across_instances_behind_nginx(
    stack: tuple[NginxProcess, ServerProcess, ServerProcess],
) -> None:
    """20 slow streams at once, at a key with max_parallel 5: 5 run, 15 are refused."""
    nginx, _, _ = stack
    key = _create(nginx.url, f"par5-{uuid.uuid4().hex[:6]}", max_parallel=5)["key"]
    body = {**CHAT, "stream": True, "mock": {"tokens_per_s": 10, "chunks": 10}}

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30 + SLACK) as client:
            return await asyncio.gather(
                *(
                    client.post(f"{nginx.url}/v1/chat/completions", json=body, headers=auth(key))
                    for _ in range(20)
                )
            )

    responses = asyncio.run(fire())
    assert Counter(r.status_code for r in responses) == {200: 5, 429: 15}
    for r in responses:
        if r.status_code == 200:
            assert r.text.rstrip().endswith("data: [DONE]"), r.text[-200:]
        else:
            assert r.json()["error"]["code"] == "max_parallel_exceeded", r.text


def test_keys_on_every_primary_are_admitted_listed_and_counted(
    stack: tuple[NginxProcess, ServerProcess, ServerProcess],
    redis_cluster_session: RedisCluster,
    prefix: str,
) -> None:
    """Keys whose data lives on each of the three primaries: each is served, the admin
    listing has them all, and the usage totals count each one's requests."""
    nginx, a, b = stack
    by_primary: dict[Any, list[dict[str, Any]]] = {}
    for i in range(60):  # key ids are random: enough to land on every primary
        created = _create(a.url if i % 2 else b.url, f"spread-{uuid.uuid4().hex[:6]}-{i}")
        primary = redis_cluster_session.primary_for(f"{prefix}{{{created['id']}}}:rpm")
        by_primary.setdefault(primary, []).append(created)
        if len(by_primary) == 3 and all(len(keys) >= 2 for keys in by_primary.values()):
            break
    assert len(by_primary) == 3, f"keys landed on {len(by_primary)} primaries only"
    keys = [key for found in by_primary.values() for key in found]

    for key in keys:
        for via in (a, b):
            r = httpx.post(
                f"{via.url}/v1/chat/completions", json=CHAT, headers=auth(key["key"]), timeout=10
            )
            assert r.status_code == 200, r.text

    listed: set[str] = set()
    after = None
    while True:
        params = {"limit": 100, **({"after": after} if after else {})}
        page = httpx.get(f"{nginx.url}/admin/keys", params=params, headers=ADMIN, timeout=10)
        assert page.status_code == 200, page.text
        listed |= {k["id"] for k in page.json()["data"]}
        if not page.json()["has_more"]:
            break
        after = page.json()["last_id"]
    assert {k["id"] for k in keys} <= listed

    def counted() -> dict[str, int] | None:
        usage = httpx.get(f"{nginx.url}/admin/usage", headers=ADMIN, timeout=10).json()["data"]
        requests = {u["key_id"]: u["requests"] for u in usage}
        mine = {k["id"]: requests.get(k["id"], 0) for k in keys}
        return mine if all(n == 2 for n in mine.values()) else None

    wait_for("two requests counted for every key", counted)


def test_a_key_revoked_on_one_instance_is_refused_by_the_other_within_a_second(
    stack: tuple[NginxProcess, ServerProcess, ServerProcess],
) -> None:
    _, a, b = stack
    created = _create(a.url, f"revoked-{uuid.uuid4().hex[:6]}")
    use = {"json": CHAT, "headers": auth(created["key"]), "timeout": 10}
    assert httpx.post(f"{b.url}/v1/chat/completions", **use).status_code == 200  # b caches it
    r = httpx.delete(f"{a.url}/admin/keys/{created['id']}", headers=ADMIN, timeout=10)
    assert r.status_code == 204, r.text
    revoked_at = time.monotonic()

    def refused() -> float | None:
        r = httpx.post(f"{b.url}/v1/chat/completions", **use)
        return time.monotonic() - revoked_at if r.status_code == 401 else None

    took = wait_for("the other instance refuses the revoked key", refused, timeout=5 + SLACK)
    # The key cache holds a record 1 s: a stalled machine may add to that, not 10x it.
    assert took < 1.0 + SLACK / 2, took
