"""gateway/server.py: uvicorn's own protocol, fed real HTTP, writing one answer in one write."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.server import ServerState

from gateway.server import HttpProtocol

REQUEST = b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\n{}"


class RecordingTransport(asyncio.Transport):
    """The socket's side: every write the server makes, as it makes it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


async def _serve(app: Any, request: bytes = REQUEST) -> tuple[RecordingTransport, HttpProtocol]:
    config = uvicorn.Config(app, http=HttpProtocol, lifespan="off", access_log=False)
    config.load()
    protocol = HttpProtocol(config, ServerState(), app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    return transport, protocol


async def _settle(protocol: HttpProtocol) -> None:
    await asyncio.gather(*protocol.tasks)
    for _ in range(3):  # the turns after the app is done
        await asyncio.sleep(0)


def _json_app(body: bytes = b'{"ok":true}') -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


async def test_a_json_answer_leaves_in_one_write() -> None:
    transport, protocol = await _serve(_json_app())
    await _settle(protocol)

    assert len(transport.writes) == 1
    head, _, body = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 11" in head
    assert body == b'{"ok":true}'


async def test_keep_alive_answers_each_leave_in_one_write() -> None:
    transport, protocol = await _serve(_json_app(), REQUEST + REQUEST)
    await _settle(protocol)
    await _settle(protocol)  # the pipelined second request starts after the first

    assert len(transport.writes) == 2
    assert all(
        w.startswith(b"HTTP/1.1 200 OK\r\n") and w.endswith(b'{"ok":true}')
        for w in transport.writes
    )


async def test_a_head_whose_body_comes_later_is_not_held_back() -> None:
    """A stream committing its headers before its first event (DESIGN §1: after 5 s)."""
    body_may_go = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await body_may_go.wait()
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    transport, protocol = await _serve(app)
    for _ in range(5):
        await asyncio.sleep(0)

    assert len(transport.writes) == 1, "the head went out on its own"
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.writes[0].endswith(b"transfer-encoding: chunked\r\n\r\n")
    body_may_go.set()
    await _settle(protocol)
    assert b"".join(transport.writes[1:]) == b"9\r\ndata: 1\n\n\r\n0\r\n\r\n"


async def test_closing_sends_a_held_head_first() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        protocol.transport.close()  # e.g. a keep-alive timeout or shutdown in this very turn

    transport, protocol = await _serve(app)
    await _settle(protocol)

    assert transport.closed
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 204 No Content\r\n")
