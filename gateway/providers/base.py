"""The Provider protocol and what every provider shares.

A provider speaks one upstream API. It gets its HTTP client from the outside
(``transport.Upstream``), receives the gateway's canonical (OpenAI-shaped)
request models, and answers with canonical models or typed ``GatewayError``s.
It imports nothing of FastAPI and no vendor SDK.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import httpx
from pydantic import ValidationError

from gateway.config import Deployment, ProviderConfig, Timeouts
from gateway.errors import (
    GatewayError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    upstream_status_error,
)
from gateway.schemas.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    EmbeddingRequest,
    EmbeddingResponse,
)

__all__ = [
    "CallContext",
    "ChunkStream",
    "Provider",
    "error_from_response",
    "raise_transport_error",
]


@dataclass(slots=True)
class CallContext:
    """What a provider needs to know about one call besides the request."""

    request_id: str
    deployment: Deployment

    @property
    def timeouts(self) -> Timeouts:
        return self.deployment.timeout

    def deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.deployment.timeout.total


ChunkStream = AsyncIterator[ChatCompletionChunk]


@runtime_checkable
class Provider(Protocol):
    """One upstream API.

    ``stream()`` opens the upstream call on entry (raising its error there, so
    the gateway can still retry or answer with a status) and closes it on exit,
    whether the stream was read to the end or abandoned.
    """

    name: str

    async def chat(self, request: ChatCompletionRequest, ctx: CallContext) -> ChatCompletion: ...

    def stream(
        self, request: ChatCompletionRequest, ctx: CallContext
    ) -> AbstractAsyncContextManager[ChunkStream]: ...

    async def embed(self, request: EmbeddingRequest, ctx: CallContext) -> EmbeddingResponse: ...

    async def aclose(self) -> None: ...


class ProviderFactory(Protocol):
    """What the registry instantiates: ``cls(name, config, upstream)``."""

    needs_http: bool

    def __call__(self, name: str, config: ProviderConfig, upstream: object) -> Provider: ...


def raise_transport_error(exc: Exception) -> None:
    """Re-raise an httpx/timeout failure of the upstream call as a GatewayError."""
    if isinstance(exc, GatewayError):
        raise exc
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        raise UpstreamTimeout("the upstream did not answer in time") from exc
    if isinstance(exc, httpx.TransportError):
        raise UpstreamUnavailable(f"could not reach the upstream: {type(exc).__name__}") from exc
    raise exc


def redact(text: str, secret: str | None) -> str:
    if secret and secret in text:
        text = text.replace(secret, "[redacted]")
    return text


def error_from_response(
    status: int, body: bytes, headers: httpx.Headers, secret: str | None
) -> UpstreamError:
    """An OpenAI-style error answer -> the gateway error for it."""
    message, error_type, code, param = "", None, None, None
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        message = str(error.get("message") or "")
        error_type = error.get("type") if isinstance(error.get("type"), str) else None
        code = error.get("code") if isinstance(error.get("code"), str) else None
        param = error.get("param") if isinstance(error.get("param"), str) else None
    elif isinstance(error, str):
        message = error
    if not message:
        message = body[:200].decode("utf-8", "replace").strip() or f"HTTP {status}"
    return upstream_status_error(
        status,
        redact(message, secret),
        error_type=error_type,
        code=code,
        param=param,
        retry_after=parse_retry_after(headers),
    )


def parse_retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after-ms")
    if value:
        try:
            return float(value) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return float(value)
        except ValueError:
            return None
    return None


def malformed(exc: ValidationError | ValueError) -> UpstreamUnavailable:
    return UpstreamUnavailable(f"the upstream sent a malformed answer ({type(exc).__name__})")
