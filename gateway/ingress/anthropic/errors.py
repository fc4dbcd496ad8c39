"""The gateway's errors in Anthropic's envelope: ``{"type": "error", "error": {"type", "message"}}``.

The status stays the gateway's (docs/wire-formats.md, "Errors"); the ``type`` is
Anthropic's name for that status, which is what its SDKs and clients branch on
besides the status: ``invalid_request_error`` (400 and other 4xx),
``authentication_error`` 401, ``permission_error`` 403, ``not_found_error`` 404,
``request_too_large`` 413, ``rate_limit_error`` 429, ``api_error`` 500 and 502,
``overloaded_error`` 503 and 529, ``timeout_error`` 504 and 408.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import GatewayError

__all__ = ["ERROR_TYPES", "error_envelope", "error_type"]

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(error: GatewayError) -> str:
    """Anthropic's error type for ``error``'s status."""
    status = error.status
    found = ERROR_TYPES.get(status)
    if found is not None:
        return found
    return "invalid_request_error" if status < 500 else "api_error"


def error_envelope(error: GatewayError) -> dict[str, Any]:
    """The envelope as data (also a stream's ``error`` event)."""
    return {"type": "error", "error": {"type": error_type(error), "message": error.message}}
