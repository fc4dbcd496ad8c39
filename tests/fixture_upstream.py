"""A real HTTP upstream for tests that answers each provider's routes with the recorded
wire samples in tests/fixtures/<provider>/, and records what it was sent.

One server plays four APIs at their own paths, so one gateway config can point an
``openai``, an ``azure``, an ``anthropic`` and a ``gemini`` provider at it (each
``base_url`` written as docs/configuration.md says that provider takes it):

- OpenAI ``POST /v1/chat/completions``;
- Azure OpenAI ``POST /openai/deployments/{deployment}/chat/completions?api-version=...``;
- Anthropic ``POST /v1/messages``;
- Gemini ``POST /v1beta/models/{model}:generateContent`` and
  ``...:streamGenerateContent?alt=sse``.

A conversation with tools takes two turns, and so does the replay: a request that
carries no tool results is answered with the sample holding two parallel tool
calls, one that carries them with the plain text sample; streamed or not as the
request asks. Streams are sent one SSE event per write, as the APIs send them.

It runs in a thread of the test process (uvicorn on a socket bound to a free
127.0.0.1 port), so the test reads ``requests`` directly.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# Where each API carries its key; recorded as present, never with its value.
SECRET_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "x-goog-api-key"})
REDACTED = "<secret>"


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request as the upstream received it."""

    provider: str
    path: str  # with the query string
    headers: dict[str, str]  # lower-case names; secrets replaced by REDACTED
    raw: bytes
    body: Any  # the JSON body


@dataclass(frozen=True, slots=True)
class Replay:
    """One API's samples: the first turn's (two tool calls) and the last turn's (text)."""

    directory: str
    tools: tuple[str, str]  # (JSON answer, SSE stream)
    text: tuple[str, str]
    has_results: Callable[[Any], bool]

    def answer(self, body: Any, *, stream: bool) -> Response:
        json_name, sse_name = self.text if self.has_results(body) else self.tools
        if not stream:
            content = (FIXTURES / self.directory / json_name).read_bytes()
            return Response(content, media_type="application/json")
        events = _events((FIXTURES / self.directory / sse_name).read_bytes())
        return StreamingResponse(iter(events), media_type="text/event-stream")


def _events(wire: bytes) -> list[bytes]:
    """A recorded stream cut into its events, each with its blank line."""
    return [event + b"\n\n" for event in wire.replace(b"\r\n", b"\n").split(b"\n\n") if event]


def _openai_results(body: Any) -> bool:
    return any(message.get("role") == "tool" for message in body.get("messages", ()))


def _anthropic_results(body: Any) -> bool:
    return any(
        isinstance(block, dict) and block.get("type") == "tool_result"
        for message in body.get("messages", ())
        if isinstance(message.get("content"), list)
        for block in message["content"]
    )


def _gemini_results(body: Any) -> bool:
    return any(
        "functionResponse" in part
        for content in body.get("contents", ())
        for part in content.get("parts", ())
    )


OPENAI = Replay(
    "openai",
    ("chat_tools.json", "chat_tools_stream.sse"),
    ("chat.json", "chat_stream.sse"),
    _openai_results,
)
AZURE = Replay(
    "azure",
    ("chat_tools.json", "chat_tools_stream.sse"),
    ("chat.json", "chat_stream.sse"),
    _openai_results,
)
ANTHROPIC = Replay(
    "anthropic",
    ("message_parallel_tools.json", "stream_parallel_tools.sse"),
    ("message.json", "stream_text.sse"),
    _anthropic_results,
)
GEMINI = Replay(
    "gemini",
    ("generate_parallel_calls.json", "stream_parallel_calls.sse"),
    ("generate_text.json", "stream_text.sse"),
    _gemini_results,
)


class FixtureUpstream:
    """The server, its base URL (``url``) and the requests it received, in order."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._openai, methods=["POST"]),
                Route(
                    "/openai/deployments/{deployment}/chat/completions",
                    self._azure,
                    methods=["POST"],
                ),
                Route("/v1/messages", self._anthropic, methods=["POST"]),
                Route("/v1beta/models/{target}", self._gemini, methods=["POST"]),
            ]
        )
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def start(self, timeout: float = 10.0) -> FixtureUpstream:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the fixture upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> FixtureUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def received(self, marker: str) -> list[Recorded]:
        """The requests whose body holds ``marker`` (a test's own text), in order."""
        needle = json.dumps(marker)[1:-1].encode()
        with self._lock:
            return [r for r in self.requests if needle in r.raw]

    # ------------------------------------------------------------ routes

    async def _record(self, provider: str, request: Request) -> Any:
        raw = await request.body()
        body = json.loads(raw)
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = {
            name: REDACTED if name in SECRET_HEADERS else value
            for name, value in request.headers.items()
        }
        with self._lock:
            self.requests.append(Recorded(provider, path, headers, raw, body))
        return body

    async def _openai(self, request: Request) -> Response:
        body = await self._record("openai", request)
        return OPENAI.answer(body, stream=bool(body.get("stream")))

    async def _azure(self, request: Request) -> Response:
        body = await self._record("azure", request)
        if "api-version" not in request.query_params:
            # What Azure answers a request without one.
            return Response(
                (FIXTURES / "azure" / "error_resource_not_found.json").read_bytes(),
                status_code=404,
                media_type="application/json",
            )
        return AZURE.answer(body, stream=bool(body.get("stream")))

    async def _anthropic(self, request: Request) -> Response:
        body = await self._record("anthropic", request)
        return ANTHROPIC.answer(body, stream=bool(body.get("stream")))

    async def _gemini(self, request: Request) -> Response:
        body = await self._record("gemini", request)
        _, _, method = request.path_params["target"].partition(":")
        if method == "generateContent":
            return GEMINI.answer(body, stream=False)
        if method == "streamGenerateContent" and request.query_params.get("alt") == "sse":
            return GEMINI.answer(body, stream=True)
        return Response(status_code=404)  # a method the replay does not play
