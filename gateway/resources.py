"""Everything a request needs that lives as long as the app: built once, closed once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from gateway.config import Settings
from gateway.limits.base import Store
from gateway.limits.gatekeeper import Gatekeeper
from gateway.observability.observer import Observer
from gateway.providers.base import Provider
from gateway.providers.registry import provider_class
from gateway.routing.router import Router
from gateway.routing.state import RoutingState
from gateway.transport import Upstream, build_upstream

log = logging.getLogger("gateway")


def build_store(settings: Settings) -> Store:
    lease_ttl_ms = int(settings.server.lease_ttl_seconds * 1000)
    if settings.redis_url is not None:
        from gateway.limits.redis import RedisStore

        return RedisStore(
            settings.redis_url.get_secret_value(),
            tls=settings.server.redis_tls,
            fail_open=settings.server.fail_mode == "open",
            prefix=settings.server.redis_prefix,
            lease_ttl_ms=lease_ttl_ms,
        )
    from gateway.limits.embedded import EmbeddedStore

    return EmbeddedStore(settings.server.data_dir, lease_ttl_ms=lease_ttl_ms)


@dataclass(eq=False)
class Resources:
    """One generation of the app's resources: built from one ``Settings``, swapped whole
    by a reload (gateway/live.py), and closed once the last request on it ends.

    A generation built from a previous one (``build(previous=...)``) takes over what
    did not change: the store (always: its settings need a restart), the routing
    state, and the provider of every ``providers:`` entry whose config is the same,
    with its client and pool. What it took over is the successor's to close.
    """

    settings: Settings
    providers: dict[str, Provider]
    router: Router
    gatekeeper: Gatekeeper
    routing: RoutingState
    observer: Observer = field(default_factory=Observer)
    upstreams: dict[str, Upstream] = field(default_factory=dict)  # by provider name
    started_at: int = field(default_factory=lambda: int(time.time()))
    # Background work that lives as long as the store (sharing cooldowns).
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Requests that started on this generation and have not ended (gateway/live.py).
    in_flight: int = 0
    # What a successor took over, so closing this generation leaves it open.
    handed_over: set[str] = field(default_factory=set)
    store_handed_over: bool = False

    @classmethod
    async def build(
        cls,
        settings: Settings,
        transport: httpx.AsyncBaseTransport | None = None,
        routing: RoutingState | None = None,
        *,
        observer: Observer | None = None,
        previous: Resources | None = None,
        wrap_store: Callable[[Store], Store] | None = None,
    ) -> Resources:
        """Open the store and one HTTP client per enabled provider, or take them over
        from ``previous`` where their config is unchanged.

        ``transport`` replaces every provider's transport (tests); ``routing`` is what
        routing learnt so far, else ``previous``'s, else it starts afresh. Nothing of
        ``previous`` changes hands unless the build succeeds. ``wrap_store`` wraps a
        new store (tracing's spans; None, as when tracing is off: nothing wraps it).
        """
        if previous is not None:
            routing = routing or previous.routing
            observer = observer or previous.observer
        routing = routing or RoutingState()
        observer = observer or Observer()
        routing.observer = observer
        providers: dict[str, Provider] = {}
        upstreams: dict[str, Upstream] = {}
        kept: set[str] = set()
        if previous is not None:
            store = previous.gatekeeper.store
        else:
            store = build_store(settings)
            if wrap_store is not None:
                store = wrap_store(store)
        store.observer = observer
        gatekeeper = Gatekeeper(store, settings)
        try:
            for name, config in settings.providers.items():
                if not config.enabled:
                    continue
                if (
                    previous is not None
                    and name in previous.providers
                    and previous.settings.providers[name] == config
                ):
                    providers[name] = previous.providers[name]
                    if name in previous.upstreams:
                        upstreams[name] = previous.upstreams[name]
                    kept.add(name)
                    continue
                factory = provider_class(config.type)
                upstream = build_upstream(config, transport) if factory.needs_http else None
                if upstream is not None:
                    upstreams[name] = upstream
                providers[name] = factory(name, config, upstream)
            if previous is None:
                await gatekeeper.start()
            else:
                gatekeeper.take_over(previous.gatekeeper)
                gatekeeper.start_renewing()
        except BaseException:
            for name, upstream in upstreams.items():
                if name not in kept:
                    await upstream.aclose()
            raise
        tasks = []
        if previous is not None:  # the store's background work goes with the store
            tasks, previous.tasks = previous.tasks, []
            previous.handed_over = kept
            previous.store_handed_over = True
        elif store.backend == "redis":  # shared with other processes: so are cooldowns
            from gateway.limits.cooldowns import SharedCooldowns

            routing.board = shared = SharedCooldowns(store)  # type: ignore[arg-type]
            tasks.append(asyncio.create_task(shared.run(routing.merge)))
        return cls(
            tasks=tasks,
            settings=settings,
            providers=providers,
            router=Router(settings, providers, routing),
            gatekeeper=gatekeeper,
            routing=routing,
            observer=observer,
            upstreams=upstreams,
        )

    async def aclose(self) -> None:
        """Close what this generation owns: all of it, less what a successor took over."""
        for task in self.tasks:
            task.cancel()
        await self.gatekeeper.aclose(close_store=not self.store_handed_over)
        for name, provider in self.providers.items():
            if name not in self.handed_over:
                await provider.aclose()
        for name, upstream in self.upstreams.items():
            if name not in self.handed_over:
                await upstream.aclose()
