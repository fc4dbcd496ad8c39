"""The gateway's error tree.

Everything that can go wrong on a request is raised as a ``GatewayError``
subclass where it is detected, and rendered exactly once at the edge
(``api/handlers.py`` or the final SSE event of a stream)::

    GatewayError
    ├── InvalidRequest           400 invalid_request_error / invalid_value
    ├── RequestTooLarge          413 invalid_request_error / request_too_large
    ├── InvalidAPIKey            401 invalid_request_error / invalid_api_key
    ├── AdminDisabled            401 invalid_request_error / invalid_api_key
    ├── ModelNotAllowed          403 permission_error / model_not_allowed
    ├── ModelNotFound            404 invalid_request_error / model_not_found
    ├── RateLimited              429 rate_limit_error / rate_limit_exceeded
    │   └── TooManyInFlight      429 rate_limit_error / max_parallel_exceeded
    ├── QuotaExceeded            429 insufficient_quota / insufficient_quota
    ├── StoreUnavailable         503 api_error / store_unavailable
    ├── HeadTooLarge             431 invalid_request_error / request_header_fields_too_large
    ├── RequestTimeout           408 invalid_request_error / request_timeout
    ├── TooManyConnections       503 api_error / too_many_connections
    └── UpstreamError            an upstream answered badly or not at all
        ├── UpstreamRejected     400/404/413 (422 -> 400), the upstream's message
        ├── UpstreamAuthFailed   502 api_error / upstream_auth_failed
        ├── UpstreamRateLimited  429 rate_limit_error / upstream_rate_limited
        ├── UpstreamUnavailable  502 api_error / upstream_error
        └── UpstreamTimeout      504 api_error / upstream_timeout

``retryable`` says whether another attempt (same or another deployment) may
succeed; the routing layer reads it, the edge never does. ``reason`` says, in
one word of ``Reason``, why an upstream call failed, and ``upstream_status``
the status the upstream answered with: the access log records both
(docs/operations.md), the client never sees them.
"""

from __future__ import annotations

import math
from typing import Final

# The longest wait a Retry-After may ask for: an upstream's (or a script's) larger,
# infinite or negative value is clamped into 0..MAX_RETRY_AFTER, never an error.
MAX_RETRY_AFTER: Final = 3600.0


class Reason:
    """Why an upstream call failed: the access log's ``reason=`` field, a fixed vocabulary."""

    CONNECT_REFUSED: Final = "connect_refused"  # nothing listens at the upstream's address
    CONNECT_FAILED: Final = "connect_failed"  # DNS, routing or TLS: no connection made
    CONNECT_TIMEOUT: Final = "connect_timeout"
    POOL_TIMEOUT: Final = "pool_timeout"  # every connection to the upstream was busy
    TIMEOUT_FIRST_TOKEN: Final = "timeout_first_token"  # no answer (first event) in time
    TIMEOUT_IDLE: Final = "timeout_idle"  # a stream went silent midway
    TIMEOUT_TOTAL: Final = "timeout_total"  # the deployment's whole-call deadline passed
    CONNECTION_CLOSED: Final = "connection_closed"  # closed before a complete answer
    STREAM_CUT: Final = "stream_cut"  # a stream closed mid-answer
    MALFORMED: Final = "malformed"  # an answer or chunk that does not parse
    UPSTREAM_STATUS: Final = "upstream_status"  # an HTTP error status (upstream_status=N)
    ERROR_EVENT: Final = "error_event"  # an error sent as an event mid-stream
    TRANSPORT_ERROR: Final = "transport_error"  # any other failure of the HTTP exchange


