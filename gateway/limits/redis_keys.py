"""The admin API's writes of keys on Redis: unique names, and updates that lose nothing.

A name is claimed (``key_name_v1``) before a record takes it, so two keys never
share one; a record changes only through ``key_record_v1``, a compare-and-set,
so concurrent changes of one key all land (the store's one pipelined
connection cannot WATCH/MULTI: gateway/limits/resp.py). A name's claim and a
key's record live in different cluster slots, hence two scripts, and an order
that never leaves a duplicate:

- create: claim the name (pending: it expires by itself if the writer dies),
  write the record, confirm the claim (permanent);
- rename: claim the new name, compare-and-set the record, confirm the new
  claim, release the old one. A permanent claim whose key has another name is
  what a writer that died before releasing left, and is taken over.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING

from gateway.errors import StoreUnavailable
from gateway.limits.keys import KeyNameTaken, KeyRecord
from gateway.limits.resp import ReplyError, Script

if TYPE_CHECKING:
    from gateway.limits.redis import RedisStore

log = logging.getLogger("gateway.limits")

# A name claim not confirmed within this (its writer died) is free again.
_PENDING_CLAIM_MS = 30_000
_WRITE_ATTEMPTS = 64  # compare-and-set rounds of one admin write before giving up


def _script(name: str) -> Script:
    return Script.of(resources.files("gateway.limits").joinpath("lua", name).read_text())


def record_from_redis(raw: bytes, last_used: bytes | None) -> KeyRecord:
    """A key's record as stored (``meta``'s ``record``), with its last use added."""
    record = KeyRecord.model_validate_json(raw)
    if last_used:
        moment = datetime.fromtimestamp(int(last_used), UTC)
        record = record.model_copy(update={"last_used_at": moment})
    return record


class _Contended(Exception):
    """Another write of the same key is under way: read again and retry."""


class KeyWrites:
    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self._keys = store.keys
        self._key_record = _script("key_record_v1.lua")
        self._key_name = _script("key_name_v1.lua")

    async def _claim_name(self, name: str, key_id: str, claim: str) -> None:
        """Take ``name`` for ``key_id`` (pending), or raise ``KeyNameTaken``."""
        op: list[object] = ["claim", claim, _PENDING_CLAIM_MS]
        for _ in range(_WRITE_ATTEMPTS):
            answer = await self._store._eval(self._key_name, [self._keys.name(name)], op)
            if answer == 1:
                return
            holder_raw, pttl = answer  # type: ignore[misc]
            holder = holder_raw.decode()
            holder_id = holder.partition(":")[0]
            if pttl == -2:  # gone between the script's two reads: try again
                op = ["claim", claim, _PENDING_CLAIM_MS]
                continue
            if pttl >= 0:  # another write is giving the name to a key right now
                if holder_id == key_id:
                    raise _Contended  # a concurrent change of this very key
                raise KeyNameTaken(name, holder_id)
            record = await self._store.get_key(holder_id)
            if record is not None and record.name == name:
                raise KeyNameTaken(name, holder_id)
            # Permanent, but its key has another name (or none): left by a writer that
            # died between renaming a key and releasing its old name.
            op = ["take", claim, _PENDING_CLAIM_MS, holder]
        raise _Contended

    async def _drop_claim(self, name: str, claim: str) -> None:
        try:
            await self._store._eval(self._key_name, [self._keys.name(name)], ["drop", claim])
        except Exception:  # it expires by itself
            log.debug("dropping the claim on key name %r failed", name, exc_info=True)

    async def create(self, record: KeyRecord, digest: str) -> None:
        claim = f"{record.id}:{secrets.token_hex(8)}"
        await self._claim_name(record.name, record.id, claim)
        try:
            await self._store.put_key(record, digest)
        except BaseException:
            await self._drop_claim(record.name, claim)
            raise
        await self._store._eval(self._key_name, [self._keys.name(record.name)], ["confirm", claim])

    async def update(
        self, key_id: str, change: Callable[[KeyRecord], KeyRecord]
    ) -> KeyRecord | None:
        meta = self._keys.tagged(key_id, "meta")
        claim = f"{key_id}:{secrets.token_hex(8)}"
        for attempt in range(_WRITE_ATTEMPTS):
            raw, last_used = await self._store._call("HMGET", meta, "record", "last_used_at")
            if raw is None:
                return None
            current = record_from_redis(raw, last_used)
            updated = change(current)
            stored = updated.model_copy(update={"last_used_at": None}).model_dump_json().encode()
            if stored == raw:
                return updated
            renamed = updated.name != current.name
            if renamed:
                try:
                    await self._claim_name(updated.name, key_id, claim)
                except _Contended:
                    await asyncio.sleep(0.005 * (attempt + 1))
                    continue
            try:
                swapped = await self._store._eval(self._key_record, [meta], [raw, stored])
            except BaseException:
                if renamed:
                    await self._drop_claim(updated.name, claim)
                raise
            if swapped:
                if renamed:
                    await self._store._eval(
                        self._key_name, [self._keys.name(updated.name)], ["confirm", claim]
                    )
                    await self._store._eval(
                        self._key_name, [self._keys.name(current.name)], ["release", key_id]
                    )
                return updated
            if renamed:  # changed meanwhile: read it again, and maybe rename it again
                await self._drop_claim(updated.name, claim)
        raise StoreUnavailable("The key is being changed by too many writers at once; try again.")

    async def claim_existing_names(self) -> None:
        """Claims for the names of keys made before names were claimed; once per Redis.

        Called at start, when Redis answered; a Redis that goes away meanwhile is
        the caller's (``RedisDown``), a refusal to write only a warning.
        """
        redis = self._store._redis
        marker = f"{self._keys.prefix}names:v1"
        try:
            if await redis.execute("EXISTS", marker):
                return
            start = 0
            while ids := await redis.execute("ZRANGE", self._keys.index, start, start + 499):
                raws = await asyncio.gather(
                    *(
                        redis.execute("HGET", self._keys.tagged(i.decode(), "meta"), "record")
                        for i in ids
                    )
                )
                records = [KeyRecord.model_validate_json(raw) for raw in raws if raw]
                await asyncio.gather(
                    *(redis.execute("SET", self._keys.name(r.name), r.id, "NX") for r in records)
                )
                start += len(ids)
            await redis.execute("SET", marker, "1")
        except ReplyError as exc:  # e.g. a read-only replica: names are checked as they come
            log.warning("could not claim the names of existing keys: %s", exc)
