"""A client that leaves is an outcome, not an error (docs/architecture.md, "Disconnects").

A real gateway in front of the real mock upstream, which records when it saw
each client of its own go away (``/mock/stats``). The clients here are raw
sockets, closed at the moment each test means.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.servers import (
    SLACK,
    ServerProcess,
    standard_config,
    start_gateway,
    wait_for,
    write_config,
)

KEY_PAR1 = "sk-test-disconnect-par1"  # max_parallel 1: a leaked lease refuses the next request
KEY_RPM1 = "sk-test-disconnect-rpm1"  # rpm 1: a spent request refuses the next one


@pytest.fixture(scope="module")
def gateway(
    upstream: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    config = standard_config(upstream.url)
    config["keys"] += [
        {"name": "par1", "key": KEY_PAR1, "limits": {"max_parallel": 1}},
        {"name": "rpm1", "key": KEY_RPM1, "limits": {"rpm": 1}},
    ]
    server = start_gateway(write_config(tmp_path_factory.mktemp("disconnect"), config))
    yield server
    server.stop()


def _request(
    path: str, body: dict[str, Any], key: str, request_id: str, length: int | None = None
) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {key}\r\nx-request-id: {request_id}\r\n"
        f"content-length: {length if length is not None else len(data)}\r\n\r\n"
    )
    return head.encode() + data


def _connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def _stats(upstream: ServerProcess) -> dict[str, Any]:
    return httpx.get(f"{upstream.url}/mock/stats", timeout=10).json()


def _access_line(server: ServerProcess, request_id: str) -> str:
    def find() -> str | None:
        for line in server.logs().splitlines():
            if "gateway.access" in line and f"request_id={request_id} " in line:
                return line
        return None

    return wait_for(f"an access line for {request_id}", find)


def _assert_no_error_logged(server: ServerProcess) -> None:
    logs = server.logs()
    assert " ERROR " not in logs, logs
    assert "Traceback" not in logs, logs
    assert "ClientDisconnect" not in logs, logs


def _chat(server: ServerProcess, key: str, **extra: Any) -> httpx.Response:
    body = {"model": "up-chat", "messages": [{"role": "user", "content": "hi"}], **extra}
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=10 + SLACK,
    )


def test_leaving_mid_body_is_499_and_spends_nothing(gateway: ServerProcess) -> None:
    request_id = f"mid-body-{uuid.uuid4().hex[:8]}"
    body = {"model": "local-chat", "messages": [{"role": "user", "content": "hi"}]}
    with _connect(gateway) as sock:
        raw = _request("/v1/chat/completions", body, KEY_RPM1, request_id, length=5000)
        sock.sendall(raw)  # 5,000 bytes announced, far fewer sent: the body is unfinished
        # The request has reached the app (it authenticates before it reads the body):
        # leave while it waits for the rest.
        time.sleep(0.3)
    line = _access_line(gateway, request_id)
    assert " status=499 " in line, line
    assert "outcome=client_disconnect" in line, line
    assert "key=rpm1" in line, line
    _assert_no_error_logged(gateway)
    # Nothing was admitted: the key's one request a minute is still there.
    r = _chat(gateway, KEY_RPM1, model="local-chat")
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            {"model": "up-chat", "messages": [{"role": "user", "content": "hi"}]},
        ),
        ("/v1/embeddings", {"model": "up-embed", "input": "hi"}),
    ],
    ids=["chat", "embeddings"],
)
def test_leaving_a_slow_answer_closes_the_upstream_call_at_once(
    gateway: ServerProcess, upstream: ServerProcess, path: str, body: dict[str, Any]
) -> None:
    request_id = f"slow-{uuid.uuid4().hex[:8]}"
    before = _stats(upstream)
    with _connect(gateway) as sock:
        # The upstream takes 20 s to answer; the client leaves once the upstream has it.
        sock.sendall(_request(path, {**body, "mock": {"delay_ms": 20_000}}, KEY_PAR1, request_id))
        wait_for(
            "the upstream has the request",
            lambda: request_id in _stats(upstream)["request_ids"],
        )
    left_at = time.time()
    after = wait_for(
        "the upstream sees its client leave",
        lambda: (s := _stats(upstream))["disconnects"] > before["disconnects"] and s,
    )
    # Recorded by the upstream when its connection closed: within 1 s (and 1 s of slack).
    assert after["last_disconnect_at"] - left_at < 2.0, after["last_disconnect_at"] - left_at
    assert after["in_flight"] == 0

    line = _access_line(gateway, request_id)
    assert " status=499 " in line, line
    assert "outcome=client_disconnect" in line, line
    _assert_no_error_logged(gateway)
    # Settled: the key's one lease is free again.
    if path.endswith("embeddings"):
        r = httpx.post(
            f"{gateway.url}{path}",
            json=body,
            headers={"authorization": f"Bearer {KEY_PAR1}"},
            timeout=10 + SLACK,
        )
    else:
        r = _chat(gateway, KEY_PAR1)
    assert r.status_code == 200, r.text


def test_leaving_after_the_answer_is_not_a_disconnect(gateway: ServerProcess) -> None:
    request_id = f"answered-{uuid.uuid4().hex[:8]}"
    body = {"model": "local-chat", "messages": [{"role": "user", "content": "hi"}]}
    with _connect(gateway) as sock:
        sock.sendall(_request("/v1/chat/completions", body, KEY_PAR1, request_id))
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    line = _access_line(gateway, request_id)
    assert " status=200 " in line, line
    assert "client_disconnect" not in line, line


def test_the_mock_counts_a_client_that_leaves_while_it_waits(upstream: ServerProcess) -> None:
    """The mock upstream alone: its own disconnect count, for the tests above to trust."""
    before = _stats(upstream)
    body = {"model": "mock-chat", "messages": [{"role": "user", "content": "hi"}]}
    request_id = f"mock-alone-{uuid.uuid4().hex[:8]}"
    with _connect(upstream) as sock:
        sock.sendall(
            _request(
                "/v1/chat/completions", {**body, "mock": {"delay_ms": 20_000}}, "sk-x", request_id
            )
        )
        wait_for("the mock has it", lambda: request_id in _stats(upstream)["request_ids"])
    left_at = time.time()
    after = wait_for(
        "the mock sees its client leave",
        lambda: (s := _stats(upstream))["disconnects"] > before["disconnects"] and s,
    )
    assert after["last_disconnect_at"] - left_at < 2.0
    assert after["streams_disconnected"] == before["streams_disconnected"]
