"""The Redis store: keys, limits and usage shared by every worker and instance.

Limits are checked by one Lua script per admission (``admit_v4``) and settled
by one more (``settle_v4``, every call of the admission at once), both on
Redis's clock. Every key a script touches carries the gateway key's hash tag
(``gw:{key_...}:rpm``), so each call lands on one slot of a Redis Cluster.

Redis going away is noticed within ``TIMEOUT_SECONDS`` (never a hang). With
``fail_mode: open`` the gateway goes on: known keys from their last-known
records, limits per process (a ``LocalLimiter``), usage buffered in memory
(bounded) and written when Redis answers again; with ``closed`` requests get
503. Recovery is automatic, also when Redis comes back empty: the scripts are
reloaded on NOSCRIPT and config keys live in the config, not in Redis.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from importlib import resources

from gateway.config import RedisTLS
from gateway.errors import StoreUnavailable
from gateway.limits.audit import RedisAudit
from gateway.limits.base import (
    LEASE_TTL_MS,
    Admission,
    Grant,
    LimitsState,
    Standing,
    UsageEvent,
    budget_period,
    lease_names,
    refusal,
)
from gateway.limits.connect import RedisClient, detect_cluster, redis_client
from gateway.limits.keys import KeyRecord
from gateway.limits.local import LocalLimiter
from gateway.limits.redis_keys import KeyWrites, record_from_redis
from gateway.limits.resp import RedisConnection, RedisDown, ReplyError, Script
from gateway.limits.usage import COUNTERS, UsageTable, usage_doc
from gateway.observability.observer import Observer
from gateway.schemas.admin import AuditEvent, UsageDoc

_COUNTER_INDEX = {counter: i for i, counter in enumerate(COUNTERS)}

log = logging.getLogger("gateway.limits")

TIMEOUT_SECONDS = 0.25
RECOVERY_POLL_SECONDS = 0.5
BUFFER_LIMIT = 100_000
_KEY_LISTS_MAX = 100_000
_DOWN = (RedisDown, OSError)
# Replies of a Redis that is up but cannot serve yet (loading its data, a replica cut
# off from its primary, a cluster reconfiguring): unavailable, not a bug.
_NOT_SERVING = (
    "LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "READONLY", "NOREPLICAS",
)  # fmt: skip


def _why(exc: BaseException) -> str:
    """What /ready and the log say of a failure: Redis's or the socket's words."""
    return str(exc) or type(exc).__name__


def _script(name: str) -> Script:
    return Script.of(resources.files("gateway.limits").joinpath("lua", name).read_text())


class KeySpace:
    """Redis key names. Everything of one gateway key shares the tag ``{key_id}``."""

    def __init__(self, prefix: str = "gw:") -> None:
        self.prefix = prefix
        # The scripts' key lists (admit, settle), built once per gateway key.
        self._lists: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}

    def tagged(self, key_id: str, part: str) -> str:
        return f"{self.prefix}{{{key_id}}}:{part}"

    def admit_keys(self, key_id: str) -> tuple[str, ...]:
        return self._key_lists(key_id)[0]

    def settle_keys(self, key_id: str) -> tuple[str, ...]:
        return self._key_lists(key_id)[1]

    def _key_lists(self, key_id: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        lists = self._lists.get(key_id)
        if lists is None:
            if len(self._lists) >= _KEY_LISTS_MAX:  # bounded: key ids come and go
                self._lists.clear()
            lists = self._lists[key_id] = (
                tuple(self.tagged(key_id, p) for p in ("rpm", "tpm", "lease", "spend")),
                tuple(self.tagged(key_id, p) for p in ("tpm", "lease", "spend", "usage", "meta")),
            )
        return lists

    def by_hash(self, digest: str) -> str:
        return f"{self.prefix}hash:{digest}"

    def name(self, name: str) -> str:
        """The claim on a key name (its own slot: names and keys are many-to-one)."""
        return f"{self.prefix}name:{name}"

    @property
    def index(self) -> str:
        return f"{self.prefix}keys"


class RedisStore:
    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        tls: RedisTLS | None = None,
        fail_open: bool = True,
        prefix: str = "gw:",
        lease_ttl_ms: int = LEASE_TTL_MS,
    ) -> None:
        self._redis: RedisClient = redis_client(url, tls, timeout=TIMEOUT_SECONDS)
        # redis:// names one node, which may be a cluster's: asked once it answers.
        self._detect = isinstance(self._redis, RedisConnection)
        self.last_error: str | None = None  # why it is down, for /ready (never a secret)
        self.keys = KeySpace(prefix)
        self.fail_open = fail_open
        self._admit = _script("admit_v4.lua")
        self._settle = _script("settle_v4.lua")
        self._renew = _script("renew_v1.lua")
        self._standing = _script("standing_v1.lua")
        self._writes = KeyWrites(self)
        self._audit = RedisAudit(self)
        self._lease_ttl = lease_ttl_ms
        self._local = LocalLimiter(lease_ttl_ms=lease_ttl_ms)
        # Settles Redis could not take, with their grants: written back, they still
        # release what the admission reserved (tokens, budget), not only add usage.
        self._buffer: deque[tuple[Grant, Sequence[UsageEvent]]] = deque(maxlen=BUFFER_LIMIT)
        self._down_since: float | None = None
        self._recovery: asyncio.Task[None] | None = None
        self.observer = Observer()  # told when Redis goes down and comes back

    async def _call(self, *args: object) -> object:
        """One command, with loss of Redis noticed (and a 503 for the caller).

        While Redis is known to be down, callers get the 503 at once instead of
        each waiting out a timeout; the recovery task is what tries again.
        """
        if self.degraded:
            raise self._unavailable()
        return await self._guarded(self._redis.execute(*args))

    async def command(self, *args: object) -> object:
        """One command for a neighbour that keeps its own data here (limits/cooldowns.py),
        with the store's handling of a Redis that is down."""
        return await self._call(*args)

    async def _eval(self, script: Script, keys: list[str], args: list[object]) -> object:
        """A script, with loss of Redis noticed as in ``_call``."""
        if self.degraded:
            raise self._unavailable()
        return await self._guarded(self._redis.evalsha(script, keys, args))

    async def _guarded(self, reply: Awaitable[object]) -> object:
        try:
            return await reply
        except _DOWN as exc:
            self._went_down(exc)
            raise self._unavailable() from exc
        except ReplyError as exc:
            if not str(exc).startswith(_NOT_SERVING):
                raise
            self._went_down(exc)  # reachable, but not answering yet
            raise self._unavailable() from exc

    # ------------------------------------------------------------ lifecycle and health

    async def start(self) -> None:
        try:
            await self._probe()
            log.info("redis store: %s", self._redis.name)
            await self._writes.claim_existing_names()
        except _DOWN as exc:
            self._went_down(exc)

    async def _probe(self) -> None:
        """Whether Redis serves (``RedisDown`` if not): a cluster, every slot's primary;
        Sentinel, the primary the sentinels name."""
        if self._detect:
            self._redis = await detect_cluster(self._redis)
            self._detect = False
        await self._redis.ping()

    async def aclose(self) -> None:
        if self._recovery is not None:
            self._recovery.cancel()
        if self._buffer:
            try:
                await self._flush_buffer()
            except (*_DOWN, ReplyError):
                log.error("redis unreachable at shutdown: %d usage records lost", len(self._buffer))
        await self._redis.aclose()

    @property
    def degraded(self) -> bool:
        return self._down_since is not None

    async def status(self) -> str:
        if not self.degraded:
            # Readiness means "store reachable": probe, so an idle instance notices too.
            try:
                await self._probe()
            except _DOWN as exc:
                self._went_down(exc)
        if self.degraded:
            return "degraded" if self.fail_open else "unavailable"
        return "ok"

    def _went_down(self, exc: BaseException) -> None:
        self.last_error = _why(exc)
        if self._down_since is None:
            self._down_since = asyncio.get_running_loop().time()
            mode = (
                "serving known keys on per-process limits"
                if self.fail_open
                else "refusing requests"
            )
            log.error("redis unreachable (%s): %s until it returns", exc, mode)
            self.observer.store_changed(False, time.time())
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.create_task(self._recover(), name="gateway-redis-recovery")

    def _unavailable(self) -> StoreUnavailable:
        return StoreUnavailable("The gateway's store is unavailable; try again shortly.")

    async def _recover(self) -> None:
        while True:
            await asyncio.sleep(RECOVERY_POLL_SECONDS)
            try:
                await self._probe()
                await self._flush_buffer()
            except (*_DOWN, ReplyError) as exc:
                # Reachable but refusing (OOM, LOADING, ...) is still down: keep trying.
                self.last_error = _why(exc)
                log.debug("redis not back yet: %s", exc)
                continue
            down_for = asyncio.get_running_loop().time() - (self._down_since or 0)
            self._down_since = None
            self.last_error = None
            log.warning("redis is back after %.1fs; shared limits resumed", down_for)
            self.observer.store_changed(True, time.time())
            return

    async def _flush_buffer(self) -> None:
        while self._buffer:
            batch = [self._buffer.popleft() for _ in range(min(500, len(self._buffer)))]
            try:
                # Concurrent calls share the connection: one pipelined round trip.
                results = await asyncio.gather(
                    *(
                        self._redis.evalsha(
                            self._settle,
                            self.keys.settle_keys(grant.key_id),
                            _settle_args(grant, usages),
                        )
                        for grant, usages in batch
                    ),
                    return_exceptions=True,
                )
            except BaseException:
                # Cancelled while waiting: which calls ran is unknown; keep them all.
                self._buffer.extendleft(reversed(batch))
                raise
            # Settling twice would count twice: only the calls that failed go back.
            failed = [
                (item, result)
                for item, result in zip(batch, results, strict=True)
                if isinstance(result, BaseException)
            ]
            if failed:
                self._buffer.extendleft(reversed([item for item, _ in failed]))
                raise failed[0][1]

    # ------------------------------------------------------------ keys

    async def key_by_hash(self, digest: str) -> KeyRecord | None:
        key_id = await self._call("GET", self.keys.by_hash(digest))
        return await self.get_key(key_id.decode()) if key_id else None

    async def get_key(self, key_id: str) -> KeyRecord | None:
        raw, last_used = await self._call(
            "HMGET", self.keys.tagged(key_id, "meta"), "record", "last_used_at"
        )
        return None if raw is None else record_from_redis(raw, last_used)

    async def last_used(self, key_id: str) -> datetime | None:
        try:
            value = await self._redis.execute(
                "HGET", self.keys.tagged(key_id, "meta"), "last_used_at"
            )
        except _DOWN:
            return None
        return datetime.fromtimestamp(int(value), UTC) if value else None

    async def list_keys(self, limit: int, after: str | None) -> tuple[list[KeyRecord], bool]:
        start = 0
        if after is not None:
            rank = await self._call("ZRANK", self.keys.index, after)
            if rank is None:
                return [], False
            start = rank + 1
        ids = await self._call("ZRANGE", self.keys.index, start, start + limit)
        records = await asyncio.gather(*(self.get_key(i.decode()) for i in ids[:limit]))
        return [r for r in records if r is not None], len(ids) > limit

    async def put_key(self, record: KeyRecord, digest: str | None = None) -> None:
        stored = record.model_copy(update={"last_used_at": None}).model_dump_json()
        # Record first, then the ways to find it: a crash between leaves no dangling id.
        await self._call("HSET", self.keys.tagged(record.id, "meta"), "record", stored)
        if digest is not None:
            await self._call("SET", self.keys.by_hash(digest), record.id)
            await self._call(
                "ZADD", self.keys.index, "NX", record.created_at.timestamp(), record.id
            )

    # The admin API's writes: gateway/limits/redis_keys.py.

    async def create_key(self, record: KeyRecord, digest: str) -> None:
        await self._writes.create(record, digest)

    async def update_key(
        self, key_id: str, change: Callable[[KeyRecord], KeyRecord]
    ) -> KeyRecord | None:
        return await self._writes.update(key_id, change)

    # ------------------------------------------------------------ limits

    async def admit(self, admission: Admission) -> Grant:
        if self.degraded:
            return self._admit_locally(admission)
        limits = admission.key.limits
        period = budget_period(limits)
        try:
            answer = await self._redis.evalsha(
                self._admit,
                self.keys.admit_keys(admission.key.id),
                [
                    limits.rpm or 0,
                    limits.tpm or 0,
                    limits.max_parallel or 0,
                    repr(float(limits.budget_usd or 0)),
                    admission.tokens,
                    repr(float(admission.cost)),
                    admission.request_id,
                    self._lease_ttl,
                    period,
                    admission.calls,
                ],
            )
        except (*_DOWN, ReplyError) as exc:  # refusing writes (OOM, ...) is down too
            self._went_down(exc)
            grant = self._admit_locally(admission)
            # The script may have run and only its reply been lost: the settle then gives
            # back the lease and budget Redis holds under this ticket (a tpm reservation
            # leaves the window within the minute).
            grant.unsure = True
            return grant
        refused, retry_ms, used_req, req_reset, used_tok, tok_reset, bucket = answer
        state = LimitsState(limits.rpm, used_req, req_reset, limits.tpm, used_tok, tok_reset)
        if refused:
            raise refusal(refused, limits, admission, retry_ms, state)
        grant = Grant(
            key_id=admission.key.id,
            request_id=admission.request_id,
            calls=admission.calls,
            limits=state,
        )
        if limits.tpm:
            grant.tokens, grant.bucket = admission.tokens, bucket
        # As admit_v4 decides: a lease for max_parallel, or for a reservation to ride on.
        if limits.max_parallel or (period and admission.cost > 0):
            grant.lease = True
        if period:
            grant.period = period
            if admission.cost > 0:
                grant.cost = admission.cost
        return grant

    def _admit_locally(self, admission: Admission) -> Grant:
        if not self.fail_open:
            raise self._unavailable()
        grant = self._local.admit(admission)
        grant.local = True
        return grant

    async def settle(self, grant: Grant, usages: Sequence[UsageEvent]) -> None:
        if grant.local:
            self._local.settle(grant, usages)
            # What it took was local; only its usage is Redis's (and, if unsure, what a
            # lost admit may have taken there).
            grant = Grant(
                key_id=grant.key_id,
                request_id=grant.request_id,
                calls=grant.calls,
                unsure=grant.unsure,
            )
        if self.degraded:
            self._buffer.append((grant, tuple(usages)))
            return
        try:
            await self._redis.evalsha(
                self._settle, self.keys.settle_keys(grant.key_id), _settle_args(grant, usages)
            )
        except (*_DOWN, ReplyError) as exc:
            self._went_down(exc)
            # Neither the usage nor the release of the reservation may be lost.
            self._buffer.append((grant, tuple(usages)))

    async def renew(self, grants: list[Grant]) -> None:
        local = [g for g in grants if g.local]
        if local:
            self._local.renew(local)
        by_key: dict[str, list[str]] = {}
        for grant in grants:
            if not grant.local and grant.lease:
                by_key.setdefault(grant.key_id, []).extend(
                    lease_names(grant.request_id, grant.calls)
                )
        if not by_key or self.degraded:
            return
        try:
            await asyncio.gather(
                *(
                    self._redis.evalsha(
                        self._renew,
                        [self.keys.tagged(key_id, "lease")],
                        [self._lease_ttl, *tickets],
                    )
                    for key_id, tickets in by_key.items()
                )
            )
        except _DOWN as exc:
            self._went_down(exc)

    async def standing(self, key: KeyRecord) -> Standing:
        """Read by one script of admit's keys, so every count is of one moment."""
        period = budget_period(key.limits)
        reply = await self._eval(self._standing, list(self.keys.admit_keys(key.id)), [period])
        used_req, req_reset, used_tok, tok_reset, in_flight, spent, held = reply  # type: ignore[misc]
        return Standing(
            int(used_req), float(req_reset), int(used_tok), float(tok_reset), int(in_flight),
            float(spent), float(held),
        )  # fmt: skip

    # ------------------------------------------------------------ usage

    async def usage(self, key_id: str) -> UsageDoc:
        flat = await self._call("HGETALL", self.keys.tagged(key_id, "usage"))
        rows: dict[tuple[str, str], list[float]] = {}
        for field, value in zip(flat[::2], flat[1::2], strict=True):
            day, rest = field.decode().split("|", 1)
            model, counter = rest.rsplit("|", 1)
            index = _COUNTER_INDEX.get(counter)
            if index is None:
                continue  # a counter of a later version, written by one of its instances
            row = rows.setdefault((day, model), [0, 0, 0, 0.0, 0, 0, 0])
            row[index] = float(value) if counter == "cost_usd" else int(value)
        return usage_doc(key_id, [(day, model, *c) for (day, model), c in rows.items()])

    # ------------------------------------------------------------ audit (limits/audit.py)

    async def record_audit(self, event: AuditEvent) -> None:
        await self._audit.record(event)

    async def list_audit(self, limit: int, after: str | None) -> tuple[list[AuditEvent], bool]:
        return await self._audit.list(limit, after)


