"""Every key name each script touches carries the same hash tag: checked, not assumed.

First by computing the cluster slot of each name, then by running the store
against a real single-node Redis Cluster. Redis in cluster mode refuses a script
whose declared keys span slots (CROSSSLOT), so the store's calls succeeding
there proves its declared keys share a slot. Redis 7.0 does not refuse an
undeclared key of another slot on a node that owns every slot, so the keys the
scripts really touch are also read off MONITOR and their slots compared.
Deliberately cross-slot calls are caught by both checks, so each can fail.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from importlib import resources

import pytest
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot

from gateway.config import Limits
from gateway.limits.keys import hash_key, new_key_id
from gateway.limits.redis import KeySpace, RedisStore
from tests.limits.support import RedisServer, admission, event, make_key, requests_left
from tests.servers import free_port

PARTS = ("rpm", "tpm", "lease", "spend", "usage", "meta")
KEY_IDS = ["key_0123456789abcdef", "key_cfg_abcdef012345", "key_5f1e0c2a9b7d3e41", "key_x"]


@pytest.mark.parametrize("prefix", ["gw:", "gwtest-1:", "tenant/a:"])
@pytest.mark.parametrize("key_id", KEY_IDS)
def test_every_key_of_one_gateway_key_is_in_one_slot(prefix: str, key_id: str) -> None:
    space = KeySpace(prefix)
    names = [*space.admit_keys(key_id), *space.settle_keys(key_id), space.tagged(key_id, "lease")]
    slots = {key_slot(name.encode()) for name in names}
    assert len(slots) == 1, dict(zip(names, map(key_slot, map(str.encode, names)), strict=True))
    assert set(names) == {space.tagged(key_id, part) for part in PARTS}


def test_different_gateway_keys_spread_over_slots() -> None:
    # The tag is the key id, not something shared by all keys (which would pass the
    # check above while putting every key on one node).
    space = KeySpace("gw:")
    slots = {key_slot(space.tagged(new_key_id(), "rpm").encode()) for _ in range(50)}
    assert len(slots) > 40


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One node owning all 16384 slots. Its bus port is chosen too (the default,
    port + 10000, may be taken or past 65535)."""
    directory = tmp_path_factory.mktemp("cluster")  # nodes.conf lands here (the cwd)
    server = RedisServer(
        directory,
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-port",
        str(free_port()),
    ).start()
    client = redis.Redis(port=server.port, socket_timeout=2)
    try:
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        deadline = time.monotonic() + 10
        while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
            assert time.monotonic() < deadline, "the one-node cluster never became ok"
            time.sleep(0.05)
        yield server
    finally:
        client.close()
        server.stop()


class ScriptWatch:
    """Every command Lua scripts run on a server, seen through MONITOR.

    Redis 7.0 refuses declared keys of two slots (CROSSSLOT), but on a node that owns
    every slot it lets a script touch an undeclared key of another slot. So the keys
    scripts actually touch are read off MONITOR and their slots compared.
    """

    def __init__(self, port: int) -> None:
        self._client = aioredis.Redis(port=port, socket_timeout=None)
        self._probe = aioredis.Redis(port=port, socket_timeout=2)
        self.commands: list[str] = []
        self.scripted: list[str] = []  # those a Lua script ran
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ScriptWatch:
        ready = asyncio.Event()

        async def listen() -> None:
            async with self._client.monitor() as monitor:
                ready.set()
                async for seen in monitor.listen():
                    self.commands.append(seen["command"])
                    if seen["client_type"] == "lua":
                        self.scripted.append(seen["command"])

        self._task = asyncio.create_task(listen())
        await asyncio.wait_for(ready.wait(), 2)
        return self

    async def settle(self) -> None:
        """Wait until everything sent so far has been seen."""
        marker = f"watch-{uuid.uuid4().hex}"
        await self._probe.echo(marker)
        deadline = time.monotonic() + 2
        while not any(marker in c for c in self.commands):
            assert time.monotonic() < deadline, "MONITOR fell silent"
            await asyncio.sleep(0.01)

    def touched(self) -> set[str]:
        """The key names scripts touched (every command our scripts use has one key)."""
        return {c.split()[1] for c in self.scripted if c.split()[0].upper() != "TIME"}

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        await self._client.aclose()
        await self._probe.aclose()


