"""The OpenAI ingress's wire format: the envelope, frames and headers its clients read.

``/v1/chat/completions``, ``/v1/embeddings``, ``/v1/models`` and every path no
other ingress claims (the admin API among them) answer in it. The error
envelope is ``{"error": {"message", "type", "param", "code"}}``; a stream is
``data: <chunk>`` frames ended by ``data: [DONE]``, or, when it fails after its
headers, by one ``data: {"error": ...}`` frame; the rate-limit headers are
``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` with resets in
OpenAI's duration form (docs/wire-formats.md).

Answers and chunks are serialised through ``ModelJSON`` (gateway/fastpath.py):
the models' prebuilt pydantic-core serializers, without a ``model_dump_json``
wrapper per call, unless the framework bypasses are off.
"""

from __future__ import annotations

import math

from pydantic_core import to_json
from starlette.responses import Response

from gateway.errors import GatewayError
from gateway.fastpath import ModelJSON
from gateway.ingress.base import ChunkEncoder, RawHeaders
from gateway.limits.base import LimitsState
from gateway.schemas.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    EmbeddingResponse,
)

_DONE = b"data: [DONE]\n\n"
_USAGE = frozenset({"usage"})  # left out of chunks when the client did not ask for usage
_CHUNK = ModelJSON(ChatCompletionChunk)
_COMPLETION = ModelJSON(ChatCompletion)
_EMBEDDINGS = ModelJSON(EmbeddingResponse)


def error_json(error: GatewayError) -> bytes:
    """The OpenAI error envelope: ``{"error": {"message", "type", "param", "code"}}``."""
    return to_json({"error": error.to_dict()})


def duration(ms: float) -> str:
    """OpenAI's reset duration form: ``20ms``, ``1s``, ``6m0s``."""
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{math.ceil(ms)}ms"
    seconds = math.ceil(ms / 1000)
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


# What ``duration`` made, by what decides it (whole ms below a second, whole seconds
# from one on): a reset is one of a few hundred values, and formatting one was a
# third of the headers' cost. Bounded all the same.
_resets: dict[int, bytes] = {}


def _reset(ms: float) -> bytes:
    """``duration(ms)`` as bytes."""
    if ms <= 0:
        return b"0s"
    key = math.ceil(ms) if ms < 1000 else -math.ceil(ms / 1000)
    text = _resets.get(key)
    if text is None:
        if len(_resets) >= 4096:
            _resets.clear()
        text = _resets[key] = duration(ms).encode()
    return text


def _frame(chunk: ChatCompletionChunk) -> bytes:
    return b"data: " + _CHUNK.dump(chunk, exclude_unset=True) + b"\n\n"


def _frame_without_usage(chunk: ChatCompletionChunk) -> bytes | None:
    # The gateway asks every upstream for usage to count tokens; a client that did not
    # ask for it gets neither the usage-only chunk nor a usage field on the others.
    if chunk.usage is not None and not chunk.choices:
        return None
    return b"data: " + _CHUNK.dump(chunk, exclude_unset=True, exclude=_USAGE) + b"\n\n"


class OpenAICodec:
    name = "openai"
    done_frame = _DONE

    def error_body(self, error: GatewayError) -> bytes:
        return error_json(error)

    def error_response(
        self, error: GatewayError, headers: dict[str, str] | None = None
    ) -> Response:
        return Response(
            error_json(error),
            status_code=error.status,
            headers={**(headers or {}), **error.response_headers()},
            media_type="application/json",
        )

    def error_frame(self, error: GatewayError) -> bytes:
        return b"data: " + error_json(error) + b"\n\n"

    def completion(self, answer: ChatCompletion) -> bytes:
        return _COMPLETION.dump(answer, exclude_unset=True)

    def embeddings(self, answer: EmbeddingResponse) -> bytes:
        return _EMBEDDINGS.dump(answer, exclude_unset=True)

    def chunk_encoder(self, request: ChatCompletionRequest, prompt_tokens: int = 0) -> ChunkEncoder:
        options = request.stream_options
        return _frame if options is not None and options.include_usage else _frame_without_usage

    def rate_headers(self, state: LimitsState) -> RawHeaders:
        # On every answer after admission: the common case (both limits) is one list
        # built at once and the resets cached: 15k vs 19.8k instructions a request.
        rpm, tpm = state.rpm_limit, state.tpm_limit
        if rpm and tpm:
            return [
                (b"x-ratelimit-limit-requests", b"%d" % rpm),
                (b"x-ratelimit-remaining-requests", b"%d" % max(0, rpm - state.rpm_used)),
                (b"x-ratelimit-reset-requests", _reset(state.rpm_reset_ms)),
                (b"x-ratelimit-limit-tokens", b"%d" % tpm),
                (b"x-ratelimit-remaining-tokens", b"%d" % max(0, tpm - state.tpm_used)),
                (b"x-ratelimit-reset-tokens", _reset(state.tpm_reset_ms)),
            ]
        headers: RawHeaders = []
        if rpm:
            headers += (
                (b"x-ratelimit-limit-requests", b"%d" % rpm),
                (b"x-ratelimit-remaining-requests", b"%d" % max(0, rpm - state.rpm_used)),
                (b"x-ratelimit-reset-requests", _reset(state.rpm_reset_ms)),
            )
        if tpm:
            headers += (
                (b"x-ratelimit-limit-tokens", b"%d" % tpm),
                (b"x-ratelimit-remaining-tokens", b"%d" % max(0, tpm - state.tpm_used)),
                (b"x-ratelimit-reset-tokens", _reset(state.tpm_reset_ms)),
            )
        return headers


OPENAI = OpenAICodec()
