"""gateway/server.py against bad and slow clients: a real gateway, fed raw bytes.

Every limit here is configured short or small (docs/operations.md, "The edge's
protections", has the defaults). Waits assert a lower bound (the server never
gives up early) and leave seconds of slack above: a stalled machine only
makes answers later.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import TEST_KEY, ServerProcess, start_gateway, write_config

SLACK = 5.0  # seconds a stalled machine may add to any wait


def _config(**server: Any) -> dict[str, Any]:
    return {
        "providers": {"local": {"type": "mock"}},
        "models": {"local-chat": {"deployments": [{"provider": "local", "model": "mock-chat"}]}},
        "keys": [{"name": "tests", "key": TEST_KEY}],
        "server": server,
    }


def _start(directory: Path, **server: Any) -> ServerProcess:
    return start_gateway(write_config(directory, _config(**server)))


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Default head limits; timeouts of 2 s."""
    server = _start(
        tmp_path_factory.mktemp("edge"),
        head_timeout_seconds=2,
        body_timeout_seconds=2,
        keepalive_timeout_seconds=2,
    )
    yield server
    server.stop()


def _connect(server: ServerProcess, timeout: float = 10 + SLACK) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_to_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def _read_answer(sock: socket.socket) -> bytes:
    """One whole answer with a ``content-length`` (its head and body may come in
    separate writes: they do with the framework bypasses off)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, data
        body += chunk
    return head + b"\r\n\r\n" + body


def _send_all_you_can(sock: socket.socket, data: bytes) -> None:
    """Send ``data``, or as much of it as the server reads before it closes."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def _refusal(answer: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, json.loads(body)["error"]


def _head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _health(server: ServerProcess) -> int:
    return httpx.get(f"{server.url}/health", timeout=10 + SLACK).status_code


# ---------------------------------------------------------------- the head


