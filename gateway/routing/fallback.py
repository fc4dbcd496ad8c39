"""Fallbacks (``models.<name>.fallbacks`` and ``context_fallbacks``).

When a model's call fails after its own retries on an error that is the
upstream's (unavailable, timed out, rate limited, refused the gateway's
credentials, every deployment busy), the models in ``fallbacks`` are tried in
order, each with its own deployments, strategy and retries (not its own
fallbacks: the chain is the one model's list). An upstream's "prompt too long"
(``context_length_exceeded``) goes down ``context_fallbacks`` instead. Any
other refusal of the request is the client's to fix, and is returned as it
is. The answer names the model that served it (``RoutedCall.served_model``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from typing import TypeVar

from gateway.errors import GatewayError, UpstreamError, UpstreamRejected
from gateway.routing.call import Answered, Opened, RoutedCall, mark
from gateway.routing.deployments import Caller, DeploymentsBusy

T = TypeVar("T")

CONTEXT_LENGTH = "context_length_exceeded"


def _next_models(error: GatewayError) -> str | None:
    """Which list a failure continues down: "fallbacks", "context", or None (none)."""
    if isinstance(error, UpstreamRejected):
        return "context" if error.code == CONTEXT_LENGTH else None
    if isinstance(error, UpstreamError | DeploymentsBusy):
        return "fallbacks"
    return None


class Fallback:
    """A model's calls, and the models that take over when they fail."""

    def __init__(
        self,
        model: str,
        primary: Caller,
        fallbacks: Sequence[tuple[str, Caller]],
        context: Sequence[tuple[str, Caller]],
    ) -> None:
        self.model = model
        self.primary = primary
        self.deployments = primary.deployments
        self._lists = {"fallbacks": tuple(fallbacks), "context": tuple(context)}

    async def answer(self, call: RoutedCall) -> Answered:
        return await self._run(call, lambda caller: caller.answer(call))

    async def open(self, call: RoutedCall, stack: AsyncExitStack) -> Opened:
        return await self._run(call, lambda caller: caller.open(call, stack))

    async def _run(self, call: RoutedCall, attempt: Callable[[Caller], Awaitable[T]]) -> T:
        call.served_model = self.model
        try:
            return await attempt(self.primary)
        except GatewayError as exc:
            error = exc
        tried = {self.model}
        while (which := _next_models(error)) is not None:
            candidates = [
                (name, caller)
                for name, caller in self._lists[which]
                if name not in tried and caller.deployments.serves(call)
            ]
            if not candidates:
                break
            name, caller = candidates[0]
            tried.add(name)
            call.served_model = name
            since = len(call.attempts)
            try:
                return await attempt(caller)
            except GatewayError as exc:
                error = exc
            finally:
                mark(call, since, "fallback")
        raise error
