"""Upstream failures -> ``GatewayError``s, the same way for every provider.

A failure is named where it is detected: the error's message says what
happened in the gateway's own words, and its ``reason`` (one word of
``errors.Reason``) goes to the access log. Nothing of an exception's text or
an upstream's body reaches a client unless it is a refusal of the request
itself, and then only cleaned of the provider's secrets (``redact.py``).

What is the same for every provider lives here: transport failures, the
status -> error mapping with its relayed message (``status_error``),
Retry-After and malformed answers. Reading a provider's error body is the
provider's own (``parse_error`` in its module, e.g. openai.py's
``error_from_response``), and ends in ``status_error``.
"""

from __future__ import annotations

import errno
import json
import math
import socket
import ssl
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
from pydantic import ValidationError

from gateway.errors import (
    GatewayError,
    Reason,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    clamp_retry_after,
    upstream_status_error,
)
from gateway.providers.redact import Redactor

__all__ = [
    "MESSAGE_LIMIT",
    "clean_field",
    "json_body",
    "malformed",
    "parse_retry_after",
    "raise_transport_error",
    "status_error",
    "transport_error",
]


def transport_error(exc: Exception, *, timeout: str = Reason.TIMEOUT_FIRST_TOKEN) -> Exception:
    """An httpx/timeout failure of the upstream call as the GatewayError for it.

    ``timeout`` names what a read or deadline timeout was waiting for (a
    connect timeout names itself). Anything else is returned as it is. The
    message says what happened, never the exception's text, which may carry an
    address or what the upstream sent.
    """
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, httpx.ConnectTimeout):
        return UpstreamTimeout(
            "the upstream did not accept a connection in time", reason=Reason.CONNECT_TIMEOUT
        )
    if isinstance(exc, httpx.PoolTimeout):
        return UpstreamTimeout(
            "no connection to the upstream became free in time", reason=Reason.POOL_TIMEOUT
        )
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return UpstreamTimeout("the upstream did not answer in time", reason=timeout)
    if isinstance(exc, httpx.ConnectError):
        if _refused(exc):
            return UpstreamUnavailable(
                "could not reach the upstream: connection refused", reason=Reason.CONNECT_REFUSED
            )
        return UpstreamUnavailable(
            f"could not reach the upstream: {_connect_failure(exc)}", reason=Reason.CONNECT_FAILED
        )
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return UpstreamUnavailable(
            "the upstream closed the connection before its answer was complete",
            reason=Reason.CONNECTION_CLOSED,
        )
    if isinstance(exc, httpx.TransportError):
        return UpstreamUnavailable(
            f"could not call the upstream: {type(exc).__name__}", reason=Reason.TRANSPORT_ERROR
        )
    return exc


def raise_transport_error(exc: Exception, *, timeout: str = Reason.TIMEOUT_FIRST_TOKEN) -> None:
    """Re-raise an httpx/timeout failure of the upstream call as a GatewayError."""
    error = transport_error(exc, timeout=timeout)
    if error is exc:
        raise exc
    raise error from exc


def _causes(exc: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(chain) < 8:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _refused(exc: BaseException) -> bool:
    for cause in _causes(exc):
        if isinstance(cause, ConnectionRefusedError):
            return True
        if isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED:
            return True
        # Several addresses tried (asyncio) or a wrapped error: only the text is left.
        text = str(cause).lower()
        if "connection refused" in text or f"[errno {errno.ECONNREFUSED}]" in text:
            return True
    return False


def _connect_failure(exc: BaseException) -> str:
    for cause in _causes(exc):
        if isinstance(cause, socket.gaierror):
            return "the host name did not resolve"
        if isinstance(cause, ssl.SSLError):
            return "the TLS handshake failed"
        if isinstance(cause, OSError) and cause.errno in _UNREACHABLE:
            return "the host is unreachable"
    return "the connection failed"


_UNREACHABLE = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH})

# What of an upstream's error text reaches a client, at most (after redaction).
MESSAGE_LIMIT = 500
_FIELD_LIMIT = 100  # the upstream's error type, code and param

# The statuses that refuse the request itself: the only ones whose text a client sees.
_RELAYED = frozenset({400, 404, 413, 422})


def json_body(body: bytes) -> object:
    """An error body parsed as JSON, or None: not JSON, text in no Unicode, or nested
    absurdly (an upstream's error body is untrusted input)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def clean_field(value: object, redactor: Redactor) -> str | None:
    """An upstream's error type, code or param as a client may see it: a short string
    cleaned of the provider's secrets, or None."""
    return redactor.clean(value, _FIELD_LIMIT) if isinstance(value, str) and value else None


def status_error(
    status: int,
    headers: httpx.Headers,
    redactor: Redactor,
    *,
    message: str = "",
    body: bytes = b"",
    error_type: object = None,
    code: object = None,
    param: object = None,
) -> UpstreamError:
    """What every provider's error parser ends with, once it has read its body.

    ``message`` (the provider's own words, if its body had them; else the start of
    ``body`` as text) reaches the client only for a refusal of the request
    (400, 404, 413, 422), and only cleaned of the provider's secrets and cut to
    ``MESSAGE_LIMIT``. The status picks the error (``errors.upstream_status_error``),
    and the upstream's Retry-After comes along.
    """
    if status in _RELAYED:
        if not message:
            message = body[: MESSAGE_LIMIT * 4].decode("utf-8", "replace").strip()
        message = redactor.clean(message, MESSAGE_LIMIT) if message else f"HTTP {status}"
    return upstream_status_error(
        status,
        message,
        error_type=clean_field(error_type, redactor),
        code=clean_field(code, redactor),
        param=clean_field(param, redactor),
        retry_after=parse_retry_after(headers),
    )


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """The upstream's wait in seconds, clamped to 0..MAX_RETRY_AFTER; None if absent or
    unreadable. ``retry-after-ms`` (OpenAI's) wins; ``Retry-After`` may be an HTTP date."""
    value = headers.get("retry-after-ms")
    if value:
        seconds = _number(value)
        if seconds is not None:
            return clamp_retry_after(seconds / 1000)
    value = headers.get("retry-after")
    if not value:
        return None
    seconds = _number(value)
    if seconds is None:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return clamp_retry_after(seconds)


def _number(value: str) -> float | None:
    try:
        number = float(value.strip())
    except (ValueError, OverflowError):
        return None
    return None if math.isnan(number) else number


def malformed(exc: ValidationError | ValueError) -> UpstreamUnavailable:
    return UpstreamUnavailable(
        f"the upstream sent a malformed answer ({type(exc).__name__})", reason=Reason.MALFORMED
    )