def clamp_retry_after(value: float | None) -> float | None:
    """A wait in seconds within 0..MAX_RETRY_AFTER; None for NaN or what is not a number."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class GatewayError(Exception):
    status: int = 500
    type: str = "api_error"
    code: str | None = "internal_error"
    retryable: bool = False
    reason: str | None = None
    upstream_status: int | None = None
    # A refused admission's ``LimitsState`` (gateway/limits/base.py): where the key
    # stands, which the client's ingress renders as its rate-limit headers.
    limits: object | None = None
    # The limit that refused the admission (rpm, tpm, max_parallel, budget), for metrics.
    limit: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = clamp_retry_after(retry_after) if retry_after is not None else None
        self.headers = dict(headers) if headers else {}
        if reason is not None:
            self.reason = reason

    def response_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.retry_after is not None:
            headers["retry-after"] = str(max(1, math.ceil(self.retry_after)))
        return headers

    def to_dict(self) -> dict[str, object]:
        """The OpenAI error object (the value under ``"error"``)."""
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}


class InvalidRequest(GatewayError):
    status, type, code = 400, "invalid_request_error", "invalid_value"


class RequestTooLarge(GatewayError):
    status, type, code = 413, "invalid_request_error", "request_too_large"

    def response_headers(self) -> dict[str, str]:
        # The rest of the body is never read: without a close, the server would go
        # on reading (and discarding) whatever the client keeps sending.
        return {**super().response_headers(), "connection": "close"}


class InvalidAPIKey(GatewayError):
    status, type, code = 401, "invalid_request_error", "invalid_api_key"


class AdminDisabled(InvalidAPIKey):
    pass


class ModelNotAllowed(GatewayError):
    status, type, code = 403, "permission_error", "model_not_allowed"


class ModelNotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class RateLimited(GatewayError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"


class TooManyInFlight(RateLimited):
    code = "max_parallel_exceeded"


class QuotaExceeded(GatewayError):
    """Budget gone, or a request larger than the whole limit: waiting will not help."""

    status, type, code = 429, "insufficient_quota", "insufficient_quota"

    def response_headers(self) -> dict[str, str]:
        return {**super().response_headers(), "x-should-retry": "false"}


class StoreUnavailable(GatewayError):
    status, type, code = 503, "api_error", "store_unavailable"


# The server's own refusals (gateway/server.py), answered before the app sees a request.


class HeadTooLarge(GatewayError):
    status, type, code = 431, "invalid_request_error", "request_header_fields_too_large"


class RequestTimeout(GatewayError):
    status, type, code = 408, "invalid_request_error", "request_timeout"


class TooManyConnections(GatewayError):
    status, type, code = 503, "api_error", "too_many_connections"


class UpstreamError(GatewayError):
    status, type, code = 502, "api_error", "upstream_error"


class UpstreamRejected(UpstreamError):
    """The upstream refused the request itself; the client must change it."""

    type, code = "invalid_request_error", None

    def __init__(
        self,
        message: str,
        *,
        status: int,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, param=param)
        self.status = 400 if status == 422 else status
        self.type = type or self.type
        self.code = code


class UpstreamAuthFailed(UpstreamError):
    status, type, code = 502, "api_error", "upstream_auth_failed"


class UpstreamRateLimited(UpstreamError):
    status, type, code = 429, "rate_limit_error", "upstream_rate_limited"
    retryable = True


class UpstreamUnavailable(UpstreamError):
    retryable = True


class UpstreamTimeout(UpstreamError):
    status, type, code = 504, "api_error", "upstream_timeout"
    retryable = True


def format_loc(loc: tuple[int | str, ...], skip: tuple[str, ...] = ()) -> str:
    """A pydantic error location as a path: ``models.gpt-4o.deployments[0].weight``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in skip:
            out = f"{out}.{part}" if out else str(part)
    return out


_PASSTHROUGH_STATUSES = frozenset({400, 404, 413, 422})


def upstream_status_error(
    status: int,
    message: str,
    *,
    error_type: str | None = None,
    code: str | None = None,
    param: str | None = None,
    retry_after: float | None = None,
) -> UpstreamError:
    """Map an upstream's HTTP error status to the gateway error for it.

    Only a refusal of the request itself (400/404/413/422) relays the upstream's
    ``message`` (which the caller has already cleaned of secrets); every other
    status gets the gateway's own words, since what a failing server says about
    itself is no business of the client's and may echo what the gateway sent it.
    The error table is in docs/wire-formats.md.
    """
    error: UpstreamError
    if status in _PASSTHROUGH_STATUSES:
        error = UpstreamRejected(message, status=status, type=error_type, code=code, param=param)
    elif status in (401, 403):
        # The provider key is ours, not the client's.
        error = UpstreamAuthFailed(f"the upstream refused the gateway's credentials ({status})")
    elif status == 429:
        error = UpstreamRateLimited(
            "the upstream is rate limiting the gateway (429)", retry_after=retry_after
        )
    elif status == 408:
        error = UpstreamTimeout(f"the upstream timed out ({status})")
    else:
        error = UpstreamUnavailable(f"the upstream failed with status {status}")
    error.reason, error.upstream_status = Reason.UPSTREAM_STATUS, status
    return error


_LOC_ROOTS = ("body", "query", "path", "header")


def validation_error(errors: list[dict]) -> InvalidRequest:
    """The first of pydantic's errors, as a 400 naming the field."""
    first = errors[0]
    param = format_loc(tuple(first.get("loc", ())), skip=_LOC_ROOTS) or None
    kind = first.get("type", "")
    if kind == "missing":
        message = f"Missing required parameter: '{param}'."
    elif kind == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {param}"
    else:
        message = f"Invalid value for '{param}': {first.get('msg', 'invalid')}."
    return InvalidRequest(message, param=param)


class ConfigRefused(GatewayError):
    """A reload's config did not load or could not be set up; the running one stays."""

    status, type, code = 400, "invalid_request_error", "config_invalid"
