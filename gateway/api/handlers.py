"""Errors -> the ingress envelope, in one place (docs/wire-formats.md).

Everything raised on a request ends here: a ``GatewayError`` renders as itself,
FastAPI's validation errors become 400 (never 422), unknown routes and methods
keep their status, and anything unexpected is a 500 whose details go to the
log with the request id, not to the client. Each is written by the codec of the
request's ingress (gateway/ingress/), which the middleware chose by path.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from gateway.errors import GatewayError, InvalidRequest, validation_error
from gateway.ingress import Codec, codec_of
from gateway.observability.access import AccessRecord

log = logging.getLogger("gateway.errors")


def _record(request: Request, exc: GatewayError) -> None:
    access: AccessRecord | None = request.scope.get("gateway.access")
    if access is not None:
        access.failed(exc)


class _NotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "not_found"


class _MethodNotAllowed(GatewayError):
    status, type, code = 405, "invalid_request_error", "method_not_allowed"


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    _record(request, exc)
    return codec_of(request.scope).error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return codec_of(request.scope).error_response(validation_error(list(exc.errors())))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codec = codec_of(request.scope)
    if isinstance(exc.__cause__, GatewayError):
        # FastAPI wraps what fails while it reads a body (a chunked body over the
        # limit: 413) in a 400 of its own; the cause is the real answer.
        _record(request, exc.__cause__)
        return codec.error_response(exc.__cause__)
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
    return codec.error_response(error, headers=dict(exc.headers or {}))


def internal_error(request_id: str, exc: BaseException, codec: Codec) -> Response:
    """A bug: its details go to the log, with the request id; the client gets a 500."""
    log.error("unhandled error request_id=%s", request_id, exc_info=exc)
    return codec.error_response(GatewayError("The gateway had an internal error."))


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Only what escapes the request-context middleware (which answers the rest) ends here.
    access = request.scope.get("gateway.access")
    return internal_error(getattr(access, "request_id", "-"), exc, codec_of(request.scope))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
