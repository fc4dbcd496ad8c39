"""Upstream failures through a real gateway: what the client is told, what the log says.

Beside the mock upstream, an upstream of this test's own (``echo``) answers
with the status a request asks for and a body repeating the headers the
gateway sent it, as a careless upstream's error page would: the provider's
key and configured header values must never come back to the client or into
the log, whole or in part.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from tests.servers import (
    TEST_KEY,
    ServerProcess,
    free_port,
    standard_config,
    start_gateway,
    write_config,
)

PROVIDER_KEY = "sk-echo-provider-4f3e2d1c0b9a8f7e6d5c"
HEADER_VALUE = "org-echo-header-7a6b5c4d3e2f"
TRICKY_KEY = "sk-test-tricky-name-key"
TRICKY_NAME = "evil forged=1 status=200 ünï"
AUTH = {"authorization": f"Bearer {TEST_KEY}"}


# ---------------------------------------------------------------- the echoing upstream


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers ``{"echo": {"status": N, "retry_after": "..."}}`` with status N and an
    OpenAI error whose message repeats every header of the request."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    try:
        echo = json.loads(body).get("echo") or {}
    except ValueError:
        echo = {}
    headers = "; ".join(f"{k.decode()}: {v.decode()}" for k, v in scope["headers"])
    padding = "x" * int(echo.get("pad", 0))
    payload = json.dumps(
        {"error": {"message": f"{padding}bad request, you sent {headers}", "type": "echo"}}
    ).encode()
    extra = []
    if "retry_after" in echo:
        extra.append((b"retry-after", str(echo["retry_after"]).encode()))
    await send(
        {
            "type": "http.response.start",
            "status": int(echo.get("status", 500)),
            "headers": [(b"content-type", b"application/json"), *extra],
        }
    )
    await send({"type": "http.response.body", "body": payload})


@pytest.fixture(scope="module")
def echo() -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(echo_app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the echo upstream did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def gateway(
    upstream: ServerProcess, echo: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    config = standard_config(upstream.url)
    config["providers"].update(
        {
            "echo": {
                "type": "openai",
                "base_url": f"{echo}/v1",
                "api_key": PROVIDER_KEY,
                "headers": {"OpenAI-Organization": HEADER_VALUE},
            },
            # Nothing listens there: the port was free a moment ago.
            "nowhere": {"type": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1"},
            # The mock upstream's routes are under /v1; this base_url forgot it.
            "no-v1": {"type": "openai", "base_url": upstream.url, "api_key": "sk-nov1-secret"},
        }
    )
    config["models"].update(
        {
            "up-echo": {"deployments": [{"provider": "echo", "model": "echo-model"}]},
            "up-nowhere": {"deployments": [{"provider": "nowhere", "model": "m"}]},
            "up-no-v1": {"deployments": [{"provider": "no-v1", "model": "mock-chat"}]},
            "up-no-v1-embed": {"deployments": [{"provider": "no-v1", "model": "mock-embedding"}]},
        }
    )
    config["keys"].append({"name": TRICKY_NAME, "key": TRICKY_KEY, "models": ["local-*"]})
    server = start_gateway(write_config(tmp_path_factory.mktemp("failures"), config))
    yield server
    server.stop()


# ---------------------------------------------------------------- helpers


HUGE = "__1e400__"  # written into the JSON as the number 1e400, which parses as infinity


def chat(gateway: ServerProcess, model: str, request_id: str, **fields: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}
    headers = {**AUTH, "x-request-id": request_id, "content-type": "application/json"}
    content = json.dumps(body).replace(f'"{HUGE}"', "1e400")
    return httpx.post(
        f"{gateway.url}/v1/chat/completions", content=content, headers=headers, timeout=30
    )


def access_line(gateway: ServerProcess, request_id: str, timeout: float = 10.0) -> str:
    """The one access-log line of ``request_id`` (the log is flushed every 0.1 s)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [
            line
            for line in gateway.logs().splitlines()
            if "gateway.access" in line and f"request_id={request_id} " in line
        ]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(lines) == 1, lines
    return lines[0]


def fields(line: str) -> dict[str, str]:
    """The ``name=value`` fields of an access line (after its time, level and logger)."""
    return dict(part.split("=", 1) for part in line.split(" ") if "=" in part)


def fragments(secret: str) -> list[str]:
    return [secret[i : i + 8] for i in range(len(secret) - 7)]


