"""The live config and resources: what each request starts on, and what a reload swaps.

Every HTTP request enters the current generation of ``Resources`` (the
request-context middleware does, once) and leaves it when its answer is over,
streams included; in between it uses that generation and no other, so a
request in flight finishes on the config it started with. A reload
(``SIGHUP``, ``POST /admin/reload``) reads the config file again, builds the
next generation from it, taking over the store, the routing state and every
provider whose config did not change (gateway/resources.py), and swaps it in.
The generation it replaced is closed, with the providers only it had, once
its last request has left. A config that does not load or build is refused
with its error, and the running one stays (docs/operations.md, "Reloading the
config").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gateway.config import ConfigError, ServerConfig, Settings
from gateway.resources import Resources

log = logging.getLogger("gateway.reload")

# server: settings a reload applies; the others are read once, when the process starts
# (the edge's limits live in the server's protocol, the store's in its connection).
RELOADABLE_SERVER_FIELDS = frozenset(
    {
        "max_body_bytes",
        "default_max_output_tokens",
        "stale_key_seconds",
        "stream_commit_seconds",
        "keepalive_seconds",
    }
)


class ReloadRefused(Exception):
    """The config could not be loaded or built; the running one stays. The message
    names the file and the problem, never a secret."""


@dataclass
class Reloaded:
    """What a reload changed: ``changed`` is empty exactly when no new generation was made."""

    generation: int  # the generation running now
    source: str
    changed: list[str] = field(default_factory=list)  # "models added: a, b", ...
    restart_needed: list[str] = field(default_factory=list)  # settings read only at start


class Live:
    """The current ``Resources`` and the requests on each generation."""

    def __init__(self) -> None:
        self.current: Resources | None = None
        self.generation = 0
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()
        # Replaced generations not closed yet, oldest first. A generation shares what it
        # took over with the one before it, and closes what its successor did not take:
        # so one is closed only once every older one has been, lest it close a provider
        # that a request on an older generation still uses.
        self._retired: list[Resources] = []
        self._shut = False

    def start(self, resources: Resources) -> None:
        self.current, self.generation = resources, 1

    def enter(self) -> Resources:
        """The generation a new request runs on, counted until ``leave``."""
        resources = self.current
        assert resources is not None, "the app's lifespan has not started"
        resources.in_flight += 1
        return resources

    def leave(self, resources: Resources) -> None:
        resources.in_flight -= 1
        if not resources.in_flight and resources is not self.current:
            self._close_drained()

    async def reload(
        self,
        load: Callable[[], Settings],
        build: Callable[[Settings, Resources], Awaitable[Resources]],
    ) -> Reloaded:
        """Load the config with ``load`` and, if it differs from the running one, build
        the next generation with ``build`` and swap it in. Raises ``ReloadRefused``
        (the running config stays) when either fails.

        ``server:`` settings outside ``RELOADABLE_SERVER_FIELDS`` keep their running
        values in the new generation (what it says is what runs); those that changed in
        the file are listed in ``restart_needed``, at every reload until a restart.
        """
        async with self._lock:
            old = self.current
            assert old is not None, "the app's lifespan has not started"
            if self._shut:
                raise ReloadRefused("the gateway is shutting down")
            try:
                # Reading and validating the file: off the loop, where requests run.
                loaded = await asyncio.to_thread(load)
            except ConfigError as exc:
                raise ReloadRefused(str(exc)) from None
            settings = applicable(old.settings, loaded)
            reloaded = Reloaded(self.generation, settings.source)
            reloaded.changed = changes(old.settings, settings)
            reloaded.restart_needed = restart_needed(old.settings, loaded)
            if settings == old.settings:
                return reloaded
            if not reloaded.changed:  # a change no line names (the order of the keys)
                reloaded.changed = ["config changed"]
            try:
                new = await build(settings, old)
            except Exception as exc:  # a provider that cannot be set up, ...
                log.exception("reload: the new config could not be set up")
                raise ReloadRefused(f"{settings.source}: cannot be set up: {exc}") from None
            self.generation += 1
            reloaded.generation = self.generation
            self.current = new
            self._retired.append(old)
            self._close_drained()
            return reloaded

    def _close_drained(self) -> None:
        """Close the retired generations that have drained, oldest first, stopping at
        the first that still has requests in flight."""
        while self._retired and not self._retired[0].in_flight:
            self._close(self._retired.pop(0))

    def _close(self, resources: Resources) -> None:
        task = asyncio.ensure_future(resources.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closed)

    def _closed(self, task: asyncio.Task[None]) -> None:
        self._closing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("closing a replaced config's resources failed", exc_info=task.exception())

    async def aclose(self) -> None:
        """Close every generation: the current one, and those still draining (the
        server has ended their requests by now). A reload under way finishes first;
        none starts after."""
        async with self._lock:
            self._shut = True
            while self._retired:
                self._close(self._retired.pop(0))
            if self._closing:
                await asyncio.gather(*self._closing, return_exceptions=True)
            if self.current is not None:
                await self.current.aclose()


def changes(old: Settings, new: Settings) -> list[str]:
    """What a reload from ``old`` to ``new`` changes, one line per kind of change."""
    lines = []
    for section in ("providers", "models"):
        before, after = getattr(old, section), getattr(new, section)
        added = sorted(set(after) - set(before))
        removed = sorted(set(before) - set(after))
        changed = sorted(n for n in set(before) & set(after) if before[n] != after[n])
        for what, names in (("added", added), ("removed", removed), ("changed", changed)):
            if names:
                lines.append(f"{section} {what}: {', '.join(names)}")
    before_keys = {k.name: k for k in old.keys}
    after_keys = {k.name: k for k in new.keys}
    for what, names in (
        ("added", sorted(set(after_keys) - set(before_keys))),
        ("removed", sorted(set(before_keys) - set(after_keys))),
        (
            "changed",
            sorted(
                n for n in set(before_keys) & set(after_keys) if before_keys[n] != after_keys[n]
            ),
        ),
    ):
        if names:
            lines.append(f"keys {what}: {', '.join(names)}")
    if old.prices != new.prices:
        lines.append("prices changed")
    server = [
        name
        for name in RELOADABLE_SERVER_FIELDS
        if getattr(old.server, name) != getattr(new.server, name)
    ]
    if server:
        lines.append(f"server changed: {', '.join(sorted(server))}")
    return lines


def restart_needed(old: Settings, new: Settings) -> list[str]:
    """The ``server:`` settings that differ in ``new`` (the file) from what runs
    (``old``) but apply only at the next start."""
    return [
        f"server.{name}"
        for name in ServerConfig.model_fields
        if name not in RELOADABLE_SERVER_FIELDS
        and getattr(old.server, name) != getattr(new.server, name)
    ]


def applicable(old: Settings, new: Settings) -> Settings:
    """``new`` as a reload can apply it over ``old``: its ``server:`` settings that only a
    restart applies are ``old``'s."""
    server = old.server.model_copy(
        update={name: getattr(new.server, name) for name in RELOADABLE_SERVER_FIELDS}
    )
    return new.model_copy(update={"server": server})
