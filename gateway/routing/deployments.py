"""A model's deployments, and one call to one of them.

``Deployments`` is the innermost of a model's wrappers (gateway/routing/router.py
composes them): it chooses a deployment by the model's strategy among those that
are usable, calls it once, and keeps ``RoutingState`` told of what happened. A
stream counts as answered once it has produced its first output: that output
and what came before it are read here (``Opened.head``), so every wrapper
above can still retry, hedge or fall back until then, and nothing of routing
runs per chunk after it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from functools import partial
from typing import Any, Protocol

from gateway.errors import InvalidRequest, RateLimited
from gateway.providers.base import CallContext, speaks_messages, supports_embeddings
from gateway.routing.call import Answered, Attempt, Opened, RoutedCall, Target
from gateway.routing.state import RoutingState
from gateway.routing.strategies import Strategy
from gateway.schemas.openai import ChatCompletionChunk, Usage


class DeploymentsBusy(RateLimited):
    """Every deployment of the model is at its ``max_parallel`` in this process."""

    code = "deployments_busy"


def no_embeddings(model: str) -> InvalidRequest:
    return InvalidRequest(f"The model `{model}` does not support embeddings.", param="model")


class Deployments:
    """Choose a usable deployment of one model and call it once."""

    def __init__(self, targets: Sequence[Target], strategy: Strategy, state: RoutingState) -> None:
        self.targets = tuple(targets)
        self.embedders = tuple(t for t in self.targets if supports_embeddings(t.provider))
        self._strategy, self._state = strategy, state
        self.deployments = self  # the innermost of a model's wrappers, as each of them names it
        self._single = len(self.targets) == 1 and self.targets[0].deployment.max_parallel is None

    # ------------------------------------------------------------ choosing

    def choose(self, call: RoutedCall) -> Target:
        """The deployment for the call's next attempt.

        Usable: not at its ``max_parallel``. Preferred: not cooling down and not
        tried yet by this call (a retry goes elsewhere when it can). When every
        usable one is cooling, the one whose cooldown ends first is tried: a
        model is never refused on the gateway's bookkeeping alone.
        """
        if self._single and not call.embeds:
            return self.targets[0]
        if call.embeds and not self.embedders:
            raise no_embeddings(call.served_model or call.model)
        state = self._state
        usable = self._usable(call)
        if not usable:
            raise DeploymentsBusy(
                f"Every deployment of the model `{call.served_model or call.model}` is at "
                "its limit of calls in flight; try again shortly.",
                retry_after=1,
            )
        now = state.clock()
        warm = [t for t in usable if not state[t.name].cooling(now)]
        if not warm:
            return min(usable, key=lambda t: state[t.name].cooldown_until)
        if call.attempts:
            tried = {a.target.name for a in call.attempts}
            fresh = [t for t in warm if t.name not in tried]
            if fresh:
                warm = fresh
        return self._strategy(warm, state)

    def serves(self, call: RoutedCall) -> bool:
        """Whether this model can do what ``call`` asks (embeddings: one deployment embeds)."""
        return bool(self.embedders) or not call.embeds

    def has_alternative(self, call: RoutedCall) -> bool:
        """Whether another attempt would go to a deployment this call has not tried,
        which is not cooling down (and could take the call: ``choose``'s usable)."""
        state = self._state
        now = state.clock()
        tried = {a.target.name for a in call.attempts}
        return any(
            t.name not in tried and not state[t.name].cooling(now) for t in self._usable(call)
        )

    def _usable(self, call: RoutedCall) -> list[Target]:
        """The deployments that may take ``call`` now: that embed, for an embeddings
        call, and are not at their ``max_parallel``."""
        state = self._state
        return [
            t
            for t in (self.embedders if call.embeds else self.targets)
            if t.deployment.max_parallel is None
            or state[t.name].in_flight < t.deployment.max_parallel
        ]

    # ------------------------------------------------------------ calling

    async def answer(self, call: RoutedCall) -> Answered:
        target = self.choose(call)
        attempt = self._start(call, target)
        ctx = self._context(call, target)
        provider = target.provider
        loop = asyncio.get_running_loop()
        started = loop.time()
        native = call.native
        try:
            if call.embeds:
                assert supports_embeddings(provider)  # choose() picked one that embeds
                embedded = await provider.embed(call.request, ctx)  # type: ignore[arg-type]
                tokens = embedded.usage.prompt_tokens
                usage: Usage | None = Usage(prompt_tokens=tokens, total_tokens=tokens)
                answered = Answered(embedded, usage, False, attempt)
            elif native is not None and speaks_messages(provider):
                body, usage = await provider.messages(native.body_for(target.deployment.model), ctx)
                answered = Answered(body, usage, True, attempt)
            else:
                if native is not None and native.refusal is not None:
                    raise native.refusal  # what only the client's own API could carry
                answer = await provider.chat(call.request, ctx)  # type: ignore[arg-type]
                answered = Answered(answer, answer.usage, False, attempt)
        except BaseException as exc:
            self._state.finish(attempt, exc)
            raise
        self._state.answered(target.name, loop.time() - started)
        attempt.usage = answered.usage
        self._state.finish(attempt, None)
        return answered

    async def open(self, call: RoutedCall, stack: AsyncExitStack) -> Opened:
        """The call's stream, read up to its first output; on success its upstream is
        closed by ``stack``, and ``RoutingState.finish`` is the caller's to call when it
        ends."""
        target = self.choose(call)
        attempt = self._start(call, target)
        ctx = self._context(call, target)
        provider = target.provider
        loop = asyncio.get_running_loop()
        started = loop.time()
        native = call.native
        relayed = native is not None and speaks_messages(provider)
        # The provider's stream is entered and closed here rather than through an exit
        # stack of its own, one layer fewer to enter and unwind per stream; ``close`` is
        # set once it is entered.
        close: Callable[[], Awaitable[object]] | None = None
        try:
            upstream: AbstractAsyncContextManager[AsyncIterator[Any]]
            if relayed:
                assert native is not None
                raw = native.body_for(target.deployment.model)
                upstream = provider.messages_stream(raw, ctx)
                produced = _event_produced
            else:
                if native is not None and native.refusal is not None:
                    raise native.refusal
                upstream = provider.stream(call.request, ctx)  # type: ignore[arg-type]
                produced = _chunk_produced
            items = await upstream.__aenter__()
            close = partial(upstream.__aexit__, None, None, None)
            head: list[Any] = []
            while True:
                try:
                    item = await anext(items)
                except StopAsyncIteration:
                    break
                head.append(item)
                if produced(item):
                    break
        except BaseException as exc:
            if close is not None:
                # Shielded: a cancelled attempt (a losing hedge, a client gone) still
                # closes its upstream connection.
                await asyncio.shield(close())
            self._state.finish(attempt, exc)
            raise
        self._state.answered(target.name, loop.time() - started)
        stack.push_async_callback(close)
        return Opened(head, items, relayed, attempt)

    def _start(self, call: RoutedCall, target: Target) -> Attempt:
        attempt = Attempt(target, started=time.time())
        call.attempts.append(attempt)
        self._state.started(target.name)
        return attempt

    @staticmethod
    def _context(call: RoutedCall, target: Target) -> CallContext:
        native = call.native
        return CallContext(
            call.request_id, target.deployment, native.headers if native is not None else None
        )


def _chunk_produced(chunk: ChatCompletionChunk) -> bool:
    """Whether a chunk carries output: text, a tool call, reasoning, a finish or usage;
    not a bare role announcement."""
    if chunk.usage is not None:
        return True
    for choice in chunk.choices:
        if choice.finish_reason is not None:
            return True
        delta = choice.delta
        if delta.content:
            return True
        extra = delta.model_extra
        if extra and any(extra.values()):  # tool calls, reasoning; not OpenAI's "refusal": null
            return True
    return False


# The Messages API's events before the first output: the message and its first block
# announced, and keep-alive pings.
_ANNOUNCEMENTS = frozenset({"message_start", "content_block_start", "ping"})


def _event_produced(event: Any) -> bool:
    return event.event not in _ANNOUNCEMENTS


class Caller(Protocol):
    """What every routing wrapper is, and wraps (gateway/routing/router.py composes
    them per model): one model's calls, answered or opened as a stream.

    ``open`` returns once the stream has produced its first output; its upstream is
    closed by ``stack``. ``deployments`` is the model's innermost wrapper, which
    knows its deployments.
    """

    deployments: Deployments

    async def answer(self, call: RoutedCall) -> Answered: ...

    async def open(self, call: RoutedCall, stack: AsyncExitStack) -> Opened: ...
