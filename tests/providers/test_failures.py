"""gateway/providers/failures.py: every upstream failure named, in the gateway's own words."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from gateway.errors import (
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.providers.failures import (
    MESSAGE_LIMIT,
    error_from_response,
    parse_retry_after,
    transport_error,
)
from gateway.providers.redact import Redactor

KEY = "sk-upstream-0123456789abcdefghij"
NO_SECRETS = Redactor([])


def _chained(outer: Exception, inner: BaseException) -> Exception:
    outer.__cause__ = inner
    return outer


@pytest.mark.parametrize(
    ("exc", "kind", "reason", "message"),
    [
        (
            _chained(
                httpx.ConnectError("All connection attempts failed"), ConnectionRefusedError()
            ),
            UpstreamUnavailable,
            "connect_refused",
            "could not reach the upstream: connection refused",
        ),
        (
            httpx.ConnectError("Multiple exceptions: [Errno 111] Connect call failed"),
            UpstreamUnavailable,
            "connect_refused",
            "could not reach the upstream: connection refused",
        ),
        (
            _chained(httpx.ConnectError("boom"), socket.gaierror(-2, "Name or service not known")),
            UpstreamUnavailable,
            "connect_failed",
            "could not reach the upstream: the host name did not resolve",
        ),
        (
            _chained(httpx.ConnectError("boom"), ssl.SSLError("bad cert")),
            UpstreamUnavailable,
            "connect_failed",
            "could not reach the upstream: the TLS handshake failed",
        ),
        (
            httpx.ConnectError("something else"),
            UpstreamUnavailable,
            "connect_failed",
            "could not reach the upstream: the connection failed",
        ),
        (
            httpx.ConnectTimeout("timed out connecting"),
            UpstreamTimeout,
            "connect_timeout",
            "the upstream did not accept a connection in time",
        ),
        (
            httpx.PoolTimeout("no connection free"),
            UpstreamTimeout,
            "pool_timeout",
            "no connection to the upstream became free in time",
        ),
        (
            httpx.ReadTimeout("timed out waiting for the response"),
            UpstreamTimeout,
            "timeout_first_token",
            "the upstream did not answer in time",
        ),
        (
            TimeoutError(),
            UpstreamTimeout,
            "timeout_first_token",
            "the upstream did not answer in time",
        ),
        (
            httpx.RemoteProtocolError("server disconnected without sending a response"),
            UpstreamUnavailable,
            "connection_closed",
            "the upstream closed the connection before its answer was complete",
        ),
        (
            httpx.ReadError("connection reset by peer 10.0.0.7"),
            UpstreamUnavailable,
            "connection_closed",
            "the upstream closed the connection before its answer was complete",
        ),
        (
            httpx.UnsupportedProtocol("unsupported URL scheme 'ftp'"),
            UpstreamUnavailable,
            "transport_error",
            "could not call the upstream: UnsupportedProtocol",
        ),
    ],
)
def test_transport_failures_are_named(
    exc: Exception, kind: type, reason: str, message: str
) -> None:
    error = transport_error(exc)
    assert type(error) is kind
    assert error.reason == reason  # type: ignore[attr-defined]
    assert error.message == message  # type: ignore[attr-defined]
    assert error.retryable  # type: ignore[attr-defined]


def test_a_timeout_is_named_by_what_it_waited_for() -> None:
    error = transport_error(httpx.ReadTimeout("x"), timeout="timeout_idle")
    assert error.reason == "timeout_idle"  # type: ignore[attr-defined]


def test_other_exceptions_are_left_alone() -> None:
    exc = ValueError("a bug")
    assert transport_error(exc) is exc


# ---------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": " 2.5 "}, 2.5),
        ({"retry-after": "inf"}, 3600.0),
        ({"retry-after": "Infinity"}, 3600.0),
        ({"retry-after": "1e400"}, 3600.0),
        ({"retry-after": "99999999"}, 3600.0),
        ({"retry-after": "-5"}, 0.0),
        ({"retry-after": "-inf"}, 0.0),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after-ms": "inf"}, 3600.0),
        ({"retry-after-ms": "nan", "retry-after": "4"}, 4.0),
        ({"retry-after-ms": "-20"}, 0.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # in the past
        ({}, None),
    ],
)
def test_retry_after_is_parsed_defensively(headers: dict[str, str], seconds: float | None) -> None:
    assert parse_retry_after(httpx.Headers(headers)) == seconds


def test_retry_after_as_an_http_date() -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    seconds = parse_retry_after(httpx.Headers({"retry-after": format_datetime(when, usegmt=True)}))
    assert seconds is not None
    assert 0 < seconds <= 31  # minus however long this machine took to get here


@pytest.mark.parametrize("value", ["inf", "nan", "1e400", "-1", "1e12"])
def test_any_retry_after_renders_as_whole_seconds(value: str) -> None:
    error = error_from_response(
        429,
        b'{"error": {"message": "slow down"}}',
        httpx.Headers({"retry-after": value}),
        NO_SECRETS,
    )
    assert isinstance(error, UpstreamRateLimited)
    header = error.response_headers().get("retry-after")
    assert header is None or (header.isdigit() and 1 <= int(header) <= 3600)


# ---------------------------------------------------------------- error bodies


def _error(message: str, **fields: object) -> bytes:
    return json.dumps({"error": {"message": message, **fields}}).encode()


def test_rejection_relays_the_cleaned_message_and_fields() -> None:
    body = _error(
        f"bad key {KEY}", type=f"t-{KEY}", code="context_length_exceeded", param="messages"
    )
    error = error_from_response(400, body, httpx.Headers(), Redactor([KEY]))
    assert isinstance(error, UpstreamRejected)
    assert error.message == "bad key [redacted]"
    assert error.type == "t-[redacted]"
    assert (error.code, error.param) == ("context_length_exceeded", "messages")


def test_a_long_rejection_is_cut_after_it_is_cleaned() -> None:
    body = _error("x" * (MESSAGE_LIMIT - 10) + KEY + "y" * 1000)
    error = error_from_response(400, body, httpx.Headers(), Redactor([KEY]))
    assert len(error.message) <= MESSAGE_LIMIT + len("[redacted]") + 3
    assert KEY[:8] not in error.message
    assert error.message.endswith("[redacted]...")


def test_a_rejection_without_json_relays_the_cleaned_text() -> None:
    body = b"<html>" + b"x" * 150 + KEY.encode() + b"</html>"
    error = error_from_response(413, body, httpx.Headers(), Redactor([KEY]))
    assert error.status == 413
    assert KEY[:8] not in error.message
    assert "[redacted]" in error.message


@pytest.mark.parametrize("status", [500, 502, 503, 529, 429, 409])
def test_a_failure_status_never_relays_the_upstream_text(status: int) -> None:
    body = _error(f"internal: key={KEY} headers={{'authorization': 'Bearer {KEY}'}}")
    error = error_from_response(status, body, httpx.Headers(), Redactor([KEY]))
    assert "internal" not in error.message
    assert (error.reason, error.upstream_status) == ("upstream_status", status)


@pytest.mark.parametrize(
    "body",
    [
        _error("Invalid URL (POST /chat/completions)", type="invalid_request_error"),
        _error("no route POST /chat/completions", type="invalid_request_error"),
        b'{"detail": "Not Found"}',
        b"<html><body>404 page not found</body></html>",
        b"404 page not found",
        b"",
        b'{"error": "Unexpected endpoint or method. (POST /chat/completions)"}',
    ],
    ids=["openai", "mock-upstream", "starlette", "html", "go", "empty", "lm-studio"],
)
def test_a_404_that_is_not_about_a_model_suggests_the_base_url(body: bytes) -> None:
    error = error_from_response(
        404, body, httpx.Headers(), NO_SECRETS, route="POST /chat/completions"
    )
    assert type(error) is UpstreamUnavailable
    assert error.status == 502
    assert error.code == "upstream_error"
    assert error.message == (
        "the upstream answered 404 for POST /chat/completions: "
        "is the provider's base_url missing '/v1'?"
    )
    assert (error.reason, error.upstream_status) == ("upstream_status", 404)


def test_a_404_on_a_v1_path_does_not_blame_v1() -> None:
    error = error_from_response(
        404, b"", httpx.Headers(), NO_SECRETS, route="POST /v1/chat/completions"
    )
    assert error.status == 502
    assert "missing '/v1'" not in error.message
    assert "base_url" in error.message


@pytest.mark.parametrize(
    "body",
    [
        _error("The model `gpt-9` does not exist", code="model_not_found"),
        _error("not found", code="model_not_found"),
        b'{"object": "error", "message": "The model `x` does not exist.", "type": "NotFoundError"}',
        b'{"error": "model \\"llama9\\" not found, try pulling it first"}',
        _error("mock failure 404", type="invalid_request_error"),
    ],
    ids=["openai", "code-only", "vllm", "ollama", "other-error-object"],
)
def test_a_404_about_the_request_is_relayed(body: bytes) -> None:
    error = error_from_response(
        404, body, httpx.Headers(), NO_SECRETS, route="POST /chat/completions"
    )
    assert isinstance(error, UpstreamRejected)
    assert error.status == 404


@pytest.mark.parametrize(
    "body", [b"[" * 60_000, b"\xff\xfe\x00garbage", b'{"error": {"message": ["a", 1]}}']
)
def test_any_body_maps_to_an_error(body: bytes) -> None:
    error = error_from_response(400, body, httpx.Headers(), NO_SECRETS)
    assert isinstance(error, UpstreamRejected)
    assert len(error.message) <= MESSAGE_LIMIT + 3


async def test_parse_is_cheap_enough_for_a_huge_body() -> None:
    # An error path, but a 64 KiB echo must not stall the loop.
    body = _error((KEY + " ") * 2000)
    loop = asyncio.get_running_loop()
    started = loop.time()
    error = error_from_response(400, body, httpx.Headers(), Redactor([KEY]))
    assert loop.time() - started < 2.0
    assert KEY[:8] not in error.message
