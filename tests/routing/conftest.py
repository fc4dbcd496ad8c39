"""Fixtures for the routing tests: a respx upstream, and gateways built from YAML."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import respx

from tests.routing.support import Gateway, load


@pytest.fixture
def upstream() -> respx.Router:
    return respx.Router(assert_all_mocked=True)


GatewayFactory = Callable[..., Gateway]


@pytest.fixture
async def gateway(tmp_path: Path, upstream: respx.Router) -> AsyncIterator[GatewayFactory]:
    """``gateway(yaml, clock=None)``: a Router built from the YAML, its HTTP providers
    answered by ``upstream``."""
    built: list[Gateway] = []

    def make(text: str, *, clock: Callable[[], float] | None = None) -> Gateway:
        transport = httpx.MockTransport(upstream.async_handler)
        made = Gateway(load(tmp_path, text), transport, clock)
        built.append(made)
        return made

    yield make
    for made in built:
        await made.aclose()
