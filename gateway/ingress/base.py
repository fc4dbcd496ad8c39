"""``Codec``: what the gateway's answers look like to the clients of one ingress.

The gateway thinks in canonical (OpenAI-shaped) models and typed
``GatewayError``s; a codec is the one place an ingress's wire format is
written: the error envelope (as bytes and as a whole response), a stream's
frames (each chunk, the end, a failure after the headers), a complete answer,
and the rate-limit headers rendered from the neutral ``LimitsState`` that
admission hands over. Every answer of a request, also one refused before its
route runs (413, 500, FastAPI's 400 and 404), comes from the codec the
request-context middleware chose by path (gateway/ingress/__init__.py).

A codec holds no per-request state: a stream that needs some (an ingress whose
events number their content blocks) gets it from ``chunk_encoder``, called
once per stream, which then returns a ``StreamEncoder``: its own last frames
(the end, a failure) follow from what it sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from starlette.responses import Response

from gateway.errors import GatewayError
from gateway.limits.base import LimitsState
from gateway.schemas.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    EmbeddingResponse,
)

# Turns a canonical chunk into the bytes of its frame(s); None: nothing to send for it.
ChunkEncoder = Callable[[ChatCompletionChunk], bytes | None]
RawHeaders = list[tuple[bytes, bytes]]


class StreamEncoder:
    """One stream's framing, for an ingress whose last frames depend on what was sent
    (Anthropic's closes its open content block and reports the usage at the end).
    The pipeline asks ``isinstance`` once per stream; an encoder that is a plain
    function uses the codec's ``done_frame`` and ``error_frame``."""

    __slots__ = ()

    def __call__(self, chunk: ChatCompletionChunk) -> bytes | None:
        raise NotImplementedError

    def done_frame(self) -> bytes | None:
        """The frames that end a complete stream."""
        raise NotImplementedError

    def error_frame(self, error: GatewayError) -> bytes:
        """The frames that end a stream failed after its headers."""
        raise NotImplementedError


class Codec(Protocol):
    name: str
    # What ends a complete stream (OpenAI's ``data: [DONE]``); None: nothing.
    done_frame: bytes | None

    def error_body(self, error: GatewayError) -> bytes:
        """The error envelope's bytes."""
        ...

    def error_response(
        self, error: GatewayError, headers: dict[str, str] | None = None
    ) -> Response:
        """The whole error answer: its status, the envelope, Retry-After and the like."""
        ...

    def error_frame(self, error: GatewayError) -> bytes:
        """A stream's last frame when it failed after its headers were sent."""
        ...

    def completion(self, answer: ChatCompletion) -> bytes:
        """A non-stream chat answer's body."""
        ...

    def chunk_encoder(
        self, request: ChatCompletionRequest, prompt_tokens: int = 0
    ) -> ChunkEncoder | StreamEncoder:
        """The framing of one stream's chunks; called once per stream, never per chunk.
        ``prompt_tokens``: the admission's estimate, for an ingress that reports the
        input's size before the upstream has counted it."""
        ...

    def rate_headers(self, state: LimitsState) -> RawHeaders:
        """Where the key stands, as this ingress's rate-limit headers (names lower-case)."""
        ...


class EmbeddingCodec(Codec, Protocol):
    """An ingress that also has an embeddings endpoint."""

    def embeddings(self, answer: EmbeddingResponse) -> bytes: ...


class RelayCodec(Codec, Protocol):
    """An ingress whose API a provider may speak natively: its answers and events are
    relayed as the upstream sent them, only ``model`` set to the gateway's name."""

    def native_answer(self, answer: dict[str, Any], model: str) -> bytes: ...

    def relay_encoder(self, model: str) -> Callable[[Any], bytes]: ...
