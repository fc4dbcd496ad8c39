"""What README.md promises a newcomer, run as a newcomer would run it.

Real ``gateway`` processes on free ports, each with a temporary
``XDG_DATA_HOME`` (never the user's data directory): the built-in default with
its demo key, the default store location, ``GATEWAY_CONFIG``,
``OPENAI_BASE_URL`` pointed at ``gateway mock-upstream``, every flag of
``gateway keys create``, and the links between the README and docs/.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.servers import ROOT, ServerProcess, write_config

DEMO_KEY = "sk-gateway-demo"
MASTER = "sk-master-" + uuid.uuid4().hex  # long enough for any minimum length
UPSTREAM_KEY = "sk-readme-upstream-" + uuid.uuid4().hex[:8]
HELLO = [{"role": "user", "content": "Hello!"}]


def chat(url: str, key: str, model: str = "mock-chat", **headers: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": HELLO, "max_tokens": 5},
        headers={"authorization": f"Bearer {key}", **headers},
        timeout=10,
    )


def model_ids(url: str, key: str) -> list[str]:
    r = httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=5)
    assert r.status_code == 200, r.text
    return sorted(m["id"] for m in r.json()["data"])


def gateway_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OPENAI_"))}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


# ---------------------------------------------------------------- the built-in default


@pytest.fixture(scope="module")
def data_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("xdg-default")


@pytest.fixture(scope="module")
def default_gateway(data_home: Path) -> Iterator[ServerProcess]:
    """``make run``: no --config, no GATEWAY_CONFIG, no provider key, no Redis."""
    server = ServerProcess(["serve"], env={"XDG_DATA_HOME": str(data_home)}).wait_ready()
    yield server
    server.stop()


def test_default_serves_the_mock_model_to_the_demo_key(default_gateway: ServerProcess) -> None:
    r = chat(default_gateway.url, DEMO_KEY)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "mock-chat"
    assert r.json()["choices"][0]["message"]["content"]
    assert r.headers["x-gateway-served-by"] == "demo/mock-chat"
    # Without OPENAI_API_KEY, only the mock models are there.
    assert model_ids(default_gateway.url, DEMO_KEY) == [
        "mock-chat",
        "mock-chat-2",
        "mock-embedding",
    ]


def test_default_warns_about_the_demo_key(default_gateway: ServerProcess) -> None:
    warnings = [
        line
        for line in default_gateway.logs().splitlines()
        if " WARNING " in line and "demo key" in line.lower()
    ]
    assert len(warnings) == 1, default_gateway.logs()
    assert "GATEWAY_DEMO_KEY" in warnings[0]


def test_default_store_is_under_xdg_data_home(
    default_gateway: ServerProcess, data_home: Path
) -> None:
    db = data_home / "gateway" / "gateway.db"
    assert db.is_file()
    assert str(db) in default_gateway.logs(), "the start-up log names the store's file"


def test_key_in_x_api_key_header(default_gateway: ServerProcess) -> None:
    r = httpx.post(
        f"{default_gateway.url}/v1/chat/completions",
        json={"model": "mock-chat", "messages": HELLO},
        headers={"x-api-key": DEMO_KEY},
        timeout=10,
    )
    assert r.status_code == 200, r.text


def test_interactive_docs_are_served_by_default(default_gateway: ServerProcess) -> None:
    assert httpx.get(f"{default_gateway.url}/docs", timeout=5).status_code == 200
    schema = httpx.get(f"{default_gateway.url}/openapi.json", timeout=5)
    assert schema.status_code == 200
    assert "/v1/chat/completions" in schema.json()["paths"]


def test_admin_api_is_off_without_a_master_key(default_gateway: ServerProcess) -> None:
    r = httpx.get(
        f"{default_gateway.url}/admin/keys",
        headers={"authorization": f"Bearer {MASTER}"},
        timeout=5,
    )
    assert r.status_code == 401
    assert "GATEWAY_MASTER_KEY" in r.json()["error"]["message"]


# ---------------------------------------------------------------- OPENAI_BASE_URL


@pytest.fixture(scope="module")
def openai_gateway(
    upstream: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The built-in default with OpenAI enabled and moved to the mock upstream."""
    env = {
        "XDG_DATA_HOME": str(tmp_path_factory.mktemp("xdg-openai")),
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "OPENAI_BASE_URL": f"{upstream.url}/v1",
        "GATEWAY_MASTER_KEY": MASTER,
    }
    server = ServerProcess(["serve"], env=env).wait_ready()
    yield server
    server.stop()


