"""Routing's cooldowns shared through Redis, so every worker and instance skips a
failing deployment once one of them has seen it fail (docs/configuration.md,
"Routing").

One sorted set holds them: a deployment's ``served_by`` name, scored by the wall
clock time its cooldown ends. A process adds to it when it starts a cooldown
(``publish``: written in the background, never awaited by a request) and reads
the live ones every ``every`` seconds (``run``), so another process's cooldown
reaches this one within about that long. Nothing of it is on a request's path;
while Redis is down, each process keeps its own cooldowns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from gateway.limits.redis import RedisStore

log = logging.getLogger("gateway.routing")

REFRESH_SECONDS = 1.0


class SharedCooldowns:
    """A ``CooldownBoard`` (gateway/routing/state.py) on the store's Redis."""

    def __init__(self, store: RedisStore, every: float = REFRESH_SECONDS) -> None:
        self._store = store
        self._key = f"{store.keys.prefix}cooldowns"
        self._every = every
        self._writes: set[asyncio.Task[object]] = set()

    def publish(self, name: str, until: float) -> None:
        # GT: a longer cooldown another process set is kept.
        task = asyncio.ensure_future(self._write(name, until))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, name: str, until: float) -> object:
        try:
            return await self._store.command("ZADD", self._key, "GT", until, name)
        except Exception as exc:  # the store's own log says when Redis goes down
            log.debug("sharing the cooldown of %s failed: %s", name, exc)
            return None

    async def read(self) -> list[tuple[str, float]]:
        """The cooldowns not over yet; the ended ones are dropped."""
        now = time.time()
        await self._store.command("ZREMRANGEBYSCORE", self._key, "-inf", now)
        reply = await self._store.command("ZRANGEBYSCORE", self._key, now, "+inf", "WITHSCORES")
        items = list(reply or [])  # type: ignore[call-overload]
        return [(_text(items[i]), float(items[i + 1])) for i in range(0, len(items) - 1, 2)]

    async def run(self, merge: Callable[[Iterable[tuple[str, float]]], None]) -> None:
        """Read the shared cooldowns into ``merge`` every ``every`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(self._every)
            try:
                merge(await self.read())
            except Exception as exc:
                log.debug("reading shared cooldowns failed: %s", exc)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