async def test_the_store_runs_on_a_redis_cluster(cluster: RedisServer) -> None:
    prefix = f"gwtest-{uuid.uuid4().hex}:"
    store = RedisStore(cluster.url, prefix=prefix, lease_ttl_ms=5_000)
    await store.start()
    try:
        async with ScriptWatch(cluster.port) as watch:
            # Every limit at once, so admit touches all four of its keys.
            limits = Limits(rpm=10, tpm=10_000, max_parallel=2, budget_usd=5.0, budget_period="day")
            key = make_key(limits)
            await store.put_key(key, hash_key("sk-cluster"))
            assert await store.key_by_hash(hash_key("sk-cluster")) == key

            grants = [await store.admit(admission(key, tokens=500, cost=0.5)) for _ in range(2)]
            # A script error sends the store to its local fallback: make sure it did not.
            assert not any(g.local for g in grants)
            assert await store.status() == "ok"
            assert (await store.standing(key)).in_flight == 2

            await store.renew(grants)
            assert await store.status() == "ok"

            for grant in grants:
                await store.settle(grant, [event("model-a", 100, 50, 0.25)])
            assert await store.status() == "ok"
            assert (await store.standing(key)).in_flight == 0

            doc = await store.usage(key.id)
            assert (doc.requests, doc.input_tokens, doc.output_tokens) == (2, 200, 100)
            assert doc.cost_usd == pytest.approx(0.5)
            assert await store.last_used(key.id) is not None

            again = await store.admit(admission(key, tokens=500, cost=0.5))
            assert not again.local
            assert requests_left(again) == 7
            assert await store.status() == "ok"
            await watch.settle()

        # The scripts touched exactly the gateway key's six names, all in its one slot.
        space = KeySpace(prefix)
        assert watch.touched() == {space.tagged(key.id, p) for p in PARTS}
        assert {key_slot(name.encode()) for name in watch.touched()} == {
            key_slot(space.tagged(key.id, "rpm").encode())
        }
    finally:
        await store.aclose()


async def test_the_cluster_and_the_watch_catch_cross_slot_scripts(cluster: RedisServer) -> None:
    client = aioredis.Redis(port=cluster.port, socket_timeout=2)
    space = KeySpace("gw:")
    first, second = "key_0123456789abcdef", "key_fedcba9876543210"
    assert key_slot(space.tagged(first, "rpm").encode()) != key_slot(
        space.tagged(second, "rpm").encode()
    )
    try:
        # Declared keys in two slots: refused before the script runs.
        with pytest.raises(redis.ResponseError, match="same slot"):
            await client.eval(
                "return 1", 2, space.tagged(first, "rpm"), space.tagged(second, "rpm")
            )

        # The real admit script given one key of another gateway key: refused too.
        admit = resources.files("gateway.limits").joinpath("lua", "admit_v4.lua").read_text()
        mixed = [*space.admit_keys(first)[:3], space.tagged(second, "spend")]
        with pytest.raises(redis.ResponseError, match="same slot"):
            await client.eval(admit, 4, *mixed, 10, 0, 0, "1.0", 0, "0.5", "t1", 1000, "total", 1)

        # A key of another slot the script was not given: the watch sees it.
        sneaky = "redis.call('GET', KEYS[1]); return redis.call('GET', ARGV[1])"
        async with ScriptWatch(cluster.port) as watch:
            await client.eval(sneaky, 1, space.tagged(first, "meta"), space.tagged(second, "meta"))
            await watch.settle()
        slots = {key_slot(name.encode()) for name in watch.touched()}
        assert len(slots) == 2
    finally:
        await client.aclose()
