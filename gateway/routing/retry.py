"""Retries of a model's failed calls (``models.routing.retries``), with tenacity.

What is retried: an error the upstream call itself raised and marked
``retryable`` (connect errors, timeouts before the first output, 429, 500-504,
a malformed answer), and for a stream only before its first output: once
``Deployments.open`` has returned, the stream is the client's. A retry goes to
another deployment when one is usable and not tried yet, at once; to the same
one after an exponential backoff with jitter, never sooner than the last
error's ``Retry-After``; a ``Retry-After`` longer than the longest backoff is
not waited out, and the error goes back to the client with it. No attempt starts once the call's deadline would be
passed.

The first attempt runs without tenacity: the calls that succeed at once (nearly
all) make none of its objects.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
)

from gateway.config import Retries
from gateway.errors import GatewayError
from gateway.routing.call import Answered, Opened, RoutedCall, mark
from gateway.routing.deployments import Caller

T = TypeVar("T")


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, GatewayError) and exc.retryable


class Retry:
    """A model's calls, retried when they fail."""

    def __init__(self, inner: Caller, policy: Retries) -> None:
        self.inner = inner
        self.deployments = inner.deployments
        self._policy = policy

    async def answer(self, call: RoutedCall) -> Answered:
        try:
            return await self.inner.answer(call)
        except GatewayError as exc:
            if not exc.retryable or self._policy.attempts < 2:
                raise
            return await self._again(call, exc, lambda: self.inner.answer(call))

    async def open(self, call: RoutedCall, stack: AsyncExitStack) -> Opened:
        try:
            return await self.inner.open(call, stack)
        except GatewayError as exc:
            if not exc.retryable or self._policy.attempts < 2:
                raise
            return await self._again(call, exc, lambda: self.inner.open(call, stack))

    async def _again(
        self, call: RoutedCall, first: GatewayError, attempt: Callable[[], Awaitable[T]]
    ) -> T:
        loop = asyncio.get_running_loop()
        delay = self._delay(call, first, 1)
        if loop.time() + delay > call.deadline or self._too_long(call, first):
            raise first
        await asyncio.sleep(delay)
        retries = len(call.attempts)
        try:
            return await self._retrying(call, attempt)
        finally:
            mark(call, retries, "retry")

    async def _retrying(self, call: RoutedCall, attempt: Callable[[], Awaitable[T]]) -> T:
        policy = self._policy
        loop = asyncio.get_running_loop()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.attempts - 1)
            | stop_before_delay(max(0.0, call.deadline - loop.time()))
            | (lambda state: self._too_long(call, _error_of(state))),
            wait=lambda state: self._delay(call, _error_of(state), state.attempt_number + 1),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        async for step in retrying:
            with step:
                return await attempt()
        raise AssertionError("unreachable: tenacity returns or raises")  # pragma: no cover

    def _too_long(self, call: RoutedCall, error: BaseException | None) -> bool:
        """Whether the next attempt would have to wait out a Retry-After longer than the
        backoff ever waits: the client is better told, with the Retry-After, than held."""
        retry_after = error.retry_after if isinstance(error, GatewayError) else None
        return (
            retry_after is not None
            and retry_after * 1000 > self._policy.max_backoff_ms
            and not self.deployments.has_alternative(call)
        )

    def _delay(self, call: RoutedCall, error: BaseException | None, failures: int) -> float:
        """Seconds before the next attempt, after ``failures`` failed ones."""
        if self.deployments.has_alternative(call):
            return 0.0
        policy = self._policy
        backoff = min(policy.max_backoff_ms, policy.backoff_ms * 2 ** (failures - 1)) / 1000
        backoff *= random.uniform(0.5, 1.0)
        retry_after = error.retry_after if isinstance(error, GatewayError) else None
        return max(backoff, retry_after or 0.0)


def _error_of(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None
