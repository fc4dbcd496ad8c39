"""Fan-out: one request's calls to several models at once (docs/wire-formats.md, "Fan-out").

Each model's call is routed as any call is (its deployments, retries, hedges,
fallbacks); this runs them concurrently. ``answer_all`` waits for every answer;
``Merged`` reads every stream at once and hands their items over as they
arrive, tagged with the model's position, a model's failure being one of them,
so the others go on. Cancelling either cancels every call, and so closes every
upstream connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from gateway.errors import GatewayError, UpstreamUnavailable
from gateway.routing.call import Answered, RoutedCall
from gateway.routing.router import RoutedStream, Router

log = logging.getLogger("gateway.routing")

# The item a reader puts when its stream is over, whatever happened to it.
_END = object()


async def answer_all(router: Router, calls: Sequence[RoutedCall]) -> list[Answered | GatewayError]:
    """Every call's answer or its error, in the order of ``calls``."""

    async def one(call: RoutedCall) -> Answered | GatewayError:
        try:
            answered = await router.run(call)
        except GatewayError as exc:
            return exc
        assert isinstance(answered, Answered)
        return answered

    tasks = [asyncio.ensure_future(one(call)) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()  # only when this was cancelled: the others are done


class Merged:
    """Several routed streams read at once: ``(index, item)`` as each item arrives,
    ``item`` a chunk, or the ``GatewayError`` that ended stream ``index``.

    ``usage[i]`` is what stream ``i`` reported; every stream is closed (``close``)
    by its own reader, however it ended.
    """

    def __init__(self, streams: Sequence[RoutedStream]) -> None:
        self._streams = streams
        self._queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self._readers: list[asyncio.Task[None]] = []
        self._running = len(streams)
        self.usage: list[Any] = [None] * len(streams)

    def start(self) -> None:
        self._readers = [
            asyncio.ensure_future(self._read(i, stream)) for i, stream in enumerate(self._streams)
        ]

    def __aiter__(self) -> Merged:
        return self

    async def __anext__(self) -> tuple[int, Any]:
        while self._running:
            index, item = await self._queue.get()
            if item is _END:
                self._running -= 1
                continue
            return index, item
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop every reader (the client left, or the response is over): each closes its
        stream, and so its upstream connection, before this returns."""
        for reader in self._readers:
            reader.cancel()
        if self._readers:
            await asyncio.shield(asyncio.gather(*self._readers, return_exceptions=True))

    async def _read(self, index: int, stream: RoutedStream) -> None:
        put = self._queue.put_nowait
        error: GatewayError | None = None
        outputs = 0
        left = False
        try:
            opened = await stream.open()
            for item in opened.head:
                outputs += 1
                if item.usage is not None:
                    self.usage[index] = item.usage
                put((index, item))
            async for item in opened.rest:
                outputs += 1
                if item.usage is not None:
                    self.usage[index] = item.usage
                put((index, item))
        except GatewayError as exc:
            error = exc
            put((index, exc))
        except Exception as exc:  # a failure of ours: this model's choice ends with it
            log.exception("fan-out stream %d failed", index)
            error = UpstreamUnavailable(f"the stream failed: {type(exc).__name__}")
            put((index, error))
        except asyncio.CancelledError:
            left = True
            raise
        finally:
            await asyncio.shield(stream.close(error, self.usage[index], outputs, left=left))
            put((index, _END))
