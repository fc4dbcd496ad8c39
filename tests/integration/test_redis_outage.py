"""Redis going away and coming back, under real gateways (docs/limits.md, "When the store
is down").

This module runs its own ``redis-server`` on a free loopback port, so it can
kill it mid-run and start it again, empty, on the same port. One gateway runs
``fail_mode: open`` (keeps serving known keys on per-process limits, buffers
usage), another ``fail_mode: closed`` (503). No request may hang: every one
is bounded by a 3 s client timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.limits.support import RedisServer
from tests.servers import ServerProcess, standard_config, write_config

MASTER = "sk-master-" + uuid.uuid4().hex
ADMIN = {"authorization": f"Bearer {MASTER}"}
K_LOAD = "sk-outage-load-" + uuid.uuid4().hex  # traffic while Redis dies
K_OUT = "sk-outage-usage-" + uuid.uuid4().hex  # used only during the outage
K_RPM3 = "sk-outage-rpm3-" + uuid.uuid4().hex
K_CLOSED = "sk-outage-closed-" + uuid.uuid4().hex
TIMEOUT = 3.0


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def config_key_id(secret: str) -> str:
    return f"key_cfg_{hashlib.sha256(secret.encode()).hexdigest()[:12]}"


def chat(content: str = "hi") -> dict[str, Any]:
    return {"model": "local-chat", "messages": [{"role": "user", "content": content}]}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def prefix(store: RedisServer) -> Iterator[str]:
    name = f"gwtest-{uuid.uuid4().hex[:8]}:"
    yield name
    if store.proc is not None and store.proc.poll() is None:
        client = store.client()
        try:
            for key in client.scan_iter(match=f"{name}*"):
                client.delete(key)
        finally:
            client.close()


def _gateway(
    directory: Any, redis_url: str, prefix: str, fail_mode: str, keys: list[dict]
) -> ServerProcess:
    config = standard_config("http://127.0.0.1:9", redis_prefix=prefix, fail_mode=fail_mode)
    config["keys"] += keys
    path = write_config(directory, config)
    env = {"REDIS_URL": redis_url, "GATEWAY_MASTER_KEY": MASTER}
    return ServerProcess(["serve", "--config", str(path)], env=env)


@pytest.fixture(scope="module")
def gateways(
    store: RedisServer, prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    started: list[ServerProcess] = []
    try:
        started.append(
            _gateway(
                tmp_path_factory.mktemp("open"),
                store.url,
                prefix,
                "open",
                [
                    {"name": "load", "key": K_LOAD, "limits": {"rpm": 1000}},
                    {"name": "outage-usage", "key": K_OUT, "limits": {"rpm": 1000}},
                    {"name": "rpm3", "key": K_RPM3, "limits": {"rpm": 3}},
                ],
            )
        )
        started.append(
            _gateway(
                tmp_path_factory.mktemp("closed"),
                store.url,
                prefix + "closed:",
                "closed",
                [{"name": "closed", "key": K_CLOSED, "limits": {"rpm": 1000}}],
            )
        )
        for server in started:
            server.wait_ready()
        yield started[0], started[1]
    finally:
        for server in started:
            server.stop()


async def _ready(client: httpx.AsyncClient, server: ServerProcess) -> httpx.Response:
    return await client.get(f"{server.url}/ready")


async def _wait_ready_status(
    client: httpx.AsyncClient, server: ServerProcess, status: str, within: float
) -> float:
    """Poll /ready until its status is ``status``; return how long it took."""
    started = time.monotonic()
    while True:
        r = await _ready(client, server)
        if r.json().get("status") == status:
            return time.monotonic() - started
        assert time.monotonic() - started < within, (status, r.status_code, r.text)
        await asyncio.sleep(0.05)


async def _load(
    client: httpx.AsyncClient, server: ServerProcess, stop: asyncio.Event, log: list
) -> None:
    """Requests one after another until ``stop``: (status or exception, started, seconds)."""
    i = 0
    while not stop.is_set():
        i += 1
        started = time.monotonic()
        try:
            r = await client.post(
                f"{server.url}/v1/chat/completions", json=chat(f"load {i}"), headers=auth(K_LOAD)
            )
            log.append((r.status_code, started, time.monotonic() - started))
        except httpx.HTTPError as exc:
            log.append((repr(exc), started, time.monotonic() - started))
        await asyncio.sleep(0.01)


async def test_outage_and_recovery(
    store: RedisServer, prefix: str, gateways: tuple[ServerProcess, ServerProcess]
) -> None:
    open_gw, closed_gw = gateways
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:

        async def post(server: ServerProcess, key: str, content: str = "hi") -> httpx.Response:
            return await client.post(
                f"{server.url}/v1/chat/completions", json=chat(content), headers=auth(key)
            )

        # ------------------------------------------------ before: all normal
        for server in gateways:
            r = await _ready(client, server)
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "ready"
            assert r.json()["store"] == {"backend": "redis", "status": "ok"}
        assert (await post(open_gw, K_LOAD)).status_code == 200
        assert (await post(closed_gw, K_CLOSED)).status_code == 200

        async def create(name: str) -> str:
            r = await client.post(f"{open_gw.url}/admin/keys", json={"name": name}, headers=ADMIN)
            assert r.status_code == 201, r.text
            return r.json()["key"]

        known = await create("known-before-outage")
        assert (await post(open_gw, known)).status_code == 200  # now this gateway knows it
        known_at = time.monotonic()
        unseen = await create("never-used-before-outage")

        # ------------------------------------------------ Redis dies under load
        stop, log = asyncio.Event(), []
        load = asyncio.create_task(_load(client, open_gw, stop, log))
        await asyncio.sleep(0.3)
        store.kill()
        killed_at = time.monotonic()
        try:
            # The open gateway notices (traffic hits the dead store) and says so.
            await _wait_ready_status(client, open_gw, "degraded", within=5)
            r = await _ready(client, open_gw)
            assert r.status_code == 200
            store_body = r.json()["store"]
            assert (store_body["backend"], store_body["status"]) == ("redis", "degraded")
            # Whichever the store saw last: the connection it had dropping, or a new one refused.
            assert store_body["error"].startswith(
                ("cannot connect to Redis at 127.0.0.1:", "connection to Redis lost:")
            ), store_body

            # The closed one refuses with 503 and is not ready.
            refused = await post(closed_gw, K_CLOSED)
            assert refused.status_code == 503, refused.text
            error = refused.json()["error"]
            assert (error["type"], error["code"]) == ("api_error", "store_unavailable")
            r = await _ready(client, closed_gw)
            assert r.status_code == 503, r.text
            assert r.json()["status"] == "unavailable"
            store_body = r.json()["store"]
            assert (store_body["backend"], store_body["status"]) == ("redis", "unavailable")
            assert store_body["error"].startswith("cannot connect to Redis at 127.0.0.1:")

            # Known keys go on: config keys, and an API key this gateway had seen.
            reported = {"requests": 0, "input_tokens": 0, "output_tokens": 0}
            for i in range(4):
                r = await post(open_gw, K_OUT, f"during the outage {i}")
                assert r.status_code == 200, r.text
                usage = r.json()["usage"]
                reported["requests"] += 1
                reported["input_tokens"] += usage["prompt_tokens"]
                reported["output_tokens"] += usage["completion_tokens"]
            # Past the key cache's second, so the gateway asks the dead store first.
            await asyncio.sleep(max(0.0, known_at + 1.1 - time.monotonic()))
            r = await post(open_gw, known)
            assert r.status_code == 200, r.text

            # A key it never saw cannot be checked: 503, not a guess.
            r = await post(open_gw, unseen)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "store_unavailable"

            # Limits still hold, per process: rpm 3 lets three through.
            statuses = [(await post(open_gw, K_RPM3)).status_code for _ in range(4)]
            assert statuses == [200, 200, 200, 429], statuses
            await asyncio.sleep(0.3)
        finally:
            stop.set()
            await load
        # Load ran before and through the outage; nothing hung and nothing failed:
        # every request answered 200 well within the client timeout.
        assert any(started < killed_at for _, started, _ in log), log
        assert sum(started > killed_at for _, started, _ in log) >= 5, log
        assert all(status == 200 for status, _, _ in log), log
        assert max(seconds for _, _, seconds in log) < TIMEOUT

        # ------------------------------------------------ Redis returns, empty
        store.start()
        restarted_at = time.monotonic()
        assert restarted_at - killed_at < 10
        await _wait_ready_status(client, open_gw, "ready", within=5)
        await _wait_ready_status(client, closed_gw, "ready", within=5)
        r = await _ready(client, closed_gw)
        assert r.status_code == 200

        # The usage of the outage was buffered and written when Redis came back.
        r = await client.get(
            f"{open_gw.url}/admin/keys/{config_key_id(K_OUT)}/usage", headers=ADMIN
        )
        assert r.status_code == 200, r.text
        doc = r.json()
        assert {k: doc[k] for k in reported} == reported, (doc, reported)

        # Shared limits again: Redis is empty, so a new window; the 4th request is refused.
        remaining = []
        for _ in range(3):
            r = await post(open_gw, K_RPM3)
            assert r.status_code == 200, r.text
            remaining.append(r.headers["x-ratelimit-remaining-requests"])
        assert remaining == ["2", "1", "0"]
        fourth = await post(open_gw, K_RPM3)
        assert fourth.status_code == 429, fourth.text
        assert fourth.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(fourth.headers["retry-after"]) >= 1
        # ... counted in Redis, not in the process.
        check = store.client()
        try:
            assert check.zcard(f"{prefix}{{{config_key_id(K_RPM3)}}}:rpm") == 3
        finally:
            check.close()

        # The closed gateway serves again.
        assert (await post(closed_gw, K_CLOSED)).status_code == 200


async def test_ready_notices_an_outage_without_traffic(tmp_path: Any) -> None:
    """/ready means "store reachable" (docs/operations.md): a load balancer polls it on an idle
    instance too, and must take a closed-mode gateway out while Redis is gone."""
    own = RedisServer(tmp_path).start()
    gateway: ServerProcess | None = None
    try:
        gateway = _gateway(tmp_path, own.url, f"gwtest-{uuid.uuid4().hex[:8]}:", "closed", [])
        gateway.wait_ready()
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            assert (await _ready(client, gateway)).json()["status"] == "ready"
            own.kill()
            # No model request is sent: only the probe itself can notice.
            await _wait_ready_status(client, gateway, "unavailable", within=5)
            assert (await _ready(client, gateway)).status_code == 503
            own.start()
            await _wait_ready_status(client, gateway, "ready", within=5)
    finally:
        if gateway is not None:
            gateway.stop()
        own.kill()
