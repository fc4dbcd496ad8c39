"""Everything a request needs that lives as long as the app: built once, closed once."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import httpx

from gateway.config import Settings
from gateway.limits.base import Store
from gateway.limits.gatekeeper import Gatekeeper
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
            fail_open=settings.server.fail_mode == "open",
            prefix=settings.server.redis_prefix,
            lease_ttl_ms=lease_ttl_ms,
        )
    from gateway.limits.embedded import EmbeddedStore

    return EmbeddedStore(settings.server.data_dir, lease_ttl_ms=lease_ttl_ms)


@dataclass
class Resources:
    settings: Settings
    providers: dict[str, Provider]
    router: Router
    gatekeeper: Gatekeeper
    routing: RoutingState
    upstreams: list[Upstream] = field(default_factory=list)
    started_at: int = field(default_factory=lambda: int(time.time()))
    # Background work that lives as long as the app (sharing cooldowns).
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def build(
        cls,
        settings: Settings,
        transport: httpx.AsyncBaseTransport | None = None,
        routing: RoutingState | None = None,
    ) -> Resources:
        """Open the store and one HTTP client per enabled provider.

        ``transport`` replaces every provider's transport (tests); ``routing`` is what
        routing learnt so far (a reload's), else it starts afresh.
        """
        routing = routing or RoutingState()
        providers: dict[str, Provider] = {}
        upstreams: list[Upstream] = []
        gatekeeper = Gatekeeper(build_store(settings), settings)
        try:
            for name, config in settings.providers.items():
                if not config.enabled:
                    continue
                factory = provider_class(config.type)
                upstream = build_upstream(config, transport) if factory.needs_http else None
                if upstream is not None:
                    upstreams.append(upstream)
                providers[name] = factory(name, config, upstream)
            await gatekeeper.start()
        except BaseException:
            for upstream in upstreams:
                await upstream.aclose()
            raise
        tasks = []
        store = gatekeeper.store
        if store.backend == "redis":  # shared with other processes: so are cooldowns
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
            upstreams=upstreams,
        )

    async def aclose(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.gatekeeper.aclose()
        for provider in self.providers.values():
            await provider.aclose()
        for upstream in self.upstreams:
            await upstream.aclose()
