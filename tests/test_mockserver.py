"""gateway/mockserver.py over HTTP: per-model scripts and the counters at /mock/stats.

Routing tests send one body to several deployments of a route, each a model of
this server; these check that the script's ``models`` entries and the per-model
counters tell those deployments apart, as a test of the router relies on."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.servers import ServerProcess, start_mock_upstream

SCRIPT = {"chunks": 3, "models": {"slow-a": {"chunks": 5}, "bad-b": {"status": 500}}}


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerProcess]:
    server = start_mock_upstream()
    yield server
    server.stop()


@pytest.fixture
def mock(upstream: ServerProcess) -> ServerProcess:
    httpx.post(f"{upstream.url}/mock/reset", timeout=10).raise_for_status()
    return upstream


def chat(server: ServerProcess, model: str, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], **body},
        timeout=10,
    )


def stats(server: ServerProcess) -> dict[str, Any]:
    return httpx.get(f"{server.url}/mock/stats", timeout=10).json()


def test_a_model_entry_applies_to_its_model_only(mock: ServerProcess) -> None:
    slow = chat(mock, "slow-a", mock=SCRIPT)
    assert slow.status_code == 200
    assert slow.json()["usage"]["completion_tokens"] == 5
    other = chat(mock, "good-c", mock=SCRIPT)
    assert other.status_code == 200
    assert other.json()["usage"]["completion_tokens"] == 3
    bad = chat(mock, "bad-b", mock=SCRIPT)
    assert bad.status_code == 500
    assert bad.json()["error"]["message"] == "mock failure 500"


def test_a_model_entry_applies_to_streams(mock: ServerProcess) -> None:
    with httpx.stream(
        "POST",
        f"{mock.url}/v1/chat/completions",
        json={
            "model": "slow-a",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "mock": SCRIPT,
        },
        timeout=10,
    ) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: ") :]) for line in lines[:-1]]
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")) == 5


def test_stats_count_requests_per_model(mock: ServerProcess) -> None:
    for model in ("slow-a", "slow-a", "bad-b", "good-c"):
        chat(mock, model, mock=SCRIPT)
    httpx.post(
        f"{mock.url}/v1/embeddings", json={"model": "embed-d", "input": "x"}, timeout=10
    ).raise_for_status()
    got = stats(mock)
    assert got["models"] == {
        "slow-a": {"requests": 2, "disconnects": 0},
        "bad-b": {"requests": 1, "disconnects": 0},
        "good-c": {"requests": 1, "disconnects": 0},
        "embed-d": {"requests": 1, "disconnects": 0},
    }
    # What /mock/stats said before it counted per model is still there.
    assert got["requests"] == 5
    assert got["disconnects"] == 0
    assert {
        "streams_started",
        "streams_completed",
        "streams_disconnected",
        "in_flight",
        "max_in_flight",
        "last_disconnect_at",
        "request_ids",
    } <= got.keys()


def test_a_refused_script_names_the_entry_and_counts_its_model(mock: ServerProcess) -> None:
    refused = chat(mock, "good-c", mock={"models": {"bad-b": {"status": 200}}})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "mock.models.bad-b.status"
    # The request reached the model it named; a body that does not parse names none.
    garbage = httpx.post(f"{mock.url}/v1/chat/completions", content=b"{", timeout=10)
    assert garbage.status_code == 400
    got = stats(mock)
    assert got["requests"] == 2
    assert got["models"] == {"good-c": {"requests": 1, "disconnects": 0}}


def test_reset_zeroes_the_per_model_counters(mock: ServerProcess) -> None:
    chat(mock, "slow-a")
    assert stats(mock)["models"] == {"slow-a": {"requests": 1, "disconnects": 0}}
    httpx.post(f"{mock.url}/mock/reset", timeout=10).raise_for_status()
    got = stats(mock)
    assert got["models"] == {}
    assert got["requests"] == 0


def _wait_until(server: ServerProcess, what: str, check: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while not check(got := stats(server)):
        assert time.monotonic() < deadline, f"never: {what}: {got}"
        time.sleep(0.02)
    return got


def _send(sock: socket.socket, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(data), data)
    )


def test_disconnects_are_counted_per_model(mock: ServerProcess) -> None:
    # A stream left before its first token on one model, a waiting request on another.
    script = {"models": {"slow-a": {"ttft_ms": 60_000}, "wait-b": {"delay_ms": 60_000}}}
    base = {"messages": [{"role": "user", "content": "hi"}], "mock": script}
    address = ("127.0.0.1", mock.port)
    with socket.create_connection(address, timeout=10) as sock:
        _send(sock, {"model": "slow-a", "stream": True, **base})
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # the stream has begun
    _wait_until(mock, "the stream's disconnect", lambda got: got["disconnects"] == 1)
    with socket.create_connection(address, timeout=10) as sock:
        _send(sock, {"model": "wait-b", **base})
        # Left only once it is waiting: a request never received is no disconnect.
        _wait_until(mock, "the request waiting", lambda got: "wait-b" in got["models"])
    got = _wait_until(mock, "the second disconnect", lambda got: got["disconnects"] == 2)
    assert got["models"] == {
        "slow-a": {"requests": 1, "disconnects": 1},
        "wait-b": {"requests": 1, "disconnects": 1},
    }
    assert got["streams_disconnected"] == 1
