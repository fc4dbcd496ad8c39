"""The OpenAI-compatible endpoints: chat completions, embeddings, models."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack

from fastapi import APIRouter
from starlette.responses import Response

from gateway.api.handlers import error_json
from gateway.deps import AccessDep, ChatBody, EmbeddingBody, KeyDep, ResourcesDep
from gateway.errors import GatewayError
from gateway.limits.keys import KeyRecord
from gateway.observability.logging import AccessRecord
from gateway.providers.base import CallContext
from gateway.resources import Resources
from gateway.routing.router import Target
from gateway.schemas.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    EmbeddingResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    Usage,
)
from gateway.streaming import StreamState, open_stream

router = APIRouter(tags=["openai"])

_ERRORS = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 413, 429, 502, 503, 504)
}
_DONE = b"data: [DONE]\n\n"
_to_chunk_json = ChatCompletionChunk.__pydantic_serializer__.to_json
_to_completion_json = ChatCompletion.__pydantic_serializer__.to_json
_to_embedding_json = EmbeddingResponse.__pydantic_serializer__.to_json


def _json(body: bytes, headers: dict[str, str]) -> Response:
    return Response(body, media_type="application/json", headers=headers)


def _target(resources: Resources, key: KeyRecord, model: str, access: AccessRecord) -> Target:
    route = resources.router.route(model)
    key.check_model(model)
    target = resources.router.pick(route)
    access.model, access.served_by = model, target.served_by
    return target


def _record_usage(access: AccessRecord, usage: Usage | None) -> None:
    if usage is not None:
        access.input_tokens, access.output_tokens = usage.prompt_tokens, usage.completion_tokens


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=_ERRORS)
async def chat_completions(
    key: KeyDep, body: ChatBody, resources: ResourcesDep, access: AccessDep
) -> Response:
    target = _target(resources, key, body.model, access)
    ctx = CallContext(request_id=access.request_id, deployment=target.deployment)
    headers = {"x-gateway-served-by": target.served_by}
    if body.stream:
        return await _stream_chat(body, target, ctx, resources, access, headers)
    started = time.perf_counter()
    answer = await target.provider.chat(body, ctx)
    access.ttft_ms = (time.perf_counter() - started) * 1000
    answer.model = body.model
    _record_usage(access, answer.usage)
    return _json(_to_completion_json(answer, exclude_unset=True), headers)


async def _stream_chat(
    body: ChatCompletionRequest,
    target: Target,
    ctx: CallContext,
    resources: Resources,
    access: AccessRecord,
    headers: dict[str, str],
) -> Response:
    model = body.model
    wants_usage = bool(body.stream_options and body.stream_options.include_usage)
    started = time.perf_counter()
    usage: list[Usage] = []

    def encode(chunk: ChatCompletionChunk) -> bytes | None:
        if access.ttft_ms is None:
            access.ttft_ms = (time.perf_counter() - started) * 1000
        if chunk.usage is not None:
            usage.append(chunk.usage)
            if not wants_usage and not chunk.choices:
                return None  # the usage-only chunk the gateway asked for itself
        chunk.model = model
        exclude = None if wants_usage else {"usage"}
        return b"data: " + _to_chunk_json(chunk, exclude_unset=True, exclude=exclude) + b"\n\n"

    async def on_close(state: StreamState) -> None:
        await stack.aclose()
        access.outcome = state.outcome
        _record_usage(access, usage[-1] if usage else None)

    server = resources.settings.server
    stack = AsyncExitStack()
    try:
        chunks = await stack.enter_async_context(target.provider.stream(body, ctx))
        return await open_stream(
            chunks,
            encode=encode,
            error_frame=_error_frame,
            done_frame=_DONE,
            on_close=on_close,
            headers=headers,
            drain_seconds=server.drain_seconds,
            commit_after=server.stream_commit_seconds,
            keepalive=server.keepalive_seconds,
        )
    except BaseException:
        await stack.aclose()
        raise


def _error_frame(exc: GatewayError) -> bytes:
    return b"data: " + error_json(exc) + b"\n\n"


@router.post("/v1/embeddings", response_model=EmbeddingResponse, responses=_ERRORS)
async def embeddings(
    key: KeyDep, body: EmbeddingBody, resources: ResourcesDep, access: AccessDep
) -> Response:
    target = _target(resources, key, body.model, access)
    ctx = CallContext(request_id=access.request_id, deployment=target.deployment)
    answer = await target.provider.embed(body, ctx)
    answer.model = body.model
    access.input_tokens = answer.usage.prompt_tokens
    return _json(
        _to_embedding_json(answer, exclude_unset=True),
        {"x-gateway-served-by": target.served_by},
    )


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
