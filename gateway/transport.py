"""The HTTP clients beneath the providers, and the one place their transport is chosen.

Providers see only httpx: an ``httpx.AsyncClient``, ``httpx.Request`` and
``httpx.Response``. Beneath it sits a transport chosen by measurement
(``build_upstream``): httpx's own costs several times more CPU per request
(README.md, "Performance"). The app owns the transport instance, so the hot path calls
``Upstream.send`` (the transport directly, with a prebuilt request) and skips
``AsyncClient.send``'s URL merging, cookie jar, auth and redirect layers.
Tests hand in any other transport, such as
``httpx.MockTransport(respx_router.async_handler)``.

The transports themselves live in gateway/httpclient/: ``LeanTransport``
(the default) and ``AiohttpTransport`` (``transport: aiohttp``, imported only
when a config asks for it).
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from gateway.config import ProviderConfig
from gateway.httpclient import LeanTransport


@dataclass(frozen=True, slots=True)
class Upstream:
    """One provider's HTTP client and the transport instance beneath it."""

    client: httpx.AsyncClient
    transport: httpx.AsyncBaseTransport

    async def send(self, request: httpx.Request) -> httpx.Response:
        """Send a prebuilt request; the response streams and must be closed."""
        return await self.transport.handle_async_request(request)

    async def aclose(self) -> None:
        await self.client.aclose()  # closes the transport too


async def read_body(response: httpx.Response) -> bytes:
    """The whole body of a response from ``Upstream.send``.

    Both transports hand back a small body of known length in memory, as an
    ``httpx.ByteStream``: joined here without a pass through httpx's decoders,
    which a body the gateway asked for in identity encoding does not need.
    """
    stream = response.stream
    if isinstance(stream, httpx.ByteStream) and "content-encoding" not in response.headers:
        return b"".join(stream)
    return await response.aread()


def build_upstream(
    config: ProviderConfig, transport: httpx.AsyncBaseTransport | None = None
) -> Upstream:
    """The client for one provider; ``transport`` replaces the default (tests).

    The default is ``LeanTransport`` (gateway/httpclient/), chosen by
    measurement against ``AiohttpTransport`` (gateway/httpclient/aiohttp.py): 33 against 113 µs
    of CPU per non-streamed call and 15.5 against 34.8 µs per chunk arriving
    one at a time. ``transport: aiohttp`` in a provider's config keeps the
    latter, for an upstream the lean client does not suit.
    """
    if transport is None:
        if config.transport == "aiohttp":
            from gateway.httpclient.aiohttp import AiohttpTransport

            transport = AiohttpTransport(max_connections=config.max_connections)
        else:
            transport = LeanTransport(max_connections=config.max_connections)
    client = httpx.AsyncClient(transport=transport, timeout=None, follow_redirects=False)
    return Upstream(client=client, transport=transport)
