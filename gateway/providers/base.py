"""The Provider protocol and what every provider shares.

A provider speaks one upstream API. It gets its HTTP client from the outside
(``transport.Upstream``), receives the gateway's canonical (OpenAI-shaped)
request models, and answers with canonical models or typed ``GatewayError``s.
It imports nothing of FastAPI and no vendor SDK.

Chat is what every provider does; embeddings are an optional capability
(``EmbeddingProvider``), asked with ``supports_embeddings``, and so is speaking
Anthropic's Messages API natively (``MessagesProvider``, ``speaks_messages``),
which lets the Anthropic ingress pass a client's own request through. A provider that
calls an HTTP API builds on ``providers/http.py``'s ``HTTPProvider``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard, runtime_checkable

from gateway.config import Deployment, ProviderConfig, Timeouts
from gateway.schemas.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    Usage,
)

__all__ = [
    "CallContext",
    "ChunkStream",
    "EmbeddingProvider",
    "MessagesProvider",
    "Provider",
    "RelayedEvents",
    "speaks_messages",
    "supports_embeddings",
]


@dataclass(slots=True)
class CallContext:
    """What a provider needs to know about one call besides the request."""

    request_id: str
    deployment: Deployment
    # Headers of the client's request that an adapter may forward upstream (e.g.
    # anthropic-beta), lower-case names; set by the ingress that has them, else None.
    client_headers: Mapping[str, str] | None = None

    @property
    def timeouts(self) -> Timeouts:
        return self.deployment.timeout

    def deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.deployment.timeout.total


ChunkStream = AsyncIterator[ChatCompletionChunk]


@runtime_checkable
class Provider(Protocol):
    """One upstream API: chat, streamed or not.

    ``stream()`` opens the upstream call on entry (raising its error there, so
    the gateway can still retry or answer with a status) and closes it on exit,
    whether the stream was read to the end or abandoned.
    """

    name: str

    async def chat(self, request: ChatCompletionRequest, ctx: CallContext) -> ChatCompletion: ...

    def stream(
        self, request: ChatCompletionRequest, ctx: CallContext
    ) -> AbstractAsyncContextManager[ChunkStream]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class EmbeddingProvider(Provider, Protocol):
    """A provider that also serves embeddings."""

    async def embed(self, request: EmbeddingRequest, ctx: CallContext) -> EmbeddingResponse: ...


class RelayedEvents(Protocol):
    """A relayed stream's upstream events, and the usage they reported so far."""

    def __aiter__(self) -> AsyncIterator[Any]: ...

    @property
    def usage(self) -> Usage | None: ...


@runtime_checkable
class MessagesProvider(Provider, Protocol):
    """A provider that speaks Anthropic's Messages API natively: a client of the Messages
    ingress reaches it with its own body (only ``model`` replaced), and gets the upstream's
    answer or events relayed, never a round trip through the canonical shape."""

    async def messages(self, body: bytes, ctx: CallContext) -> tuple[dict[str, Any], Usage]:
        """The parsed answer, and its usage in the gateway's convention."""
        ...

    def messages_stream(
        self, body: bytes, ctx: CallContext
    ) -> AbstractAsyncContextManager[RelayedEvents]: ...


def speaks_messages(provider: Provider) -> TypeGuard[MessagesProvider]:
    """Whether ``provider`` speaks the Messages API natively (an attribute look-up)."""
    return callable(getattr(provider, "messages_stream", None))


def supports_embeddings(provider: Provider) -> TypeGuard[EmbeddingProvider]:
    """Whether ``provider`` serves embeddings: it has an ``embed`` method.

    A plain attribute look-up (~0.1 µs), cheap enough to ask per request;
    ``isinstance(provider, EmbeddingProvider)`` would check every member of the
    protocol each time.
    """
    return callable(getattr(provider, "embed", None))


class ProviderFactory(Protocol):
    """What the registry instantiates: ``cls(name, config, upstream)``."""

    needs_http: bool

    def __call__(self, name: str, config: ProviderConfig, upstream: object) -> Provider: ...
