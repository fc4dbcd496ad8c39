"""The stores' admin writes: unique key names and atomic updates, on both backends;
on Redis also what a writer that died midway leaves behind, and keys from before
names were claimed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from gateway.limits.base import Store
from gateway.limits.keys import KeyNameTaken, KeyRecord, hash_key
from gateway.limits.redis import RedisStore
from tests.limits.support import REDIS_URL, make_key


async def create(store: Store, name: str) -> KeyRecord:
    key = make_key(name=name)
    await store.create_key(key, hash_key(f"sk-secret-{key.id}"))
    return key


def renamed(name: str) -> Callable[[KeyRecord], KeyRecord]:
    """A change, as the admin API hands the store one."""
    return lambda record: record.model_copy(update={"name": name})


async def test_names_are_unique_on_create_and_rename(store: Store) -> None:
    first = await create(store, "alpha")
    with pytest.raises(KeyNameTaken) as info:
        await create(store, "alpha")
    assert info.value.status == 409
    assert first.id in info.value.message
    second = await create(store, "beta")
    with pytest.raises(KeyNameTaken):
        await store.update_key(second.id, renamed("alpha"))
    assert (await store.get_key(second.id)).name == "beta"

    moved = await store.update_key(second.id, renamed("gamma"))
    assert moved is not None
    assert moved.name == "gamma"
    assert (await store.get_key(second.id)).name == "gamma"
    await create(store, "beta")  # freed by the rename
    with pytest.raises(KeyNameTaken):
        await create(store, "gamma")
    assert await store.update_key("key_missing", renamed("delta")) is None


async def test_concurrent_updates_all_land(store: Store) -> None:
    key = await create(store, "counter")

    def bump(record: KeyRecord) -> KeyRecord:
        count = record.metadata.get("count", 0) + 1
        return record.model_copy(update={"metadata": {**record.metadata, "count": count}})

    await asyncio.gather(*(store.update_key(key.id, bump) for _ in range(40)))
    stored = await store.get_key(key.id)
    assert stored is not None
    assert stored.metadata["count"] == 40


async def test_concurrent_creates_of_one_name_make_one_key(store: Store) -> None:
    results = await asyncio.gather(
        *(create(store, "contested") for _ in range(10)), return_exceptions=True
    )
    made = [r for r in results if isinstance(r, KeyRecord)]
    assert len(made) == 1, results
    assert all(isinstance(r, KeyNameTaken) for r in results if r not in made)


async def test_a_change_that_raises_changes_nothing(store: Store) -> None:
    key = await create(store, "steady")

    def refuse(record: KeyRecord) -> KeyRecord:
        raise ValueError("not this")

    with pytest.raises(ValueError, match="not this"):
        await store.update_key(key.id, refuse)
    assert await store.get_key(key.id) == key


# ---------------------------------------------------------------- redis only


@pytest.fixture
async def redis_pair() -> AsyncIterator[tuple[RedisStore, aioredis.Redis]]:
    prefix = f"gwtest-names-{uuid.uuid4().hex}:"
    admin = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    store = RedisStore(REDIS_URL, prefix=prefix)
    await store.start()
    try:
        yield store, admin
    finally:
        await store.aclose()
        names = [n async for n in admin.scan_iter(match=f"{prefix}*", count=500)]
        if names:
            await admin.delete(*names)
        await admin.aclose()


async def test_redis_claim_of_a_writer_that_died_midway(
    redis_pair: tuple[RedisStore, aioredis.Redis],
) -> None:
    store, admin = redis_pair
    claim = store.keys.name("orphan")
    # Died after claiming, before writing the record: the claim is pending and expires.
    await admin.set(claim, "key_dead:token", px=300)
    with pytest.raises(KeyNameTaken):
        await create(store, "orphan")
    await asyncio.sleep(0.4)
    await create(store, "orphan")

    # Died after renaming a key, before releasing its old name: a permanent claim whose
    # key has another name now is stale, and taken over.
    key = await create(store, "now-called-this")
    await admin.set(store.keys.name("was-called-this"), f"{key.id}:token")
    await create(store, "was-called-this")


async def test_redis_keys_from_before_names_were_claimed(
    redis_pair: tuple[RedisStore, aioredis.Redis],
) -> None:
    store, admin = redis_pair
    old = make_key(name="legacy")
    await store.put_key(old, hash_key("sk-secret-legacy"))  # as an older gateway stored it
    await admin.delete(f"{store.keys.prefix}names:v1")
    later = RedisStore(REDIS_URL, prefix=store.keys.prefix)
    await later.start()  # claims the names of the keys it finds, once
    try:
        with pytest.raises(KeyNameTaken) as info:
            await create(later, "legacy")
        assert old.id in info.value.message
    finally:
        await later.aclose()


async def test_redis_concurrent_renames_of_one_key_leave_one_claim(
    redis_pair: tuple[RedisStore, aioredis.Redis],
) -> None:
    store, admin = redis_pair
    key = await create(store, "start")
    targets = ["left", "right", "left", "right", "middle"]
    await asyncio.gather(
        *(store.update_key(key.id, renamed(t)) for t in targets), return_exceptions=True
    )
    final = (await store.get_key(key.id)).name
    for name in {"start", *targets}:
        holder = await admin.get(store.keys.name(name))
        if name == final:
            assert holder is not None
            assert holder.decode().startswith(f"{key.id}")
            assert await admin.pttl(store.keys.name(name)) == -1  # confirmed
        else:
            assert holder is None, (name, holder)
    for name in {"start", *targets} - {final}:
        await create(store, name)  # every other name is free
