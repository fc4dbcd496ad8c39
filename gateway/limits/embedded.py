"""The embedded store: one process, keys and usage in SQLite, limits in memory.

SQLite (WAL, one connection on one dedicated thread, so the event loop never
blocks on disk) keeps keys and usage across restarts with atomic transactions.
Limits live in a ``LocalLimiter``, which is exact for the one process this
backend serves. Usage is aggregated in memory per (key, day, model) and
written in one transaction every ``FLUSH_SECONDS`` and on close; a read of
usage flushes first, so it always includes every settled request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from gateway.limits.audit import SQLITE_SCHEMA, sqlite_list, sqlite_record
from gateway.limits.base import (
    LEASE_TTL_MS,
    Admission,
    Grant,
    Standing,
    UsageEvent,
    spend_periods,
)
from gateway.limits.keys import KeyNameTaken, KeyRecord
from gateway.limits.local import LocalLimiter
from gateway.limits.usage import COUNTERS, UsageTable, usage_doc
from gateway.observability.observer import Observer
from gateway.schemas.admin import AuditEvent, UsageDoc

log = logging.getLogger("gateway.limits")

FLUSH_SECONDS = 0.25
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS usage (
    key_id TEXT NOT NULL,
    day TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, day, model)
);
CREATE TABLE IF NOT EXISTS last_used (key_id TEXT PRIMARY KEY, at TEXT NOT NULL);
"""

# Columns a database made by an earlier version lacks, added when it is opened.
_ADDED_USAGE_COLUMNS = {
    "cache_read_tokens": "INTEGER NOT NULL DEFAULT 0",
    "cache_write_tokens": "INTEGER NOT NULL DEFAULT 0",
}
# The usage columns in the order ``UsageTable.rows()`` and ``usage_doc`` use.
_USAGE_COUNTERS = ", ".join(COUNTERS)

_UPSERT_USAGE = f"""
INSERT INTO usage (key_id, day, model, {_USAGE_COUNTERS})
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (key_id, day, model) DO UPDATE SET
    requests = requests + excluded.requests,
    input_tokens = input_tokens + excluded.input_tokens,
    output_tokens = output_tokens + excluded.output_tokens,
    cost_usd = cost_usd + excluded.cost_usd,
    errors = errors + excluded.errors,
    cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens,
    cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens
"""


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a usage table made by an earlier version up to this one's columns."""
    present = {row[1] for row in db.execute("PRAGMA table_info(usage)")}
    for column, kind in _ADDED_USAGE_COLUMNS.items():
        if column not in present:
            db.execute(f"ALTER TABLE usage ADD COLUMN {column} {kind}")


def default_data_dir() -> Path:
    import os

    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "gateway"


DB_NAME = "gateway.db"
_PRIVATE_FILE = 0o600