def _settle_args(grant: Grant, usages: Sequence[UsageEvent]) -> list[object]:
    """settle_v4's arguments. A cost counts in the day and month it was spent (the
    event's day), also when written back later."""
    if len(usages) == 1:  # the common case: the script prices its one row itself
        usage = usages[0]
        return [
            grant.request_id,
            grant.calls if grant.lease or grant.unsure else 0,
            grant.bucket,
            usage.input_tokens + usage.output_tokens - grant.tokens if grant.bucket >= 0 else 0,
            1 if grant.period or grant.unsure else 0,
            -1,
            usage.day,
            usage.model,
            1,
            usage.input_tokens,
            usage.output_tokens,
            repr(float(usage.cost)),
            1 if usage.error else 0,
            usage.cache_read_tokens,
            usage.cache_write_tokens,
        ]
    tokens = 0
    spent: dict[str, float] = {}
    table = UsageTable()
    for usage in usages:
        tokens += usage.input_tokens + usage.output_tokens
        if usage.cost > 0:
            for period in (f"d{usage.day}", f"m{usage.day[:7]}", "total"):
                spent[period] = spent.get(period, 0.0) + usage.cost
        table.add(grant.key_id, usage)
    args: list[object] = [
        grant.request_id,
        grant.calls if grant.lease or grant.unsure else 0,
        grant.bucket,
        tokens - grant.tokens if grant.bucket >= 0 else 0,
        1 if grant.period or grant.unsure else 0,
        len(spent),
    ]
    for period, usd in spent.items():
        args += (period, repr(float(usd)))
    for _, day, model, requests, tokens_in, tokens_out, usd, *rest in table.rows():
        args += (day, model, requests, tokens_in, tokens_out, repr(float(usd)), *rest)
    return args
