"""Upstream server-sent events: bytes in, events out, with the call's deadlines.

One decoder for every provider (framing is not translation): a provider turns
the events into typed chunks and never looks at SSE text itself.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from gateway.errors import UpstreamTimeout


@dataclass(slots=True, frozen=True)
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
    timeouts are per read, so the stream may be read from any task.
    """

    __slots__ = ("_deadline", "_decoder", "_first", "_idle", "_pending", "_raw", "_started")

    def __init__(
        self,
        raw: AsyncIterator[bytes],
        *,
        first_token: float,
        idle: float,
        deadline: float,
    ) -> None:
        self._raw = raw
        self._decoder = SSEDecoder()
        self._pending: deque[SSEEvent] = deque()
        self._first, self._idle, self._deadline = first_token, idle, deadline
        self._started = False

    def __aiter__(self) -> SSEStream:
        return self

    async def __anext__(self) -> SSEEvent:
        pending = self._pending
        while not pending:
            loop = asyncio.get_running_loop()
            budget = min(self._idle if self._started else self._first, self._deadline - loop.time())
            if budget <= 0:
                raise UpstreamTimeout(
                    "the upstream took longer than the deployment's total timeout"
                )
            try:
                async with asyncio.timeout(budget):
                    data = await anext(self._raw)
            except TimeoutError:
                phase = "an idle gap" if self._started else "the first token"
                raise UpstreamTimeout(f"the upstream timed out waiting for {phase}") from None
            except StopAsyncIteration:
                pending.extend(self._decoder.close())
                if not pending:
                    raise
                break
            pending.extend(self._decoder.feed(data))
        self._started = True
        return pending.popleft()