def create_key(url: str, body: dict) -> dict:
    r = httpx.post(
        f"{url}/admin/keys", json=body, headers={"authorization": f"Bearer {MASTER}"}, timeout=10
    )
    assert r.status_code == 201, r.text
    return r.json()


def test_openai_base_url_moves_the_openai_models(
    openai_gateway: ServerProcess, upstream: ServerProcess
) -> None:
    url = openai_gateway.url
    created = create_key(url, {"name": "readme-openai", "models": ["gpt-4o-mini"]})
    assert model_ids(url, created["key"]) == ["gpt-4o-mini"]

    request_id = "readme-" + uuid.uuid4().hex
    r = chat(url, created["key"], "gpt-4o-mini", **{"x-request-id": request_id})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "gpt-4o-mini"
    assert r.headers["x-gateway-served-by"] == "openai/gpt-4o-mini"
    assert r.headers["x-request-id"] == request_id
    # It went to the server OPENAI_BASE_URL names, not to api.openai.com.
    stats = httpx.get(f"{upstream.url}/mock/stats", timeout=5).json()
    assert request_id in stats["request_ids"]
    assert UPSTREAM_KEY not in r.text


def test_demo_key_stays_on_the_mock_models(openai_gateway: ServerProcess) -> None:
    url = openai_gateway.url
    refused = chat(url, DEMO_KEY, "gpt-4o-mini")
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "model_not_allowed"
    assert chat(url, DEMO_KEY, "mock-chat").status_code == 200


