"""Failed master-key logins, counted per client address, so the key cannot be guessed.

A token bucket per address: ``burst`` failures at once, then one more every
``per_seconds / burst``. While an address has no token left, its admin
requests are refused (429 with Retry-After) before the key they carry is even
compared, so a guess made then learns nothing. A correct key costs no token:
an operator's scripts are never slowed by their own success.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.errors import RateLimited

_MAX_CLIENTS = 10_000  # bounded memory against a spray of addresses


class TooManyFailedLogins(RateLimited):
    code = "too_many_failed_logins"


class FailedLogins:
    def __init__(
        self,
        burst: int = 10,
        per_seconds: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.rate = burst / per_seconds  # tokens regained per second
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, at)

    def __len__(self) -> int:
        """How many addresses it remembers."""
        return len(self._buckets)

    def _tokens(self, client: str, now: float) -> float:
        tokens, at = self._buckets.get(client, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)

    def check(self, client: str) -> None:
        """Raise ``TooManyFailedLogins`` while ``client`` has no failure left to spend."""
        now = self._clock()
        tokens = self._tokens(client, now)
        if tokens < 1:
            wait = (1 - tokens) / self.rate
            raise TooManyFailedLogins(
                "Too many failed admin logins from this address; "
                f"try again in {max(1, round(wait))}s.",
                retry_after=wait,
            )

    def failed(self, client: str) -> None:
        now = self._clock()
        tokens = self._tokens(client, now) - 1
        if client not in self._buckets and len(self._buckets) >= _MAX_CLIENTS:
            self._forget_recovered(now)
        self._buckets[client] = (tokens, now)

    def _forget_recovered(self, now: float) -> None:
        full = [c for c in self._buckets if self._tokens(c, now) >= self.burst]
        for client in full:
            del self._buckets[client]
        if len(self._buckets) >= _MAX_CLIENTS:  # a spray of addresses: start over
            self._buckets.clear()
