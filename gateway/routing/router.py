"""Gateway model names -> the deployments that serve them, and which one to call.

For now one strategy, ``weighted``; retries, fallbacks, cooldowns and the
other strategies (docs/configuration.md, models.routing) wrap this interface in their own modules.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config import Deployment, ModelConfig, Price, Settings
from gateway.errors import ModelNotFound
from gateway.providers.base import Provider


@dataclass(frozen=True, slots=True)
class Target:
    """One deployment of a gateway model, ready to call."""

    model: str
    provider: Provider
    deployment: Deployment
    price: Price | None
    served_by: str  # "provider/upstream-model", the x-gateway-served-by header


def _target(name: str, provider: Provider, deployment: Deployment, price: Price | None) -> Target:
    return Target(name, provider, deployment, price, f"{provider.name}/{deployment.model}")


@dataclass(frozen=True, slots=True)
class ModelRoute:
    name: str
    config: ModelConfig
    targets: tuple[Target, ...]
    weights: tuple[float, ...]


class Router:
    def __init__(self, settings: Settings, providers: Mapping[str, Provider]) -> None:
        routes = {}
        for name, model in settings.enabled_models().items():
            targets = tuple(
                _target(name, providers[d.provider], d, settings.price_for(d))
                for d in model.deployments
                if d.provider in providers
            )
            routes[name] = ModelRoute(
                name, model, targets, tuple(t.deployment.weight for t in targets)
            )
        self._routes = routes

    def names(self) -> list[str]:
        return list(self._routes)

    def route(self, model: str) -> ModelRoute:
        try:
            return self._routes[model]
        except KeyError:
            raise ModelNotFound(f"The model `{model}` does not exist", param="model") from None

    def pick(self, route: ModelRoute) -> Target:
        if len(route.targets) == 1:
            return route.targets[0]
        return random.choices(route.targets, weights=route.weights)[0]