def assert_no_secret(text: str) -> None:
    assert HEADER_VALUE not in text
    for piece in fragments(PROVIDER_KEY) + fragments(HEADER_VALUE):
        assert piece not in text, f"{piece!r} leaked in {text[:300]!r}"


# ---------------------------------------------------------------- secrets


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize("status", [400, 500])
@pytest.mark.parametrize("pad", [0, 150, 190, 480])
def test_an_echoing_upstream_gets_no_secret_to_the_client(
    gateway: ServerProcess, status: int, pad: int, stream: bool
) -> None:
    request_id = f"echo-{status}-{pad}-{stream}"
    r = chat(gateway, "up-echo", request_id, stream=stream, echo={"status": status, "pad": pad})
    assert_no_secret(r.text)
    error = r.json()["error"]
    if status == 400:
        assert r.status_code == 400
        assert "you sent" in error["message"] or pad >= 480  # the upstream's words, cleaned
        assert "[redacted]" in error["message"] or pad >= 480
    else:
        assert r.status_code == 502
        assert error["message"] == "the upstream failed with status 500"
        line = access_line(gateway, request_id)
        assert fields(line)["reason"] == "upstream_status"
        assert fields(line)["upstream_status"] == "500"
    assert_no_secret(gateway.logs())


@pytest.mark.parametrize("value", ["inf", "nan", "1e400", "-3", "99999999999", "7"])
def test_any_upstream_retry_after_is_a_429_with_whole_seconds(
    gateway: ServerProcess, value: str
) -> None:
    r = chat(gateway, "up-echo", f"retry-{value}", echo={"status": 429, "retry_after": value})
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "upstream_rate_limited"
    assert r.json()["error"]["message"] == "the upstream is rate limiting the gateway (429)"
    header = r.headers.get("retry-after")
    if value == "7":
        assert header == "7"  # passed through
    elif value == "nan":
        assert header is None
    else:
        assert header is not None
        assert 1 <= int(header) <= 3600
    assert_no_secret(r.text)


def test_mock_retry_after_passes_through(gateway: ServerProcess) -> None:
    r = chat(gateway, "up-chat", "mock-retry", mock={"status": 429, "retry_after": 12})
    assert r.status_code == 429
    assert r.headers["retry-after"] == "12"


# ---------------------------------------------------------------- failures named


def test_a_stream_cut_midway_says_so(gateway: ServerProcess) -> None:
    r = chat(gateway, "up-chat", "cut-stream", stream=True, mock={"cut_after": 3})
    assert r.status_code == 200
    data = [line[6:] for line in r.text.split("\n") if line.startswith("data: ")]
    assert len(data) == 4, r.text  # three chunks, then the error
    error = json.loads(data[-1])["error"]
    assert error["message"] == "the upstream closed the connection mid-answer"
    assert error["code"] == "upstream_error"
    line = fields(access_line(gateway, "cut-stream"))
    assert (line["outcome"], line["reason"]) == ("error", "stream_cut")
    assert "upstream_status" not in line


def test_an_upstream_status_is_logged(gateway: ServerProcess) -> None:
    r = chat(gateway, "up-chat", "status-503", mock={"status": 503, "message": "db on fire"})
    assert r.status_code == 502
    assert r.json()["error"]["message"] == "the upstream failed with status 503"
    line = fields(access_line(gateway, "status-503"))
    assert (line["status"], line["reason"], line["upstream_status"]) == (
        "502",
        "upstream_status",
        "503",
    )


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
def test_a_refused_connection_is_named(gateway: ServerProcess, stream: bool) -> None:
    r = chat(gateway, "up-nowhere", f"refused-{stream}", stream=stream)
    assert r.status_code == 502
    assert r.json()["error"]["message"] == "could not reach the upstream: connection refused"
    assert fields(access_line(gateway, f"refused-{stream}"))["reason"] == "connect_refused"


def test_a_slow_first_token_is_named(gateway: ServerProcess) -> None:
    # up-fast-timeout: first_token 0.5 s; the mock answers its head at once, the token later.
    r = chat(gateway, "up-fast-timeout", "slow-first", stream=True, mock={"ttft_ms": 3000})
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "upstream_timeout"
    assert fields(access_line(gateway, "slow-first"))["reason"] == "timeout_first_token"


def test_a_malformed_answer_is_named(gateway: ServerProcess) -> None:
    r = chat(gateway, "up-chat", "malformed", stream=True, mock={"malformed_after": 1})
    assert r.status_code == 200
    assert '"code":"upstream_error"' in r.text
    assert fields(access_line(gateway, "malformed"))["reason"] == "malformed"


