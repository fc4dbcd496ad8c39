"""Where the audit trail is kept: a capped Redis stream, or a capped SQLite table.

Both backends keep at most ``AUDIT_MAX`` events (the oldest go first: Redis
trims approximately, SQLite exactly) and list them newest first, a page at a
time, after an event id the previous page ended with (docs/operations.md,
"Audit trail"). An event's id is the store's: the stream entry's id on Redis,
the row's sequence number on SQLite, each behind ``aud_``. An ``after`` that is
not an id of this backend's form matches nothing, as an unknown key id does
for the keys' listing.
"""

from __future__ import annotations

import re
import sqlite3
from typing import TYPE_CHECKING

from gateway.schemas.admin import AuditEvent

if TYPE_CHECKING:
    from gateway.limits.redis import RedisStore

AUDIT_MAX = 100_000
_PREFIX = "aud_"
_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_SEQ = re.compile(r"[0-9]{1,18}")


def _stored(event: AuditEvent) -> str:
    return event.model_dump_json(exclude={"id"})


def _loaded(event_id: str, raw: str | bytes) -> AuditEvent:
    return AuditEvent.model_validate_json(raw).model_copy(update={"id": _PREFIX + event_id})


def _page(events: list[AuditEvent], limit: int) -> tuple[list[AuditEvent], bool]:
    return events[:limit], len(events) > limit


# ------------------------------------------------------------------ Redis


class RedisAudit:
    """The audit stream of one ``RedisStore``, under its prefix (``<prefix>audit``).

    One key, so one slot of a Redis Cluster. Commands go through the store's
    ``command``: a Redis that is down answers ``StoreUnavailable`` at once.
    """

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self.stream = f"{store.keys.prefix}audit"

    async def record(self, event: AuditEvent) -> None:
        await self._store.command(
            "XADD", self.stream, "MAXLEN", "~", AUDIT_MAX, "*", "event", _stored(event)
        )

    async def list(self, limit: int, after: str | None) -> tuple[list[AuditEvent], bool]:
        end = "+"
        if after is not None:
            entry = after.removeprefix(_PREFIX)
            if not after.startswith(_PREFIX) or not _STREAM_ID.fullmatch(entry):
                return [], False
            end = f"({entry}"  # exclusive: the page starts below the last one seen
        entries = await self._store.command("XREVRANGE", self.stream, end, "-", "COUNT", limit + 1)
        events = []
        for entry_id, fields in entries:  # type: ignore[union-attr]
            values = dict(zip(fields[::2], fields[1::2], strict=True))
            raw = values.get(b"event")
            if raw is not None:
                events.append(_loaded(entry_id.decode(), raw))
        return _page(events, limit)


# ------------------------------------------------------------------ SQLite

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT NOT NULL
);
"""


def sqlite_record(db: sqlite3.Connection, event: AuditEvent) -> None:
    """Append ``event`` and drop what falls beyond ``AUDIT_MAX``; on the store's thread."""
    with db:
        db.execute("BEGIN")
        seq = db.execute("INSERT INTO audit (event) VALUES (?)", (_stored(event),)).lastrowid
        if seq is not None and seq > AUDIT_MAX:
            db.execute("DELETE FROM audit WHERE seq <= ?", (seq - AUDIT_MAX,))


def sqlite_list(
    db: sqlite3.Connection, limit: int, after: str | None
) -> tuple[list[AuditEvent], bool]:
    """A page of events, newest first, older than ``after``; on the store's thread."""
    below = None
    if after is not None:
        digits = after.removeprefix(_PREFIX)
        if not after.startswith(_PREFIX) or not _SEQ.fullmatch(digits):
            return [], False
        below = int(digits)
    rows = db.execute(
        "SELECT seq, event FROM audit WHERE seq < ? ORDER BY seq DESC LIMIT ?",
        (below if below is not None else 2**63 - 1, limit + 1),
    ).fetchall()
    return _page([_loaded(str(seq), raw) for seq, raw in rows], limit)
