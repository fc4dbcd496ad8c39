"""``gateway mock-upstream``: the mock provider as a real OpenAI-compatible HTTP server.

Integration tests and benchmarks use it as an upstream with scripted delays
and faults (the ``mock`` body field, see ``providers/mock.py``); it answers with
the same text and tool calls as the in-process mock, streamed the same way. It counts
what it sees at ``GET /mock/stats``, disconnects included, so a test can prove
that the gateway closed an abandoned upstream call; ``POST /mock/reset``
zeroes the counters. A raw ASGI app, so the mock is never the bottleneck.

``disconnects`` counts the requests whose client went away before the answer
was complete (``streams_disconnected`` the streams among them), and
``last_disconnect_at`` says when the last was seen (``time.time()``). A stream
notices through ``receive``; a request that is waiting (``delay_ms``, a
non-stream answer's pause) is cancelled by the server when its connection
closes (gateway/disconnect.py), as ``gateway mock-upstream`` serves it.

``models`` counts the same per model received (``requests`` and ``disconnects``
of each), so a routing test sees which deployments were tried; a request whose
body does not parse has no model and counts only in the totals.

``connections_open`` is the number of TCP connections open right now, the one
asking for the stats included (``POST /mock/reset`` keeps it): a test sees when
a client closes its pool.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import to_json
from starlette.requests import ClientDisconnect

from gateway.disconnect import CANCEL_ON_DISCONNECT, CLIENT_GONE, cancel_on_disconnect
from gateway.errors import GatewayError, InvalidRequest, format_loc
from gateway.providers.mock import (
    MAX_MODEL_NAME,
    MockAnswer,
    MockScript,
    build_completion,
    build_embeddings,
    generate_chunks,
    plan_answer,
    scripted_error,
)
from gateway.schemas.openai import ChatCompletionRequest, EmbeddingRequest

Scope = dict[str, Any]
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]


class StreamCut(Exception):
    """Raised to drop the connection mid-stream, as a crashing upstream would."""


class _HideStreamCuts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], StreamCut))


# Model names are the client's to choose; past this many, new ones count only in the totals.
MAX_MODELS_COUNTED = 1024


@dataclass
class ModelStats:
    requests: int = 0
    disconnects: int = 0


@dataclass
class MockStats:
    requests: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    streams_disconnected: int = 0
    disconnects: int = 0
    last_disconnect_at: float | None = None
    in_flight: int = 0
    max_in_flight: int = 0
    connections_open: int = 0
    request_ids: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    models: dict[str, ModelStats] = field(default_factory=dict)

    def saw_model(self, model: str) -> ModelStats | None:
        """Counts a request for ``model``; its counters, to count its disconnect."""
        model = model[:MAX_MODEL_NAME]
        counts = self.models.get(model)
        if counts is None:
            if len(self.models) >= MAX_MODELS_COUNTED:
                return None
            counts = self.models[model] = ModelStats()
        counts.requests += 1
        return counts

    def saw_disconnect(self, counts: ModelStats | None) -> None:
        self.disconnects += 1
        self.last_disconnect_at = time.time()
        if counts is not None:
            counts.disconnects += 1

    def as_json(self) -> bytes:
        data = asdict(self)
        data["request_ids"] = list(self.request_ids)
        return json.dumps(data).encode()


class MockServer:
    def __init__(self) -> None:
        self.stats = MockStats()
        logging.getLogger("uvicorn.error").addFilter(_HideStreamCuts())

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        method, path = scope["method"], scope["path"].rstrip("/")
        if method == "GET" and path in ("/health", "/mock/stats"):
            body = self.stats.as_json() if path == "/mock/stats" else b'{"status":"ok"}'
            await _respond(send, 200, body)
        elif method == "POST" and path == "/mock/reset":
            self.stats = MockStats(connections_open=self.stats.connections_open)
            await _respond(send, 200, b"{}")
        elif method == "GET" and path == "/v1/models":
            await _respond(
                send,
                200,
                b'{"object":"list","data":[{"id":"mock-chat","object":"model","created":0,"owned_by":"mock"}]}',
            )
        elif method == "POST" and path in ("/v1/chat/completions", "/v1/embeddings"):
            await self._model_call(scope, receive, send, path)
        else:
            await _respond(send, 404, _error_body(InvalidRequest(f"no route {method} {path}")))

    async def _model_call(self, scope: Scope, receive: Any, send: Any, path: str) -> None:
        stats = self.stats
        stats.requests += 1
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                stats.request_ids.append(value.decode())
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        counts: ModelStats | None = None
        try:
            raw = await _read_body(receive)
            cancel_on_disconnect(scope)  # until a stream starts watching for itself
            model: type[BaseModel] = (
                EmbeddingRequest if path.endswith("embeddings") else ChatCompletionRequest
            )
            try:
                request = model.model_validate_json(raw)
            except ValidationError as exc:
                first = exc.errors()[0]
                raise InvalidRequest(first["msg"], param=format_loc(first["loc"])) from None
            counts = stats.saw_model(request.model)
            script = MockScript.from_request(request)
            if script.delay_ms:
                await asyncio.sleep(script.delay_ms / 1000)
            if script.status:
                await _respond(send, script.status, *_scripted_failure(script))
                return
            if isinstance(request, EmbeddingRequest):
                await _respond(
                    send,
                    200,
                    build_embeddings(request, request.model)
                    .model_dump_json(exclude_unset=True)
                    .encode(),
                )
            else:
                answer = plan_answer(request, script)  # before the status: it may be a 400
                if request.stream:
                    await self._stream(request, answer, script, counts, scope, receive, send)
                else:
                    await self._complete(answer, script, request.model, send)
        except GatewayError as exc:
            await _respond(send, exc.status, _error_body(exc))
        except ClientDisconnect:
            stats.saw_disconnect(counts)
        except asyncio.CancelledError:
            if CLIENT_GONE not in scope:
                raise
            stats.saw_disconnect(counts)
            asyncio.current_task().uncancel()  # type: ignore[union-attr]  # stopping was the point
        finally:
            scope.pop(CANCEL_ON_DISCONNECT, None)
            stats.in_flight -= 1

    async def _complete(
        self, answer: MockAnswer, script: MockScript, model: str, send: Any
    ) -> None:
        pause = script.pause(answer.steps)
        if pause:
            await asyncio.sleep(pause)
        body = build_completion(answer, model).model_dump_json(exclude_unset=True).encode()
        if script.breaks(answer.steps):  # as the in-process mock decides
            body = body[: len(body) // 2]
        await _respond(send, 200, body)

    async def _stream(
        self,
        request: ChatCompletionRequest,
        answer: MockAnswer,
        script: MockScript,
        counts: ModelStats | None,
        scope: Scope,
        receive: Any,
        send: Any,
    ) -> None:
        stats = self.stats
        stats.streams_started += 1
        scope.pop(CANCEL_ON_DISCONNECT, None)  # the watcher below sees the client leave
        generator = asyncio.current_task()
        disconnected = False

        async def watch() -> None:
            nonlocal disconnected
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected = True
            assert generator is not None
            generator.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE})
            wants_usage = bool(request.stream_options and request.stream_options.include_usage)
            i = 0
            async for chunk in generate_chunks(answer, script, request.model):
                if chunk.usage is not None and not wants_usage:
                    continue
                if i == script.cut_after:
                    raise StreamCut
                data = (
                    b"{malformed"
                    if i == script.malformed_after
                    else chunk.model_dump_json(exclude_unset=True).encode()
                )
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"data: " + data + b"\n\n",
                        "more_body": True,
                    }
                )
                i += 1
            await send(
                {"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False}
            )
            stats.streams_completed += 1
        except asyncio.CancelledError:
            if not disconnected:
                raise
            stats.streams_disconnected += 1
            stats.saw_disconnect(counts)
            # The client is gone; cancelling ourselves was only the way to stop.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        finally:
            watcher.cancel()


def _scripted_failure(script: MockScript) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The error answer an OpenAI-style server gives for the scripted status."""
    error = scripted_error(script)
    body = {
        "message": script.message or f"mock failure {script.status}",
        "type": error.type,
        "param": None,
        "code": error.code,
    }
    headers = []
    if script.retry_after is not None:
        headers.append((b"retry-after", str(script.retry_after).encode()))
    return to_json({"error": body}), headers


def _error_body(exc: GatewayError) -> bytes:
    return to_json({"error": exc.to_dict()})


async def _read_body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def _respond(send: Any, status: int, body: bytes, headers: list | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_JSON, (b"content-length", str(len(body)).encode()), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_mock_app() -> MockServer:
    return MockServer()


def counting_connections(server: MockServer, factory: functools.partial[Any]) -> Any:
    """uvicorn's ``http=`` protocol ``factory``, counting open connections in ``server``'s
    ``connections_open``."""
    base = factory.func

    class Counted(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            server.stats.connections_open += 1
            super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            server.stats.connections_open -= 1
            super().connection_lost(exc)

    return functools.partial(Counted, *factory.args, **factory.keywords)
