"""What routing knows about each deployment right now: in flight, speed, failures.

One ``RoutingState`` per process, made by the lifespan and kept across a config
reload (a deployment is known by its ``served_by`` name, ``provider/model``, so
one that survives the reload keeps its figures). The strategies read it, the
deployment calls write it; nothing here awaits, so a read and the write it
decides are never split by another request.

Cooldowns (docs/configuration.md, ``models.routing.cooldown``): a deployment that
fails ``failures`` times in a row, or answers 429, is skipped for ``seconds``
(a 429's Retry-After when longer), then tried again; while another worker or
instance shares the store, a cooldown one of them starts reaches the others
through the ``CooldownBoard`` (gateway/limits/cooldowns.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from gateway.config import Cooldown
from gateway.errors import GatewayError, UpstreamRateLimited
from gateway.observability.observer import Observer
from gateway.routing.call import Attempt

# The weight of the newest time to first token in the running average: a deployment
# that slows down is seen within a few calls, one slow call does not flip the order.
EWMA_ALPHA = 0.3


class CooldownBoard(Protocol):
    """Where cooldowns are shared between processes: told of each one that starts,
    and read in the background (``RoutingState.merge``); never on a request's path."""

    def publish(self, name: str, until: float) -> None: ...


class DeploymentState:
    """One deployment's live figures, in this process."""

    __slots__ = ("cooldown_until", "failures", "in_flight", "latency")

    def __init__(self) -> None:
        self.in_flight = 0
        self.latency: float | None = None  # EWMA of seconds to the first output
        self.failures = 0  # in a row
        self.cooldown_until = 0.0  # wall clock (time.time), shared across processes

    def cooling(self, now: float) -> bool:
        return self.cooldown_until > now


class RoutingState:
    """Every deployment's ``DeploymentState``, by ``served_by`` name."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._deployments: dict[str, DeploymentState] = {}
        self.clock = clock
        self.board: CooldownBoard | None = None
        self.observer = Observer()  # told of each cooldown started here

    def __getitem__(self, name: str) -> DeploymentState:
        found = self._deployments.get(name)
        if found is None:
            found = self._deployments[name] = DeploymentState()
        return found

    def cooldown_left(self, name: str) -> float:
        """Seconds until deployment ``name`` is tried again, 0 when it is not cooling
        down. Reads only: an unknown name stays unknown (/ready asks it)."""
        found = self._deployments.get(name)
        return max(0.0, found.cooldown_until - self.clock()) if found is not None else 0.0

    def started(self, name: str) -> None:
        self[name].in_flight += 1

    def answered(self, name: str, latency: float) -> None:
        """A call's first output came ``latency`` seconds after it started."""
        state = self[name]
        old = state.latency
        state.latency = latency if old is None else old + EWMA_ALPHA * (latency - old)

    def ended(
        self, name: str, error: GatewayError | None, policy: Cooldown, *, cancelled: bool = False
    ) -> None:
        """A call is over: answered (no ``error``), failed, or given up by the gateway
        (``cancelled``: a losing hedge, a client gone), which says nothing of the
        deployment."""
        state = self[name]
        state.in_flight -= 1
        if cancelled:
            return
        if error is None:
            state.failures = 0
            return
        if not _counts(error):
            return
        state.failures += 1
        seconds = 0.0
        if isinstance(error, UpstreamRateLimited):
            seconds = max(policy.seconds, error.retry_after or 0.0)
        elif state.failures >= policy.failures:
            seconds = policy.seconds
        if seconds:
            self.cool(name, self.clock() + seconds)

    def finish(self, attempt: Attempt, exc: BaseException | None) -> None:
        """Record how ``attempt`` ended (``exc``: how it failed), once."""
        if attempt.ended:
            return
        attempt.ended = True
        attempt.ended_at = time.time()
        target = attempt.target
        if exc is None:
            self.ended(target.name, None, target.cooldown)
        elif isinstance(exc, GatewayError):
            attempt.error = exc
            self.ended(target.name, exc, target.cooldown)
        else:  # cancelled, or a failure of ours: nothing learnt of the deployment
            attempt.cancelled = isinstance(exc, asyncio.CancelledError)
            self.ended(target.name, None, target.cooldown, cancelled=True)

    def cool(self, name: str, until: float) -> None:
        state = self[name]
        if until > state.cooldown_until:
            state.cooldown_until = until
            state.failures = 0  # tried again afresh once the cooldown ends
            if self.board is not None:
                self.board.publish(name, until)
            self.observer.cooled(name, until - self.clock())

    def merge(self, cooldowns: Iterable[tuple[str, float]]) -> None:
        """Cooldowns started elsewhere (another worker or instance), as the board read them."""
        for name, until in cooldowns:
            state = self[name]
            if until > state.cooldown_until:
                state.cooldown_until = until


def _counts(error: GatewayError) -> bool:
    # What says something about the deployment: its own failures, not the client's
    # request being refused (a 400 on one deployment is a 400 on every one).
    return error.retryable or error.code == "upstream_auth_failed"
