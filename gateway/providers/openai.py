"""OpenAI's API, and every server that speaks it (vLLM, Ollama, LM Studio, ...).

An adapter on ``HTTPProvider`` (providers/http.py). Requests are forwarded as
the client sent them, unknown fields included; only ``model`` becomes the
deployment's upstream name, and a stream always asks for usage
(``stream_options.include_usage``) so the gateway can count it. OpenAI-shaped
error bodies are read here (``error_from_response``).

A server with another URL scheme or key header (Azure OpenAI) subclasses this
adapter and overrides ``chat_endpoint``/``embed_endpoint`` and ``auth_headers``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping

import httpx
from pydantic import BaseModel, ValidationError
from pydantic_core import to_json

from gateway.config import ProviderConfig
from gateway.errors import Reason, UpstreamError, UpstreamUnavailable
from gateway.fastpath import ModelJSON, model_json
from gateway.providers.base import CallContext
from gateway.providers.failures import json_body, malformed, status_error
from gateway.providers.http import Endpoint, HTTPProvider
from gateway.providers.redact import Redactor
from gateway.providers.sse import SSEEvent, SSEStream
from gateway.schemas.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    EmbeddingRequest,
    EmbeddingResponse,
)
from gateway.transport import Upstream

DEFAULT_BASE_URL = "https://api.openai.com/v1"

_ANSWER = ModelJSON(ChatCompletion)
_CHUNK = ModelJSON(ChatCompletionChunk)
_EMBEDDINGS = ModelJSON(EmbeddingResponse)


class OpenAIProvider(HTTPProvider):
    default_base_url = DEFAULT_BASE_URL

    def __init__(self, name: str, config: ProviderConfig, upstream: Upstream) -> None:
        super().__init__(name, config, upstream)
        self._chat = self.endpoint(f"{self.base_url}/chat/completions")
        self._embed = self.endpoint(f"{self.base_url}/embeddings")

    def auth_headers(self, secret: str) -> Mapping[str, str]:
        return {"authorization": f"Bearer {secret}"}

    def chat_endpoint(self, ctx: CallContext, *, stream: bool) -> Endpoint:
        return self._chat

    def embed_endpoint(self, ctx: CallContext) -> Endpoint:
        return self._embed

    def chat_body(self, request: ChatCompletionRequest, ctx: CallContext, *, stream: bool) -> bytes:
        return self._body(request, ctx, stream=stream)

    def _body(self, request: BaseModel, ctx: CallContext, *, stream: bool | None = None) -> bytes:
        sent = model_json(type(request)).dump(request, exclude_unset=True)
        body = _forwarded(sent, request, ctx.deployment.model, stream)
        if body is not None:
            return body
        payload = request.model_dump(mode="json", exclude_unset=True)
        payload["model"] = ctx.deployment.model
        if stream is not None:
            payload["stream"] = stream
        if stream:
            options = payload.get("stream_options") or {}
            payload["stream_options"] = {**options, "include_usage": True}
        return to_json(payload)

    def chat_answer(self, content: bytes, ctx: CallContext) -> ChatCompletion:
        try:
            return _ANSWER.load(content)
        except ValidationError as exc:
            raise malformed(exc) from None

    def chat_chunks(
        self, raw: AsyncIterator[bytes], ctx: CallContext, deadline: float
    ) -> SSEStream:
        return _Chunks(raw, ctx, deadline)

    def parse_error(
        self, endpoint: Endpoint, response: httpx.Response, body: bytes
    ) -> UpstreamError:
        return error_from_response(
            response.status_code, body, response.headers, self.redactor, route=endpoint.route
        )

    async def embed(self, request: EmbeddingRequest, ctx: CallContext) -> EmbeddingResponse:
        content = await self.post(
            self.embed_endpoint(ctx),
            self._body(request, ctx),
            ctx,
            self.request_headers(request, ctx),
        )
        try:
            return _EMBEDDINGS.load(content)
        except ValidationError as exc:
            raise malformed(exc) from None


def _forwarded(sent: bytes, request: BaseModel, model: str, stream: bool | None) -> bytes | None:
    """What the dict in ``_body`` makes of ``request``, written from ``sent`` (its own
    JSON, ``exclude_unset``) instead: the same bytes without the dict, on every call
    (README row "the OpenAI upstream's body written from the request's own JSON":
    46.8k vs 51.4k instructions a request).

    ``model`` is always the first key (the first field, and required): the
    deployment's name goes in its place. ``stream`` and ``stream_options`` the client
    left out go last, in that order, as the dict adds them. None when a value the
    client did send would change in place (``"stream": null``, ``stream_options``
    without ``include_usage``): the dict writes that one.
    """
    head = b'{"model":' + to_json(request.model) + b","  # type: ignore[attr-defined]
    if not sent.startswith(head):
        return None
    tail = b""
    if stream is not None:
        fields = request.model_fields_set
        if "stream" not in fields:
            tail = b',"stream":true' if stream else b',"stream":false'
        elif request.stream is not stream:  # type: ignore[attr-defined]
            return None
        if stream:
            if "stream_options" not in fields:
                tail += b',"stream_options":{"include_usage":true}'
            else:
                options = request.stream_options  # type: ignore[attr-defined]
                if options is None or options.include_usage is not True:
                    return None
    return b'{"model":' + to_json(model) + b"," + sent[len(head) : -1] + tail + b"}"


class _Chunks(SSEStream):
    """OpenAI stream events -> ``ChatCompletionChunk``s, ending at ``[DONE]``."""

    __slots__ = ("_finished",)

    def __init__(self, raw: AsyncIterator[bytes], ctx: CallContext, deadline: float) -> None:
        timeouts = ctx.timeouts
        super().__init__(
            raw, first_token=timeouts.first_token, idle=timeouts.idle, deadline=deadline
        )
        self._finished = False  # a choice has reported its finish_reason

    def translate(self, event: SSEEvent) -> ChatCompletionChunk:
        data = event.data
        if data == b"[DONE]":
            raise StopAsyncIteration
        try:
            chunk = _CHUNK.load(data)
        except ValidationError as exc:
            raise self._error_event(data) or malformed(exc) from None
        if not self._finished:
            for choice in chunk.choices:  # a loop, not any(genexpr): this runs per chunk
                if choice.finish_reason:
                    self._finished = True
                    break
        return chunk

    def ended(self) -> None:
        if not self._finished:  # some servers end without [DONE], but not midway
            raise UpstreamUnavailable(
                "the upstream stream ended before it was complete", reason=Reason.STREAM_CUT
            )

    def _error_event(self, data: bytes) -> UpstreamError | None:
        """An upstream that fails mid-stream sends ``{"error": {...}}`` as data.

        Its text is not relayed: it came after a 200, so it is the upstream's own
        failure (what a 5xx would say), not a verdict on the request.
        """
        if b'"error"' not in data:
            return None
        return UpstreamUnavailable(
            "the upstream reported an error mid-answer", reason=Reason.ERROR_EVENT
        )


# ---------------------------------------------------------------- error bodies


def error_from_response(
    status: int,
    body: bytes,
    headers: httpx.Headers,
    redactor: Redactor,
    *,
    route: str | None = None,
) -> UpstreamError:
    """An OpenAI-style error answer -> the gateway error for it.

    Reads ``{"error": {"message", "type", "code", "param"}}``, a bare
    ``{"error": "..."}`` (Ollama) and vLLM's ``{"object": "error", "message": ...}``;
    ``failures.status_error`` decides what a client sees. ``route`` (``POST
    /chat/completions``) is the call's route: a 404 there that is not an error
    about a model means the route itself is missing (``_missing_route``), most
    likely a ``base_url`` without ``/v1``, and the 502 says so.
    """
    message, error_type, code, param = "", None, None, None
    structured = False  # an error object: {"error": {...}}, or vLLM's {"object": "error"}
    parsed = json_body(body)
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict):
            structured = True
            message = str(error.get("message") or "")
            error_type, code, param = error.get("type"), error.get("code"), error.get("param")
        elif isinstance(error, str):
            message = error
        elif isinstance(parsed.get("message"), str):  # vLLM: {"object": "error", "message": ...}
            structured = parsed.get("object") == "error"
            message, error_type = parsed["message"], parsed.get("type")
    if route is not None and status == 404 and _missing_route(message, code, structured):
        hint = (
            "is the provider's base_url missing '/v1'?"
            if "/v1/" not in route
            else "is the provider's base_url right?"
        )
        error_404 = UpstreamUnavailable(f"the upstream answered 404 for {route}: {hint}")
        error_404.reason, error_404.upstream_status = Reason.UPSTREAM_STATUS, status
        return error_404
    return status_error(
        status,
        headers,
        redactor,
        message=message,
        body=body,
        error_type=error_type,
        code=code,
        param=param,
    )


# What servers say when the path does not exist: OpenAI's "Invalid URL (POST /x)", the
# mock upstream's "no route POST /x", LM Studio's "Unexpected endpoint", Express's
# "Cannot POST /x".
_ROUTE_WORDS = re.compile(
    r"invalid url|no route|unknown (request )?url|unexpected endpoint|cannot post", re.IGNORECASE
)


def _missing_route(message: str, code: object, structured: bool) -> bool:
    """Whether a 404 says the route is missing, rather than something about the request
    (an unknown model, or any error object a server chose to answer 404 with)."""
    if code == "model_not_found" or "model" in message.lower():
        return False
    return not structured or _ROUTE_WORDS.search(message) is not None
