"""The store's cluster client on a real Redis Cluster: calls follow a slot that moves
(MOVED) or is being migrated (ASK), and the slot map is read again after a move.

The slot is moved by hand, as ``redis-cli --cluster reshard`` does it: the target
imports it, the source migrates it, the keys go over with MIGRATE, then every
node is told the slot's new owner.
"""

from __future__ import annotations

import asyncio
import uuid

from gateway.limits.cluster import ClusterClient, key_slot
from gateway.limits.resp import Credentials, Script
from tests.redis_topologies import RedisCluster, RedisProcess

SCRIPT = Script.of("return redis.call('GET', KEYS[1])")


def _seeds(cluster: RedisCluster) -> list[tuple[str, int]]:
    return [(host, int(port)) for host, port in (seed.rsplit(":", 1) for seed in cluster.seeds)]


def _node_id(node: RedisProcess) -> str:
    return node.run("CLUSTER", "MYID")


def _other_primary(cluster: RedisCluster, than: RedisProcess) -> RedisProcess:
    return next(p for p in cluster.primaries() if p is not than)


def _begin_migration(slot: int, source: RedisProcess, target: RedisProcess, key: str) -> None:
    target.run("CLUSTER", "SETSLOT", slot, "IMPORTING", _node_id(source))
    source.run("CLUSTER", "SETSLOT", slot, "MIGRATING", _node_id(target))
    host, port = target.address.rsplit(":", 1)
    source.run("MIGRATE", host, port, key, 0, 5000)


def _finish_migration(cluster: RedisCluster, slot: int, target: RedisProcess) -> None:
    for node in cluster.primaries():
        node.run("CLUSTER", "SETSLOT", slot, "NODE", _node_id(target))


def test_a_moved_slot_is_followed_and_the_map_read_again(redis_cluster: RedisCluster) -> None:
    key = f"gwtest-moved:{{{uuid.uuid4().hex}}}:rpm"
    slot = key_slot(key)
    source = redis_cluster.primary_for(key)
    target = _other_primary(redis_cluster, source)

    async def scenario() -> tuple[object, object, str]:
        client = ClusterClient(_seeds(redis_cluster), credentials=Credentials(), timeout=2)
        try:
            await client.execute("SET", key, "before")
            await asyncio.to_thread(_begin_migration, slot, source, target, key)
            await asyncio.to_thread(_finish_migration, redis_cluster, slot, target)
            # The client still maps the slot to the source, which answers MOVED.
            moved = await client.execute("GET", key)
            scripted = await client.evalsha(SCRIPT, [key], [])
            await asyncio.sleep(0.2)  # the map is read again in the background
            return moved, scripted, client._slots[slot].name
        finally:
            await client.aclose()

    moved, scripted, owner = asyncio.run(scenario())
    assert (moved, scripted) == (b"before", b"before")
    assert owner == target.address


def test_a_slot_being_migrated_is_asked_of_its_new_node(redis_cluster: RedisCluster) -> None:
    key = f"gwtest-ask:{{{uuid.uuid4().hex}}}:rpm"
    slot = key_slot(key)
    source = redis_cluster.primary_for(key)
    target = _other_primary(redis_cluster, source)

    async def scenario() -> tuple[object, object]:
        client = ClusterClient(_seeds(redis_cluster), credentials=Credentials(), timeout=2)
        try:
            await client.execute("SET", key, "migrating")
            # The key has gone to the target; the slot is still the source's: it answers ASK.
            await asyncio.to_thread(_begin_migration, slot, source, target, key)
            return await client.execute("GET", key), await client.evalsha(SCRIPT, [key], [])
        finally:
            await client.aclose()
            await asyncio.to_thread(_finish_migration, redis_cluster, slot, target)

    assert asyncio.run(scenario()) == (b"migrating", b"migrating")
