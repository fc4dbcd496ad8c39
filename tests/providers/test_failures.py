"""gateway/providers/failures.py: every upstream failure named, in the gateway's own words."""

from __future__ import annotations

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
    parse_retry_after,
    status_error,
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
    error = status_error(429, httpx.Headers({"retry-after": value}), NO_SECRETS)
    assert isinstance(error, UpstreamRateLimited)
    header = error.response_headers().get("retry-after")
    assert header is None or (header.isdigit() and 1 <= int(header) <= 3600)


# ---------------------------------------------------------------- status errors
# What every provider's error parser ends with; OpenAI's bodies: test_openai_errors.py.


def test_a_rejection_relays_the_message_cleaned_and_its_fields() -> None:
    error = status_error(
        413,
        httpx.Headers(),
        Redactor([KEY]),
        message=f"bad value near {KEY}",
        error_type=f"t-{KEY}",
        code="bad_value",
        param="messages",
    )
    assert isinstance(error, UpstreamRejected)
    assert (error.status, error.message) == (413, "bad value near [redacted]")
    assert (error.type, error.code, error.param) == ("t-[redacted]", "bad_value", "messages")


def test_a_rejection_without_a_message_relays_the_body_as_text() -> None:
    body = b"<html>" + b"x" * 150 + KEY.encode() + b"</html>" + b"y" * 5000
    error = status_error(400, httpx.Headers(), Redactor([KEY]), body=body)
    assert KEY[:8] not in error.message
    assert "[redacted]" in error.message
    assert len(error.message) <= MESSAGE_LIMIT + 3


def test_an_empty_rejection_names_its_status() -> None:
    assert status_error(404, httpx.Headers(), NO_SECRETS).message == "HTTP 404"


@pytest.mark.parametrize("status", [500, 502, 503, 529, 429, 409, 401])
def test_a_failure_status_never_relays_the_upstream_words(status: int) -> None:
    error = status_error(
        status, httpx.Headers(), Redactor([KEY]), message=f"internal: {KEY}", body=b"internal"
    )
    assert "internal" not in error.message
    assert (error.reason, error.upstream_status) == ("upstream_status", status)


def test_fields_that_are_not_strings_are_dropped() -> None:
    error = status_error(
        400, httpx.Headers(), NO_SECRETS, message="no", error_type=["x"], code=7, param={}
    )
    assert (error.type, error.code, error.param) == ("invalid_request_error", None, None)
