"""gateway/httpclient/aiohttp.py: the transport ``transport: aiohttp`` picks, loaded only then.

Its behaviour end to end is in test_transport.py
(``test_openai_provider_over_each_transport``).
"""

from __future__ import annotations

import subprocess
import sys

import httpx

from gateway.config import ProviderConfig
from gateway.httpclient import LeanTransport
from gateway.httpclient.aiohttp import AiohttpTransport
from gateway.transport import build_upstream


async def test_the_config_picks_the_transport() -> None:
    for kind, expected in (("lean", LeanTransport), ("aiohttp", AiohttpTransport)):
        upstream = build_upstream(ProviderConfig(type="openai", transport=kind))
        try:
            assert type(upstream.transport) is expected
            assert isinstance(upstream.client, httpx.AsyncClient)
        finally:
            await upstream.aclose()


def test_aiohttp_is_not_imported_unless_a_config_asks_for_it() -> None:
    code = (
        "import sys, gateway.app, gateway.cli, gateway.resources, gateway.transport\n"
        "assert 'aiohttp' not in sys.modules, 'aiohttp imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
