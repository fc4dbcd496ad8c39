"""The request context, as pure ASGI middleware (no ``BaseHTTPMiddleware`` on the hot path).

For every HTTP request it settles the request id (the client's ``x-request-id``
when it is sane, else a new one) and echoes it, picks the codec of the
request's ingress by its path (gateway/ingress/) and leaves it in the scope,
adds what the request's admission and routing set (the rate-limit headers the
codec renders from the admission's ``LimitsState``, ``x-gateway-served-by``)
to whatever answer it gets, success or error, refuses bodies over
``max_body_bytes`` with 413 before anything parses them, answers an
unexpected error with the 500 in the ingress's envelope (logged once, with the
request id), and writes the one access-log line when the response is done.

A client that leaves before its answer is complete is an outcome, not an error
(docs/architecture.md, "Disconnects"): no traceback, no ERROR line, the access
line says ``outcome=client_disconnect`` with status 499 (or the status already
sent, when the answer had begun). The server tells it through the scope
(gateway/disconnect.py); under another server, a ``ClientDisconnect`` says it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable

from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import disconnect
from gateway.api.handlers import internal_error
from gateway.disconnect import CANCEL_ON_DISCONNECT, CLIENT_GONE
from gateway.errors import RequestTooLarge
from gateway.ids import new_id
from gateway.ingress import SCOPE_KEY, Codec, codec_for
from gateway.live import Live
from gateway.observability.access import AccessRecord
from gateway.observability.logging import REQUEST_ID
from gateway.observability.observer import Observer

_SANE_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"The request body is larger than the limit of {limit} bytes.")


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        live: Live,
        observer: Observer,
        ingress: Callable[[str], Codec] = codec_for,
    ) -> None:
        self.app = app
        self.live = live  # the generation of resources each request runs on
        self.observer = observer  # told when each request starts and ends
        self.ingress = ingress  # a path -> the codec of the ingress that serves it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = b""
        length = -1
        for name, value in scope["headers"]:
            if name == b"x-request-id" and _SANE_ID.fullmatch(value):
                request_id = value
            elif name == b"content-length" and value.isdigit():
                length = int(value)
        if not request_id:
            request_id = new_id().encode()
        id_header = (b"x-request-id", request_id)
        path = scope["path"]
        record = AccessRecord(request_id.decode(), scope["method"], path)
        scope["gateway.access"] = record
        scope[SCOPE_KEY] = codec = self.ingress(path)
        disconnect.bind(scope)
        # The request runs on this generation of the config from start to end, its
        # stream included (gateway/live.py): the routes find it in the request's state.
        live, observer = self.live, self.observer
        resources = live.enter()
        state = scope.get("state")
        if state is None:
            scope["state"] = state = {}
        state["resources"] = resources
        logged_id = REQUEST_ID.set(record.request_id)
        observer.request_started(record)
        started = time.perf_counter()

        # A plain function handing back send's awaitable: one coroutine less per
        # message, which on a stream is one per chunk.
        def send_with_id(message: Message) -> Awaitable[None]:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                headers = [*message.get("headers", ()), id_header]
                if record.served_by is not None:
                    headers.append((b"x-gateway-served-by", record.served_by.encode()))
                if record.limits is not None:
                    headers += codec.rate_headers(record.limits)  # type: ignore[arg-type]
                message["headers"] = headers
            return send(message)

        limit = resources.settings.server.max_body_bytes
        try:
            if length > limit:
                refusal = codec.error_response(_too_large(limit), {"connection": "close"})
                await refusal(scope, receive, send_with_id)
                return
            if length < 0:  # chunked: count as it arrives
                receive = _counting(receive, limit)
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            # Read from a connection already gone (mid-body, most often): nothing was
            # admitted, nothing is spent, and there is no one left to answer.
            scope.setdefault(CLIENT_GONE, 0 if record.status else 499)
        except asyncio.CancelledError:
            if CLIENT_GONE not in scope:
                raise  # a shutdown, not the client
            # The server cancelled the request because its client left: done, not failed.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        except Exception as exc:
            # Answered here, not by the outermost error layer: the 500 then has its
            # request id and its access-log line, and is logged once.
            if record.status:  # the response has begun: nothing left to answer with
                raise
            await internal_error(record.request_id, exc, codec)(scope, receive, send_with_id)
        finally:
            gone = scope.get(CLIENT_GONE)
            if gone is not None:
                if gone:
                    record.status = gone
                record.outcome = "client_timeout" if gone == 408 else "client_disconnect"
            # The task the route left there would tie the scope and the task's context
            # (which holds the scope) into a cycle only the collector could free.
            scope.pop(CANCEL_ON_DISCONNECT, None)
            observer.request_finished(record, time.perf_counter() - started)
            live.leave(resources)
            REQUEST_ID.reset(logged_id)


def _counting(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_large(limit)
        return message

    return counted


# What a page of another origin may read of an answer besides the simple headers.
CORS_EXPOSED = (
    "x-request-id",
    "x-gateway-served-by",
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)


class ModelEndpointsCORS:
    """CORS for ``server.cors_origins`` on the model endpoints (``/v1/...``) only.

    Pages of those origins may call models with an app key; the admin API, /ui
    and the rest stay same-origin, so no other site's page can drive the console
    with a master key it got hold of, nor read the operational endpoints.
    """

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=list(CORS_EXPOSED),
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
