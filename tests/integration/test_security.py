"""Findings of the security review, each reproduced against the running gateway.

The demo key and paid models, an unauthenticated body sent to /admin, the
embedded store's file modes, and the interactive docs a public gateway may hide.
(Config and environment refusals: test_config_refused.py; the admin API's
failed-login limit: tests/api/test_admin.py.)
"""

from __future__ import annotations

import socket
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import load_settings
from tests.servers import ServerProcess, start_gateway, write_config

MASTER = "sk-master-" + uuid.uuid4().hex
DEMO = "sk-gateway-demo"
MB = 1024 * 1024


def _chat(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


# ---------------------------------------------------------------- the demo key


def test_demo_key_never_reaches_a_paid_model(tmp_path: Path) -> None:
    # The embedded default, as `gateway serve` runs it with an OpenAI key in the environment.
    server = ServerProcess(
        ["serve"],
        env={"OPENAI_API_KEY": "sk-openai-not-a-real-key-0123", "XDG_DATA_HOME": str(tmp_path)},
    ).wait_ready()
    try:
        auth = {"authorization": f"Bearer {DEMO}"}
        paid = httpx.post(
            f"{server.url}/v1/chat/completions", json=_chat("gpt-4o-mini"), headers=auth, timeout=5
        )
        assert paid.status_code == 403, paid.text
        assert paid.json()["error"]["code"] == "model_not_allowed"
        mock = httpx.post(
            f"{server.url}/v1/chat/completions", json=_chat("mock-chat"), headers=auth, timeout=5
        )
        assert mock.status_code == 200, mock.text
        listed = httpx.get(f"{server.url}/v1/models", headers=auth, timeout=5).json()
        assert sorted(m["id"] for m in listed["data"]) == [
            "mock-chat",
            "mock-chat-2",
            "mock-embedding",
        ]
        assert "demo key" in server.logs()  # and the start-up log still warns about it
    finally:
        server.stop()


# ---------------------------------------------------------------- /admin and large bodies


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _post_raw(url: str, path: str, body_size: int, headers: dict[str, str]) -> tuple[int, str]:
    """A POST with a ``body_size`` body sent in full (as the review's client did), then
    its answer's status line and body; over a raw socket, so nothing buffers it here."""
    host, port = url.removeprefix("http://").split(":")
    head = [f"POST {path} HTTP/1.1", f"host: {host}", f"content-length: {body_size}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        chunk = b'{"name": "' + b"x" * (MB - 10)
        sent = 0
        try:
            while sent < body_size:
                piece = chunk[: body_size - sent]
                sock.sendall(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # a server may also close early: the answer is what counts
        sock.settimeout(10)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 10:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.decode(errors="replace")


@pytest.fixture(scope="module")
def roomy_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A gateway whose model endpoints would take 64 MiB: only /admin's own limits act."""
    directory = tmp_path_factory.mktemp("admin-body")
    config = {
        "providers": {"demo": {"type": "mock"}},
        "models": {"mock-chat": {"deployments": [{"provider": "demo", "model": "mock-chat"}]}},
        "server": {"max_body_bytes": 64 * MB},
    }
    server = start_gateway(write_config(directory, config), env={"GATEWAY_MASTER_KEY": MASTER})
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({"content-type": "application/json"}, 401, id="no-master-key"),
        pytest.param(
            {"content-type": "application/json", "authorization": f"Bearer {MASTER}"},
            413,
            id="master-key-but-over-the-admin-limit",
        ),
    ],
)
def test_a_25_mb_admin_body_is_refused_without_being_read(
    roomy_gateway: ServerProcess, headers: dict[str, str], status: int
) -> None:
    pid = roomy_gateway.proc.pid
    # Settle the baseline: a first admin request imports and warms what it needs.
    httpx.get(f"{roomy_gateway.url}/admin/keys", headers={"authorization": f"Bearer {MASTER}"})
    before = _rss_bytes(pid)
    code, body = _post_raw(roomy_gateway.url, "/admin/keys", 25 * MB, headers)
    assert code == status, body
    time.sleep(0.2)
    grown = _rss_bytes(pid) - before
    # Reading and parsing it cost +468 MB before the fix; a few MB of buffers now.
    assert grown < 20 * MB, f"RSS grew by {grown / MB:.1f} MB"
    # The gateway is still well and answering.
    assert httpx.get(f"{roomy_gateway.url}/health", timeout=5).status_code == 200


def test_a_chunked_admin_body_is_not_read_before_the_master_key(
    roomy_gateway: ServerProcess,
) -> None:
    def pieces() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(8):
            yield b"x" * MB
        yield b'"}'

    refused = httpx.post(
        f"{roomy_gateway.url}/admin/keys",
        content=pieces(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert refused.status_code == 401, refused.text
    too_large = httpx.post(
        f"{roomy_gateway.url}/admin/keys",
        content=pieces(),
        headers={"content-type": "application/json", "authorization": f"Bearer {MASTER}"},
        timeout=30,
    )
    assert too_large.status_code == 413, too_large.text
    assert too_large.json()["error"]["code"] == "request_too_large"


# ---------------------------------------------------------------- the embedded store's files


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("existing", [False, True], ids=["new-directory", "existing-directory"])
def test_embedded_store_files_are_private(tmp_path: Path, existing: bool) -> None:
    data_dir = tmp_path / "store"
    if existing:  # as an earlier version left it: readable by everyone
        data_dir.mkdir(mode=0o755)
        data_dir.chmod(0o755)
        (data_dir / "gateway.db").touch(mode=0o644)
        (data_dir / "gateway.db").chmod(0o644)
    config = {
        "providers": {"demo": {"type": "mock"}},
        "models": {"mock-chat": {"deployments": [{"provider": "demo", "model": "mock-chat"}]}},
        "keys": [{"name": "files", "key": "sk-test-files-0123"}],
        "server": {"data_dir": str(data_dir)},
    }
    server = start_gateway(write_config(tmp_path, config))
    try:
        r = httpx.post(
            f"{server.url}/v1/chat/completions",
            json=_chat("mock-chat"),
            headers={"authorization": "Bearer sk-test-files-0123"},
            timeout=5,
        )
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 10  # usage is written within a flush interval
        while not (data_dir / "gateway.db-wal").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        files = sorted(p.name for p in data_dir.iterdir())
        assert {"gateway.db", "gateway.db-wal", "gateway.db-shm"} <= set(files), files
        assert _mode(data_dir) == 0o700
        for name in files:
            assert _mode(data_dir / name) == 0o600, (name, oct(_mode(data_dir / name)))
    finally:
        server.stop()


# ---------------------------------------------------------------- the interactive docs


@pytest.mark.parametrize("docs", [True, False])
def test_docs_and_schema_follow_the_setting(tmp_path: Path, docs: bool) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "providers: {demo: {type: mock}}\n"
        "models: {mock-chat: {deployments: [{provider: demo, model: mock-chat}]}}\n"
        f"server: {{docs: {str(docs).lower()}, data_dir: data}}\n"
    )
    with TestClient(create_app(load_settings(path, env={}))) as client:
        for url in ("/docs", "/redoc", "/openapi.json"):
            answer = client.get(url)
            assert answer.status_code == (200 if docs else 404), (url, answer.text[:200])
            if not docs:
                assert answer.json()["error"]["code"] == "not_found"
