"""The answer goes out before its settle, under a real gateway and a real Redis.

A store that stalls once a request is admitted must cost the client nothing:
the gateway sends the answer, then settles; a settle the store does not answer
is buffered and written when it does (docs/architecture.md, the request path;
docs/limits.md, "When the store is down"). Checked by order, not by time: a
proxy in front of Redis stops at the settle, and looks at the client's socket.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import time
import uuid
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import httpx

from gateway.limits.resp import Script
from tests.integration.stores import ADMIN, MASTER, auth
from tests.limits.support import RedisServer
from tests.servers import standard_config, start_gateway, write_config

TIMEOUT = 3.0


def chat(content: str = "hi") -> dict[str, Any]:
    return {"model": "local-chat", "messages": [{"role": "user", "content": content}]}


def config_key_id(secret: str) -> str:
    return f"key_cfg_{hashlib.sha256(secret.encode()).hexdigest()[:12]}"


class SettleTrap:
    """A loopback proxy in front of Redis that, armed, stops at the first settle: that
    call, and all that follows on its connection, never reaches Redis (a store that
    stalls mid-request), and ``on_settle`` runs at the moment it arrives."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        source = resources.files("gateway.limits").joinpath("lua", "settle_v4.lua").read_text()
        self.marker = Script.of(source).sha.encode()  # settles are called by the sha
        self.armed = False
        self.on_settle: Callable[[], None] = lambda: None
        self.caught = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> SettleTrap:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self.redis_port)

        async def commands() -> None:
            stalled = False
            try:
                while data := await client_r.read(65536):
                    if self.armed and self.marker in data:
                        self.armed, stalled = False, True
                        self.on_settle()
                        self.caught.set()
                    if not stalled:
                        redis_w.write(data)
                        await redis_w.drain()
            except OSError:
                pass
            finally:
                redis_w.close()

        async def replies() -> None:
            try:
                while data := await redis_r.read(65536):
                    client_w.write(data)
                    await client_w.drain()
            except OSError:
                pass
            finally:
                client_w.close()

        await asyncio.gather(commands(), replies())


def _complete_response(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


async def test_a_stall_after_admission_delays_the_bookkeeping_not_the_answer(
    tmp_path: Path,
) -> None:
    """The answer goes out before its settle: a store that stalls once the request is
    admitted costs the client nothing, and the settle still lands when it answers.

    Checked by order, not by time: when the settle reaches the store, the whole answer
    is already in the client's socket (the gateway wrote it first); were the answer
    held for the settle, it could not be, as the trap never lets the settle through."""
    own = RedisServer(tmp_path).start()  # of its own: no prefix to clean up
    key = "sk-settle-order-" + uuid.uuid4().hex
    config = standard_config("http://127.0.0.1:9")
    config["keys"].append({"name": "order", "key": key})
    async with SettleTrap(own.port) as trap:
        env = {"REDIS_URL": f"redis://127.0.0.1:{trap.port}/0", "GATEWAY_MASTER_KEY": MASTER}
        try:
            gateway = start_gateway(write_config(tmp_path, config), env=env)
            try:
                usage_url = f"{gateway.url}/admin/keys/{config_key_id(key)}/usage"
                async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                    warm = await client.post(
                        f"{gateway.url}/v1/chat/completions", json=chat(), headers=auth(key)
                    )
                    assert warm.status_code == 200, warm.text
                    await _requests_recorded(client, usage_url, 1)  # its settle went through

                    loop = asyncio.get_running_loop()
                    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=TIMEOUT)
                    sock.setblocking(False)
                    seen_at_settle: list[bytes] = []

                    def peek() -> None:
                        try:
                            seen_at_settle.append(sock.recv(1 << 20, socket.MSG_PEEK))
                        except BlockingIOError:
                            seen_at_settle.append(b"")

                    trap.on_settle, trap.armed = peek, True
                    body = json.dumps(chat("admitted, then the store stalls")).encode()
                    await loop.sock_sendall(
                        sock,
                        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                        + f"authorization: Bearer {key}\r\n".encode()
                        + b"content-type: application/json\r\nconnection: close\r\n"
                        + f"content-length: {len(body)}\r\n\r\n".encode()
                        + body,
                    )
                    await asyncio.wait_for(trap.caught.wait(), TIMEOUT)
                    assert _complete_response(seen_at_settle[0]), seen_at_settle
                    answer = b""
                    while chunk := await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), TIMEOUT):
                        answer += chunk
                    sock.close()
                    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
                    assert answer == seen_at_settle[0]

                    # Buffered while the store stalled, written once it answers: both count.
                    await _requests_recorded(client, usage_url, 2)
            finally:
                gateway.stop()
        finally:
            own.kill()


async def _requests_recorded(client: httpx.AsyncClient, url: str, requests: int) -> None:
    """Wait until the key's usage counts ``requests`` (503 meanwhile: the store is away)."""
    deadline = time.monotonic() + 5
    while True:
        usage = await client.get(url, headers=ADMIN)
        if usage.status_code == 200 and usage.json()["requests"] == requests:
            return
        assert usage.status_code in (200, 503), usage.text
        assert time.monotonic() < deadline, usage.text
        await asyncio.sleep(0.1)
