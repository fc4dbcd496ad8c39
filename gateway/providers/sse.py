"""Upstream server-sent events: bytes in, events out, with the call's deadlines.

One decoder for every provider (framing is not translation): a provider turns
the events into typed chunks (``SSEStream.translate``) and never looks at SSE
text itself.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from gateway.errors import Reason, UpstreamTimeout, UpstreamUnavailable
from gateway.providers.failures import transport_error

_TIMEOUTS = {
    Reason.TIMEOUT_FIRST_TOKEN: "the upstream timed out waiting for the first token",
    Reason.TIMEOUT_IDLE: "the upstream sent nothing for longer than the idle timeout",
    Reason.TIMEOUT_TOTAL: "the upstream took longer than the deployment's total timeout",
}


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__,
# twice the cost, once per event.
@dataclass(slots=True)
class SSEEvent:
    event: str | None
    data: bytes


class SSEDecoder:
    """Incremental decoder of the text/event-stream format (WHATWG HTML §9.2).

    ``id`` and ``retry`` fields are ignored: the gateway never reconnects to an
    upstream mid-stream. Lines end in LF or CRLF.
    """

    __slots__ = ("_data", "_event", "_tail")

    def __init__(self) -> None:
        self._tail = b""
        self._event: str | None = None
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._tail:
            chunk = self._tail + chunk
        lines = chunk.split(b"\n")
        self._tail = lines.pop()
        events: list[SSEEvent] = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    events.append(SSEEvent(self._event, b"\n".join(self._data)))
                self._event, self._data = None, []
                continue
            name, _, value = line.partition(b":")
            if not name:  # a comment (": ping")
                continue
            if value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                self._data.append(value)
            elif name == b"event":
                self._event = value.decode("utf-8", "replace")
        return events

    def close(self) -> list[SSEEvent]:
        """End of input: a last event not followed by a blank line still counts."""
        events = self.feed(b"\n\n") if (self._tail or self._data) else []
        self._tail = b""
        return events


class SSEStream:
    """Events from a body stream, each read bounded by the call's timeouts.

    The first event must arrive within ``first_token`` seconds, each later read
    within ``idle``, and all of it before ``deadline`` (the loop's clock). The
    stream may be read from any task: the read in progress is the one bounded.

    One timer per stream watches the reads, re-armed only when it fires or a
    read needs it sooner, instead of a timeout context per read: on a stream of
    many small chunks that is the difference between ~4 µs and ~0.3 µs a chunk.

    A provider subclasses it to yield its chunks rather than events: ``translate``
    turns an event into the item (None skips the event; StopAsyncIteration ends
    the stream, as ``[DONE]`` does), and ``ended`` is told when the body ends
    before that. Translating here, not in an iterator around this one, saves a
    coroutine per chunk. A failure of the read itself surfaces as a ``GatewayError``.

    One event may become several items: ``translate`` (or ``ended``) hands the
    ones after its first to ``emit``, and they come next, in order, before any
    other event is read; items emitted before a translated end still come out.
    A stream that never emits pays one empty-deque test per item.
    """

    __slots__ = (
        "_deadline",
        "_decoder",
        "_done",
        "_expired",
        "_extras",
        "_first",
        "_idle",
        "_loop",
        "_pending",
        "_raw",
        "_read_started",
        "_reader",
        "_started",
        "_timer",
        "_timer_at",
    )

    def __init__(
        self,
        raw: AsyncIterator[bytes],
        *,
        first_token: float,
        idle: float,
        deadline: float,
    ) -> None:
        self._raw = raw
        self._loop = asyncio.get_running_loop()  # on 3.11 each lookup is a getpid() call
        self._decoder = SSEDecoder()
        self._pending: deque[SSEEvent] = deque()
        self._extras: deque[Any] = deque()  # items emitted, due before the next event
        self._first, self._idle, self._deadline = first_token, idle, deadline
        self._started = False
        self._reader: asyncio.Task[object] | None = None
        self._read_started = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._expired: str | None = None
        self._done = False

    def __aiter__(self) -> SSEStream:
        return self

    def translate(self, event: SSEEvent) -> Any:
        """The item for ``event``; None: nothing for it; StopAsyncIteration: the end."""
        return event

    def ended(self) -> None:
        """The body ended (no translated end came first); raise if that is too early."""

    def emit(self, item: Any) -> None:
        """Queue ``item`` to come after the one ``translate`` returns (or instead of
        none, if it returns None): for an event that makes several items."""
        self._extras.append(item)

    def close(self) -> None:
        """Stop watching: a timer left armed would keep the stream alive until it fires."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._reader = None

    def _expiry(self) -> tuple[float, str]:
        """When the read in progress times out, and the ``Reason`` it then fails with."""
        limit = self._idle if self._started else self._first
        phase = Reason.TIMEOUT_IDLE if self._started else Reason.TIMEOUT_FIRST_TOKEN
        expiry = self._read_started + limit
        if expiry > self._deadline:
            # Named for the total only when it binds clearly (``timeout: 30`` sets all
            # phases alike, and then the phase is the better name).
            tight = expiry - self._deadline > 0.05
            return self._deadline, Reason.TIMEOUT_TOTAL if tight else phase
        return expiry, phase

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(at, self._check)
        self._timer_at = at

    def _check(self) -> None:
        self._timer = None
        if self._reader is None:
            return  # no read in progress; the next read arms the timer again
        loop = self._loop
        expiry, phase = self._expiry()
        if loop.time() >= expiry:
            self._expired = phase
            self._reader.cancel()
        else:
            self._arm(loop, expiry)

    def _failure(self, exc: Exception) -> Exception:
        """A failed read of the body: the connection went mid-answer, or a timeout."""
        if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
            return UpstreamUnavailable(
                "the upstream closed the connection mid-answer", reason=Reason.STREAM_CUT
            )
        phase = Reason.TIMEOUT_IDLE if self._started else Reason.TIMEOUT_FIRST_TOKEN
        return transport_error(exc, timeout=phase)

    async def __anext__(self) -> Any:
        extras = self._extras
        if extras:
            return extras.popleft()
        if self._done:
            raise StopAsyncIteration
        pending = self._pending
        while True:
            if pending:
                self._started = True
                try:
                    item = self.translate(pending.popleft())
                except StopAsyncIteration:
                    self._done = True
                    if extras:
                        return extras.popleft()
                    raise
                if item is not None:
                    return item
                if extras:
                    return extras.popleft()
                continue
            loop = self._loop
            self._read_started = now = loop.time()
            if now >= self._deadline:
                raise UpstreamTimeout(_TIMEOUTS[Reason.TIMEOUT_TOTAL], reason=Reason.TIMEOUT_TOTAL)
            expiry, _ = self._expiry()
            if self._timer is None or self._timer_at > expiry:
                self._arm(loop, expiry)
            self._reader = asyncio.current_task(loop)  # with no loop: a getpid() call on 3.11
            try:
                data = await anext(self._raw)
            except asyncio.CancelledError:
                phase, self._expired = self._expired, None
                if phase is None:
                    raise
                self._reader.uncancel()  # our own timer, not the caller, cancelled it
                raise UpstreamTimeout(_TIMEOUTS[phase], reason=phase) from None
            except StopAsyncIteration:
                self.close()
                pending.extend(self._decoder.close())
                if not pending:
                    self._done = True
                    self.ended()
                    if extras:
                        return extras.popleft()
                    raise
                continue
            except Exception as exc:
                error = self._failure(exc)
                if error is exc:
                    raise
                raise error from exc
            finally:
                self._reader = None
            pending.extend(self._decoder.feed(data))
