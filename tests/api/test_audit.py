"""The audit trail as an operator reads it: every admin action is one ``gateway.audit``
line and one event in ``GET /admin/audit`` (embedded store, in process), saying who,
what, when, from where and how it ended, and never a key's plaintext or the master key;
and the same through a served gateway on Redis, read with ``gateway keys audit``."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import load_settings
from tests.integration.stores import ADMIN, MASTER, REDIS_URL, gateway_on
from tests.servers import ROOT, free_port

HINT = f"sk-...{MASTER[-4:]}"
CONFIG = (
    "providers: {demo: {type: mock}}\n"
    "models: {mock-chat: {deployments: [{provider: demo, model: mock-chat}]}}\n"
    "server: {data_dir: data}\n"
)


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # A reload reads the file with the process's environment, the master key included.
    monkeypatch.setenv("GATEWAY_MASTER_KEY", MASTER)
    monkeypatch.delenv("REDIS_URL", raising=False)
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def client(config: Path) -> Iterator[TestClient]:
    with TestClient(create_app(load_settings(config))) as http:
        yield http


def _audit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "gateway.audit" and r.levelno == logging.INFO
    ]


def _fields(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split(" "))


def _events(client: TestClient, **query: Any) -> dict[str, Any]:
    r = client.get("/admin/audit", params=query, headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list"
    return body


def test_each_admin_action_is_one_line_and_one_event_in_order(
    client: TestClient, config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    started = datetime.now(UTC) - timedelta(seconds=1)
    created = client.post("/admin/keys", json={"name": "ci-bot"}, headers=ADMIN)
    assert created.status_code == 201, created.text
    key_id = created.json()["id"]
    updated = client.patch(
        f"/admin/keys/{key_id}",
        json={"name": "ci-bot-2", "limits": {"rpm": 5, "tpm": 9000}},
        headers=ADMIN,
    )
    assert updated.status_code == 200, updated.text
    missing = client.patch("/admin/keys/key_nope", json={"models": ["*"]}, headers=ADMIN)
    assert missing.status_code == 404, missing.text
    revoked = client.delete(f"/admin/keys/{key_id}", headers=ADMIN)
    assert revoked.status_code == 204, revoked.text
    config.write_text(
        CONFIG.replace(
            "models: {mock-chat: {deployments: [{provider: demo, model: mock-chat}]}}",
            "models:\n"
            "  mock-chat: {deployments: [{provider: demo, model: mock-chat}]}\n"
            "  mock-2: {deployments: [{provider: demo, model: mock-chat}]}",
        )
    )
    reloaded = client.post("/admin/reload", headers=ADMIN)
    assert reloaded.status_code == 200, reloaded.text
    config.write_text("providers: {demo: {type: mock}\n")  # broken YAML
    refused = client.post("/admin/reload", headers=ADMIN)
    assert refused.status_code == 400, refused.text

    expected = [  # action, target, changes, outcome, status, error
        ("key.create", key_id, [], "ok", 201, None),
        ("key.update", key_id, ["limits.rpm", "limits.tpm", "name"], "ok", 200, None),
        ("key.update", "key_nope", ["models"], "refused", 404, "key_not_found"),
        ("key.revoke", key_id, [], "ok", 204, None),
        ("config.reload", str(config), ["models added: mock-2"], "ok", 200, None),
        ("config.reload", str(config), [], "refused", 400, "config_invalid"),
    ]
    events = _events(client)["data"]
    assert [
        (e["action"], e["target"], e["changes"], e["outcome"], e["status"], e["error"])
        for e in reversed(events)
    ] == expected
    for event in events:
        assert event["object"] == "gateway.audit_event"
        assert event["actor"] == HINT
        assert event["client"] == "testclient"
        assert event["at"].endswith("Z"), event["at"]  # RFC 3339, UTC
        assert started <= datetime.fromisoformat(event["at"]) <= datetime.now(UTC)
    answers = (created, updated, missing, revoked, reloaded, refused)
    assert [e["request_id"] for e in reversed(events)] == [
        a.headers["x-request-id"] for a in answers
    ]

    lines = [_fields(line) for line in _audit_lines(caplog)]
    assert [(f["action"], f.get("target"), f["status"]) for f in lines] == [
        (action, target, str(status)) for action, target, _, _, status, _ in expected
    ]
    assert lines[1]["changes"] == "limits.rpm,limits.tpm,name"
    assert all(f["actor"] == HINT and f["client"] == "testclient" for f in lines)
    assert lines[2]["error"] == "key_not_found"
    assert lines[5]["outcome"] == "refused"


def test_neither_the_new_key_nor_the_master_key_is_recorded(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway")
    created = client.post(
        "/admin/keys", json={"name": "secret-holder", "metadata": {"team": "x"}}, headers=ADMIN
    )
    assert created.status_code == 201, created.text
    secret = created.json()["key"]
    key_id = created.json()["id"]
    patched = client.patch(
        f"/admin/keys/{key_id}", json={"metadata": {"token": "value-42"}}, headers=ADMIN
    )
    assert patched.status_code == 200, patched.text
    listing = client.get("/admin/audit", headers=ADMIN).text
    logged = caplog.text
    for text in (listing, logged):
        assert secret not in text
        assert MASTER not in text
        assert "value-42" not in text  # a changed value: only the field's name is kept
    assert '"changes":["metadata"]' in listing.replace(" ", "")
    assert len(_audit_lines(caplog)) == 2


def test_the_listing_pages_newest_first(client: TestClient) -> None:
    key_id = client.post("/admin/keys", json={"name": "paged"}, headers=ADMIN).json()["id"]
    for rpm in range(1, 6):
        r = client.patch(f"/admin/keys/{key_id}", json={"limits": {"rpm": rpm}}, headers=ADMIN)
        assert r.status_code == 200, r.text
    everything = _events(client, limit=100)
    assert not everything["has_more"]
    assert len(everything["data"]) == 6
    assert everything["data"][-1]["action"] == "key.create"
    assert everything["last_id"] == everything["data"][-1]["id"]

    seen, after, pages = [], None, 0
    while True:
        page = _events(client, limit=4, **({"after": after} if after else {}))
        pages += 1
        seen += page["data"]
        assert page["last_id"] == page["data"][-1]["id"]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert pages == 2
    assert [e["id"] for e in seen] == [e["id"] for e in everything["data"]]
    assert len({e["id"] for e in seen}) == 6

    past_the_end = _events(client, after=everything["last_id"])
    assert past_the_end == {"object": "list", "data": [], "has_more": False, "last_id": None}
    assert _events(client, after="aud_not-an-id")["data"] == []
    for query in ({"limit": 0}, {"limit": 101}, {"cursor": "x"}):
        assert client.get("/admin/audit", params=query, headers=ADMIN).status_code == 400


def test_the_listing_needs_the_master_key_and_a_refused_login_is_no_event(
    client: TestClient,
) -> None:
    assert client.get("/admin/audit").status_code == 401
    wrong = {"authorization": "Bearer sk-not-the-master"}
    assert client.get("/admin/audit", headers=wrong).status_code == 401
    assert client.post("/admin/keys", json={"name": "x"}, headers=wrong).status_code == 401
    assert client.post("/admin/reload", headers=wrong).status_code == 401
    assert _events(client)["data"] == []


def test_a_store_that_is_down_neither_blocks_nor_silently_drops_the_event(
    config: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens
    with TestClient(create_app(load_settings(config))) as client:
        began = time.monotonic()
        r = client.post("/admin/reload", headers=ADMIN)
        assert r.status_code == 200, r.text
        assert time.monotonic() - began < 2.0
        assert client.get("/admin/audit", headers=ADMIN).status_code == 503
    line = _fields(_audit_lines(caplog)[0])
    assert (line["action"], line["outcome"], line["actor"]) == ("config.reload", "ok", HINT)
    errors = [
        record.getMessage()
        for record in caplog.records
        if record.name == "gateway.audit" and record.levelno == logging.ERROR
    ]
    assert len(errors) == 1
    assert errors[0].startswith("audit event not stored (store_unavailable)")
    assert f"request_id={r.headers['x-request-id']}" in errors[0]


def test_a_served_gateway_on_redis_keeps_the_trail_for_gateway_keys_audit(
    tmp_path: Path,
) -> None:
    config: dict[str, Any] = {
        "providers": {"demo": {"type": "mock"}},
        "models": {"mock-chat": {"deployments": [{"provider": "demo", "model": "mock-chat"}]}},
    }
    admin = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    with gateway_on("redis", tmp_path, config) as server:
        prefix = config["server"]["redis_prefix"]
        created = httpx.post(
            f"{server.url}/admin/keys", json={"name": "served"}, headers=ADMIN, timeout=10
        )
        assert created.status_code == 201, created.text
        key_id, secret = created.json()["id"], created.json()["key"]
        revoked = httpx.delete(f"{server.url}/admin/keys/{key_id}", headers=ADMIN, timeout=10)
        assert revoked.status_code == 204, revoked.text

        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "keys", "audit", "--limit", "1", "--url", server.url],
            cwd=ROOT,
            env={**env, "GATEWAY_MASTER_KEY": MASTER},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        first = json.loads(result.stdout)
        assert first["has_more"] is True
        [newest] = first["data"]
        assert (newest["action"], newest["target"], newest["status"]) == ("key.revoke", key_id, 204)
        assert (newest["actor"], newest["client"]) == (HINT, "127.0.0.1")
        older = httpx.get(
            f"{server.url}/admin/audit",
            params={"after": first["last_id"]},
            headers=ADMIN,
            timeout=10,
        ).json()
        assert [(e["action"], e["target"]) for e in older["data"]] == [("key.create", key_id)]
        assert admin.xlen(f"{prefix}audit") == 2
        logs = server.logs()
        assert logs.count(" INFO gateway.audit ") == 2, logs
        assert secret not in logs
        assert MASTER not in logs
    admin.close()
