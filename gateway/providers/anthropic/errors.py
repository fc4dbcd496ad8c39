"""Anthropic's error answers and stream ``error`` events -> the gateway's typed errors.

Anthropic's error body is ``{"type": "error", "error": {"type", "message"},
"request_id"}``; its types and statuses: ``invalid_request_error`` 400,
``authentication_error`` 401, ``billing_error`` 402, ``permission_error`` 403,
``not_found_error`` 404, ``request_too_large`` 413, ``rate_limit_error`` 429,
``api_error`` 500, ``timeout_error`` 504, ``overloaded_error`` 529.

The status decides the error (``failures.status_error``): a refusal of the
request (400, 404, 413) relays Anthropic's message cleaned of the provider's
secrets, a too-long prompt with code ``context_length_exceeded`` and a
content-filter block with code ``content_filter``; 401/403 is the gateway's
key (``UpstreamAuthFailed``); 429 comes with its Retry-After; 500, 529 and the
rest are ``UpstreamUnavailable``, which routing may retry.

A stream's ``error`` event (after a 200) is mapped by its type the same way,
with ``Reason.ERROR_EVENT``.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from gateway.errors import (
    Reason,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.providers.failures import MESSAGE_LIMIT, clean_field, json_body, status_error
from gateway.providers.redact import Redactor

__all__ = ["error_from_event", "error_from_response"]

# "prompt is too long: 208310 tokens > 200000 maximum"; "input length and `max_tokens`
# exceed context limit: 188240 + 21333 > 200000, decrease input length or `max_tokens`".
_TOO_LONG = re.compile(
    r"prompt is too long|input is too long|exceeds? (?:the )?context (?:limit|window)",
    re.IGNORECASE,
)
# "Output blocked by content filtering policy"
_FILTERED = re.compile(r"content filtering", re.IGNORECASE)

# An event's error type -> the status Anthropic answers it with, for the refusals.
_REJECTED = {"invalid_request_error": 400, "not_found_error": 404, "request_too_large": 413}


def _read(body: bytes) -> tuple[str, object, bool]:
    """The error body's message and type, and whether it is Anthropic's error object."""
    parsed = json_body(body)
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict):
            return str(error.get("message") or ""), error.get("type"), True
    return "", None, False


def _code(message: str) -> str | None:
    if _TOO_LONG.search(message):
        return "context_length_exceeded"
    if _FILTERED.search(message):
        return "content_filter"
    return None


def error_from_response(
    status: int, body: bytes, headers: httpx.Headers, redactor: Redactor, *, route: str
) -> UpstreamError:
    """An error answer (status >= 400) of the Messages API -> the gateway error for it.

    A 404 that is not about a model means the route itself is missing, most
    likely a ``base_url`` ending in ``/v1`` (the gateway adds ``/v1/messages``):
    a 502 that says so, not the upstream's "Not Found" relayed as the client's fault.
    """
    message, error_type, structured = _read(body)
    if status == 404 and (not structured or "model" not in message.lower()):
        error: UpstreamError = UpstreamUnavailable(
            f"the upstream answered 404 for {route}: is the provider's base_url the bare "
            "origin (https://api.anthropic.com, without /v1)?"
        )
        error.reason, error.upstream_status = Reason.UPSTREAM_STATUS, status
        return error
    return status_error(
        status,
        headers,
        redactor,
        message=message,
        body=body,
        error_type=error_type,
        code=_code(message) if status == 400 else None,
    )


def error_from_event(event: Any, redactor: Redactor) -> UpstreamError:
    """A stream's ``error`` event (``{"type": "error", "error": {"type", "message"}}``)."""
    error = event.get("error") if isinstance(event, dict) else None
    if not isinstance(error, dict):
        error = {}
    kind = clean_field(error.get("type"), redactor) or "unknown"
    failure: UpstreamError
    status = _REJECTED.get(kind)
    if status is not None:
        message = str(error.get("message") or "") or kind
        failure = UpstreamRejected(
            redactor.clean(message, MESSAGE_LIMIT),
            status=status,
            type=kind,
            code=_code(message) if status == 400 else None,
        )
    elif kind == "rate_limit_error":
        failure = UpstreamRateLimited("the upstream is rate limiting the gateway")
    elif kind in ("authentication_error", "permission_error"):
        failure = UpstreamAuthFailed("the upstream refused the gateway's credentials")
    elif kind == "timeout_error":
        failure = UpstreamTimeout("the upstream timed out mid-answer")
    else:  # overloaded_error, api_error, and what else may come
        failure = UpstreamUnavailable(f"the upstream reported an error mid-answer ({kind})")
    failure.reason = Reason.ERROR_EVENT
    return failure
