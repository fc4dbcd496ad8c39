"""gateway/server.py: uvicorn's own protocol, fed real HTTP: one answer in one write, and
each request's own send in its scope."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from uvicorn.server import ServerState

from gateway.fastpath import SERVER_SEND
from gateway.server import HttpProtocol
from gateway.streaming import EventStreamResponse, StreamPlan, StreamState

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
    """A stream committing its headers before its first event (docs/wire-formats.md, "Streams": after 5 s)."""
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


async def test_each_request_finds_its_own_send_in_its_scope() -> None:
    """Two pipelined requests, each answering its body through ``scope[SERVER_SEND]().send``."""
    sends: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        server_send = scope[SERVER_SEND]().send
        sends.append(server_send)
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await server_send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    transport, protocol = await _serve(app, REQUEST + REQUEST)
    await _settle(protocol)
    await _settle(protocol)

    assert len(sends) == 2
    assert sends[0] != sends[1], "each request its own cycle's send"
    answers = b"".join(transport.writes).split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert len(answers) == 2
    assert all(a.endswith(b"\r\n\r\n9\r\ndata: 1\n\n\r\n0\r\n\r\n") for a in answers)


async def test_a_streams_body_frames_skip_the_apps_send_wrappers() -> None:
    """The start and the last frame pass the app's wrappers (headers are added there);
    the events go to the server's send directly, and the client gets them all."""
    seen: list[str] = []

    async def chunks() -> AsyncIterator[bytes]:
        for text in (b"a", b"b"):
            yield text

    async def on_close(state: StreamState) -> None:
        seen.append(f"closed {state.outcome} {state.chunks}")

    async def opened() -> StreamPlan:
        return StreamPlan(
            [], chunks(), lambda text: b"data: " + text + b"\n\n", b"data: [DONE]\n\n", _no_frame
        )

    response = EventStreamResponse(
        opened,
        error_frame=_no_frame,
        error_response=lambda exc: Response(status_code=500),
        on_close=on_close,
        commit_after=5.0,
        keepalive=15.0,
    )

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        async def wrapped(message: Message) -> None:
            seen.append(message["type"])
            await send(message)

        await response(scope, receive, wrapped)

    transport, protocol = await _serve(app)
    await _settle(protocol)

    assert seen == ["http.response.start", "http.response.body", "closed done 2"]
    _, _, body = b"".join(transport.writes).partition(b"\r\n\r\n")
    assert body == (b"9\r\ndata: a\n\n\r\n9\r\ndata: b\n\n\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")


async def test_a_finished_requests_cycle_is_freed_without_the_collector() -> None:
    """The scope's send must not tie the request into a reference cycle: every
    request would then be garbage for the collector (10-20% more CPU a request)."""
    cycles: list[weakref.ref[Any]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        cycles.append(weakref.ref(send.__self__))  # type: ignore[attr-defined]  # uvicorn's cycle
        await _json_app()(scope, receive, send)

    gc.disable()
    try:
        transport, protocol = await _serve(app, REQUEST + REQUEST)
        await _settle(protocol)
        await _settle(protocol)
        protocol.tasks.clear()
        assert len(transport.writes) == 2
        assert cycles[0]() is None, "the first request's cycle outlived it"
    finally:
        gc.enable()


def _no_frame(error: object) -> bytes:
    return b""