def test_a_base_url_without_v1_says_so(gateway: ServerProcess) -> None:
    r = chat(gateway, "up-no-v1", "no-v1")
    assert r.status_code == 502
    assert r.json()["error"]["message"] == (
        "the upstream answered 404 for POST /chat/completions: "
        "is the provider's base_url missing '/v1'?"
    )
    line = fields(access_line(gateway, "no-v1"))
    assert (line["reason"], line["upstream_status"]) == ("upstream_status", "404")
    r = httpx.post(
        f"{gateway.url}/v1/embeddings",
        json={"model": "up-no-v1-embed", "input": "hi"},
        headers=AUTH,
        timeout=30,
    )
    assert r.status_code == 502
    assert "404 for POST /embeddings: is the provider's base_url missing '/v1'?" in r.text


# ---------------------------------------------------------------- mock knobs


@pytest.mark.parametrize("model", ["local-chat", "up-chat"])
@pytest.mark.parametrize(
    ("mock", "field"),
    [
        ({"delay_ms": 600_001}, "mock.delay_ms"),
        ({"ttft_ms": HUGE}, "mock.ttft_ms"),
        ({"delay_ms": HUGE}, "mock.delay_ms"),
        ({"tokens_per_s": 1e-9}, "mock.tokens_per_s"),
        ({"chunks": 10**9}, "mock.chunks"),
        ({"status": 429, "retry_after": 3601}, "mock.retry_after"),
    ],
)
def test_unbounded_mock_knobs_are_400(
    gateway: ServerProcess, model: str, mock: dict[str, Any], field: str
) -> None:
    r = chat(gateway, model, f"knob-{model}-{field}", mock=mock)
    assert r.status_code == 400, r.text
    assert field.removeprefix("mock.") in r.json()["error"]["message"]


def test_an_infinite_scripted_retry_after_is_a_400_not_a_500(gateway: ServerProcess) -> None:
    # In-process; the HTTP mock never sees it: the gateway forwards infinity as null.
    r = chat(gateway, "local-chat", "knob-inf-retry", mock={"status": 429, "retry_after": HUGE})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "mock.retry_after"


# ---------------------------------------------------------------- log injection


def _raw_get(gateway: ServerProcess, target: bytes, request_id: str) -> bytes:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(
            b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"x-request-id: " + request_id.encode() + b"\r\nConnection: close\r\n\r\n"
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        (b"/nope%0Aforged%20line", r"/nope\x0aforged\x20line"),
        (
            b"/nope%0D%0A2099-01-01%2000:00:00,000%20INFO",
            r"/nope\x0d\x0a2099-01-01\x2000:00:00,000",
        ),
        (b"/x%1B%5B31mred%1B%5B0m", r"/x\x1b[31mred\x1b[0m"),
        (b"/a%3Db%20status=200", r"/a\x3db\x20status\x3d200"),
        (b"/c1%C2%85next", r"/c1\x85next"),
    ],
    ids=["newline", "crlf-forged-record", "ansi", "fake-field", "c1-nel"],
)
def test_a_path_cannot_forge_a_log_line(gateway: ServerProcess, target: bytes, shown: str) -> None:
    request_id = "inject-" + re.sub(r"[^a-z0-9]", "", target.decode().lower())[:40]
    answer = _raw_get(gateway, target, request_id)
    assert answer.startswith(b"HTTP/1.1 404"), answer[:200]
    line = access_line(gateway, request_id)
    assert shown in line
    assert "\x1b" not in line
    path = fields(line)["path"]
    assert path.startswith(shown)  # the whole path is one field
    assert "forged" not in {k for k in fields(line)}
    # No line of the log starts with what came after the newline.
    for other in gateway.logs().splitlines():
        assert not other.startswith(("forged", "2099-01-01"))


def test_a_key_name_cannot_fake_fields(gateway: ServerProcess) -> None:
    r = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "local-chat", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {TRICKY_KEY}", "x-request-id": "tricky-name"},
        timeout=30,
    )
    assert r.status_code == 200
    line = access_line(gateway, "tricky-name")
    parsed = fields(line)
    assert parsed["key"] == r"evil\x20forged\x3d1\x20status\x3d200\x20ünï"
    assert parsed["status"] == "200"
    assert "forged" not in parsed
