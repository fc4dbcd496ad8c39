"""A stream's life through a real gateway: held headers, keep-alives, drain on SIGTERM.

Timing is checked by order (keep-alive comments before the first event prove the
headers went out before it) or with seconds between the events a test tells
apart: a stalled machine makes things late, never early, so only lower bounds
are tight.
"""

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
SLACK = 5.0  # seconds a stalled machine may add to a wait


def _tuned_gateway(upstream: ServerProcess, directory: Path) -> ServerProcess:
    # Streams commit their headers after 0.5 s: seconds before the first token (or the
    # first-token timeout) of the tests below.
    config = standard_config(
        upstream.url, stream_commit_seconds=0.5, keepalive_seconds=0.2, drain_seconds=10
    )
    config["models"]["up-first-token-3s"] = {
        "deployments": [
            {"provider": "upstream", "model": "mock-chat", "timeout": {"first_token": 3}}
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
        "POST",
        f"{tuned.url}/v1/chat/completions",
        json=_body(ttft_ms=4000, chunks=2),
        headers=AUTH,
        timeout=10 + SLACK,
    ) as r:
        headers_at = time.monotonic() - started
        assert r.status_code == 200
        lines = list(r.iter_lines())
    # Held until the commit time (0.5 s): never sooner.
    assert headers_at >= 0.4, headers_at
    # Not until the first token (4 s): keep-alives held the line before any event came,
    # and they can only follow the headers.
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data: "))
    assert lines[:first_data].count(": ping") >= 2, lines
    data = [line for line in lines if line.startswith("data: ")]
    assert len(data) == 4
    assert data[-1] == "data: [DONE]"


def test_upstream_failure_before_first_chunk_keeps_its_status(gateway: ServerProcess) -> None:
    # The failure comes after 0.2 s; headers would wait 5 s (the default) for a chunk.
    r = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=_body(delay_ms=200, status=503),
        headers=AUTH,
        timeout=10 + SLACK,
    )
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_error"


def test_failure_after_commit_is_an_error_event(tuned: ServerProcess) -> None:
    # Headers go out at 0.5 s; the deployment's first-token timeout fires at 3 s.
    body = {**_body(ttft_ms=10_000), "model": "up-first-token-3s"}
    r = httpx.post(f"{tuned.url}/v1/chat/completions", json=body, headers=AUTH, timeout=10 + SLACK)
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
                json=_body(chunks=30, tokens_per_s=10),
                headers=AUTH,
                timeout=20 + SLACK,
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
        assert first.wait(5 + SLACK)
        server.proc.send_signal(signal.SIGTERM)
        # Draining: soon no new connection is accepted, while the stream (3 s) goes on.
        deadline = time.monotonic() + SLACK
        while True:
            try:
                httpx.get(f"{server.url}/health", timeout=1)
            except httpx.HTTPError:
                break
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.05)
        thread.join(20 + SLACK)
        assert not errors, errors
        assert received[-1] == "data: [DONE]", received[-3:]
        assert len(received) == 30 + 1 + 1
        # uvicorn re-raises the signal it handled once it has drained.
        assert server.proc.wait(10) in (0, -signal.SIGTERM)
        assert "Finished server process" in server.logs()
    finally:
        server.stop()
