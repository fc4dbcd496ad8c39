"""A client that leaves before its answer is complete: what the server tells the app.

uvicorn drops writes to a closed connection silently, and an app learns of a
disconnect only when it next reads ``receive``. A request waiting on a slow
non-stream upstream reads nothing while it waits, so the server
(gateway/server.py) tells it instead, through two keys of the request's scope:

- ``CLIENT_GONE``: set by the server when the connection ends before the
  response is complete. Its value is the status the access log records: 499
  when the client left before its answer began, 408 when the server gave up on
  a stalled body, 0 when the answer had begun (the status sent stands).
- ``CANCEL_ON_DISCONNECT``: a task the server cancels at that moment, so the
  upstream call it awaits is abandoned (its connection closed) at once. A route
  puts its own task there with ``cancel_on_disconnect()`` only once a
  cancellation is safe: after its admission, inside the ``try`` whose
  ``finally`` settles. Never during the admission, whose store call a
  cancellation could leave with a lease taken and nothing to release it.

Under another server neither key is set; a disconnect is then seen as before,
when ``receive`` says so. docs/architecture.md ("Disconnects") has the whole story.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from typing import Any

from starlette.requests import ClientDisconnect

CLIENT_GONE = "gateway.client_gone"
CANCEL_ON_DISCONNECT = "gateway.cancel_on_disconnect"

# The scope of the request this task serves, set by the request-context middleware:
# a route's only way to its scope (its one parameter is its admitted call).
_scope: ContextVar[dict[str, Any]] = ContextVar("gateway_request_scope")


def bind(scope: dict[str, Any]) -> None:
    """Make ``scope`` the current task's request (each request runs in its own task)."""
    _scope.set(scope)


def cancel_on_disconnect(scope: dict[str, Any] | None = None) -> None:
    """Have the server cancel the current task if the client leaves from now on.

    Raises ``ClientDisconnect`` if it already has. ``scope`` defaults to the
    request ``bind`` named for this task; without either, it does nothing.
    """
    if scope is None:
        scope = _scope.get(None)
        if scope is None:
            return
    if CLIENT_GONE in scope:
        raise ClientDisconnect
    scope[CANCEL_ON_DISCONNECT] = asyncio.current_task()
