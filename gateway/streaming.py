"""Outbound server-sent events: peek before commit, relay, keep alive, close.

``open_stream`` reads the first upstream chunk before any status line is sent,
so a failure that early is still an ordinary HTTP error (and routing can still
retry or fall back). After ``commit_after`` seconds without a chunk the
headers go out anyway and keep-alive comments hold the connection. Once the
status line is out, a failure becomes one final error event in the ingress
format. Cleanup (closing the upstream, settling usage) runs in the response's
own ``finally``: on completion, error, client disconnect and cancellation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sse_starlette.event import ServerSentEvent
from sse_starlette.sse import EventSourceResponse
from starlette.types import Receive, Scope, Send

from gateway.errors import GatewayError, UpstreamUnavailable

log = logging.getLogger("gateway.streaming")

KEEPALIVE_SECONDS = 15.0
COMMIT_AFTER_SECONDS = 5.0


def _ping() -> ServerSentEvent:
    return ServerSentEvent(comment="ping", sep="\n")


class StreamState:
    """How a relayed stream ended; read by the cleanup that settles it."""

    __slots__ = ("chunks", "error", "outcome")

    def __init__(self) -> None:
        self.chunks = 0
        self.outcome: str = "client_disconnect"  # until the relay says otherwise
        self.error: GatewayError | None = None


class SSEResponse(EventSourceResponse):
    """An ``EventSourceResponse`` that always runs ``on_close`` when it is done."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        *,
        on_close: Callable[[], Awaitable[None]],
        headers: dict[str, str] | None = None,
        drain_seconds: float = 0.0,
        keepalive: float = KEEPALIVE_SECONDS,
    ) -> None:
        super().__init__(
            content,
            headers=headers,
            ping=keepalive,
            sep="\n",
            ping_message_factory=_ping,
            shutdown_grace_period=drain_seconds,
        )
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Shielded: a cancelled request must still close upstream and settle.
            await asyncio.shield(self._on_close())


async def open_stream(
    chunks: AsyncIterator[Any],
    *,
    encode: Callable[[Any], bytes | None],
    error_frame: Callable[[GatewayError], bytes],
    done_frame: bytes | None,
    on_close: Callable[[StreamState], Awaitable[None]],
    headers: dict[str, str],
    drain_seconds: float = 0.0,
    commit_after: float = COMMIT_AFTER_SECONDS,
    keepalive: float = KEEPALIVE_SECONDS,
) -> SSEResponse:
    """Peek at the first chunk, then answer with a stream of the rest.

    Raises the upstream's error if it fails before its first chunk and within
    ``commit_after``; the caller still owns ``chunks`` then and must close it.
    """
    first: asyncio.Future[Any] = asyncio.ensure_future(anext(chunks))
    try:
        await asyncio.wait((first,), timeout=commit_after)
    except BaseException:
        first.cancel()
        raise
    if first.done() and not first.cancelled():
        exc = first.exception()
        if exc is not None and not isinstance(exc, StopAsyncIteration):
            raise exc

    state = StreamState()

    async def close() -> None:
        if not first.done():
            first.cancel()
        elif not first.cancelled():
            first.exception()  # retrieved, so asyncio does not log it as lost
        await on_close(state)

    return SSEResponse(
        _relay(first, chunks, state, encode, error_frame, done_frame),
        on_close=close,
        headers=headers,
        drain_seconds=drain_seconds,
        keepalive=keepalive,
    )


async def _relay(
    first: asyncio.Future[Any],
    chunks: AsyncIterator[Any],
    state: StreamState,
    encode: Callable[[Any], bytes | None],
    error_frame: Callable[[GatewayError], bytes],
    done_frame: bytes | None,
) -> AsyncIterator[bytes]:
    try:
        try:
            chunk = await first
        except StopAsyncIteration:
            chunk = None
        while chunk is not None:
            data = encode(chunk)
            if data is not None:
                state.chunks += 1
                yield data
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
        state.outcome = "done"
        if done_frame is not None:
            yield done_frame
    except GatewayError as exc:
        state.outcome, state.error = "error", exc
        yield error_frame(exc)
    except Exception as exc:
        log.exception("stream relay failed")
        error = UpstreamUnavailable(f"the stream failed: {type(exc).__name__}")
        state.outcome, state.error = "error", error
        yield error_frame(error)