def test_an_oversize_head_is_431_and_closed(edge: ServerProcess) -> None:
    with _connect(edge) as sock:
        # 1 MB of one header, never finished: the server stops reading at 64 KiB.
        _send_all_you_can(sock, b"GET /health HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * 1_000_000)
        status, headers, error = _refusal(_read_to_close(sock))
    assert status == 431
    assert headers["connection"] == "close"
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "request_header_fields_too_large"
    assert "65536 bytes" in error["message"]
    assert _health(edge) == 200


def test_a_head_just_under_the_limit_is_served(edge: ServerProcess) -> None:
    with _connect(edge) as sock:
        sock.sendall(_head("GET /health HTTP/1.1", "host: t", "x-big: " + "a" * 60_000))
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 ")


def test_too_many_header_fields_is_431(edge: ServerProcess) -> None:
    fields = [f"x-field-{i}: {i}" for i in range(150)]
    with _connect(edge) as sock:
        _send_all_you_can(sock, _head("GET /health HTTP/1.1", "host: t", *fields))
        status, headers, error = _refusal(_read_to_close(sock))
    assert status == 431
    assert headers["connection"] == "close"
    assert error["code"] == "request_header_fields_too_large"
    assert "100 header fields" in error["message"]


def test_a_hundred_header_fields_are_served(edge: ServerProcess) -> None:
    fields = [f"x-field-{i}: {i}" for i in range(99)]  # and host: 100
    with _connect(edge) as sock:
        sock.sendall(_head("GET /health HTTP/1.1", "host: t", *fields))
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_a_head_dribbled_byte_by_byte_is_408(edge: ServerProcess) -> None:
    head = _head("GET /health HTTP/1.1", "host: t", "x-slow: " + "a" * 100)
    with _connect(edge) as sock:
        started = time.monotonic()
        sock.settimeout(0.25)
        answer = b""
        for byte in head:  # one byte every 0.25 s: the whole head would take 30 s
            try:
                sock.send(bytes([byte]))
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if answer or time.monotonic() - started > 2 + SLACK:
                break
        elapsed = time.monotonic() - started
        sock.settimeout(SLACK)
        answer += _read_to_close(sock)
    status, _, error = _refusal(answer)
    assert status == 408
    assert error["code"] == "request_timeout"
    assert 1.5 <= elapsed < 2 + SLACK, elapsed


def test_a_silent_connection_is_closed_without_an_answer(edge: ServerProcess) -> None:
    with _connect(edge) as sock:
        started = time.monotonic()
        assert _read_to_close(sock) == b""
    assert 1.5 <= time.monotonic() - started < 2 + SLACK


def test_garbage_is_400_in_the_envelope(edge: ServerProcess) -> None:
    with _connect(edge) as sock:
        sock.sendall(b"NOT HTTP AT ALL\x00\x01\r\n\r\n")
        status, _, error = _refusal(_read_to_close(sock))
    assert status == 400
    assert error["type"] == "invalid_request_error"


# ---------------------------------------------------------------- the body and keep-alive


def test_a_stalled_body_is_408_and_logged(edge: ServerProcess) -> None:
    head = _head(
        "POST /v1/chat/completions HTTP/1.1",
        "host: t",
        f"authorization: Bearer {TEST_KEY}",
        "content-type: application/json",
        "content-length: 1000",
        "x-request-id: stalled-body-1",
    )
    with _connect(edge) as sock:
        sock.sendall(head + b'{"model": "local-chat", ')
        started = time.monotonic()
        status, headers, error = _refusal(_read_to_close(sock))
    assert status == 408
    assert headers["connection"] == "close"
    assert error["code"] == "request_timeout"
    assert 1.5 <= time.monotonic() - started < 2 + SLACK
    line = _access_line(edge, "stalled-body-1")
    assert " status=408 " in line
    assert "outcome=client_timeout" in line
    assert "ERROR" not in edge.logs()


def test_a_body_that_keeps_coming_is_not_cut(edge: ServerProcess) -> None:
    body = json.dumps(
        {"model": "local-chat", "messages": [{"role": "user", "content": "x" * 200}]}
    ).encode()
    head = _head(
        "POST /v1/chat/completions HTTP/1.1",
        "host: t",
        f"authorization: Bearer {TEST_KEY}",
        "content-type: application/json",
        f"content-length: {len(body)}",
    )
    with _connect(edge) as sock:
        sock.sendall(head)
        # The whole body takes longer than the body timeout (2 s), but no read stalls
        # longer than 0.45 s of it.
        step = len(body) // 6 + 1
        for i in range(0, len(body), step):
            time.sleep(0.45)
            sock.sendall(body[i : i + step])
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


def test_a_small_head_with_a_large_body_in_one_write_is_served(edge: ServerProcess) -> None:
    """Head and body arrive together, far past the head's limit: only the head counts."""
    body = json.dumps(
        {"model": "local-chat", "messages": [{"role": "user", "content": "x" * 300_000}]}
    ).encode()
    head = _head(
        "POST /v1/chat/completions HTTP/1.1",
        "host: t",
        f"authorization: Bearer {TEST_KEY}",
        "content-type: application/json",
        f"content-length: {len(body)}",
    )
    with _connect(edge) as sock:
        sock.sendall(head + body + head + body)  # and a second request, pipelined
        answers = b""
        while answers.count(b"HTTP/1.1 200 ") < 2:
            chunk = sock.recv(65536)
            assert chunk, answers
            answers += chunk


def test_an_idle_keepalive_connection_is_closed(edge: ServerProcess) -> None:
    with _connect(edge) as sock:
        sock.sendall(_head("GET /health HTTP/1.1", "host: t"))
        assert _read_answer(sock).startswith(b"HTTP/1.1 200 ")
        answered = time.monotonic()
        assert _read_to_close(sock) == b""  # closed, without a word
    assert 1.5 <= time.monotonic() - answered < 2 + SLACK


def test_a_keepalive_connection_in_use_stays_open(edge: ServerProcess) -> None:
    with _connect(edge) as sock:
        for _ in range(6):  # 0.5 s apart: longer than the idle timeout (2 s) in all
            sock.sendall(_head("GET /health HTTP/1.1", "host: t"))
            assert _read_answer(sock).startswith(b"HTTP/1.1 200 ")
            time.sleep(0.5)


def _access_line(server: ServerProcess, request_id: str) -> str:
    deadline = time.monotonic() + SLACK
    while time.monotonic() < deadline:
        for line in server.logs().splitlines():
            if "gateway.access" in line and f"request_id={request_id} " in line:
                return line
        time.sleep(0.1)
    raise AssertionError(f"no access line for {request_id}:\n{server.logs()}")


# ---------------------------------------------------------------- connections


def test_connections_beyond_max_connections_get_503(tmp_path: Path) -> None:
    server = _start(tmp_path, max_connections=4, head_timeout_seconds=30)
    held: list[socket.socket] = []
    try:
        for _ in range(3):  # and wait_ready's pooled one makes no difference: it is closed
            sock = _connect(server)
            sock.sendall(b"GET /health HTTP/1.1\r\n")  # a head that never ends
            held.append(sock)
        fourth = _connect(server)
        fourth.sendall(_head("GET /health HTTP/1.1", "host: t"))
        assert fourth.recv(65536).startswith(b"HTTP/1.1 200 ")
        held.append(fourth)

        with _connect(server) as fifth:
            status, headers, error = _refusal(_read_to_close(fifth))
        assert status == 503
        assert headers["retry-after"] == "1"
        assert error["code"] == "too_many_connections"

        for sock in held:
            sock.close()
        held.clear()
        deadline = time.monotonic() + SLACK
        while True:  # the server notices the closes on its next turns
            try:
                if _health(server) == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "connections freed are never reused"
            time.sleep(0.1)
    finally:
        for sock in held:
            sock.close()
        server.stop()


def test_500_hostile_connections_leave_memory_flat(tmp_path: Path) -> None:
    server = _start(tmp_path, max_connections=1000, head_timeout_seconds=60)
    hostile: list[socket.socket] = []
    try:
        assert _health(server) == 200
        time.sleep(0.5)
        baseline = _rss_kib(server.proc.pid)
        peak = baseline
        # Each sends 48 KiB of a head that never ends, and holds its connection.
        partial = b"GET /health HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * 48 * 1024
        for _ in range(500):
            sock = _connect(server)
            sock.sendall(partial)
            hostile.append(sock)
            if len(hostile) % 50 == 0:
                peak = max(peak, _rss_kib(server.proc.pid))
        for _ in range(10):
            time.sleep(0.1)
            peak = max(peak, _rss_kib(server.proc.pid))
        assert _health(server) == 200  # a normal request, served among them

        # Then each sends a megabyte more: each is refused at the limit.
        megabyte = b"a" * 1_000_000
        for i, sock in enumerate(hostile):
            sock.setblocking(False)
            try:
                sock.send(megabyte)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                pass
            if i % 50 == 0:
                peak = max(peak, _rss_kib(server.proc.pid))
        refused = 0
        for sock in hostile:
            sock.setblocking(True)
            sock.settimeout(10 + SLACK)
            try:
                # What is left of the megabyte goes out as the server reads and drops it.
                answer = b""
                while b"\r\n\r\n" not in answer:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
            except ConnectionResetError:
                continue
            refused += answer.startswith(b"HTTP/1.1 431 ")
        peak = max(peak, _rss_kib(server.proc.pid))
        assert refused >= 450, refused  # a few may see a reset instead
        assert _health(server) == 200
        assert (peak - baseline) < 50 * 1024, f"RSS grew by {(peak - baseline) / 1024:.1f} MB"
    finally:
        for sock in hostile:
            sock.close()
        server.stop()


# ---------------------------------------------------------------- signals


def _reload_lines(server: ServerProcess, count: int) -> list[str]:
    """Wait for ``count`` lines saying how a SIGHUP's reload went; those lines."""
    deadline = time.monotonic() + SLACK
    while True:
        lines = [
            line for line in server.logs().splitlines() if "config reload (signal, pid " in line
        ]
        if len(lines) >= count:
            return lines
        assert time.monotonic() < deadline, server.logs()
        time.sleep(0.1)


def test_sighup_reloads_the_config_and_the_gateway_keeps_serving(edge: ServerProcess) -> None:
    """SIGHUP reloads (docs/operations.md, "Reloading the config"): the file is unchanged,
    so it says so; the process lives on and serves."""
    edge.proc.send_signal(signal.SIGHUP)
    (line,) = _reload_lines(edge, 1)
    assert f"pid {edge.proc.pid}): " in line, line
    assert "is unchanged, generation 1" in line, line
    assert edge.proc.poll() is None
    assert _health(edge) == 200


def test_workers_get_the_edge_limits_and_keep_serving_on_sighup(tmp_path: Path) -> None:
    """``--workers N``: each worker serves with ``server:``'s limits, and SIGHUP to the
    supervisor is passed on to every worker, which reloads its config: not a restart of
    the workers, nor the end of one."""
    import redis

    redis_url = "redis://127.0.0.1:6379/0"
    prefix = f"gwtest-edge-{uuid.uuid4().hex[:8]}:"
    config = _config(max_head_bytes=2048, redis_prefix=prefix)
    server = ServerProcess(
        ["serve", "--config", str(write_config(tmp_path, config)), "--workers", "2"],
        env={"REDIS_URL": redis_url},
    )
    try:
        server.wait_ready(timeout=30 + SLACK)
        r = httpx.get(f"{server.url}/health", headers={"x-big": "a" * 3000}, timeout=10)
        assert r.status_code == 431
        assert r.json()["error"]["code"] == "request_header_fields_too_large"

        workers = _worker_pids(server, 2)
        server.proc.send_signal(signal.SIGHUP)
        lines = _reload_lines(server, 2)
        assert "SIGHUP: reloading the config in 2 workers" in server.logs()
        assert {int(line.split("pid ")[1].split(")")[0]) for line in lines} == workers
        assert all("is unchanged, generation 1" in line for line in lines), lines
        for _ in range(4):
            assert _health(server) == 200
        assert _worker_pids(server, 2) == workers, "the workers were replaced"
        for pid in workers:
            os.kill(pid, 0)  # ProcessLookupError if it ended
        assert server.proc.poll() is None
    finally:
        server.stop()
        client = redis.Redis.from_url(redis_url, socket_timeout=2)
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()


def _worker_pids(server: ServerProcess, count: int) -> set[int]:
    """The workers uvicorn said it started, once it has said so of ``count``. Not the
    supervisor's children: multiprocessing's resource tracker is one of them too."""
    deadline = time.monotonic() + SLACK
    while True:
        logs = server.logs()
        pids = {int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", logs)}
        if len(pids) >= count:
            return pids
        assert time.monotonic() < deadline, logs
        time.sleep(0.1)
