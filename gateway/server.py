"""How uvicorn serves the app: its httptools protocol, with one write per answer.

uvicorn writes a response's status line and headers the moment the app sends
``http.response.start`` and the body on the next message: two system calls per
answer. On loopback and on virtual machines a write is among the dearest things
the gateway does (it runs the receiver's TCP path and often wakes another CPU),
so the head waits for the rest of the loop turn: an answer whose body follows
in the same turn (every JSON answer, a stream's first event) leaves in one
write. A head whose body comes later goes out on the next turn by itself.

It also hands the app a weak reference to the request's own cycle, whose
``send`` a stream's body frames use to skip the framework's send wrappers
(``SERVER_SEND`` in the scope; see gateway/streaming.py).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.streaming import SERVER_SEND

_HEAD = b"HTTP/1.1 "  # how uvicorn begins every head it writes (also for HTTP/1.0 clients)


class _HeadHoldingTransport:
    """The connection's transport as the protocol sees it; only ``write`` and
    ``close`` differ, everything else is the transport's own."""

    __slots__ = ("_call_soon", "_held", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._call_soon = loop.call_soon
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data.startswith(_HEAD):
            self._held = data
            self._call_soon(self._release)
        else:
            self._transport.write(data)

    def _release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            self._transport.write(held)

    def close(self) -> None:
        # Closing flushes what the transport buffers; what is held here goes first.
        self._release()
        self._transport.close()

    def is_closing(self) -> bool:  # asked on every request: spare it the __getattr__
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through a ``_HeadHoldingTransport``,
    with each request's own ``send`` in its scope."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        held = _HeadHoldingTransport(transport, self.loop)  # type: ignore[arg-type]
        super().connection_made(held)  # type: ignore[arg-type]

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        # The new request's cycle holds this very scope (an upgrade returns before
        # making one); its task has not run yet, so the app sees the key from the start.
        # Held weakly: scope -> cycle -> scope would make every request's cycle garbage
        # for the collector (measured: 10-20% more CPU per request). A weak reference to
        # the cycle, not a WeakMethod of its send: 0.1 against 0.75 µs, on every request.
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:
            self.scope[SERVER_SEND] = weakref.ref(cycle)
