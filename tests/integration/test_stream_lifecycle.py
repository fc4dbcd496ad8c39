"""A stream's life through a real gateway: held headers, keep-alives, drain on SIGTERM."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import TEST_KEY, ServerProcess, standard_config, start_gateway, write_config

AUTH = {"authorization": f"Bearer {TEST_KEY}"}


def _tuned_gateway(upstream: ServerProcess, directory: Path) -> ServerProcess:
    config = standard_config(
        upstream.url, stream_commit_seconds=0.5, keepalive_seconds=0.2, drain_seconds=5
    )
    config["models"]["up-first-token-1s"] = {
        "deployments": [
            {"provider": "upstream", "model": "mock-chat", "timeout": {"first_token": 1}}
        ]
    }
    return start_gateway(write_config(directory, config))


@pytest.fixture(scope="module")
def tuned(
    upstream: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    server = _tuned_gateway(upstream, tmp_path_factory.mktemp("tuned"))
    yield server
    server.stop()


def _body(**mock) -> dict:
    return {
        "model": "up-chat",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "mock": mock,
    }


def test_headers_wait_for_the_first_chunk_then_commit(tuned: ServerProcess) -> None:
    started = time.monotonic()
    with httpx.stream(
        "POST", f"{tuned.url}/v1/chat/completions", json=_body(ttft_ms=1500, chunks=2), headers=AUTH
    ) as r:
        headers_at = time.monotonic() - started
        assert r.status_code == 200
        lines = list(r.iter_lines())
    # Held until the commit time (0.5 s), not until the first token (1.5 s).
    assert 0.4 < headers_at < 1.2, headers_at
    assert lines.count(": ping") >= 2, lines  # keep-alives while nothing arrived
    data = [line for line in lines if line.startswith("data: ")]
    assert len(data) == 4
    assert data[-1] == "data: [DONE]"


def test_upstream_failure_before_first_chunk_keeps_its_status(tuned: ServerProcess) -> None:
    r = httpx.post(
        f"{tuned.url}/v1/chat/completions", json=_body(delay_ms=200, status=503), headers=AUTH
    )
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_error"


def test_failure_after_commit_is_an_error_event(tuned: ServerProcess) -> None:
    # Headers go out at 0.5 s; the deployment's first-token timeout fires at 1 s.
    body = {**_body(ttft_ms=3000), "model": "up-first-token-1s"}
    r = httpx.post(f"{tuned.url}/v1/chat/completions", json=body, headers=AUTH, timeout=10)
    assert r.status_code == 200
    data = [line for line in r.text.split("\n") if line.startswith("data: ")]
    assert len(data) == 1, r.text
    assert '"code":"upstream_timeout"' in data[0]
    assert "[DONE]" not in r.text


def test_sigterm_drains_streams_in_flight(upstream: ServerProcess, tmp_path: Path) -> None:
    server = _tuned_gateway(upstream, tmp_path)
    received: list[str] = []
    errors: list[BaseException] = []
    first = threading.Event()

    def consume() -> None:
        try:
            with httpx.stream(
                "POST",
                f"{server.url}/v1/chat/completions",
                json=_body(chunks=15, tokens_per_s=10),
                headers=AUTH,
                timeout=20,
            ) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        received.append(line)
                        first.set()
        except BaseException as exc:
            errors.append(exc)
            first.set()

    thread = threading.Thread(target=consume)
    thread.start()
    try:
        assert first.wait(5)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # Draining: no new connections are accepted.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{server.url}/health", timeout=1)
        thread.join(15)
        assert not errors, errors
        assert received[-1] == "data: [DONE]", received[-3:]
        assert len(received) == 15 + 1 + 1
        # uvicorn re-raises the signal it handled once it has drained.
        assert server.proc.wait(10) in (0, -signal.SIGTERM)
        assert "Finished server process" in server.logs()
    finally:
        server.stop()