def prepare_data_dir(directory: Path) -> Path:
    """Make ``directory`` ready for the store and return the database's path.

    Keys' hashes and usage are nobody else's business: the directory is 0700
    and the database 0600 (SQLite gives its -wal and -shm files the
    database's mode), also when an earlier version made them readable to all.
    Raises ``OSError`` when the directory cannot be made or written.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = directory.stat()
    if info.st_uid == os.geteuid() and info.st_mode & 0o077:
        os.chmod(directory, 0o700)
        log.warning("made the data directory %s private to its owner (0700)", directory)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(13, "Permission denied", str(directory))
    path = directory / DB_NAME
    for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"):
        if (directory / name).exists():
            os.chmod(directory / name, _PRIVATE_FILE)  # made by a gateway before this rule
    # Created with its mode from the start: never readable by others, not even briefly.
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, _PRIVATE_FILE))
    return path


class EmbeddedStore:
    backend = "embedded"
    last_error: str | None = None  # it does not go down

    def __init__(self, data_dir: Path | None = None, *, lease_ttl_ms: float = LEASE_TTL_MS) -> None:
        self.path = (data_dir or default_data_dir()) / DB_NAME
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-sqlite")
        self._db: sqlite3.Connection | None = None
        self._limiter = LocalLimiter(lease_ttl_ms=lease_ttl_ms)
        self.observer = Observer()  # never told anything: this store does not go down
        self._by_hash: dict[str, KeyRecord] = {}
        self._by_id: dict[str, tuple[str, KeyRecord]] = {}
        # The admin API's writes, one at a time: read-modify-write is then atomic.
        self._key_writes = asyncio.Lock()
        self._pending = UsageTable()
        self._last_used: dict[str, datetime] = {}
        self._last_used_dirty: set[str] = set()
        self._flusher: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ lifecycle

    async def _run(self, fn: Any, *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _open(self) -> list[tuple[str, str]]:
        prepare_data_dir(self.path.parent)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        db.executescript(SQLITE_SCHEMA)
        _migrate(db)
        self._db = db
        for key_id, at in db.execute("SELECT key_id, at FROM last_used"):
            self._last_used[key_id] = datetime.fromisoformat(at)
        return db.execute("SELECT hash, record FROM keys").fetchall()

    def _spent(self) -> list[tuple[str, str, float]]:
        day, month, _ = spend_periods()
        assert self._db is not None
        rows = self._db.execute(
            "SELECT key_id, SUM(cost_usd),"
            " SUM(CASE WHEN substr(day, 1, 7) = ? THEN cost_usd ELSE 0 END),"
            " SUM(CASE WHEN day = ? THEN cost_usd ELSE 0 END)"
            " FROM usage GROUP BY key_id",
            (month[1:], day[1:]),
        ).fetchall()
        out = []
        for key_id, total, this_month, this_day in rows:
            out += [(key_id, "total", total), (key_id, month, this_month), (key_id, day, this_day)]
        return out

    async def start(self) -> None:
        rows = await self._run(self._open)
        for digest, raw in rows:
            record = KeyRecord.model_validate_json(raw)
            self._by_hash[digest] = record
            self._by_id[record.id] = (digest, record)
        for key_id, period, amount in await self._run(self._spent):
            self._limiter.seed_spend(key_id, period, amount or 0.0)
        self._flusher = asyncio.create_task(self._flush_forever(), name="gateway-usage-flush")
        log.info("embedded store at %s (%d keys)", self.path, len(self._by_id))

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            try:
                await self._flusher
            except asyncio.CancelledError:
                pass
        await self.flush()
        if self._db is not None:
            await self._run(self._db.close)
        self._thread.shutdown(wait=True)

    async def status(self) -> str:
        return "ok"

    # ------------------------------------------------------------ keys

    async def key_by_hash(self, digest: str) -> KeyRecord | None:
        record = self._by_hash.get(digest)
        if record is not None and record.id in self._last_used:
            record = record.model_copy(update={"last_used_at": self._last_used[record.id]})
        return record

    async def get_key(self, key_id: str) -> KeyRecord | None:
        found = self._by_id.get(key_id)
        if found is None:
            return None
        record = found[1]
        last = self._last_used.get(key_id)
        return record.model_copy(update={"last_used_at": last}) if last else record

    async def list_keys(self, limit: int, after: str | None) -> tuple[list[KeyRecord], bool]:
        ordered = sorted((r for _, r in self._by_id.values()), key=lambda r: (r.created_at, r.id))
        if after is not None:
            ids = [r.id for r in ordered]
            ordered = ordered[ids.index(after) + 1 :] if after in ids else []
        page = [await self.get_key(r.id) for r in ordered[:limit]]
        return [r for r in page if r is not None], len(ordered) > limit

    async def put_key(self, record: KeyRecord, digest: str | None = None) -> None:
        if digest is None:
            digest = self._by_id[record.id][0]
        stored = record.model_copy(update={"last_used_at": None})
        raw = stored.model_dump_json()

        def write() -> None:
            assert self._db is not None
            self._db.execute(
                "INSERT INTO keys (id, hash, created_at, record) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                (record.id, digest, record.created_at.isoformat(), raw),
            )

        await self._run(write)
        self._by_hash[digest] = stored
        self._by_id[record.id] = (digest, stored)

    def _name_holder(self, name: str, key_id: str) -> str | None:
        # A scan, not an index: only the admin API asks, and it is not the hot path.
        for _, record in self._by_id.values():
            if record.name == name and record.id != key_id:
                return record.id
        return None

    async def create_key(self, record: KeyRecord, digest: str) -> None:
        async with self._key_writes:
            holder = self._name_holder(record.name, record.id)
            if holder is not None:
                raise KeyNameTaken(record.name, holder)
            await self.put_key(record, digest)

    async def update_key(
        self, key_id: str, change: Callable[[KeyRecord], KeyRecord]
    ) -> KeyRecord | None:
        async with self._key_writes:
            current = await self.get_key(key_id)
            if current is None:
                return None
            updated = change(current)
            if updated.name != current.name:
                holder = self._name_holder(updated.name, key_id)
                if holder is not None:
                    raise KeyNameTaken(updated.name, holder)
            if updated != current:
                await self.put_key(updated)
            return updated

    # ------------------------------------------------------------ limits

    async def admit(self, admission: Admission) -> Grant:
        return self._limiter.admit(admission)

    async def settle(self, grant: Grant, usages: Sequence[UsageEvent]) -> None:
        self._limiter.settle(grant, usages)
        for usage in usages:
            self._pending.add(grant.key_id, usage)
        self._last_used[grant.key_id] = datetime.now(UTC)
        self._last_used_dirty.add(grant.key_id)

    async def renew(self, grants: list[Grant]) -> None:
        self._limiter.renew(grants)

    async def standing(self, key: KeyRecord) -> Standing:
        return self._limiter.standing(key)

    async def last_used(self, key_id: str) -> datetime | None:
        return self._last_used.get(key_id)

    # ------------------------------------------------------------ usage

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self.flush()
            except Exception:
                log.exception("writing usage to %s failed; will retry", self.path)

    async def flush(self) -> None:
        if not self._pending and not self._last_used_dirty:
            return
        pending, self._pending = self._pending, UsageTable()
        dirty, self._last_used_dirty = self._last_used_dirty, set()
        last_used = [(k, self._last_used[k].isoformat()) for k in dirty]

        def write() -> None:
            assert self._db is not None
            with self._db:  # one transaction
                self._db.execute("BEGIN")
                self._db.executemany(_UPSERT_USAGE, pending.rows())
                self._db.executemany(
                    "INSERT INTO last_used (key_id, at) VALUES (?, ?)"
                    " ON CONFLICT (key_id) DO UPDATE SET at = excluded.at",
                    last_used,
                )

        def restore() -> None:  # nothing lost: what was not written is written next time
            pending.merge_into(self._pending)
            self._last_used_dirty |= dirty

        job = asyncio.get_running_loop().run_in_executor(self._thread, write)
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError:
            # The write goes on in its thread: only its own failure may put the rows
            # back, or a write that did land would be written a second time.
            job.add_done_callback(
                lambda done: restore() if not done.cancelled() and done.exception() else None
            )
            raise
        except Exception:
            restore()
            raise

    async def usage(self, key_id: str) -> UsageDoc:
        await self.flush()

        def read() -> list[tuple]:
            assert self._db is not None
            return self._db.execute(
                f"SELECT day, model, {_USAGE_COUNTERS} FROM usage WHERE key_id = ?",
                (key_id,),
            ).fetchall()

        return usage_doc(key_id, await self._run(read))

    # ------------------------------------------------------------ audit (limits/audit.py)

    async def record_audit(self, event: AuditEvent) -> None:
        assert self._db is not None
        await self._run(sqlite_record, self._db, event)

    async def list_audit(self, limit: int, after: str | None) -> tuple[list[AuditEvent], bool]:
        assert self._db is not None
        return await self._run(sqlite_list, self._db, limit, after)
