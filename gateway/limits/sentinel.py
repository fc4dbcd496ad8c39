"""Redis Sentinel: the store's Redis is whichever node the sentinels call the primary.

The sentinels are asked once at start, and again whenever the primary stops
answering or answers as a replica (``READONLY``: it was demoted by a failover).
Between those, calls go straight to the primary's pipelined connection, at the
cost of one Redis. While no primary is known the calls fail with ``RedisDown``
and the store honours ``fail_mode``; its recovery probe (``ping``) asks the
sentinels again, and succeeds once they name a primary that answers as one
(docs/operations.md, "Redis: Cluster, Sentinel, TLS").

The URL's credentials are the data nodes'; sentinels are asked without them,
over TLS when the URL is ``rediss+sentinel://``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence

from gateway.limits.resp import Credentials, RedisConnection, RedisDown, ReplyError, Script

Address = tuple[str, int]


class SentinelClient:
    """The store's Redis behind Sentinel; the same calls as ``RedisConnection``."""

    def __init__(
        self,
        sentinels: Iterable[Address],
        master_name: str,
        *,
        credentials: Credentials,
        db: int = 0,
        timeout: float,
    ) -> None:
        self.master_name = master_name
        self.credentials = credentials
        self.timeout = timeout
        self._db = db
        anonymous = Credentials(ssl=credentials.ssl)
        self._sentinels = [
            RedisConnection(host, port, credentials=anonymous, timeout=timeout)
            for host, port in sentinels
        ]
        self._primary: RedisConnection | None = None
        self._stale = True  # the sentinels are asked before the next call
        self._retired: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        asked = ",".join(s.name for s in self._sentinels)
        return f"sentinel {asked}, primary {self.master_name!r}"

    async def execute(self, *args: object) -> object:
        return await self._on_primary(lambda primary: primary.execute(*args))

    async def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[object]) -> object:
        return await self._on_primary(lambda primary: primary.evalsha(script, keys, args))

    async def _on_primary(self, call: Callable[[RedisConnection], Awaitable[object]]) -> object:
        primary = await self._current()
        try:
            return await call(primary)
        except ReplyError as exc:
            raise self._demoted(exc) from None
        except RedisDown:
            self._stale = True  # the sentinels are asked again at the next call or probe
            raise

    async def _current(self) -> RedisConnection:
        primary = self._primary
        if primary is None or self._stale:
            primary = await self._discover()
        return primary

    def _demoted(self, exc: ReplyError) -> Exception:
        """A node that writes no more (a failover made it a replica) is no primary."""
        if str(exc).startswith("READONLY"):
            self._stale = True
            return RedisDown(f"the primary {self.master_name!r} became a replica")
        return exc

    async def _discover(self) -> RedisConnection:
        """The primary the first sentinel that knows it names; ``RedisDown`` if none does."""
        tried = []
        for sentinel in self._sentinels:
            try:
                reply = await sentinel.execute(
                    "SENTINEL", "get-master-addr-by-name", self.master_name
                )
            except (RedisDown, ReplyError) as exc:
                tried.append(f"{sentinel.name} ({exc})")
                continue
            if not reply:
                tried.append(f"{sentinel.name} (does not know {self.master_name!r})")
                continue
            host, port = reply  # type: ignore[misc]
            return self._use((host.decode(), int(port)))
        raise RedisDown(f"no sentinel named a primary {self.master_name!r}: " + "; ".join(tried))

    def _use(self, address: Address) -> RedisConnection:
        current = self._primary
        self._stale = False
        if current is not None and current.address == address:
            return current
        if current is not None:  # calls still on it fail or finish; then it closes
            task = asyncio.ensure_future(current.aclose())
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)
        self._primary = RedisConnection(
            *address, credentials=self.credentials, db=self._db, timeout=self.timeout
        )
        return self._primary

    async def ping(self) -> None:
        """Up means the sentinels name a primary, and it answers as one."""
        primary = await self._discover()
        role = await primary.execute("ROLE")
        if not role or role[0] != b"master":  # type: ignore[index]
            self._stale = True
            raise RedisDown(f"{primary.name}, named primary {self.master_name!r}, is not one yet")

    async def aclose(self) -> None:
        if self._primary is not None:
            await self._primary.aclose()
        for sentinel in self._sentinels:
            await sentinel.aclose()
