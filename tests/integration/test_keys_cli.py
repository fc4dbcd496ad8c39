"""``gateway keys ...`` against a running gateway's admin API (docs/wire-formats.md, "Admin API")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import ROOT, ServerProcess, standard_config, start_gateway, write_config

MASTER = "sk-master-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("keys-cli")
    server = start_gateway(
        write_config(directory, standard_config("http://127.0.0.1:9")),
        env={"GATEWAY_MASTER_KEY": MASTER},
    )
    yield server
    server.stop()


def keys(
    *args: str, master: str | None = MASTER, gateway_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    if master is not None:
        env["GATEWAY_MASTER_KEY"] = master
    if gateway_url is not None:
        env["GATEWAY_URL"] = gateway_url
    return subprocess.run(
        [sys.executable, "-m", "gateway", "keys", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def ok_json(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return json.loads(result.stdout)


def chat(url: str, secret: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={
            "model": "local-chat",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 20,
        },
        headers={"authorization": f"Bearer {secret}"},
        timeout=5,
    )


def test_key_lifecycle(gateway: ServerProcess) -> None:
    url = gateway.url
    created_run = keys("--url", url, "create", "--name", "cli-key", "--rpm", "5")
    created = ok_json(created_run)
    key_id, secret = created["id"], created["key"]
    assert secret.startswith("sk-")
    assert created["name"] == "cli-key"
    assert created["limits"]["rpm"] == 5
    assert created["source"] == "api"
    # Printed once, and only on stdout (with a reminder on stderr).
    assert created_run.stdout.count(secret) == 1
    assert secret not in created_run.stderr
    assert created_run.stderr.strip()

    r = chat(url, secret)
    assert r.status_code == 200, r.text
    assert r.headers["x-ratelimit-limit-requests"] == "5"
    reported = {
        "requests": 1,
        "input_tokens": r.json()["usage"]["prompt_tokens"],
        "output_tokens": r.json()["usage"]["completion_tokens"],
    }

    # The URL may also come from GATEWAY_URL.
    listed_run = keys("list", gateway_url=url)
    listed = ok_json(listed_run)
    assert listed["object"] == "list"
    assert key_id in [k["id"] for k in listed["data"]]
    assert secret not in listed_run.stdout

    shown_run = keys("--url", url, "show", key_id)
    shown = ok_json(shown_run)
    assert shown["id"] == key_id
    assert shown["limits"]["rpm"] == 5
    assert shown["revoked_at"] is None
    assert secret not in shown_run.stdout

    updated = ok_json(keys("--url", url, "update", key_id, "--rpm", "none", "--tpm", "100"))
    assert updated["limits"]["rpm"] is None
    assert updated["limits"]["tpm"] == 100
    assert updated["name"] == "cli-key"

    r = chat(url, secret)
    assert r.status_code == 200, r.text
    assert r.headers["x-ratelimit-limit-tokens"] == "100"
    assert "x-ratelimit-limit-requests" not in r.headers
    reported["requests"] += 1
    reported["input_tokens"] += r.json()["usage"]["prompt_tokens"]
    reported["output_tokens"] += r.json()["usage"]["completion_tokens"]

    usage = ok_json(keys("--url", url, "usage", key_id))
    assert usage["key_id"] == key_id
    assert {k: usage[k] for k in reported} == reported, (usage, reported)
    everyone = ok_json(keys("--url", url, "usage"))
    assert key_id in [doc["key_id"] for doc in everyone["data"]]

    revoked = keys("--url", url, "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    assert key_id in revoked.stdout
    assert ok_json(keys("--url", url, "show", key_id))["revoked_at"] is not None
    assert chat(url, secret).status_code == 401


def test_url_may_follow_the_action(gateway: ServerProcess) -> None:
    """The form users type: ``gateway keys create --name cli-key --rpm 5 --url ...``."""
    created = ok_json(keys("create", "--name", "cli-key-2", "--rpm", "5", "--url", gateway.url))
    assert created["key"].startswith("sk-")
    shown = ok_json(keys("show", created["id"], "--url", gateway.url))
    assert shown["limits"]["rpm"] == 5


def test_without_master_key_nothing_is_sent(gateway: ServerProcess) -> None:
    result = keys("--url", gateway.url, "list", master=None)
    assert result.returncode != 0
    assert "GATEWAY_MASTER_KEY" in result.stderr
    assert result.stdout == ""
    # A master key flag does not exist: it would land in shell history.
    flagged = keys("--url", gateway.url, "--master-key", MASTER, "list", master=None)
    assert flagged.returncode != 0


def test_errors_exit_non_zero_with_the_message(gateway: ServerProcess, tmp_path: Path) -> None:
    wrong = keys("--url", gateway.url, "list", master=MASTER + "x")
    assert wrong.returncode != 0
    assert "401" in wrong.stderr
    missing = keys("--url", gateway.url, "show", "key_doesnotexist")
    assert missing.returncode != 0
    assert "404" in missing.stderr
    assert "key_doesnotexist" in missing.stderr
    unreachable = keys("--url", "http://127.0.0.1:9", "list")
    assert unreachable.returncode != 0
    assert "cannot reach" in unreachable.stderr


@pytest.mark.parametrize("action", [["usage"], ["list"]])
def test_a_reader_that_leaves_early_is_no_error(gateway: ServerProcess, action: list[str]) -> None:
    """``gateway keys usage | head``: the pipe closes before the answer is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone already: every write is EPIPE
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_MASTER_KEY"] = MASTER
    try:
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "keys", "--url", gateway.url, *action],
            cwd=ROOT,
            env=env,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
        )
    finally:
        os.close(write_end)
    assert result.stderr == "", result.stderr
    assert result.returncode == 1


def test_metadata_that_is_not_json_is_refused_before_sending(gateway: ServerProcess) -> None:
    result = keys("--url", gateway.url, "create", "--name", "meta", "--metadata", "{team: qa}")
    assert result.returncode == 2
    assert "--metadata is not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr
