"""Redis Cluster on the lean connection: every command to the primary of its key's slot.

The store's keys are laid out for this (gateway/limits/redis.py): everything a
script touches carries one gateway key's hash tag, so each call has one slot,
and each slot one primary. This client keeps the slot map (``CLUSTER SLOTS``)
and one pipelined ``RedisConnection`` per primary, so a call costs what it
costs on one Redis plus a slot lookup (cached per key).

When the cluster moves a slot, the node that no longer has it answers
``MOVED``: the call goes on to the node named, and the whole map is read again
in the background. A slot being migrated answers ``ASK``: that one call goes
to the node named, behind an ``ASKING``. When a primary stops answering, the
call fails with ``RedisDown`` (the store then honours ``fail_mode``) and the map
is read again; ``ping`` (the store's recovery probe) succeeds again only once
every slot has a primary that answers, which after a failover is the promoted
replica (docs/operations.md, "Redis: Cluster, Sentinel, TLS").
"""

from __future__ import annotations

import asyncio
import binascii
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence

from gateway.limits.resp import Credentials, RedisConnection, RedisDown, ReplyError, Script

log = logging.getLogger("gateway.limits")

SLOTS = 16384
MAX_REDIRECTS = 5
_SLOT_CACHE_MAX = 100_000
# Commands without a key: any primary answers them.
_KEYLESS = frozenset({"PING", "TIME", "SCRIPT", "INFO", "CLUSTER", "ROLE", "ECHO"})

Address = tuple[str, int]


def key_slot(key: str) -> int:
    """The cluster slot of ``key``: CRC16 (XMODEM) of its hash tag, or of all of it."""
    data = key.encode()
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return binascii.crc_hqx(data, 0) % SLOTS


def _address(text: str, default_host: str) -> Address:
    host, _, port = text.rpartition(":")
    return (host.strip("[]") or default_host), int(port)


class ClusterClient:
    """The store's Redis when it is a Redis Cluster; the same calls as ``RedisConnection``."""

    def __init__(
        self, seeds: Iterable[Address], *, credentials: Credentials, timeout: float
    ) -> None:
        self.seeds = tuple(seeds)
        self.credentials = credentials
        self.timeout = timeout
        self._nodes: dict[Address, RedisConnection] = {}
        self._slots: list[RedisConnection | None] = [None] * SLOTS
        self._primaries: tuple[RedisConnection, ...] = ()
        self._slot_of: dict[str, int] = {}
        self._refreshing: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        seeds = ",".join(f"{host}:{port}" for host, port in self.seeds)
        primaries = ",".join(node.name for node in self._primaries) or "not read yet"
        return f"Redis Cluster (seeds {seeds}; primaries {primaries})"

    @property
    def primaries(self) -> tuple[RedisConnection, ...]:
        """The primaries of the slot map read last."""
        return self._primaries

    # ------------------------------------------------------------ the calls

    async def execute(self, *args: object) -> object:
        """One command, at the primary of its key (``args[1]``), or any for a keyless one."""
        if str(args[0]).upper() in _KEYLESS:
            return await (await self._any()).execute(*args)

        def call(node: RedisConnection, asking: bool) -> Awaitable[object]:
            return node.execute_asking(*args) if asking else node.execute(*args)

        return await self._routed(str(args[1]), call)

    async def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[object]) -> object:
        def call(node: RedisConnection, asking: bool) -> Awaitable[object]:
            return node.evalsha(script, keys, args, asking=asking)

        return await self._routed(keys[0], call)

    async def _routed(
        self, key: str, call: Callable[[RedisConnection, bool], Awaitable[object]]
    ) -> object:
        slot = self._slot_of.get(key)
        if slot is None:
            if len(self._slot_of) >= _SLOT_CACHE_MAX:  # bounded: key ids come and go
                self._slot_of.clear()
            slot = self._slot_of[key] = key_slot(key)
        node = self._slots[slot]
        if node is None:
            await self.refresh()
            node = self._slots[slot]
            if node is None:
                raise RedisDown(f"no primary of the Redis Cluster serves slot {slot}")
        asking = False
        for _ in range(MAX_REDIRECTS):
            try:
                return await call(node, asking)
            except ReplyError as exc:
                kind, _, rest = str(exc).partition(" ")
                if kind not in ("MOVED", "ASK"):
                    raise
                moved_slot, _, where = rest.partition(" ")
                node = self._node(_address(where, node.address[0]))
                asking = kind == "ASK"
                if not asking:  # the slot has a new home, and maybe others too
                    self._slots[int(moved_slot)] = node
                    self._refresh_soon()
            except RedisDown:
                self._refresh_soon()  # a primary that went away: a failover may follow
                raise
        raise RedisDown(f"the Redis Cluster redirected a call {MAX_REDIRECTS} times")

    async def _any(self) -> RedisConnection:
        if not self._primaries:
            await self.refresh()
        return self._primaries[0]

    # ------------------------------------------------------------ the slot map

    def _node(self, address: Address) -> RedisConnection:
        node = self._nodes.get(address)
        if node is None:
            node = self._nodes[address] = RedisConnection(
                *address, credentials=self.credentials, timeout=self.timeout
            )
        return node

    async def refresh(self) -> None:
        """Read the slot map from the first node that answers: the known primaries
        first, then the seeds. ``RedisDown`` if none does."""
        tried: list[str] = []
        candidates = [*(n.address for n in self._primaries), *self.seeds]
        for address in dict.fromkeys(candidates):
            node = self._node(address)
            try:
                reply = await node.execute("CLUSTER", "SLOTS")
            except (RedisDown, ReplyError) as exc:
                tried.append(f"{node.name} ({exc})")
                continue
            self._apply(reply, node)  # type: ignore[arg-type]
            return
        raise RedisDown("no node of the Redis Cluster answered: " + "; ".join(tried))

    def _apply(self, reply: list[list[object]], asked: RedisConnection) -> None:
        slots: list[RedisConnection | None] = [None] * SLOTS
        primaries: dict[Address, RedisConnection] = {}
        for entry in reply:
            start, end, primary = int(entry[0]), int(entry[1]), entry[2]  # type: ignore[call-overload]
            host = primary[0].decode() if primary[0] else ""  # type: ignore[index]
            # An empty or unknown endpoint means "the node you asked" (Redis 7).
            if host in ("", "?"):
                host = asked.address[0]
            node = self._node((host, int(primary[1])))  # type: ignore[index]
            primaries[node.address] = node
            slots[start : end + 1] = [node] * (end + 1 - start)
        self._slots = slots
        self._primaries = tuple(primaries.values())

    def _refresh_soon(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._refresh_quietly())

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except RedisDown as exc:  # the store's recovery probe tries again
            log.debug("reading the Redis Cluster's slot map failed: %s", exc)

    async def ping(self) -> None:
        """Up means every slot has a primary and every primary answers: else
        ``RedisDown`` saying what is missing."""
        await self.refresh()
        uncovered = sum(1 for node in self._slots if node is None)
        if uncovered:
            raise RedisDown(f"{uncovered} of the Redis Cluster's {SLOTS} slots have no primary")
        results = await asyncio.gather(
            *(node.ping() for node in self._primaries), return_exceptions=True
        )
        for node, result in zip(self._primaries, results, strict=True):
            if isinstance(result, BaseException):
                raise RedisDown(f"primary {node.name} of the Redis Cluster: {result}")

    async def aclose(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        for node in self._nodes.values():
            await node.aclose()
