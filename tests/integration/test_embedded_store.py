"""The embedded store (no REDIS_URL): keys and usage survive a restart (docs/operations.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.servers import ROOT, free_port, standard_config, start_gateway, write_config

MASTER = "sk-master-" + uuid.uuid4().hex
ADMIN = {"authorization": f"Bearer {MASTER}"}


def test_keys_and_usage_survive_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "store"
    config = standard_config("http://127.0.0.1:9", data_dir=str(data_dir))
    path = write_config(tmp_path, config)
    env = {"GATEWAY_MASTER_KEY": MASTER}

    first = start_gateway(path, env=env)
    try:
        created = httpx.post(
            f"{first.url}/admin/keys",
            json={"name": "survivor", "limits": {"rpm": 100}},
            headers=ADMIN,
            timeout=5,
        )
        assert created.status_code == 201, created.text
        key_id, secret = created.json()["id"], created.json()["key"]
        reported = {"requests": 0, "input_tokens": 0, "output_tokens": 0}
        for i in range(3):
            r = httpx.post(
                f"{first.url}/v1/chat/completions",
                json={"model": "local-chat", "messages": [{"role": "user", "content": f"n{i}"}]},
                headers={"authorization": f"Bearer {secret}"},
                timeout=5,
            )
            assert r.status_code == 200, r.text
            reported["requests"] += 1
            reported["input_tokens"] += r.json()["usage"]["prompt_tokens"]
            reported["output_tokens"] += r.json()["usage"]["completion_tokens"]
    finally:
        first.stop()  # SIGTERM: usage still in memory must be written on the way out
    assert str(data_dir) in first.logs(), first.logs()

    second = start_gateway(path, env=env)
    try:
        # The startup log names where the keys and usage live.
        assert str(data_dir) in second.logs(), second.logs()
        usage = httpx.get(f"{second.url}/admin/keys/{key_id}/usage", headers=ADMIN, timeout=5)
        assert usage.status_code == 200, usage.text
        doc = usage.json()
        assert {k: doc[k] for k in reported} == reported, (doc, reported)
        assert [m["model"] for m in doc["by_model"]] == ["local-chat"]

        record = httpx.get(f"{second.url}/admin/keys/{key_id}", headers=ADMIN, timeout=5).json()
        assert record["name"] == "survivor"
        assert record["limits"]["rpm"] == 100
        assert record["last_used_at"] is not None
        assert secret not in str(record)

        r = httpx.post(
            f"{second.url}/v1/chat/completions",
            json={"model": "local-chat", "messages": [{"role": "user", "content": "again"}]},
            headers={"authorization": f"Bearer {secret}"},
            timeout=5,
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-limit-requests"] == "100"
    finally:
        second.stop()


def test_several_workers_need_redis(tmp_path: Path) -> None:
    path = write_config(tmp_path, standard_config("http://127.0.0.1:9"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "REDIS_URL"))}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(path),
            "--workers",
            "2",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0, result
    assert "REDIS_URL" in result.stderr, result.stderr
    # Refused before binding: uvicorn never started, and nothing listens on the port.
    output = result.stdout + result.stderr
    assert "Uvicorn running" not in output
    assert "Started" not in output
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
