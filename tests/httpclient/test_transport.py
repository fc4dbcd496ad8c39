"""gateway/httpclient/ against real servers on 127.0.0.1.

Two servers: the mock upstream (``gateway mock-upstream``, the same process the
integration tests use) for OpenAI-shaped calls, its counters and faults; and a
raw asyncio server in this module for what needs control of the bytes and the
connections (framing, keep-alive, restarts, garbage).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import Deployment, ProviderConfig
from gateway.errors import UpstreamUnavailable
from gateway.httpclient import LeanTransport
from gateway.providers.base import CallContext
from gateway.providers.mock import MockProvider
from gateway.providers.openai import OpenAIProvider
from gateway.providers.sse import SSEDecoder
from gateway.schemas.openai import ChatCompletionRequest, EmbeddingRequest
from gateway.transport import build_upstream, read_body
from tests.servers import ServerProcess, free_port, start_mock_upstream

TIMEOUT = {"connect": 2.0, "read": 5.0, "write": 5.0, "pool": 5.0}


@pytest.fixture(scope="module")
def mock() -> Iterator[ServerProcess]:
    server = start_mock_upstream()
    yield server
    server.stop()


@pytest.fixture
async def transport() -> AsyncIterator[LeanTransport]:
    t = LeanTransport()
    yield t
    await t.aclose()


def request(
    url: str, body: Any = None, *, method: str = "POST", timeout: dict | None = None
) -> httpx.Request:
    """Built as the providers build theirs: prebuilt, with a ``timeout`` extension."""
    return httpx.Request(
        method,
        url,
        headers=[("content-type", "application/json"), ("x-request-id", "req-lean")],
        content=json.dumps(body).encode() if body is not None else b"",
        extensions={"timeout": timeout or TIMEOUT},
    )


def chat(mock: ServerProcess, stream: bool = False, **script: Any) -> dict[str, Any]:
    return {
        "model": "mock-chat",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": stream,
        "mock": script,
    }


async def stats(mock: ServerProcess) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"{mock.url}/mock/stats")).json()


async def reset(mock: ServerProcess) -> None:
    async with httpx.AsyncClient() as client:
        (await client.post(f"{mock.url}/mock/reset")).raise_for_status()


async def read_pieces(response: httpx.Response) -> list[bytes]:
    try:
        return [piece async for piece in response.stream]  # type: ignore[union-attr]
    finally:
        await response.aclose()


# ---------------------------------------------------------------- a raw server

Route = Callable[[asyncio.StreamWriter, bytes], Awaitable[None]]


class RawServer:
    """HTTP/1.1 by hand: answers by path, counts connections, misbehaves on request."""

    def __init__(self) -> None:
        self.connections = 0
        self.open: set[asyncio.StreamWriter] = set()
        self.requests: list[tuple[bytes, bytes]] = []
        self.drop_reused = False  # close a kept-alive connection when a 2nd request comes
        self.port = 0
        self.routes: dict[bytes, Route] = {
            b"/json": self._json,
            b"/chunked": self._chunked,
            b"/big": self._big,
            b"/until-close": self._until_close,
            b"/garbage": self._garbage,
            b"/close": self._close,
            b"/hang": self._hang,
            b"/early-hints": self._early_hints,
            b"/huge-head": self._huge_head,
        }
        self.reader: asyncio.StreamReader | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, tls: ssl.SSLContext | None = None) -> RawServer:
        self.server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True, ssl=tls
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.server.close()
        for writer in list(self.open):
            writer.close()
        await self.server.wait_closed()
        await asyncio.sleep(0.05)  # let the handlers see their connections go

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open.add(writer)
        self.reader = reader
        served = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.split(b"\r\n")
                target = lines[0].split(b" ")[1]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                self.requests.append((target, head + body))
                if self.drop_reused and served:
                    return  # the keep-alive race: closed as the request arrived
                served += 1
                await self.routes[target](writer, body)
                if target in (b"/until-close", b"/close"):
                    return
        except ConnectionError:
            return  # the client went mid-answer (an abandoned stream)
        finally:
            self.open.discard(writer)
            writer.close()

    async def _json(self, writer: asyncio.StreamWriter, body: bytes) -> None:
        data = json.dumps({"ok": True, "received": len(body)}).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"X-Custom: a\r\nX-Custom: b\r\n\r\n%s" % (len(data), data)
        )

    async def _chunked(self, writer: asyncio.StreamWriter, body: bytes) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(3):
            data = b"piece %d;" % i
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")

    async def _big(self, writer: asyncio.StreamWriter, body: bytes) -> None:
        size = 3 * 1024 * 1024
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // 65536):
            writer.write(b"x" * 65536)
            await writer.drain()

    async def _until_close(self, writer: asyncio.StreamWriter, body: bytes) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it, then EOF")

    async def _garbage(self, writer: asyncio.StreamWriter, body: bytes) -> None:
        writer.write(b"SPDY/9 what\r\n\r\n")

    async def _close(self, writer: asyncio.StreamWriter, body: bytes) -> None:
        return None  # no answer at all

    async def _early_hints(self, writer: asyncio.StreamWriter, body: bytes) -> None:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async def _huge_head(self, writer: asyncio.StreamWriter, body: bytes) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nX-Big: ")
        for _ in range(8):  # a head that never ends, arriving in pieces
            writer.write(b"a" * 20_000)
            await writer.drain()
            await asyncio.sleep(0.01)

    async def _hang(self, writer: asyncio.StreamWriter, body: bytes) -> None:
        assert self.reader is not None
        await self.reader.read()  # no answer; returns when the client goes


@pytest.fixture
async def raw() -> AsyncIterator[RawServer]:
    server = await RawServer().start()
    yield server
    await server.stop()


# ---------------------------------------------------------------- the mock upstream


@pytest.mark.parametrize(("cut_after", "breaks"), [(2, True), (50, False)])
async def test_mock_upstream_breaks_an_answer_as_the_in_process_mock_does(
    mock: ServerProcess, cut_after: int, breaks: bool
) -> None:
    """One script, one outcome, whether the mock runs in-process or over HTTP: a fault
    past the end of the answer (16 tokens) never fires."""
    body = {"model": "x", "messages": [{"role": "user", "content": "Hi"}]}
    request = ChatCompletionRequest.model_validate({**body, "mock": {"cut_after": cut_after}})
    ctx = CallContext(
        request_id="req-mock-parity",
        deployment=Deployment.model_validate({"provider": "up", "model": "mock-chat"}),
    )
    config = ProviderConfig(type="openai", base_url=f"{mock.url}/v1", api_key="sk-up")
    upstream = build_upstream(config)
    providers = [
        OpenAIProvider("up", config, upstream),
        MockProvider("local", ProviderConfig(type="mock")),
    ]
    try:
        for provider in providers:
            if breaks:
                with pytest.raises(UpstreamUnavailable, match="malformed"):
                    await provider.chat(request, ctx)
            else:
                assert (await provider.chat(request, ctx)).choices[0].message.content
    finally:
        await upstream.aclose()


async def test_non_stream_json_is_read_whole(mock: ServerProcess, transport: LeanTransport) -> None:
    response = await transport.handle_async_request(
        request(f"{mock.url}/v1/chat/completions", chat(mock))
    )
    assert response.status_code == 200
    # A small body of known length comes back whole, in memory.
    assert isinstance(response.stream, httpx.ByteStream)
    assert response.headers["content-type"] == "application/json"
    assert json.loads(await read_body(response))["object"] == "chat.completion"
    assert (await response.aread()) == await read_body(response)  # httpx's own read agrees
    await response.aclose()


async def test_sse_stream_arrives_chunk_by_chunk(
    mock: ServerProcess, transport: LeanTransport
) -> None:
    response = await transport.handle_async_request(
        request(f"{mock.url}/v1/chat/completions", chat(mock, True, chunks=5, tokens_per_s=20))
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert not response.is_stream_consumed
    arrivals: list[float] = []
    pieces: list[bytes] = []
    try:
        async for piece in response.stream:  # type: ignore[union-attr]
            arrivals.append(time.monotonic())
            pieces.append(piece)
    finally:
        await response.aclose()
    # Paced 50 ms apart: they came one by one, not all at the end.
    assert len(pieces) >= 5
    assert arrivals[-1] - arrivals[0] >= 0.15
    decoder = SSEDecoder()
    events = [e for piece in pieces for e in decoder.feed(piece)] + decoder.close()
    assert events[-1].data == b"[DONE]"
    chunks = [json.loads(e.data) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")) == 5
    assert b"".join(pieces).endswith(b"data: [DONE]\n\n")  # no chunked framing leaks through


async def test_abandoned_stream_closes_the_connection(
    mock: ServerProcess, transport: LeanTransport
) -> None:
    await reset(mock)
    response = await transport.handle_async_request(
        request(f"{mock.url}/v1/chat/completions", chat(mock, True, chunks=100, tokens_per_s=20))
    )
    await anext(aiter(response.stream))  # type: ignore[arg-type]
    await response.aclose()
    for _ in range(100):
        if (await stats(mock))["streams_disconnected"] == 1:
            break
        await asyncio.sleep(0.02)
    assert (await stats(mock))["streams_disconnected"] == 1


async def test_pool_limit_queues_callers(mock: ServerProcess) -> None:
    await reset(mock)
    transport = LeanTransport(max_connections=2)
    body = chat(mock, ttft_ms=200)

    async def call() -> int:
        response = await transport.handle_async_request(
            request(f"{mock.url}/v1/chat/completions", body)
        )
        await response.aclose()
        return response.status_code

    try:
        assert await asyncio.gather(*(call() for _ in range(5))) == [200] * 5
    finally:
        await transport.aclose()
    seen = await stats(mock)
    assert seen["requests"] == 5
    assert seen["max_in_flight"] == 2


async def test_read_timeout_waiting_for_the_head(
    mock: ServerProcess, transport: LeanTransport
) -> None:
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        await transport.handle_async_request(
            request(
                f"{mock.url}/v1/chat/completions",
                chat(mock, ttft_ms=1000),
                timeout={**TIMEOUT, "read": 0.2},
            )
        )
    assert time.monotonic() - started < 0.8


async def test_read_timeout_between_stream_chunks(
    mock: ServerProcess, transport: LeanTransport
) -> None:
    response = await transport.handle_async_request(
        request(
            f"{mock.url}/v1/chat/completions",
            chat(mock, True, chunks=3, tokens_per_s=2),
            timeout={**TIMEOUT, "read": 0.2},
        )
    )
    with pytest.raises(httpx.ReadTimeout):
        await read_pieces(response)


async def test_server_closing_mid_stream(mock: ServerProcess, transport: LeanTransport) -> None:
    response = await transport.handle_async_request(
        request(f"{mock.url}/v1/chat/completions", chat(mock, True, chunks=5, cut_after=2))
    )
    received: list[bytes] = []
    with pytest.raises(httpx.RemoteProtocolError):
        try:
            async for piece in response.stream:  # type: ignore[union-attr]
                received.append(piece)
        finally:
            await response.aclose()
    assert b"".join(received).count(b"data: ") == 2


async def test_connection_refused(transport: LeanTransport) -> None:
    with pytest.raises(httpx.ConnectError):
        await transport.handle_async_request(
            request(f"http://127.0.0.1:{free_port()}/v1/chat/completions", {})
        )


@pytest.mark.parametrize("kind", ["lean", "aiohttp"])
async def test_openai_provider_over_each_transport(mock: ServerProcess, kind: str) -> None:
    """Both transports a provider can be configured with (``transport:``), end to end."""
    config = ProviderConfig(
        type="openai", base_url=f"{mock.url}/v1", api_key="sk-up", transport=kind
    )
    upstream = build_upstream(config)
    assert type(upstream.transport).__name__ == {"lean": "LeanTransport"}.get(
        kind, "AiohttpTransport"
    )
    provider = OpenAIProvider("up", config, upstream)
    ctx = CallContext(
        request_id="req-provider",
        deployment=Deployment.model_validate({"provider": "up", "model": "mock-chat"}),
    )
    messages = [{"role": "user", "content": "Hi"}]
    try:
        answer = await provider.chat(
            ChatCompletionRequest.model_validate({"model": "x", "messages": messages}), ctx
        )
        assert answer.choices[0].message.content
        request_stream = ChatCompletionRequest.model_validate(
            {"model": "x", "messages": messages, "stream": True, "mock": {"chunks": 4}}
        )
        async with provider.stream(request_stream, ctx) as chunks:
            received = [c async for c in chunks]
        assert sum(1 for c in received if c.choices and c.choices[0].delta.content) == 4
        assert received[-1].usage is not None
        embedding = await provider.embed(
            EmbeddingRequest.model_validate({"model": "x", "input": ["a", "b"]}), ctx
        )
        assert len(embedding.data) == 2
    finally:
        await upstream.aclose()
    assert "req-provider" in (await stats(mock))["request_ids"]


# ---------------------------------------------------------------- the raw server


async def test_keep_alive_reuses_one_connection(raw: RawServer, transport: LeanTransport) -> None:
    for i in range(5):
        response = await transport.handle_async_request(request(f"{raw.url}/json", {"i": i}))
        assert json.loads(await read_body(response)) == {
            "ok": True,
            "received": len(json.dumps({"i": i})),
        }
    response = await transport.handle_async_request(request(f"{raw.url}/chunked", {}))
    await read_pieces(response)  # a stream read to its end goes back to the pool too
    response = await transport.handle_async_request(request(f"{raw.url}/json", {}))
    assert response.status_code == 200
    assert raw.connections == 1
    assert len(raw.requests) == 7


async def test_request_goes_out_whole(raw: RawServer, transport: LeanTransport) -> None:
    response = await transport.handle_async_request(request(f"{raw.url}/json", {"a": 1}))
    assert response.headers.get_list("x-custom") == ["a", "b"]  # raw header pairs kept
    sent = raw.requests[0][1]
    head, _, body = sent.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /json HTTP/1.1\r\n")
    assert b"\r\nContent-Length: 8" in head
    assert b"\r\nx-request-id: req-lean" in head
    assert body == b'{"a": 1}'


async def test_chunked_body_streams(raw: RawServer, transport: LeanTransport) -> None:
    response = await transport.handle_async_request(request(f"{raw.url}/chunked", {}))
    assert not response.is_stream_consumed
    assert await read_pieces(response) == [b"piece 0;", b"piece 1;", b"piece 2;"]


async def test_large_content_length_body_streams(raw: RawServer, transport: LeanTransport) -> None:
    response = await transport.handle_async_request(request(f"{raw.url}/big", {}))
    assert not response.is_stream_consumed
    pieces = await read_pieces(response)
    assert len(pieces) > 1
    assert sum(map(len, pieces)) == 3 * 1024 * 1024
    response = await transport.handle_async_request(request(f"{raw.url}/json", {}))
    assert raw.connections == 1  # read to its end: reused


async def test_body_delimited_by_close(raw: RawServer, transport: LeanTransport) -> None:
    response = await transport.handle_async_request(request(f"{raw.url}/until-close", {}))
    assert b"".join(await read_pieces(response)) == b"all of it, then EOF"
    response = await transport.handle_async_request(request(f"{raw.url}/json", {}))
    assert response.status_code == 200
    assert raw.connections == 2


async def test_abandoned_stream_is_not_reused(raw: RawServer, transport: LeanTransport) -> None:
    response = await transport.handle_async_request(request(f"{raw.url}/chunked", {}))
    await anext(aiter(response.stream))  # type: ignore[arg-type]
    await response.aclose()
    await transport.handle_async_request(request(f"{raw.url}/json", {}))
    assert raw.connections == 2


async def test_malformed_response(raw: RawServer, transport: LeanTransport) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await transport.handle_async_request(request(f"{raw.url}/garbage", {}))


async def test_new_connection_closed_without_answer_is_not_retried(
    raw: RawServer, transport: LeanTransport
) -> None:
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        await transport.handle_async_request(request(f"{raw.url}/close", {}))
    assert len(raw.requests) == 1


async def test_stale_pooled_connection_after_restart(
    raw: RawServer, transport: LeanTransport
) -> None:
    await transport.handle_async_request(request(f"{raw.url}/json", {}))
    await raw.stop()  # the pooled connection is closed under us
    await raw.start()  # same port
    response = await transport.handle_async_request(request(f"{raw.url}/json", {}))
    assert response.status_code == 200
    assert raw.connections == 2


async def test_keep_alive_race_is_retried_once_on_a_fresh_connection(
    raw: RawServer, transport: LeanTransport
) -> None:
    await transport.handle_async_request(request(f"{raw.url}/json", {"n": 1}))
    raw.drop_reused = True  # the next request on that connection finds it closing
    response = await transport.handle_async_request(request(f"{raw.url}/json", {"n": 2}))
    assert response.status_code == 200
    assert raw.connections == 2
    # The caveat, made visible: the server did read the request twice.
    assert [sent.endswith(b'{"n": 2}') for _, sent in raw.requests] == [False, True, True]


async def test_read_timeout_on_a_reused_connection_is_not_retried(
    raw: RawServer, transport: LeanTransport
) -> None:
    # A server still working on a request (a long completion) must not get it twice.
    await transport.handle_async_request(request(f"{raw.url}/json", {}))
    with pytest.raises(httpx.ReadTimeout):
        await transport.handle_async_request(
            request(f"{raw.url}/hang", {}, timeout={**TIMEOUT, "read": 0.3})
        )
    assert [target for target, _ in raw.requests] == [b"/json", b"/hang"]


async def test_aclose_closes_every_connection(raw: RawServer) -> None:
    transport = LeanTransport()
    streaming = await transport.handle_async_request(request(f"{raw.url}/chunked", {}))
    await transport.handle_async_request(request(f"{raw.url}/json", {}))
    assert len(raw.open) == 2
    await transport.aclose()
    for _ in range(50):
        if not raw.open:
            break
        await asyncio.sleep(0.01)
    assert not raw.open
    with pytest.raises(httpx.ReadError):
        await read_pieces(streaming)


async def test_cancelled_call_drops_its_connection(
    raw: RawServer, transport: LeanTransport
) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await transport.handle_async_request(request(f"{raw.url}/hang", {}))
    for _ in range(50):
        if not raw.open:
            break
        await asyncio.sleep(0.01)
    assert not raw.open  # the server saw the caller go
    await transport.handle_async_request(request(f"{raw.url}/json", {}))
    assert raw.connections == 2


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, and its key."""
    if shutil.which("openssl") is None:
        pytest.fail("the TLS test needs the openssl command (apt-get install openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    server = await RawServer().start(server_tls)
    url = f"https://127.0.0.1:{server.port}"
    transport = LeanTransport(ssl_context=ssl.create_default_context(cafile=str(cert)))
    untrusting = LeanTransport()  # the system's roots: the self-signed server is refused
    try:
        for _ in range(2):
            response = await transport.handle_async_request(request(f"{url}/json", {}))
            assert json.loads(await read_body(response))["ok"] is True
        pieces = await read_pieces(
            await transport.handle_async_request(request(f"{url}/chunked", {}))
        )
        assert pieces == [b"piece 0;", b"piece 1;", b"piece 2;"]
        assert server.connections == 1
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusting.handle_async_request(request(f"{url}/json", {}))
    finally:
        await transport.aclose()
        await untrusting.aclose()
        await server.stop()


async def test_interim_answer_is_skipped(raw: RawServer, transport: LeanTransport) -> None:
    response = await transport.handle_async_request(request(f"{raw.url}/early-hints", {}))
    assert (response.status_code, await read_body(response)) == (200, b"ok")
    assert "link" not in response.headers
    await transport.handle_async_request(request(f"{raw.url}/json", {}))
    assert raw.connections == 1


async def test_oversized_head_is_refused(raw: RawServer, transport: LeanTransport) -> None:
    with pytest.raises(httpx.RemoteProtocolError, match="head too large"):
        await transport.handle_async_request(request(f"{raw.url}/huge-head", {}))


async def test_pool_timeout(raw: RawServer) -> None:
    transport = LeanTransport(max_connections=1)
    busy = asyncio.create_task(transport.handle_async_request(request(f"{raw.url}/hang", {})))
    await asyncio.sleep(0.05)
    try:
        with pytest.raises(httpx.PoolTimeout):
            await transport.handle_async_request(
                request(f"{raw.url}/json", {}, timeout={**TIMEOUT, "pool": 0.1})
            )
    finally:
        busy.cancel()
        await transport.aclose()
    # The slot the hung call held came back when it was cancelled.
    transport = LeanTransport(max_connections=1)
    assert (await transport.handle_async_request(request(f"{raw.url}/json", {}))).status_code == 200
    await transport.aclose()
