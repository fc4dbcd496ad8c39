"""The one place a request meets its key's quotas: authenticate, admit, settle.

Backend-agnostic: it holds a ``Store`` and the config's static keys. Keys are
cached in-process for at most ``KEY_CACHE_SECONDS`` (a PATCH or DELETE on
another instance is seen within that; on this one at once). While the store is
down (``fail_mode: open``) a cached record is trusted for at most
``server.stale_key_seconds`` after the store last confirmed it, so a key
revoked elsewhere meanwhile stops working within that bound. Leases of
requests in flight are renewed every third of ``server.lease_ttl_seconds`` by
one task, not a timer per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from gateway.config import Limits, Settings
from gateway.errors import GatewayError, InvalidAPIKey, StoreUnavailable
from gateway.ids import new_id
from gateway.limits.base import Admission, Grant, Store, UsageEvent, lease_renew_seconds
from gateway.limits.keys import (
    KeyNameTaken,
    KeyRecord,
    hash_key,
    new_record,
    record_from_config,
    utcnow,
)
from gateway.limits.logins import FailedLogins

log = logging.getLogger("gateway.limits")

KEY_CACHE_SECONDS = 1.0
_CACHE_MAX = 100_000


class ConfigKeyReadOnly(GatewayError):
    status, type, code = 409, "invalid_request_error", "config_key"


class KeyNotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "key_not_found"


class Gatekeeper:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.fail_open = settings.server.fail_mode == "open"
        self._stale_after = settings.server.stale_key_seconds
        self._renew_every = lease_renew_seconds(settings.server.lease_ttl_seconds * 1000)
        started = utcnow()
        self._config = dict(record_from_config(k, started) for k in settings.keys)
        self._config_by_id = {r.id: r for r in self._config.values()}
        self._config_names = {r.name: r.id for r in self._config.values()}
        self.admin_logins = FailedLogins()
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}
        self._in_flight: dict[str, Grant] = {}
        self._renewer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.store.start()
        self.start_renewing()

    def take_over(self, previous: Gatekeeper) -> None:
        """Carry on from ``previous`` (a reload): its failed admin logins, and its cached
        key records, which are what ``fail_mode: open`` serves known keys from while
        the store is down."""
        self.admin_logins = previous.admin_logins
        self._cache = previous._cache

    def start_renewing(self) -> None:
        """Renew the leases of this gatekeeper's requests in flight (its store is open)."""
        self._renewer = asyncio.create_task(self._renew_forever(), name="gateway-lease-renewal")

    async def aclose(self, *, close_store: bool = True) -> None:
        """Stop renewing; close the store unless a reloaded gatekeeper took it over."""
        if self._renewer is not None:
            self._renewer.cancel()
        if close_store:
            await self.store.aclose()

    # ------------------------------------------------------------ the request path

    async def authenticate(self, secret: str) -> KeyRecord:
        digest = hash_key(secret)
        record = self._config.get(digest)
        if record is None:
            record = await self._lookup(digest)
        if record is None:
            raise InvalidAPIKey("Incorrect API key provided.")
        record.check_usable()
        return record

    async def _lookup(self, digest: str) -> KeyRecord | None:
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < KEY_CACHE_SECONDS:
            return cached[1]
        try:
            record = await self.store.key_by_hash(digest)
        except StoreUnavailable:
            # fail_mode open: known keys go on with what we last knew of them, for a
            # bounded time: a revocation on another instance must win in the end.
            if (
                self.fail_open
                and cached is not None
                and cached[1] is not None
                and now - cached[0] < self._stale_after
            ):
                return cached[1]
            raise
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[digest] = (now, record)
        return record

    async def admit(self, key: KeyRecord, tokens: int, cost: float, calls: int = 1) -> Grant:
        """Admit ``calls`` model calls at once, all or none; ``tokens`` and ``cost`` are
        their totals (docs/limits.md, "Several calls under one admission")."""
        if calls < 1:
            raise ValueError(f"an admission covers at least one call, not {calls}")
        # A ticket unique to this admission (client request ids may repeat).
        grant = await self.store.admit(Admission(key, new_id(), tokens, cost, calls))
        if grant.lease:
            self._in_flight[grant.request_id] = grant
        return grant

    async def settle(self, grant: Grant, usages: Sequence[UsageEvent]) -> None:
        """Settle an admission: one event per call that reached an upstream, under its one
        lease. A call that failed before any answer still passes its error event."""
        self._in_flight.pop(grant.request_id, None)
        try:
            await self.store.settle(grant, usages)
        except Exception:
            log.exception("settling usage for key %s failed", grant.key_id)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._renew_every)
            if self._in_flight:
                try:
                    await self.store.renew(list(self._in_flight.values()))
                except Exception:
                    log.exception("renewing leases failed")

    # ------------------------------------------------------------ admin

    def _forget(self) -> None:
        self._cache.clear()

    async def get_key(self, key_id: str) -> KeyRecord:
        record = self._config_by_id.get(key_id)
        if record is not None:
            last = await self.store.last_used(key_id)
            return record.model_copy(update={"last_used_at": last}) if last else record
        found = await self.store.get_key(key_id)
        if found is None:
            raise KeyNotFound(f"No key with id {key_id!r}.", param="id")
        return found

    async def list_keys(self, limit: int, after: str | None) -> tuple[list[KeyRecord], bool]:
        """Config keys first (in config order), then API keys by creation."""
        config_ids = list(self._config_by_id)
        page: list[KeyRecord] = []
        if after is None or after in self._config_by_id:
            start = config_ids.index(after) + 1 if after else 0
            ids = config_ids[start : start + limit]
            page += await asyncio.gather(*(self.get_key(key_id) for key_id in ids))
            if len(page) == limit:
                return page, start + limit < len(config_ids) or bool(
                    (await self.store.list_keys(1, None))[0]
                )
            after = None
        more, has_more = await self.store.list_keys(limit - len(page), after)
        return page + more, has_more

    async def create_key(
        self,
        *,
        name: str,
        models: list[str],
        limits: Limits,
        expires_at: datetime | None,
        metadata: dict,
        log_prompts: bool = False,
    ) -> tuple[str, KeyRecord]:
        if name in self._config_names:
            raise KeyNameTaken(name, self._config_names[name])
        secret, digest, record = new_record(
            name=name,
            models=models,
            limits=limits,
            expires_at=expires_at,
            metadata=metadata,
            log_prompts=log_prompts,
        )
        await self.store.create_key(record, digest)
        return secret, record

    async def update_key(self, key_id: str, change: Callable[[KeyRecord], KeyRecord]) -> KeyRecord:
        """``change`` applied to the key as stored, atomically (it may run more than once)."""
        if key_id in self._config_by_id:
            raise ConfigKeyReadOnly("Keys from the config file are changed in the config file.")

        def checked(record: KeyRecord) -> KeyRecord:
            updated = change(record)
            if updated.name != record.name and updated.name in self._config_names:
                raise KeyNameTaken(updated.name, self._config_names[updated.name])
            return updated

        updated = await self.store.update_key(key_id, checked)
        if updated is None:
            raise KeyNotFound(f"No key with id {key_id!r}.", param="id")
        self._forget()
        return updated

    async def revoke_key(self, key_id: str) -> None:
        if key_id in self._config_by_id:
            raise ConfigKeyReadOnly("Keys from the config file are removed from the config file.")
        await self.update_key(key_id, _revoked)


def _revoked(record: KeyRecord) -> KeyRecord:
    return record if record.revoked_at else record.model_copy(update={"revoked_at": utcnow()})
