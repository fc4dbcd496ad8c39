"""Exact limits in one process's memory.

The embedded store's limiter, and the Redis store's stand-in while Redis is
unreachable (``fail_mode: open``). ``admit`` never awaits, so on one event loop
it is atomic without a lock. Same windows and the same budget bookkeeping as
the Lua scripts: rpm is an exact sliding minute, tpm a sliding minute of
one-second buckets, leases expire ``lease_ttl_ms`` after their last renewal,
and a budget reservation is held by its request's lease, so it ends when the
request settles or its lease expires, whichever comes first. An admission of
several calls takes one rpm entry and one lease entry per call
(``lease_names``), all or none.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence

from gateway.limits.base import (
    IN_FLIGHT_RETRY_MS,
    LEASE_TTL_MS,
    REFUSED_BUDGET,
    REFUSED_BUDGET_HELD,
    REFUSED_PARALLEL,
    REFUSED_PARALLEL_CALLS,
    REFUSED_RPM,
    REFUSED_RPM_CALLS,
    REFUSED_TOO_LARGE,
    REFUSED_TPM,
    WINDOW_MS,
    Admission,
    Grant,
    LimitsState,
    Standing,
    UsageEvent,
    budget_period,
    lease_names,
    refusal,
    spend_periods,
)
from gateway.limits.keys import KeyRecord


def wall_ms() -> float:
    return time.time() * 1000


class LocalLimiter:
    def __init__(
        self, clock: Callable[[], float] = wall_ms, lease_ttl_ms: float = LEASE_TTL_MS
    ) -> None:
        self._clock = clock
        self._lease_ttl = lease_ttl_ms
        self._requests: dict[str, deque[float]] = {}
        self._tokens: dict[str, dict[int, int]] = {}
        self._leases: dict[str, dict[str, float]] = {}  # key -> ticket -> expiry
        self._spend: dict[tuple[str, str], float] = {}  # (key, period) -> settled USD
        # Budget reservations: key -> ticket -> (period, USD), and their sum per period.
        self._reserved: dict[str, dict[str, tuple[str, float]]] = {}
        self._held: dict[str, dict[str, float]] = {}

    def seed_spend(self, key_id: str, period: str, amount: float) -> None:
        self._spend[(key_id, period)] = amount

    def in_flight(self, key_id: str) -> int:
        leases = self._leases.get(key_id)
        if not leases:
            return 0
        now = self._clock()
        return sum(1 for expiry in leases.values() if expiry > now)

    def held(self, key_id: str, period: str) -> float:
        """USD reserved in ``period`` by the key's requests in flight."""
        return self._held.get(key_id, {}).get(period, 0.0)

    def standing(self, key: KeyRecord) -> Standing:
        """``admit``'s counts without admitting: nothing is taken or dropped."""
        now = self._clock()
        kid = key.id
        window = [t for t in self._requests.get(kid, ()) if t > now - WINDOW_MS]
        second = int(now // 1000)
        buckets = {s: n for s, n in self._tokens.get(kid, {}).items() if s > second - 60}
        period = budget_period(key.limits)
        return Standing(
            requests_used=len(window),
            requests_reset_ms=window[0] + WINDOW_MS - now if window else 0.0,
            tokens_used=sum(buckets.values()),
            tokens_reset_ms=(min(buckets) + 60) * 1000 - now if buckets else 0.0,
            in_flight=self.in_flight(kid),
            spent_usd=self._spend.get((kid, period), 0.0) if period else 0.0,
            held_usd=self.held(kid, period) if period else 0.0,
        )

    def _live_leases(self, kid: str, now: float) -> dict[str, float]:
        """The key's leases, the expired ones dropped with their reservations."""
        leases = self._leases.setdefault(kid, {})
        expired = [ticket for ticket, expiry in leases.items() if expiry <= now]
        for ticket in expired:
            del leases[ticket]
            self._give_back(kid, ticket)
        return leases

    def _give_back(self, kid: str, ticket: str) -> None:
        """End the budget reservation taken under ``ticket``, if there is one (idempotent)."""
        reserved = self._reserved.get(kid)
        if not reserved or ticket not in reserved:
            return
        period, cost = reserved.pop(ticket)
        if not reserved:
            # Nothing in flight: the sums are exactly zero, not what float rounding left.
            del self._reserved[kid]
            self._held.pop(kid, None)
            return
        held = self._held[kid]
        held[period] = max(0.0, held.get(period, 0.0) - cost)

    def admit(self, admission: Admission) -> Grant:
        now = self._clock()
        key = admission.key
        limits = key.limits
        kid = key.id
        calls = admission.calls
        used_requests, requests_reset = 0, 0.0
        used_tokens, tokens_reset = 0, 0.0
        refused, retry_ms = 0, 0.0

        if limits.rpm:
            window = self._requests.setdefault(kid, deque())
            cutoff = now - WINDOW_MS
            while window and window[0] <= cutoff:
                window.popleft()
            used_requests = len(window)
            if used_requests + calls > limits.rpm:
                if calls > limits.rpm:
                    refused = REFUSED_RPM_CALLS
                else:
                    # ``calls`` slots are free once the entry that many places before the
                    # limit leaves the window (one call: the entry rpm places back).
                    refused = REFUSED_RPM
                    retry_ms = window[used_requests + calls - 1 - limits.rpm] + WINDOW_MS - now
            requests_reset = (window[0] if window else now) + WINDOW_MS - now

        second = int(now // 1000)
        if limits.tpm:
            buckets = self._tokens.setdefault(kid, {})
            for old in [s for s in buckets if s <= second - 60]:
                del buckets[old]
            used_tokens = sum(buckets.values())
            if refused:
                pass  # counted for the limits state only
            elif admission.tokens > limits.tpm:
                refused = REFUSED_TOO_LARGE
            elif used_tokens + admission.tokens > limits.tpm:
                refused = REFUSED_TPM
                freed = 0
                for s in sorted(buckets):
                    freed += buckets[s]
                    if used_tokens - freed + admission.tokens <= limits.tpm:
                        retry_ms = (s + 60) * 1000 - now
                        break
            tokens_reset = ((min(buckets) if buckets else second) + 60) * 1000 - now

        period = budget_period(limits)
        # A lease counts the request for max_parallel and carries its budget reservation.
        leased = bool(limits.max_parallel) or (bool(period) and admission.cost > 0)
        if (limits.max_parallel or period) and not refused:
            leases = self._live_leases(kid, now)
            if limits.max_parallel and len(leases) + calls > limits.max_parallel:
                if calls > limits.max_parallel:
                    refused = REFUSED_PARALLEL_CALLS
                else:
                    refused, retry_ms = REFUSED_PARALLEL, IN_FLIGHT_RETRY_MS

        if period and not refused:
            spent = self._spend.get((kid, period), 0.0)
            if spent >= limits.budget_usd:
                refused = REFUSED_BUDGET
            elif spent + self.held(kid, period) >= limits.budget_usd:
                refused, retry_ms = REFUSED_BUDGET_HELD, IN_FLIGHT_RETRY_MS

        if refused:
            state = LimitsState(
                limits.rpm, used_requests, requests_reset, limits.tpm, used_tokens, tokens_reset
            )
            raise refusal(refused, limits, admission, retry_ms, state)

        ticket = admission.request_id
        grant = Grant(key_id=kid, request_id=ticket)
        if calls != 1:
            grant.calls = calls
        if limits.rpm:
            if calls == 1:
                self._requests[kid].append(now)
            else:
                self._requests[kid].extend([now] * calls)
            used_requests += calls
        if limits.tpm:
            buckets = self._tokens[kid]
            buckets[second] = buckets.get(second, 0) + admission.tokens
            grant.tokens, grant.bucket = admission.tokens, second
            used_tokens += admission.tokens
        if leased:
            if calls == 1:
                self._leases[kid][ticket] = now + self._lease_ttl
            else:
                leases = self._leases[kid]
                for name in lease_names(ticket, calls):
                    leases[name] = now + self._lease_ttl
            grant.lease = True
        if period:
            grant.period = period
            if admission.cost > 0:
                self._reserved.setdefault(kid, {})[ticket] = (period, admission.cost)
                held = self._held.setdefault(kid, {})
                held[period] = held.get(period, 0.0) + admission.cost
                grant.cost = admission.cost
        grant.limits = LimitsState(
            limits.rpm, used_requests, requests_reset, limits.tpm, used_tokens, tokens_reset
        )
        return grant

    def settle(self, grant: Grant, usages: Sequence[UsageEvent]) -> None:
        kid = grant.key_id
        if grant.lease:
            leases = self._leases.get(kid)
            if leases is None:
                pass
            elif grant.calls == 1:
                leases.pop(grant.request_id, None)
            else:
                for name in lease_names(grant.request_id, grant.calls):
                    leases.pop(name, None)
        if len(usages) == 1:  # the common case, without the sums' generators
            usage = usages[0]
            tokens, cost = usage.input_tokens + usage.output_tokens, usage.cost
        else:
            tokens = sum(u.input_tokens + u.output_tokens for u in usages)
            cost = sum(u.cost for u in usages)
        if grant.bucket >= 0:
            buckets = self._tokens.get(kid)
            if buckets is not None and grant.bucket in buckets:
                buckets[grant.bucket] = max(0, buckets[grant.bucket] + tokens - grant.tokens)
        # The reservation is replaced by what the calls cost: given back by its ticket,
        # so what admit took comes back exactly, and once however often this runs.
        self._give_back(kid, grant.request_id)
        if cost:
            spend = self._spend
            for period in spend_periods():
                spend[(kid, period)] = spend.get((kid, period), 0.0) + cost

    def renew(self, grants: list[Grant]) -> None:
        expiry = self._clock() + self._lease_ttl
        for grant in grants:
            leases = self._leases.get(grant.key_id)
            if leases and grant.request_id in leases:
                for name in lease_names(grant.request_id, grant.calls):
                    if name in leases:
                        leases[name] = expiry
