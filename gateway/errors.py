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
    └── UpstreamError            an upstream answered badly or not at all
        ├── UpstreamRejected     400/404/413 (422 -> 400), the upstream's message
        ├── UpstreamAuthFailed   502 api_error / upstream_auth_failed
        ├── UpstreamRateLimited  429 rate_limit_error / upstream_rate_limited
        ├── UpstreamUnavailable  502 api_error / upstream_error
        └── UpstreamTimeout      504 api_error / upstream_timeout

``retryable`` says whether another attempt (same or another deployment) may
succeed; the routing layer reads it, the edge never does.
"""

from __future__ import annotations

import math


class GatewayError(Exception):
    status: int = 500
    type: str = "api_error"
    code: str | None = "internal_error"
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after
        self.headers = dict(headers) if headers else {}

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
    """Map an upstream's HTTP error status to the gateway error for it (DESIGN §6)."""
    if status in _PASSTHROUGH_STATUSES:
        return UpstreamRejected(message, status=status, type=error_type, code=code, param=param)
    if status in (401, 403):
        # The provider key is ours, not the client's: never echo the upstream text.
        return UpstreamAuthFailed(f"the upstream refused the gateway's credentials ({status})")
    if status == 429:
        return UpstreamRateLimited(
            f"the upstream is rate limiting: {message}", retry_after=retry_after
        )
    if status == 408:
        return UpstreamTimeout(f"the upstream timed out ({status})")
    return UpstreamUnavailable(f"the upstream failed with status {status}: {message}")
