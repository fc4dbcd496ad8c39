"""What the routing tests share: a router built from YAML as the app builds it, and
upstreams served by a respx router (the real providers above it).

``Gateway`` mirrors ``Resources.build`` without the store: providers from the
registry, an HTTP client per provider on the injected transport, the ``Router``
from the settings. Upstream hosts are ``https://<provider>.test/v1``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import httpx

from gateway.config import Settings, load_settings
from gateway.providers.base import Provider
from gateway.providers.registry import provider_class
from gateway.routing.call import Answered, Opened, RoutedCall
from gateway.routing.router import ModelRoute, RoutedStream, Router
from gateway.routing.state import RoutingState
from gateway.schemas.openai import ChatCompletionRequest, EmbeddingRequest
from gateway.transport import Upstream, build_upstream

# A weight that makes a deployment the first choice of ``weighted`` but for one
# call in a million, so a test knows which deployment a call starts on.
FIRST = 1_000_000
LAST = 1


def url(provider: str, path: str = "/chat/completions") -> str:
    return f"https://{provider}.test/v1{path}"


def openai_providers(*names: str) -> str:
    """YAML for openai-type providers named ``names``, each on its own respx host."""
    return "".join(
        f"  {n}: {{type: openai, base_url: '{url(n, '')}', api_key: sk-{n}-secret}}\n"
        for n in names
    )


class Gateway:
    """A ``Router`` over real providers, as the app builds it."""

    def __init__(
        self,
        settings: Settings,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.settings = settings
        self.state = RoutingState(clock) if clock is not None else RoutingState()
        self.providers: dict[str, Provider] = {}
        self.upstreams: list[Upstream] = []
        for name, config in settings.providers.items():
            if not config.enabled:
                continue
            factory = provider_class(config.type)
            upstream = build_upstream(config, transport) if factory.needs_http else None
            if upstream is not None:
                self.upstreams.append(upstream)
            self.providers[name] = factory(name, config, upstream)
        self.router = Router(settings, self.providers, self.state)

    def route(self, model: str) -> ModelRoute:
        return self.router.route(model)

    async def answer(self, call: RoutedCall) -> Answered:
        answered = await self.router.run(call)
        assert isinstance(answered, Answered)
        return answered

    async def stream(self, call: RoutedCall) -> RoutedStream:
        stream = await self.router.run(call)
        assert isinstance(stream, RoutedStream)
        return stream

    async def aclose(self) -> None:
        for upstream in self.upstreams:
            await upstream.aclose()


class Clock:
    """A ``RoutingState`` clock the test moves by hand."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return load_settings(path, env={})


def chat(model: str, *, stream: bool = False, mock: Any = None, **fields: Any) -> RoutedCall:
    """A routed chat call, as the pipeline makes it (its deadline set by ``Router.run``)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Hi"}],
        **fields,
    }
    if stream:
        body["stream"] = True
    if mock is not None:
        body["mock"] = mock
    request = ChatCompletionRequest.model_validate_json(json.dumps(body))
    return RoutedCall(model, request, "req-routing-test", 0.0)


def embed(model: str, **fields: Any) -> RoutedCall:
    body = {"model": model, "input": "Hi", **fields}
    request = EmbeddingRequest.model_validate_json(json.dumps(body))
    return RoutedCall(model, request, "req-routing-test", 0.0, embeds=True)


def names(call: RoutedCall) -> list[str]:
    """The deployments the call's attempts went to, in order."""
    return [a.target.name for a in call.attempts]


async def read_all(opened: Opened) -> list[Any]:
    return [*opened.head, *[item async for item in opened.rest]]


# ---------------------------------------------------------------- OpenAI wire


def completion(text: str = "Hello there", model: str = "up") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1741570283,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1741569952,
        "model": "up",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


# OpenAI's first chunk: the role announced, an empty content, no refusal: not output.
ROLE = chunk({"role": "assistant", "content": "", "refusal": None})
USAGE = chunk({}, usage={"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11})
USAGE["choices"] = []


def frame(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def whole_stream(*texts: str) -> list[bytes]:
    """A complete stream's frames: the role, a chunk per text, the finish, usage, done."""
    return [
        frame(ROLE),
        *(frame(chunk({"content": t})) for t in texts),
        frame(chunk({}, "stop")),
        frame(USAGE),
        DONE,
    ]


class Body(httpx.AsyncByteStream):
    """A streamed response body: each part is bytes, or an ``asyncio.Event`` it waits
    for before going on. ``closed`` tells whether the gateway closed it, ``read``
    how many byte parts it handed over."""

    def __init__(self, parts: Iterable[bytes | asyncio.Event]) -> None:
        self.parts = list(parts)
        self.closed = False
        self.read = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            if isinstance(part, asyncio.Event):
                await part.wait()
                continue
            self.read += 1
            yield part

    async def aclose(self) -> None:
        self.closed = True


def sse(body: Body) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=body)


def error(status: int, code: str | None = None, **headers: str) -> httpx.Response:
    payload = {"error": {"message": f"failure {status}", "type": "x", "code": code}}
    return httpx.Response(status, json=payload, headers=headers)


class Stall:
    """A respx side effect that never answers until released; it records each request
    and whether the gateway gave it up (cancelled it)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0
        self.cancelled = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        self.entered.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return httpx.Response(200, json=completion("late"))
