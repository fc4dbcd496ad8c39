"""Gemini API error answers -> the gateway's typed errors.

Google's error body is ``{"error": {"code", "message", "status", "details"}}``
(as a one-item list on some endpoints). ``failures.status_error`` decides what a
client sees, after these readings of it:

- 400 INVALID_ARGUMENT about the input's token count -> code
  ``context_length_exceeded`` (so routing can fall back to a larger model);
  a bad API key also comes as 400 (``ErrorInfo`` reason ``API_KEY_INVALID``):
  it is an ``UpstreamAuthFailed``, like 401 UNAUTHENTICATED and 403
  PERMISSION_DENIED;
- other 400s and 404 NOT_FOUND are relayed with the upstream's message and its
  status in lower case as the code (``model_not_found`` for an unknown model);
- 429 RESOURCE_EXHAUSTED -> ``UpstreamRateLimited`` whose Retry-After is the
  header's, else ``RetryInfo.retryDelay`` from the details;
- 500 INTERNAL, 503 UNAVAILABLE (overloaded), 504 -> ``UpstreamUnavailable``,
  retryable;
- a 404 that is not Google's error object means the URL is wrong (most likely
  a ``base_url`` that is not the bare origin): a 502 that says so.
"""

from __future__ import annotations

import re

import httpx

from gateway.errors import (
    Reason,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamUnavailable,
    clamp_retry_after,
)
from gateway.providers.failures import json_body, status_error
from gateway.providers.redact import Redactor

__all__ = ["error_from_response"]

_TOO_LONG = re.compile(
    r"input token count|exceeds the maximum number of tokens|too many tokens|context length",
    re.IGNORECASE,
)
_KEY_WORDS = re.compile(r"api key (not valid|expired|invalid)", re.IGNORECASE)
_DELAY = re.compile(r"\s*(\d+(?:\.\d*)?)s\s*")


def error_from_response(
    status: int,
    body: bytes,
    headers: httpx.Headers,
    redactor: Redactor,
    *,
    route: str,
) -> UpstreamError:
    parsed = json_body(body)
    if isinstance(parsed, list) and parsed:
        parsed = parsed[0]
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        if status == 404:
            missing = UpstreamUnavailable(
                f"the upstream answered 404 for {route}: is the provider's base_url the "
                "bare origin (https://generativelanguage.googleapis.com)?"
            )
            missing.reason, missing.upstream_status = Reason.UPSTREAM_STATUS, status
            return missing
        return status_error(status, headers, redactor, body=body)

    message = error.get("message")
    message = message.strip() if isinstance(message, str) else ""
    google_status = error.get("status")
    details = error.get("details")
    details = details if isinstance(details, list) else []
    if status == 400 and (_bad_key(details) or _KEY_WORDS.search(message)):
        failed = UpstreamAuthFailed(f"the upstream refused the gateway's credentials ({status})")
        failed.reason, failed.upstream_status = Reason.UPSTREAM_STATUS, status
        return failed
    code = google_status.lower() if isinstance(google_status, str) else None
    if status == 400 and _TOO_LONG.search(message):
        code = "context_length_exceeded"
    elif status == 404 and "models/" in message:
        code = "model_not_found"
    result = status_error(status, headers, redactor, message=message, body=body, code=code)
    if status == 429 and result.retry_after is None:
        result.retry_after = clamp_retry_after(_retry_delay(details))
    return result


def _bad_key(details: list[object]) -> bool:
    for detail in details:
        if isinstance(detail, dict):
            reason = detail.get("reason")
            if isinstance(reason, str) and reason.startswith("API_KEY_"):
                return True
    return False


def _retry_delay(details: list[object]) -> float | None:
    """``RetryInfo.retryDelay`` (a protobuf Duration in JSON: ``"37s"``, ``"1.5s"``)."""
    for detail in details:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith(".RetryInfo"):
            delay = detail.get("retryDelay")
            match = _DELAY.fullmatch(delay) if isinstance(delay, str) else None
            if match:
                return float(match.group(1))
    return None
