"""The OpenAI-compatible endpoints: chat completions, embeddings, models."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

from fastapi import APIRouter
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.api.handlers import error_json, error_response, record_error
from gateway.api.route import AdmittedRoute
from gateway.deps import Call, ChatCall, EmbeddingCall, KeyDep, ResourcesDep, settle
from gateway.disconnect import cancel_on_disconnect
from gateway.errors import GatewayError, ModelNotFound
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
from gateway.streaming import EventStreamResponse, StreamState

router = APIRouter(tags=["openai"], route_class=AdmittedRoute)

_ERRORS = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 413, 429, 502, 503, 504)
}
_DONE = b"data: [DONE]\n\n"
_USAGE = frozenset({"usage"})  # left out of chunks when the client did not ask for usage
_to_chunk_json = ChatCompletionChunk.__pydantic_serializer__.to_json
_to_completion_json = ChatCompletion.__pydantic_serializer__.to_json
_to_embedding_json = EmbeddingResponse.__pydantic_serializer__.to_json


class _SettlingJSON(Response):
    """A JSON answer that settles its call once it is sent.

    The client gets its answer without waiting for the bookkeeping: on a lightly
    loaded gateway the settle's store round trip was a quarter or more of the
    latency the gateway adds. Settling stays in the response's own ``finally``
    (docs/architecture.md), with nothing between the send and the settle that could
    suspend, so the lease is released before this process reads another
    request, and the store connection keeps call order; another process's
    admit would have to beat a command already on its way to the store.
    """

    media_type = "application/json"

    def __init__(
        self, body: bytes, call: Call, target: Target, input_tokens: int, output_tokens: int
    ) -> None:
        super().__init__(body)
        self._call, self._target = call, target
        self._input_tokens, self._output_tokens = input_tokens, output_tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await settle(
                self._call,
                self._target,
                input_tokens=self._input_tokens,
                output_tokens=self._output_tokens,
                error=False,
            )


def _pick(call: Call) -> tuple[Target, CallContext]:
    target = call.resources.router.pick(call.route)
    access = call.access
    access.served_by = target.served_by  # also the x-gateway-served-by header
    return target, CallContext(request_id=access.request_id, deployment=target.deployment)


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=_ERRORS)
async def chat_completions(call: ChatCall) -> Response:
    body, access = call.body, call.access
    target: Target | None = None
    handed_over = False  # the response settles the call from then on
    left = False
    try:
        target, ctx = _pick(call)
        if body.stream:
            response: Response = await _stream_chat(call, target, ctx)
        else:
            # A stream watches for its client itself; here the server cancels this task
            # (and so the upstream call) if the client leaves from now on.
            cancel_on_disconnect()
            started = time.perf_counter()
            answer = await target.provider.chat(body, ctx)
            access.ttft_ms = (time.perf_counter() - started) * 1000
            answer.model = body.model
            usage = answer.usage
            response = _SettlingJSON(
                _to_completion_json(answer, exclude_unset=True),
                call,
                target,
                usage.prompt_tokens if usage else 0,
                usage.completion_tokens if usage else 0,
            )
        handed_over = True
        return response
    except (asyncio.CancelledError, ClientDisconnect):
        left = True
        raise
    finally:
        if not handed_over:
            await _settle_unanswered(call, target, left=left)


async def _settle_unanswered(call: Call, target: Target | None, *, left: bool) -> None:
    """Settle a call that never handed an answer over: it failed, or its client left.

    Shielded: the client leaving (or a shutdown) while this runs cancels the
    request, and the store call must still finish, or the lease stays taken.
    """
    await asyncio.shield(settle(call, target, input_tokens=0, output_tokens=0, error=not left))


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
            if state.error is not None:
                record_error(access, state.error)
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
    except BaseException:
        await stack.aclose()
        raise
    # From here the response owns the stream: it peeks, relays and closes it.
    return EventStreamResponse(
        chunks,
        encode=encode,
        error_frame=_error_frame,
        error_response=error_response,
        done_frame=_DONE,
        on_close=on_close,
        commit_after=server.stream_commit_seconds,
        keepalive=server.keepalive_seconds,
    )


def _error_frame(exc: GatewayError) -> bytes:
    return b"data: " + error_json(exc) + b"\n\n"


@router.post("/v1/embeddings", response_model=EmbeddingResponse, responses=_ERRORS)
async def embeddings(call: EmbeddingCall) -> Response:
    target: Target | None = None
    handed_over = False
    left = False
    try:
        target, ctx = _pick(call)
        cancel_on_disconnect()
        answer = await target.provider.embed(call.body, ctx)
        answer.model = call.body.model
        response = _SettlingJSON(
            _to_embedding_json(answer, exclude_unset=True),
            call,
            target,
            answer.usage.prompt_tokens,
            0,
        )
        handed_over = True
        return response
    except (asyncio.CancelledError, ClientDisconnect):
        left = True
        raise
    finally:
        if not handed_over:
            await _settle_unanswered(call, target, left=left)


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


@router.get("/v1/models/{model:path}", response_model=ModelCard, responses=_ERRORS)
async def retrieve_model(model: str, key: KeyDep, resources: ResourcesDep) -> ModelCard:
    """One model's card (the SDKs' ``models.retrieve``); 404 for a model this key may not
    use, as for one that does not exist: a key learns nothing of the others' models."""
    if model not in resources.router.names() or not key.allows(model):
        raise ModelNotFound(f"The model `{model}` does not exist", param="model")
    return ModelCard(id=model, created=resources.started_at, owned_by="gateway")
