"""Large bodies against a real gateway on the default body limit (8 MiB).

A body over the limit is refused before it is read; the largest body allowed
is parsed while the event loop keeps answering; and the memory a full body
costs is given back. Bodies are built to be the costliest a client can send
within the limit: the most messages, millions of tiny items, millions of bad
ones.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.schemas.openai import MAX_MESSAGES
from tests.servers import ServerProcess, start_gateway, write_config

KEY = "sk-test-large-bodies-01"
MiB = 1024 * 1024
LIMIT = 8 * MiB  # the default of server.max_body_bytes
HEADERS = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = {
        "providers": {"local": {"type": "mock"}},
        "models": {"local-chat": {"deployments": [{"provider": "local", "model": "mock-chat"}]}},
        "keys": [{"name": "big", "key": KEY}],
    }
    server = start_gateway(write_config(tmp_path_factory.mktemp("large"), config))
    yield server
    server.stop()


def rss_mb(server: ServerProcess) -> float:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def filled(prefix: bytes, item: bytes, suffix: bytes, size: int = LIMIT - 1024) -> bytes:
    """``prefix item,item,...,item suffix``, just under ``size`` bytes."""
    count = (size - len(prefix) - len(suffix)) // (len(item) + 1)
    return prefix + b",".join([item] * count) + suffix


def most_messages() -> bytes:
    """The most messages allowed, their text filling the body to just under the limit."""

    def body(text: str) -> bytes:
        messages = [{"role": "user", "content": text}] * MAX_MESSAGES
        return json.dumps({"model": "local-chat", "messages": messages}).encode()

    # Each character of the text is MAX_MESSAGES bytes of the body.
    filler = (LIMIT - 1024 - len(body(""))) // MAX_MESSAGES
    full = body("x" * filler)
    assert LIMIT - 2 * MAX_MESSAGES < len(full) < LIMIT
    return full


CHAT = b'{"model":"local-chat","messages":['
# name -> (body, expected status): the costliest bodies within the limit.
COSTLY = {
    "tiny-messages": (filled(CHAT, b'{"role":"user","content":""}', b"]}"), 400),
    "bad-messages": (filled(CHAT, b"1", b"]}"), 400),
    "tiny-content-parts": (
        filled(CHAT + b'{"role":"user","content":[', b'{"type":"text","text":"a"}', b"]}]}"),
        200,
    ),
    "tiny-unknown-fields": (
        filled(CHAT + b'{"role":"user","content":"hi"}],"extra":[', b"{}", b"]}"),
        200,
    ),
}


def post_while_polling_health(server: ServerProcess, body: bytes) -> tuple[httpx.Response, float]:
    """POST ``body`` to the chat route; meanwhile ask /health again and again on
    another connection. Returns the answer and the slowest /health seen."""
    answer: list[httpx.Response] = []

    def send() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            answer.append(client.post("/v1/chat/completions", content=body, headers=HEADERS))

    slowest = 0.0
    with httpx.Client(base_url=server.url, timeout=30) as health:
        health.get("/health")  # connected before the big one starts
        sender = threading.Thread(target=send)
        sender.start()
        deadline = time.monotonic() + 60
        while sender.is_alive() and time.monotonic() < deadline:
            started = time.monotonic()
            assert health.get("/health").status_code == 200
            slowest = max(slowest, time.monotonic() - started)
        sender.join(timeout=60)
    assert answer, "the large request got no answer"
    return answer[0], slowest


# ---------------------------------------------------------------- over the limit


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return int(status_line.split()[1]), headers, rest[:length]


def test_a_30_mb_body_is_refused_before_it_is_sent(gateway: ServerProcess) -> None:
    # Only the head goes out: the answer cannot wait for a body that never comes.
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {30 * 1000 * 1000}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(head.encode())
        status, headers, body = read_answer(sock)
    assert status == 413
    assert headers["connection"] == "close"
    assert json.loads(body) == {
        "error": {
            "message": f"The request body is larger than the limit of {LIMIT} bytes.",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_too_large",
        }
    }


def test_a_chunked_30_mb_body_is_refused_once_past_the_limit(gateway: ServerProcess) -> None:
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = b'{"model":"local-chat","messages":[{"role":"user","content":"' + b"x" * MiB
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(head.encode())
        try:
            # Until the answer is there to read, or the gateway closed.
            while sent < 64 * MiB and not select.select([sock], [], [], 0)[0]:
                sock.sendall(chunk)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway answered and closed: the rest is never read
        status, headers, body = read_answer(sock)
        assert headers["connection"] == "close"
        sock.settimeout(10)
        try:  # and the connection is closed, not left reading what follows
            assert sock.recv(1) == b""
        except ConnectionResetError:
            pass
    assert status == 413
    assert json.loads(body)["error"]["code"] == "request_too_large"
    # The limit and what socket buffers hold (~12 MiB here), never 30 MB.
    assert sent < 30 * MiB, f"{sent} bytes went out before the 413 came back"


# ---------------------------------------------------------------- within the limit


def test_the_largest_body_parses_while_the_loop_keeps_answering(gateway: ServerProcess) -> None:
    answer, slowest_health = post_while_polling_health(gateway, most_messages())
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["prompt_tokens"] > MAX_MESSAGES
    # Parsing it takes tens of milliseconds here; a second of slack for a stalling CI.
    assert slowest_health < 1.0, f"/health took {slowest_health:.2f} s during the parse"


@pytest.mark.parametrize("shape", COSTLY)
def test_the_costliest_bodies_stall_the_loop_briefly(gateway: ServerProcess, shape: str) -> None:
    # Measured at up to ~0.7 s here for 8 MiB (300,000 tiny content parts, each a
    # typed model; pydantic holds the GIL throughout, so the bound is the body
    # limit); a million bad items took ~30 s before validation stopped at the first one.
    body, status = COSTLY[shape]
    answer, slowest_health = post_while_polling_health(gateway, body)
    assert answer.status_code == status, answer.text[:300]
    if status == 400:
        assert answer.json()["error"]["param"].startswith("messages")
    assert slowest_health < 3.0, f"/health took {slowest_health:.2f} s during {shape}"


def test_too_many_messages_is_400_naming_messages(gateway: ServerProcess) -> None:
    body = {
        "model": "local-chat",
        "messages": [{"role": "user", "content": "hi"}] * (MAX_MESSAGES + 1),
    }
    answer = httpx.post(
        f"{gateway.url}/v1/chat/completions", json=body, headers=HEADERS, timeout=30
    )
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "messages"
    assert error["message"] == (
        f"Invalid 'messages': array too long. Expected an array with maximum length "
        f"{MAX_MESSAGES}, but got an array with length {MAX_MESSAGES + 1} instead."
    )


def test_memory_stays_bounded_after_many_full_bodies(gateway: ServerProcess) -> None:
    bodies = [most_messages()] + [body for body, _ in COSTLY.values()]
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        for body in bodies:  # warm: the first of each shape grows the heap once
            client.post("/v1/chat/completions", content=body, headers=HEADERS)
        start = rss_mb(gateway)
        for _ in range(4):
            for body in bodies:
                client.post("/v1/chat/completions", content=body, headers=HEADERS)
        grown = rss_mb(gateway) - start
    # One such body at a time costs up to a few hundred MB while it is parsed; the
    # same memory serves the next, so 20 more leave the process about where it was.
    assert grown < 150, f"RSS grew {grown:.0f} MB over 20 bodies of 8 MiB (from {start:.0f} MB)"
    assert rss_mb(gateway) < 800
