"""Hedged calls (``models.routing: {strategy: hedge, hedge_after_ms}``).

The call starts on one deployment; when it has produced no output within
``hedge_after_ms``, the same call starts on the next deployment, and so on
while deployments are left, every ``hedge_after_ms``. An attempt that fails
before its first output in a way another deployment may not starts the next
one at once; any other failure (the request refused) ends the call. The first attempt to
produce an output (a non-streamed call: to answer) wins; the others are
cancelled, which closes their upstream connections, and settled as calls of
their own (docs/limits.md: a cancelled attempt is billed its prompt).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TypeVar

from gateway.errors import GatewayError
from gateway.routing.call import Answered, Opened, RoutedCall, mark
from gateway.routing.deployments import Caller
from gateway.routing.state import RoutingState

T = TypeVar("T")


class Hedge:
    """A model's calls, hedged across its deployments."""

    def __init__(self, inner: Caller, after_ms: float, state: RoutingState) -> None:
        self.inner = inner
        self.deployments = inner.deployments
        self._after = after_ms / 1000
        self._state = state

    async def answer(self, call: RoutedCall) -> Answered:
        answered, _ = await self._race(call, lambda _: self.inner.answer(call), _no_release)
        return answered

    async def open(self, call: RoutedCall, stack: AsyncExitStack) -> Opened:
        stacks: dict[int, AsyncExitStack] = {}

        async def attempt(n: int) -> Opened:
            own = stacks[n] = AsyncExitStack()
            return await self.inner.open(call, own)

        async def release(n: int, opened: Opened) -> None:
            # A second attempt that produced its output in the same instant as the winner.
            opened.attempt.outputs = len(opened.head)
            self._state.finish(opened.attempt, asyncio.CancelledError())
            opened.attempt.superseded = True
            await stacks[n].aclose()

        opened, n = await self._race(call, attempt, release)
        stack.push_async_callback(stacks[n].aclose)
        return opened

    async def _race(
        self,
        call: RoutedCall,
        attempt: Callable[[int], Awaitable[T]],
        release: Callable[[int, T], Awaitable[None]],
    ) -> tuple[T, int]:
        """The first of the attempts to succeed, and its number."""
        most = len(self.deployments.targets)
        numbers: dict[asyncio.Task[T], int] = {}
        pending: set[asyncio.Task[T]] = set()
        error: BaseException | None = None

        def launch() -> None:
            task = asyncio.ensure_future(attempt(len(numbers)))
            numbers[task] = len(numbers)
            pending.add(task)

        def more() -> bool:
            # Only to a deployment this call has not tried: another call to one that
            # is running it, or failed it, would be a retry without its backoff.
            return len(numbers) < most and self.deployments.has_alternative(call)

        losers = len(call.attempts)  # the attempts before this race are not its to mark
        won = False
        try:
            launch()
            while pending:
                done, _ = await asyncio.wait(
                    pending,
                    timeout=self._after if len(numbers) < most else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:  # nothing yet within the hedge's delay: the next deployment
                    if more():
                        launch()
                    continue
                pending.difference_update(done)
                winners = [t for t in done if t.exception() is None]
                if winners:
                    first, *others = sorted(winners, key=numbers.__getitem__)
                    for other in others:
                        await release(numbers[other], other.result())
                    won = True
                    return first.result(), numbers[first]
                for task in done:
                    error = task.exception()
                    if not (isinstance(error, GatewayError) and error.retryable):
                        raise error  # type: ignore[misc]  # a refusal every deployment would repeat
                if more():  # a failure before any output: the next one at once
                    launch()
            assert error is not None
            raise error
        finally:
            for task in pending:
                task.cancel()
            if pending:
                # Their cleanup (closing connections, settling state) runs before the
                # winner's answer goes on; shielded, so a cancellation of this call
                # still lets it finish.
                await asyncio.shield(asyncio.gather(*pending, return_exceptions=True))
            mark(call, losers + 1, "hedge")
            if won:  # else the whole call was given up: nothing was superseded
                for attempt in call.attempts[losers:]:
                    attempt.superseded = attempt.cancelled


async def _no_release(n: int, answered: Answered) -> None:
    # A second non-streamed answer in the same instant: it is already complete, and
    # settles as the call it was (its usage recorded on its attempt).
    return None