def test_keys_create_takes_every_flag(openai_gateway: ServerProcess) -> None:
    url = openai_gateway.url
    metadata = {"team": "docs", "tier": 2}
    created_run = gateway_cli(
        "keys",
        "--url",
        url,
        "create",
        "--name",
        "readme-flags",
        "--models",
        "mock-chat,gpt-4o*",
        "--rpm",
        "7",
        "--tpm",
        "7000",
        "--max-parallel",
        "3",
        "--budget-usd",
        "2.5",
        "--budget-period",
        "day",
        "--expires-at",
        "2099-01-02T03:04:05Z",
        "--metadata",
        json.dumps(metadata),
        "--log-prompts",
        env={"GATEWAY_MASTER_KEY": MASTER},
    )
    assert created_run.returncode == 0, created_run.stderr
    created = json.loads(created_run.stdout)
    expected = {
        "name": "readme-flags",
        "models": ["mock-chat", "gpt-4o*"],
        "limits": {
            "rpm": 7,
            "tpm": 7000,
            "max_parallel": 3,
            "budget_usd": 2.5,
            "budget_period": "day",
        },
        "metadata": metadata,
        "log_prompts": True,
        "source": "api",
        "revoked_at": None,
    }
    assert {k: created[k] for k in expected} == expected
    expires = datetime.fromisoformat(created["expires_at"].replace("Z", "+00:00"))
    assert expires == datetime(2099, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert created["key"].startswith("sk-")

    # The stored record, read back through GATEWAY_URL instead of --url.
    shown_run = gateway_cli(
        "keys", "show", created["id"], env={"GATEWAY_MASTER_KEY": MASTER, "GATEWAY_URL": url}
    )
    assert shown_run.returncode == 0, shown_run.stderr
    shown = json.loads(shown_run.stdout)
    assert {k: shown[k] for k in expected} == expected
    assert shown["expires_at"] == created["expires_at"]
    assert "key" not in shown

    # And the limits apply to the key's requests.
    r = chat(url, created["key"], "mock-chat")
    assert r.status_code == 200, r.text
    assert r.headers["x-ratelimit-limit-requests"] == "7"
    assert r.headers["x-ratelimit-limit-tokens"] == "7000"
    assert chat(url, created["key"], "gpt-4o").status_code == 200
    assert chat(url, created["key"], "gpt-4.1-mini").status_code == 403

    # --no-log-prompts switches it off again, and only it changes.
    updated_run = gateway_cli(
        "keys", "--url", url, "update", created["id"], "--no-log-prompts",
        env={"GATEWAY_MASTER_KEY": MASTER},
    )  # fmt: skip
    assert updated_run.returncode == 0, updated_run.stderr
    updated = json.loads(updated_run.stdout)
    assert {k: updated[k] for k in expected} == {**expected, "log_prompts": False}


# ---------------------------------------------------------------- GATEWAY_CONFIG

CONFIG_KEY = "sk-readme-config-" + uuid.uuid4().hex[:8]
ORIGIN = "http://localhost:3000"


def readme_config(directory: Path, model: str) -> Path:
    return write_config(
        directory,
        {
            "providers": {"local": {"type": "mock"}},
            "models": {model: {"deployments": [{"provider": "local", "model": "mock-chat"}]}},
            "keys": [{"name": "readme", "key": CONFIG_KEY}],
            "server": {"cors_origins": [ORIGIN]},
        },
    )


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return readme_config(tmp_path_factory.mktemp("readme-config"), "readme-chat")


@pytest.fixture(scope="module")
def configured_gateway(config_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(["serve"], env={"GATEWAY_CONFIG": str(config_path)}).wait_ready()
    yield server
    server.stop()


def test_gateway_config_picks_the_file(
    configured_gateway: ServerProcess, config_path: Path
) -> None:
    url = configured_gateway.url
    assert model_ids(url, CONFIG_KEY) == ["readme-chat"]
    assert chat(url, CONFIG_KEY, "readme-chat").status_code == 200
    # The embedded default is not loaded beside it: no demo key, no mock-chat.
    assert chat(url, DEMO_KEY).status_code == 401
    assert str(config_path) in configured_gateway.logs()


def test_config_flag_wins_over_gateway_config(config_path: Path, tmp_path: Path) -> None:
    other = readme_config(tmp_path, "other-chat")
    env = {"GATEWAY_CONFIG": str(config_path)}
    from_env = gateway_cli("check-config", env=env)
    assert from_env.returncode == 0, from_env.stderr
    assert "readme-chat" in from_env.stdout
    assert "other-chat" not in from_env.stdout
    from_flag = gateway_cli("check-config", "--config", str(other), env=env)
    assert from_flag.returncode == 0, from_flag.stderr
    assert "other-chat" in from_flag.stdout
    assert "readme-chat" not in from_flag.stdout
    assert CONFIG_KEY not in from_env.stdout + from_flag.stdout  # secrets masked


def test_cors_origins_let_a_browser_call(configured_gateway: ServerProcess) -> None:
    url = configured_gateway.url
    preflight = httpx.options(
        f"{url}/v1/chat/completions",
        headers={
            "origin": ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
        timeout=5,
    )
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    r = chat(url, CONFIG_KEY, "readme-chat", origin=ORIGIN)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
    elsewhere = chat(url, CONFIG_KEY, "readme-chat", origin="http://evil.example")
    assert "access-control-allow-origin" not in elsewhere.headers


# ---------------------------------------------------------------- the docs themselves

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower().replace("`", "")
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_links_between_the_docs_resolve(doc: Path) -> None:
    for target in _LINK.findall(doc.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        file, _, anchor = target.partition("#")
        linked = (doc.parent / file).resolve() if file else doc
        assert linked.is_file(), f"{doc.name}: link to missing {target}"
        if anchor:
            assert anchor in _anchors(linked), f"{doc.name}: no heading for #{anchor}"


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_docs_cite_nothing_outside_the_repository(doc: Path) -> None:
    text = doc.read_text()
    for pattern in (r"DESIGN §", r"\bSTYLE\b", r"\bissue \d+"):
        assert not re.search(pattern, text), f"{doc.name} cites {pattern}"
