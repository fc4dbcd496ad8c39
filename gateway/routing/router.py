"""Gateway model names -> the wrappers that call their deployments; ``run`` is the way in.

Per model, from its config (docs/configuration.md, "Routing"), innermost first:

    Deployments   choose a usable deployment by the strategy, call it once
    Hedge         strategy hedge: the next deployment after hedge_after_ms
    Retry         the model's failed calls again (tenacity), elsewhere when it can
    Fallback      the models in fallbacks / context_fallbacks, each its own chain

Each wraps the one below with the same interface (``Caller``). What routing
learns as calls run (in flight, latency, cooldowns) lives in the
``RoutingState`` given to the router, which the lifespan makes and a reload
carries over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass

from gateway.config import ModelConfig, Price, Settings
from gateway.errors import GatewayError, ModelNotFound
from gateway.providers.base import Provider
from gateway.routing.call import Answered, Opened, RoutedCall, Target, target
from gateway.routing.deployments import Caller, Deployments
from gateway.routing.fallback import Fallback
from gateway.routing.hedge import Hedge
from gateway.routing.retry import Retry
from gateway.routing.state import RoutingState
from gateway.routing.strategies import STRATEGIES
from gateway.schemas.openai import Usage

# On an error the gateway returns after calling more than one upstream: the SDKs'
# own retries would multiply the load on what already failed.
NO_SDK_RETRY = {"x-should-retry": "false"}


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """One gateway model: its deployments, and what a call to it may cost at most."""

    name: str
    config: ModelConfig
    targets: tuple[Target, ...]
    # Every price the call may meet: its deployments' and its fallbacks' (a budget
    # reservation covers the dearest).
    prices: tuple[Price, ...]
    caller: Caller


class Router:
    def __init__(
        self, settings: Settings, providers: Mapping[str, Provider], state: RoutingState
    ) -> None:
        self.state = state
        chains: dict[str, Caller] = {}
        targets: dict[str, tuple[Target, ...]] = {}
        models = settings.enabled_models()
        for name, model in models.items():
            routing = model.routing
            targets[name] = tuple(
                target(name, providers[d.provider], d, settings.price_for(d), routing.cooldown)
                for d in model.deployments
                if d.provider in providers
            )
            caller: Caller = Deployments(targets[name], STRATEGIES[routing.strategy], state)
            if routing.strategy == "hedge" and len(targets[name]) > 1:
                assert routing.hedge_after_ms is not None  # the config requires it
                caller = Hedge(caller, routing.hedge_after_ms, state)
            if routing.retries.attempts > 1:
                caller = Retry(caller, routing.retries)
            chains[name] = caller
        routes = {}
        for name, model in models.items():
            fallbacks = [(f, chains[f]) for f in model.fallbacks if f in chains]
            context = [(f, chains[f]) for f in model.context_fallbacks if f in chains]
            reachable = {name, *(f for f, _ in fallbacks), *(f for f, _ in context)}
            prices = tuple(t.price for m in reachable for t in targets[m] if t.price)
            caller = chains[name]
            if fallbacks or context:
                caller = Fallback(name, caller, fallbacks, context)
            routes[name] = ModelRoute(name, model, targets[name], prices, caller)
        self._routes = routes

    def names(self) -> list[str]:
        return list(self._routes)

    def route(self, model: str) -> ModelRoute:
        try:
            return self._routes[model]
        except KeyError:
            raise ModelNotFound(f"The model `{model}` does not exist", param="model") from None

    async def run(self, call: RoutedCall) -> Answered | RoutedStream:
        """A non-streamed call's answer; a streamed call's ``RoutedStream``, not opened
        yet (the response opens it, so its wait runs under the response's keep-alive)."""
        route = self._routes[call.model]  # admitted: it exists
        call.served_model = call.model
        if not call.deadline:
            loop = asyncio.get_running_loop()
            call.deadline = loop.time() + route.config.routing.retries.deadline_seconds
        if call.stream:
            return RoutedStream(route.caller, call, self.state)
        try:
            return await route.caller.answer(call)
        except GatewayError as exc:
            _said_retried(call, exc)
            raise


class RoutedStream:
    """A routed call's stream: ``open`` is its retry window (until the first output),
    ``close`` ends it, whatever happened, once."""

    def __init__(self, caller: Caller, call: RoutedCall, state: RoutingState) -> None:
        self.call = call
        self.opened: Opened | None = None
        self._caller, self._state = caller, state
        self._stack = AsyncExitStack()

    async def open(self) -> Opened:
        try:
            self.opened = await self._caller.open(self.call, self._stack)
        except GatewayError as exc:
            _said_retried(self.call, exc)
            raise
        return self.opened

    async def close(
        self, error: GatewayError | None, usage: Usage | None, outputs: int, *, left: bool
    ) -> None:
        """Close the upstream, and record how the stream ended: ``error`` after its first
        output, or the client ``left``; ``usage`` as the upstream reported it."""
        try:
            await self._stack.aclose()
        finally:
            opened = self.opened
            if opened is not None:
                attempt = opened.attempt
                attempt.usage, attempt.outputs = usage, outputs
                self._state.finish(attempt, error or (asyncio.CancelledError() if left else None))


def _said_retried(call: RoutedCall, error: GatewayError) -> None:
    if len(call.attempts) > 1:
        error.headers.update(NO_SDK_RETRY)
