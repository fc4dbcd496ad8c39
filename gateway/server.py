"""How uvicorn serves the app: its httptools protocol, with the edge's limits and
one write per answer.

**The edge** (docs/operations.md, "The edge's protections"). uvicorn's protocol
takes a request head of any size, any number of header fields, at any pace, and
a body at any pace. This one enforces ``Edge`` (gateway/edge.py, from ``server:``):
a head of at most ``max_head_bytes`` and ``max_header_fields`` (else 431), arriving
within ``head_timeout_seconds`` (else 408); no body read stalled for
``body_timeout_seconds`` (else 408, or just a close once the answer has begun);
idle keep-alive connections closed after ``keepalive_timeout_seconds``; beyond
``max_connections`` open connections, new ones get 503. Refusals are written by
the protocol itself in the OpenAI error envelope, then the connection is
half-closed and what the client still sends is read and dropped for a moment
(so it reads the answer rather than a reset), then closed.

The head's bytes are counted as they arrive (a chunk that would pass the limit
is fed only up to it), never after the parser has buffered them. All timing is
one timer per connection that re-arms itself only when it fires (at most every
``Edge.tick`` seconds): a request costs a clock read per read and a few
attribute writes, never a timer of its own (uvicorn's per-request keep-alive
timer is gone with it).

**A client that leaves** (gateway/disconnect.py). When a connection ends
before its response is complete, the request's scope says so (``CLIENT_GONE``:
the status the access log records) and the task a route put under
``CANCEL_ON_DISCONNECT`` is cancelled, so its upstream call stops at once.

**The framework bypasses** (gateway/fastpath.py). ``HttpProtocol`` is the
edge's protocol with ``ServerBypasses``: a response head waits for the rest of
the loop turn, so head and body leave in one write, and each request finds its
own ``send`` in its scope for a stream's body frames. ``EdgeProtocol`` is the
same without them, what ``protocol_for`` serves when they are switched off.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway import fastpath
from gateway.config import ServerConfig
from gateway.disconnect import CANCEL_ON_DISCONNECT, CLIENT_GONE
from gateway.edge import LINGER_SECONDS, Edge, default_edge

log = logging.getLogger("gateway.server")


def protocol_for(server: ServerConfig) -> functools.partial[EdgeProtocol]:
    """What uvicorn's ``http=`` takes to serve with ``server``'s limits, with the
    framework bypasses or without (picklable, so it also reaches the workers of
    ``--workers N``)."""
    protocol = HttpProtocol if fastpath.enabled(server) else EdgeProtocol
    return functools.partial(protocol, edge=Edge.from_config(server))


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; the protocol answers ``response``."""

    def __init__(self, response: bytes, status: int) -> None:
        self.response, self.status = response, status


