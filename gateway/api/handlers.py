"""Errors -> the ingress envelope, in one place (docs/wire-formats.md).

Everything raised on a request ends here: a ``GatewayError`` renders as itself,
FastAPI's validation errors become 400 (never 422), unknown routes and methods
keep their status in the OpenAI envelope, and anything unexpected is a 500
whose details go to the log with the request id, not to the client.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic_core import to_json
from starlette.exceptions import HTTPException
from starlette.responses import Response

from gateway.errors import GatewayError, InvalidRequest, format_loc
from gateway.observability.logging import AccessRecord

log = logging.getLogger("gateway.errors")
_LOC_ROOTS = ("body", "query", "path", "header")


def error_json(exc: GatewayError) -> bytes:
    return to_json({"error": exc.to_dict()})


def error_response(exc: GatewayError, headers: dict[str, str] | None = None) -> Response:
    return Response(
        error_json(exc),
        status_code=exc.status,
        headers={**(headers or {}), **exc.response_headers()},
        media_type="application/json",
    )


def record_error(access: AccessRecord | None, exc: GatewayError) -> None:
    """Put why an upstream call failed on the request's access-log line.

    Called where the error is rendered (the handlers here, a stream's close),
    once a request; the reason is one word of ``errors.Reason``, never text.
    """
    if access is not None and exc.reason is not None:
        access.reason, access.upstream_status = exc.reason, exc.upstream_status


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


class _NotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "not_found"


class _MethodNotAllowed(GatewayError):
    status, type, code = 405, "invalid_request_error", "method_not_allowed"


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    record_error(request.scope.get("gateway.access"), exc)
    return error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(validation_error(list(exc.errors())))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if isinstance(exc.__cause__, GatewayError):
        # FastAPI wraps what fails while it reads a body (a chunked body over the
        # limit: 413) in a 400 of its own; the cause is the real answer.
        record_error(request.scope.get("gateway.access"), exc.__cause__)
        return error_response(exc.__cause__)
    if exc.status_code == 405:
        error: GatewayError = _MethodNotAllowed(f"Method {request.method} is not allowed here.")
    elif exc.status_code == 404:
        error = _NotFound(f"Unknown request URL: {request.method} {request.url.path}.")
    else:
        error = (
            InvalidRequest(str(exc.detail))
            if exc.status_code < 500
            else GatewayError(str(exc.detail))
        )
        error.status = exc.status_code
    return error_response(error, headers=dict(exc.headers or {}))


def internal_error(request_id: str, exc: BaseException) -> Response:
    """A bug: its details go to the log, with the request id; the client gets a 500."""
    log.error("unhandled error request_id=%s", request_id, exc_info=exc)
    return error_response(GatewayError("The gateway had an internal error."))


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Only what escapes the request-context middleware (which answers the rest) ends here.
    access = request.scope.get("gateway.access")
    return internal_error(getattr(access, "request_id", "-"), exc)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
