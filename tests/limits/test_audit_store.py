"""The audit trail's storage on both backends (embedded SQLite, and the real Redis under a
prefix of its own): events come back whole, newest first, a page at a time, and survive
a restart of the embedded store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.limits.base import Store
from gateway.limits.embedded import EmbeddedStore
from gateway.schemas.admin import AuditEvent

START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def _event(n: int) -> AuditEvent:
    return AuditEvent(
        at=START + timedelta(seconds=n),
        actor="sk-...abcd",
        client="10.0.0.7",
        action="key.update",
        target=f"key_{n:04d}",
        changes=["limits.rpm", "name"],
        outcome="ok",
        status=200,
        request_id=f"req-{n}",
    )


async def test_events_come_back_whole_and_newest_first_a_page_at_a_time(store: Store) -> None:
    assert await store.list_audit(10, None) == ([], False)
    for n in range(7):
        await store.record_audit(_event(n))

    everything, more = await store.list_audit(100, None)
    assert not more
    assert [e.target for e in everything] == [f"key_{n:04d}" for n in reversed(range(7))]
    assert len({e.id for e in everything}) == 7
    assert all(e.id.startswith("aud_") for e in everything)
    assert everything[-1] == _event(0).model_copy(update={"id": everything[-1].id})

    pages, after = [], None
    while True:
        page, more = await store.list_audit(3, after)
        pages.append([e.id for e in page])
        if not more:
            break
        after = page[-1].id
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for page in pages for i in page] == [e.id for e in everything]
    assert await store.list_audit(3, everything[-1].id) == ([], False)


async def test_an_after_that_is_no_event_id_matches_nothing(store: Store) -> None:
    await store.record_audit(_event(1))
    for after in ("aud_", "aud_x", "key_123", "aud_1-2-3", "aud_١٢"):
        assert await store.list_audit(5, after) == ([], False), after


async def test_the_embedded_trail_survives_a_restart(tmp_path: Path) -> None:
    first = EmbeddedStore(tmp_path)
    await first.start()
    await first.record_audit(_event(1))
    await first.record_audit(_event(2))
    await first.aclose()
    again = EmbeddedStore(tmp_path)
    await again.start()
    try:
        events, more = await again.list_audit(10, None)
        assert [e.target for e in events] == ["key_0002", "key_0001"]
        assert not more
    finally:
        await again.aclose()
