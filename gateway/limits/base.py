"""The store interface behind the limits, and the values that cross it.

A store keeps keys and usage, and checks limits with ONE atomic call each way:
``admit`` checks and takes rpm, the tpm reservation, a lease and the budget
reservation together; ``settle`` reconciles tokens and cost, releases the
lease and records usage. Two backends implement it with the same semantics:
``embedded`` (one process) and ``redis`` (any number).

One admission may cover several model calls (``Admission.calls``: hedges,
retries that reached an upstream, fan-out models; docs/limits.md, "Several
calls under one admission"): rpm and max_parallel count each call, all or
none; tokens and cost are the calls' totals; the settle takes one
``UsageEvent`` per call that reached an upstream, under the one lease.

Budgets (docs/limits.md, "Budgets"): settled spend and the reservations of
requests in flight are kept apart. A request is admitted while their sum is
below the budget; once settled spend alone reaches it the key is refused for
good (``insufficient_quota``), while reservations alone only delay it (a
retryable 429). A reservation rides on its request's lease: every request of a
key with a budget holds one, so a crashed instance's reservations expire with
its leases instead of holding the budget for ever.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple, Protocol

from gateway.config import Limits
from gateway.errors import GatewayError, QuotaExceeded, RateLimited, TooManyInFlight
from gateway.limits.keys import KeyRecord
from gateway.observability.observer import Observer
from gateway.schemas.admin import AuditEvent, UsageDoc

WINDOW_MS = 60_000
LEASE_TTL_MS = 30_000  # server.lease_ttl_seconds; renewed every third of it


class Admission(NamedTuple):
    """What one admission asks of a key's limits.

    A tuple, not a frozen dataclass: as immutable, and made once per request for
    less than a frozen dataclass's ``__init__`` costs per field.
    """

    key: KeyRecord
    request_id: str
    tokens: int  # the tpm reservation of every call together: prompt estimate + output cap
    cost: float  # the budget reservation of every call together, USD
    # The model calls it covers (at least 1): each counts against rpm and max_parallel.
    calls: int = 1


@dataclass(slots=True)
class LimitsState:
    """Where a key stands against its rpm and tpm once ``admit`` has decided.

    Neutral of any wire format: admission hands it over on the ``Grant`` and on
    a refusal (the error's ``limits``), and the client's ingress renders it at
    the edge (OpenAI's ``x-ratelimit-*`` headers, Anthropic's
    ``anthropic-ratelimit-*``). A limit of None: the key has none. ``used``
    counts this request when it was admitted; a reset is how many ms until the
    oldest use counted leaves the window.
    """

    rpm_limit: int | None
    rpm_used: int
    rpm_reset_ms: float
    tpm_limit: int | None
    tpm_used: int
    tpm_reset_ms: float


@dataclass(slots=True, frozen=True)
class Standing:
    """Where a key stands against all its limits right now, read without taking
    anything (the admin API's ``GET /admin/keys/{id}/quota``). Counted only for
    the limits the key has: a window no admission fills stays at 0. A reset is
    how many ms until the oldest use counted leaves its window (0: none counted).
    """

    requests_used: int
    requests_reset_ms: float
    tokens_used: int
    tokens_reset_ms: float
    in_flight: int
    spent_usd: float  # settled in the budget's current period
    held_usd: float  # reserved by requests in flight, in that period


@dataclass(slots=True)
class Grant:
    """What ``admit`` took, so ``settle`` can give back exactly that."""

    key_id: str
    request_id: str
    tokens: int = 0  # reserved against tpm (0: the key has no tpm)
    bucket: int = -1  # the second the reservation landed in
    cost: float = 0.0  # reserved against the budget, under this admission's ticket
    period: str = ""  # the budget period it was reserved in ("": the key has no budget)
    lease: bool = False  # for max_parallel, and for the budget reservation to ride on
    calls: int = 1  # as admitted: the lease holds this many slots (``lease_names``)
    local: bool = False  # admitted by the per-process fallback while the store was down
    # ... because the store's admit failed: it may have run, its reply lost on the way.
    unsure: bool = False
    limits: LimitsState | None = None  # where the key stands, for the answer's headers


class TokenCounts(NamedTuple):
    """The tokens one call used, in OpenAI's convention (docs/limits.md, "Usage").

    ``input`` is every prompt token: those read from the provider's prompt cache
    (``cache_read``) and written to it (``cache_write``) are parts of it, counted
    apart because they are priced apart. ``output`` includes reasoning tokens.
    A tuple: made once per call, as cheaply as the pair it replaced.
    """

    input: int
    output: int
    cache_read: int = 0
    cache_write: int = 0


@dataclass(slots=True, frozen=True)
class UsageEvent:
    """What one call that reached an upstream used, as ``TokenCounts`` has it:
    ``input_tokens`` includes the cache reads and writes that are also counted apart."""

    model: str
    input_tokens: int
    output_tokens: int
    cost: float
    error: bool
    day: str  # UTC, YYYY-MM-DD
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


class Store(Protocol):
    backend: str
    observer: Observer  # told when the store goes down and comes back
    last_error: str | None  # while it is down, why (for /ready); never a secret

    async def start(self) -> None: ...
    async def aclose(self) -> None: ...
    async def status(self) -> str: ...  # ok | degraded | unavailable

    async def key_by_hash(self, digest: str) -> KeyRecord | None: ...
    async def get_key(self, key_id: str) -> KeyRecord | None: ...
    async def list_keys(self, limit: int, after: str | None) -> tuple[list[KeyRecord], bool]: ...
    async def put_key(self, record: KeyRecord, digest: str | None = None) -> None: ...
    # The admin API's writes: names unique (``KeyNameTaken``), an update one atomic
    # read-modify-write (``change`` may run more than once; None: no such key).
    async def create_key(self, record: KeyRecord, digest: str) -> None: ...
    async def update_key(
        self, key_id: str, change: Callable[[KeyRecord], KeyRecord]
    ) -> KeyRecord | None: ...

    async def admit(self, admission: Admission) -> Grant: ...
    # One event per call that reached an upstream (none: the reservations all come back
    # and nothing is recorded); tpm and the budget are reconciled with their sums.
    async def settle(self, grant: Grant, usages: Sequence[UsageEvent]) -> None: ...
    async def renew(self, grants: list[Grant]) -> None: ...

    async def usage(self, key_id: str) -> UsageDoc: ...
    async def last_used(self, key_id: str) -> datetime | None: ...
    # Where a key stands against its limits now, taking nothing (the admin quota view).
    async def standing(self, key: KeyRecord) -> Standing: ...

    # The audit trail of admin actions (gateway/limits/audit.py): capped, listed newest
    # first after an event id; ``StoreUnavailable`` while the store is down.
    async def record_audit(self, event: AuditEvent) -> None: ...
    async def list_audit(self, limit: int, after: str | None) -> tuple[list[AuditEvent], bool]: ...


def lease_names(ticket: str, calls: int) -> tuple[str, ...]:
    """The lease (and rpm) entries of an admission of ``calls`` calls: one per call, the
    first named by the ticket itself, the others ``<ticket>#2`` ... (as the scripts name
    them), so a window or lease count is a count of calls."""
    if calls == 1:
        return (ticket,)
    return (ticket, *[f"{ticket}#{i}" for i in range(2, calls + 1)])


def budget_period(limits: Limits) -> str:
    """The id of the budget period now falls in: UTC day, month, or all time."""
    if limits.budget_usd is None:
        return ""
    day, month, total = spend_periods()
    return {"day": day, "month": month}.get(limits.budget_period or "total", total)


_periods: tuple[int, tuple[str, str, str]] = (-1, ("", "", ""))


def spend_periods() -> tuple[str, str, str]:
    """Every period a cost settled now counts in, whatever the key's budget is today.

    Cached per UTC day: formatting dates is a measurable cost per request.
    """
    global _periods
    day = int(time.time() // 86400)
    if day != _periods[0]:
        moment = datetime.fromtimestamp(day * 86400, UTC)
        _periods = (day, (moment.strftime("d%Y-%m-%d"), moment.strftime("m%Y-%m"), "total"))
    return _periods[1]


def today() -> str:
    """The UTC day, YYYY-MM-DD."""
    return spend_periods()[0][1:]


# Why admit refused, as both backends report it. BUDGET: settled spend reached the
# budget; BUDGET_HELD: below it, but the reservations of requests in flight fill the rest.
REFUSED_RPM, REFUSED_TPM, REFUSED_TOO_LARGE, REFUSED_PARALLEL = 1, 2, 3, 4
REFUSED_BUDGET, REFUSED_BUDGET_HELD = 5, 6
# More calls in one admission than the key's whole rpm, or its max_parallel: never admitted.
REFUSED_RPM_CALLS, REFUSED_PARALLEL_CALLS = 7, 8
# When a refusal frees depends on requests in flight finishing: ask for a retry soon.
IN_FLIGHT_RETRY_MS = 1000.0


def lease_renew_seconds(lease_ttl_ms: float) -> float:
    """How often leases are renewed: three times per TTL, so one missed renewal is harmless."""
    return lease_ttl_ms / 3000


def refusal(
    reason: int, limits: Limits, admission: Admission, retry_ms: float, state: LimitsState
) -> GatewayError:
    """The error for a refused admission, with Retry-After and where the key stands."""
    error = _refusal(reason, limits, admission, retry_ms)
    error.limits = state
    error.limit = _LIMIT_NAMES[reason]
    return error


# Each refusal by the limit it names (the metrics' ``limit`` label).
_LIMIT_NAMES = {
    REFUSED_RPM: "rpm",
    REFUSED_RPM_CALLS: "rpm",
    REFUSED_TPM: "tpm",
    REFUSED_TOO_LARGE: "tpm",
    REFUSED_PARALLEL: "max_parallel",
    REFUSED_PARALLEL_CALLS: "max_parallel",
    REFUSED_BUDGET: "budget",
    REFUSED_BUDGET_HELD: "budget",
}


def _refusal(reason: int, limits: Limits, admission: Admission, retry_ms: float) -> GatewayError:
    retry = max(1.0, retry_ms / 1000)
    calls = admission.calls
    makes = f" (this request makes {calls} model calls)" if calls > 1 else ""
    if reason == REFUSED_RPM:
        return RateLimited(
            f"Rate limit reached: {limits.rpm} requests per minute{makes}. "
            f"Retry after {math.ceil(retry)}s.",
            retry_after=retry,
        )
    if reason == REFUSED_TPM:
        return RateLimited(
            f"Rate limit reached: {limits.tpm} tokens per minute "
            f"(this request reserves {admission.tokens}). Retry after {math.ceil(retry)}s.",
            retry_after=retry,
        )
    if reason == REFUSED_PARALLEL:
        return TooManyInFlight(
            f"Too many requests in flight: at most {limits.max_parallel} at once for this "
            f"key{makes}.",
            retry_after=retry,
        )
    if reason == REFUSED_RPM_CALLS:
        return QuotaExceeded(
            f"This request makes {calls} model calls, more than the key's whole limit of "
            f"{limits.rpm} requests per minute; ask for fewer models.",
        )
    if reason == REFUSED_PARALLEL_CALLS:
        return QuotaExceeded(
            f"This request makes {calls} model calls at once, more than the key's limit of "
            f"{limits.max_parallel} requests in flight; ask for fewer models.",
        )
    if reason == REFUSED_TOO_LARGE:
        return QuotaExceeded(
            f"This request reserves {admission.tokens} tokens, more than the key's whole "
            f"limit of {limits.tpm} tokens per minute; lower max_tokens.",
        )
    period = limits.budget_period or "total"
    if reason == REFUSED_BUDGET_HELD:
        return RateLimited(
            f"The key's budget of ${limits.budget_usd} per {period} is held by the "
            "reservations of its requests in flight; it frees as they finish. "
            f"Retry after {math.ceil(retry)}s.",
            retry_after=retry,
        )
    return QuotaExceeded(f"The key's budget of ${limits.budget_usd} per {period} is used up.")
