"""Everything a request needs that lives as long as the app: built once, closed once."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import httpx

from gateway.config import Settings
from gateway.limits.keys import StaticKeys
from gateway.providers.base import Provider
from gateway.providers.registry import provider_class
from gateway.routing.router import Router
from gateway.transport import Upstream, build_upstream

log = logging.getLogger("gateway")


@dataclass
class Resources:
    settings: Settings
    providers: dict[str, Provider]
    router: Router
    keys: StaticKeys
    upstreams: list[Upstream] = field(default_factory=list)
    started_at: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    async def build(
        cls, settings: Settings, transport: httpx.AsyncBaseTransport | None = None
    ) -> Resources:
        """Open one HTTP client per enabled provider; ``transport`` replaces theirs (tests)."""
        providers: dict[str, Provider] = {}
        upstreams: list[Upstream] = []
        try:
            for name, config in settings.providers.items():
                if not config.enabled:
                    continue
                factory = provider_class(config.type)
                upstream = build_upstream(config, transport) if factory.needs_http else None
                if upstream is not None:
                    upstreams.append(upstream)
                providers[name] = factory(name, config, upstream)
        except BaseException:
            for upstream in upstreams:
                await upstream.aclose()
            raise
        return cls(
            settings=settings,
            providers=providers,
            router=Router(settings, providers),
            keys=StaticKeys(settings.keys),
            upstreams=upstreams,
        )

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()
        for upstream in self.upstreams:
            await upstream.aclose()
