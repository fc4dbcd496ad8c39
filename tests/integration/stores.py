"""A real gateway on either store, its admin API on, and keys made through that API.

``gateway_on("embedded" | "redis", ...)`` starts ``gateway serve`` with a
config of the test's own; the Redis one shares the Redis at 127.0.0.1:6379
under a prefix of its own, deleted afterwards. A Redis that is not there fails
the test: a skipped case would prove nothing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.servers import ServerProcess, start_gateway, write_config

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
MASTER = "sk-master-" + uuid.uuid4().hex
ADMIN = {"authorization": f"Bearer {MASTER}"}
STORES = ["embedded", "redis"]


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@contextmanager
def gateway_on(store: str, directory: Path, config: dict[str, Any]) -> Iterator[ServerProcess]:
    env = {"GATEWAY_MASTER_KEY": MASTER}
    prefix = None
    if store == "redis":
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        try:
            client.ping()
        except redis.RedisError as exc:
            pytest.fail(f"the redis store needs a Redis at {REDIS_URL}: {exc}", pytrace=False)
        finally:
            client.close()
        prefix = f"gwtest-{uuid.uuid4().hex[:8]}:"
        config.setdefault("server", {})["redis_prefix"] = prefix
        env["REDIS_URL"] = REDIS_URL
    server = start_gateway(write_config(directory, config), env=env)
    try:
        yield server
    finally:
        server.stop()
        if prefix is not None:
            client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
            try:
                for name in client.scan_iter(match=f"{prefix}*", count=1000):
                    client.delete(name)
            finally:
                client.close()


def create_key(
    url: str, limits: dict[str, Any], models: list[str] | None = None
) -> tuple[str, str]:
    """A new key through the admin API: (id, secret)."""
    r = httpx.post(
        f"{url}/admin/keys",
        json={"name": f"test-{uuid.uuid4().hex[:12]}", "models": models or ["*"], "limits": limits},
        headers=ADMIN,
        timeout=10,
    )
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["key"]


def usage(url: str, key_id: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/admin/keys/{key_id}/usage", headers=ADMIN, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]