# What the connection waits for. IDLE: the first byte of a request (after an answer);
# HEAD: the rest of a head (a new connection starts here); BODY: the rest of a body;
# LINGER: nothing, it was refused and is dropping what still arrives.
_IDLE, _HEAD, _BODY, _LINGER = range(4)


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the edge's limits.

    ``data_received``, ``on_header`` and ``on_response_complete`` replace
    uvicorn's (each is uvicorn's, plus the counting); the rest extends it.
    """

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        edge: Edge | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._edge = edge = edge or default_edge()
        self._max_fields = edge.max_header_fields
        self._time = self.loop.time
        self._state = _HEAD
        self._head_left = edge.max_head_bytes
        self._head_since = self._idle_since = 0.0
        self._last_data = float("-inf")
        self._timer: asyncio.TimerHandle | None = None

    # -- the connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        self._raw: asyncio.Transport = transport  # type: ignore[assignment]
        super().connection_made(self._transport_for(self._raw))
        self._head_since = self._time()  # a new connection's first head is timed from here
        self._timer = self.loop.call_later(self._edge.tick, self._on_timer)
        if len(self.connections) > self._edge.max_connections:
            self._refuse(self._edge.too_many_connections, 503)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            self._client_gone(cycle, 0 if cycle.response_started else 499)
        super().connection_lost(exc)

    def _transport_for(self, transport: asyncio.Transport) -> Any:
        """What the protocol writes through (``ServerBypasses`` holds heads)."""
        return transport

    def _release_held(self) -> None:
        """Write what ``_transport_for``'s transport holds back, before a refusal."""

    def _client_gone(self, cycle: Any, status: int) -> None:
        """The request of ``cycle`` lost its client: say so in its scope (the status the
        access log records), and cancel the task its route asked to be cancelled."""
        scope = cycle.scope
        scope.setdefault(CLIENT_GONE, status)
        cycle.disconnected = True  # its receive now says http.disconnect; its sends go nowhere
        cycle.message_event.set()
        task = scope.get(CANCEL_ON_DISCONNECT)
        if task is not None:
            task.cancel()

    # -- reading

    def data_received(self, data: bytes) -> None:
        now = self._time()
        self._last_data = now
        state = self._state
        if state != _BODY:
            if state == _IDLE:  # the first bytes of the next request
                self._state = _HEAD
                self._head_since = now
            elif state == _LINGER:
                return
            left = self._head_left - len(data)
            if left < 0:
                self._feed_head(data)
                return
            self._head_left = left
        self._feed(data)

    def _feed_head(self, data: bytes) -> None:
        """``data`` would take the head past its limit: feed what fits, and see whether a
        head ended within it (then the rest goes on, a next head on a fresh count)."""
        while True:
            cut, self._head_left = self._head_left, 0
            if cut:
                self._feed(data[:cut])
                data = data[cut:]
            if self._state == _LINGER:
                return
            if self._state != _BODY and not self._head_left:  # still the same head, over
                self._refuse(self._edge.head_too_large, 431)
                return
            if self._state == _BODY:
                self._feed(data)
                return
            left = self._head_left - len(data)  # a request ended; the rest starts the next
            if left >= 0:
                self._head_left = left
                self._feed(data)
                return

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if isinstance(refused, _Refused):
                self._refuse(refused.response, refused.status)
            else:
                self._bad_request()
        except httptools.HttpParserError:
            self._bad_request()
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def handle_websocket_upgrade(self) -> None:
        if self._timer is not None:  # the connection is the WebSocket protocol's from here
            self._timer.cancel()
            self._timer = None
        self._state = _LINGER  # nothing more for this protocol to read or time
        super().handle_websocket_upgrade()

    def _bad_request(self) -> None:
        log.debug("invalid HTTP request from %s", self.client)
        self._refuse(self._edge.bad_request, 400)

    def send_400_response(self, msg: str) -> None:
        self._bad_request()

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        if len(headers) >= self._max_fields:
            raise _Refused(self._edge.too_many_fields, 431)
        name = name.lower()
        # llhttp keeps trailing OWS, which RFC 9110 (section 5.5) excludes from the value.
        value = value.rstrip(b" \t")
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._state = _BODY
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._state = _IDLE
        self._head_left = self._edge.max_head_bytes
        # Idle from here if the answer went out first (a refusal before the body was read).
        self._idle_since = self._last_data
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # uvicorn's, without its keep-alive timer: the connection's timer keeps that time.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle_since = self._time()

    # -- time

    def _on_timer(self) -> None:
        self._timer = None
        transport = self._raw
        if transport.is_closing():
            return
        edge, now, state = self._edge, self._time(), self._state
        if state == _HEAD:
            deadline = self._head_since + edge.head_timeout
            if now >= deadline:
                if self._last_data >= self._head_since:
                    self._refuse(edge.head_too_slow, 408)
                else:  # a connection that never said a word gets no answer
                    transport.close()
                return
        elif state == _BODY:
            cycle = self.cycle
            if cycle is None:  # an upgrade gone wrong; nothing to wait for
                transport.close()
                return
            if self.flow.read_paused or cycle.waiting_for_100_continue:
                self._last_data = now  # the app has not asked for more: not the client's fault
            deadline = self._last_data + edge.body_timeout
            if now >= deadline:
                if cycle.response_started:  # too late to answer: just close
                    if not cycle.response_complete:
                        self._client_gone(cycle, 0)
                    transport.close()
                else:
                    self._refuse(edge.body_too_slow, 408)
                return
        elif state == _LINGER:
            transport.close()
            return
        else:
            cycle = self.cycle
            if self.pipeline or (cycle is not None and not cycle.response_complete):
                deadline = now + edge.tick  # the app is answering: no deadline of ours
            else:
                deadline = self._idle_since + edge.keepalive_timeout
                if now >= deadline:
                    transport.close()
                    return
        self._timer = self.loop.call_at(min(deadline, now + edge.tick), self._on_timer)

    # -- refusing

    def _refuse(self, response: bytes, status: int) -> None:
        """Answer ``response`` and close: half-close, drop what still arrives for
        ``LINGER_SECONDS`` (or until the client closes), then close."""
        transport = self._raw
        if transport.is_closing() or self._state == _LINGER:
            return
        reading_body = self._state == _BODY
        self._state = _LINGER
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started or not reading_body:
                # An answer is under way, or the refusal is about a later, pipelined
                # request: no room for another answer.
                self._client_gone(cycle, 0 if cycle.response_started else 499)
                transport.close()
                return
            self._client_gone(cycle, status)  # this very request is refused
        log.debug("refused %s with %d", self.client, status)
        self._release_held()  # nothing held goes after it
        transport.write(response)
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self.flow.resume_reading()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(LINGER_SECONDS, self._on_timer)


class HttpProtocol(fastpath.ServerBypasses, EdgeProtocol):
    """The edge's protocol with the framework bypasses (gateway/fastpath.py): one
    write per answer, and each request's own ``send`` in its scope."""
