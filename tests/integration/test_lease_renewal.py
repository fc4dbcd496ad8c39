"""A stream longer than its lease's TTL keeps its max_parallel slot: a real gateway on
each store, the lease scaled down (docs/limits.md, "max_parallel: leases").

With ``server.lease_ttl_seconds: 3`` a lease is renewed every second while its
request is in flight. A key with ``max_parallel: 1`` holds a stream open well
past 3 s: every second request meanwhile is refused; once the client closes
the stream, the slot is free again. Without renewal the lease would expire
after 3 s and let a second request in.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.stores import STORES, auth, create_key, error_of, gateway_on
from tests.servers import ServerProcess

TTL = 3.0


def _config() -> dict[str, Any]:
    return {
        "providers": {"local": {"type": "mock"}},
        "models": {"chat": {"deployments": [{"provider": "local", "model": "mock-chat"}]}},
        "server": {"lease_ttl_seconds": TTL},
    }


@pytest.fixture(scope="module", params=STORES)
def gw(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with gateway_on(request.param, tmp_path_factory.mktemp("lease"), _config()) as g:
        yield g


HI = [{"role": "user", "content": "hi"}]


async def test_a_stream_longer_than_its_lease_keeps_its_slot(gw: ServerProcess) -> None:
    _, secret = create_key(gw.url, {"max_parallel": 1})
    url = f"{gw.url}/v1/chat/completions"
    # Four tokens a second for 30 s: it outlasts the test, which closes it.
    long = {
        "model": "chat",
        "messages": HI,
        "stream": True,
        "mock": {"tokens_per_s": 4, "chunks": 120},
    }
    async with httpx.AsyncClient(timeout=20) as client:
        request = client.build_request("POST", url, json=long, headers=auth(secret))
        stream = await client.send(request, stream=True)
        assert stream.status_code == 200, await stream.aread()
        admitted = time.monotonic()  # the lease was taken before the status line came
        lines = stream.aiter_lines()
        received = 0

        async def read() -> None:
            nonlocal received
            async for line in lines:
                if line.startswith("data: "):
                    received += 1

        reader = asyncio.create_task(read())
        refused: list[float] = []
        try:
            # Probe past the TTL by a margin: an unrenewed lease would be gone by then.
            while time.monotonic() - admitted < TTL + 1.5:
                r = await client.post(
                    url, json={"model": "chat", "messages": HI}, headers=auth(secret)
                )
                assert r.status_code == 429, (time.monotonic() - admitted, r.text)
                assert error_of(r)["code"] == "max_parallel_exceeded"
                refused.append(time.monotonic() - admitted)
                await asyncio.sleep(0.25)
            assert not reader.done()  # still streaming: the slot was held all along
            assert received > 4 * TTL / 2  # and tokens kept coming
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await lines.aclose()
            await stream.aclose()  # the client leaves; the gateway settles the stream

        # Released by the settle, not left to expire: admitted well within one TTL.
        deadline = time.monotonic() + TTL
        while True:
            r = await client.post(url, json={"model": "chat", "messages": HI}, headers=auth(secret))
            if r.status_code == 200:
                break
            assert error_of(r)["code"] == "max_parallel_exceeded", r.text
            assert time.monotonic() < deadline, "the slot was not released when the stream closed"
            await asyncio.sleep(0.1)
    assert refused[-1] > TTL + 0.5, refused
