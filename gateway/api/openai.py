"""The OpenAI-compatible endpoints: chat completions, embeddings, models."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack

from fastapi import APIRouter
from starlette.responses import Response

from gateway.api.handlers import error_json
from gateway.deps import Call, ChatCall, EmbeddingCall, KeyDep, ResourcesDep, settle
from gateway.errors import GatewayError
from gateway.providers.base import CallContext
from gateway.routing.router import Target
from gateway.schemas.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    EmbeddingResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from gateway.streaming import StreamState, open_stream

router = APIRouter(tags=["openai"])

_ERRORS = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 413, 429, 502, 503, 504)
}
_DONE = b"data: [DONE]\n\n"
_USAGE = frozenset({"usage"})  # left out of chunks when the client did not ask for usage
_to_chunk_json = ChatCompletionChunk.__pydantic_serializer__.to_json
_to_completion_json = ChatCompletion.__pydantic_serializer__.to_json
_to_embedding_json = EmbeddingResponse.__pydantic_serializer__.to_json


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


def _pick(call: Call) -> tuple[Target, CallContext]:
    target = call.resources.router.pick(call.route)
    access = call.access
    access.served_by = target.served_by  # also the x-gateway-served-by header
    return target, CallContext(request_id=access.request_id, deployment=target.deployment)


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=_ERRORS)
async def chat_completions(call: ChatCall) -> Response:
    body, access = call.body, call.access
    target: Target | None = None
    tokens_in = tokens_out = 0
    error, streaming = True, False
    try:
        target, ctx = _pick(call)
        if body.stream:
            response = await _stream_chat(call, target, ctx)
            streaming = True  # from here the stream settles itself when it ends
            return response
        started = time.perf_counter()
        answer = await target.provider.chat(body, ctx)
        access.ttft_ms = (time.perf_counter() - started) * 1000
        answer.model = body.model
        if answer.usage is not None:
            tokens_in, tokens_out = answer.usage.prompt_tokens, answer.usage.completion_tokens
        error = False
        return _json(_to_completion_json(answer, exclude_unset=True))
    finally:
        if not streaming:
            await settle(
                call,
                target,
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                error=error,
            )


async def _stream_chat(
    call: Call[ChatCompletionRequest], target: Target, ctx: CallContext
) -> Response:
    body, access = call.body, call.access
    model = body.model
    wants_usage = bool(body.stream_options and body.stream_options.include_usage)
    exclude = None if wants_usage else _USAGE
    started = time.perf_counter()
    reported: list[tuple[int, int]] = []

    def encode(chunk: ChatCompletionChunk) -> bytes | None:
        if access.ttft_ms is None:
            access.ttft_ms = (time.perf_counter() - started) * 1000
        if chunk.usage is not None:
            reported.append((chunk.usage.prompt_tokens, chunk.usage.completion_tokens))
            if not wants_usage and not chunk.choices:
                return None  # the usage-only chunk the gateway asked for itself
        chunk.model = model
        return b"data: " + _to_chunk_json(chunk, exclude_unset=True, exclude=exclude) + b"\n\n"

    async def on_close(state: StreamState) -> None:
        try:
            await stack.aclose()
        finally:  # settled whatever closing the upstream did: the lease must go back
            access.outcome = state.outcome
            if reported:
                tokens_in, tokens_out = reported[-1]
            else:  # abandoned or failed midway: what the client was sent, one token a chunk
                tokens_in = call.prompt_tokens if state.chunks else 0
                tokens_out = state.chunks
            await settle(
                call,
                target,
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                error=state.outcome == "error",
            )

    server = call.resources.settings.server
    stack = AsyncExitStack()
    try:
        chunks = await stack.enter_async_context(target.provider.stream(body, ctx))
        return await open_stream(
            chunks,
            encode=encode,
            error_frame=_error_frame,
            done_frame=_DONE,
            on_close=on_close,
            commit_after=server.stream_commit_seconds,
            keepalive=server.keepalive_seconds,
        )
    except BaseException:
        await stack.aclose()
        raise


def _error_frame(exc: GatewayError) -> bytes:
    return b"data: " + error_json(exc) + b"\n\n"


@router.post("/v1/embeddings", response_model=EmbeddingResponse, responses=_ERRORS)
async def embeddings(call: EmbeddingCall) -> Response:
    target: Target | None = None
    tokens = 0
    error = True
    try:
        target, ctx = _pick(call)
        answer = await target.provider.embed(call.body, ctx)
        answer.model = call.body.model
        tokens = answer.usage.prompt_tokens
        error = False
        return _json(_to_embedding_json(answer, exclude_unset=True))
    finally:
        await settle(call, target, input_tokens=tokens, output_tokens=0, error=error)


@router.get("/v1/models", response_model=ModelList, responses=_ERRORS)
async def list_models(key: KeyDep, resources: ResourcesDep) -> ModelList:
    created = resources.started_at
    return ModelList(
        data=[
            ModelCard(id=name, created=created, owned_by="gateway")
            for name in resources.router.names()
            if key.allows(name)
        ]
    )
