"""gateway/api/middleware.py: a client that leaves is an access line, never an error.

The middleware is driven directly with ASGI messages; what the server would
have put in the scope (gateway/disconnect.py) is put there by hand.
"""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Any

import pytest
from starlette.requests import ClientDisconnect, Request

from gateway.api.middleware import RequestContextMiddleware
from gateway.disconnect import CANCEL_ON_DISCONNECT, CLIENT_GONE, cancel_on_disconnect
from gateway.observability.access import AccessLog
from tests.stubs import stub_live


def _scope() -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"x-request-id", b"req-1")],
    }


async def _run(app: Any, scope: dict[str, Any], receive: Any = None) -> tuple[str, list[dict]]:
    stream = io.StringIO()
    access_log = AccessLog(stream)
    access_log.enabled = True
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def nothing() -> dict:
        return {"type": "http.disconnect"}

    middleware = RequestContextMiddleware(app, live=stub_live(1000), observer=access_log)
    await middleware(scope, receive or nothing, send)
    access_log.flush()
    return stream.getvalue(), sent


async def test_a_body_cut_short_is_499_without_an_error(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await Request(scope, receive).body()  # the client is gone: ClientDisconnect

    with caplog.at_level(logging.DEBUG, logger="gateway"):
        line, sent = await _run(app, _scope())
    assert " status=499 " in line
    assert "outcome=client_disconnect" in line
    assert sent == []  # no one to answer
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_request_cancelled_because_its_client_left_is_499() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        cancel_on_disconnect()  # the scope bound by the middleware
        task = scope[CANCEL_ON_DISCONNECT]
        assert task is asyncio.current_task()
        scope[CLIENT_GONE] = 499  # as the server does when the connection is lost
        task.cancel()
        await asyncio.sleep(10)

    scope = _scope()
    line, _ = await _run(app, scope)
    assert " status=499 " in line
    assert "outcome=client_disconnect" in line
    assert CANCEL_ON_DISCONNECT not in scope  # no task left tied to the scope
    assert not asyncio.current_task().cancelling()  # type: ignore[union-attr]


async def test_a_cancellation_for_another_reason_goes_on() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        asyncio.current_task().cancel()  # type: ignore[union-attr]  # e.g. a shutdown
        await asyncio.sleep(10)

    task = asyncio.create_task(_run(app, _scope()))
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_arming_after_the_client_left_raises_client_disconnect() -> None:
    scope = {CLIENT_GONE: 499}
    with pytest.raises(ClientDisconnect):
        cancel_on_disconnect(scope)
    assert CANCEL_ON_DISCONNECT not in scope


async def test_a_stalled_body_refused_by_the_server_is_logged_408() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope[CLIENT_GONE] = 408  # the server answered 408 itself
        await Request(scope, receive).body()

    line, _ = await _run(app, _scope())
    assert " status=408 " in line
    assert "outcome=client_timeout" in line


async def test_a_client_leaving_mid_answer_keeps_the_status_sent() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        scope[CLIENT_GONE] = 0  # the connection was lost after the head went out
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    line, _ = await _run(app, _scope())
    assert " status=200 " in line
    assert "outcome=client_disconnect" in line
