"""The one call pipeline every model route uses: admit, route, call, settle.

A model route is thin: its one dependency is an admission of this module
(``ChatCall``, ``EmbeddingCall``, ``MessagesCall``), and it hands the admitted
``Call`` with the codec of its ingress (gateway/ingress/) to ``chat`` or
``embeddings`` here. An Anthropic Messages call is admitted as the chat request it
translates to, and passed through to a provider that speaks the Messages API
(``_passthrough``). In order (docs/architecture.md, "The request path"):

- admission: the key (401), the body (400), the model (404), whether the key
  may use it (403) and whether it can do what is asked (400), then ONE store
  call that admits (429/503), reserving the prompt estimate plus the output
  cap and, for a key with a budget, what that could cost at the model's
  dearest deployment (docs/limits.md);
- routing, asked here and nowhere else: the model at admission, the
  deployment that serves the call in ``_pick``;
- the provider's call, its answer written by the codec;
- settle: ONE store call, in the response's own ``finally``: after a
  non-stream answer is sent, when a stream ends however it ends, or at once
  (an error with no tokens) for a call that never handed an answer over.

The server may cancel the request's task when its client leaves, but only
once the call is admitted, inside the ``try`` whose ``finally`` settles
(gateway/disconnect.py): an admission is never cut midway.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar, cast

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.deps import ResourcesDep, authenticate_key
from gateway.disconnect import cancel_on_disconnect
from gateway.errors import GatewayError, InvalidRequest, format_loc, validation_error
from gateway.fastpath import admission, model_json
from gateway.ingress.anthropic.request import FORWARDED_HEADERS, Native, translate
from gateway.ingress.base import Codec, EmbeddingCodec, RelayCodec, StreamEncoder
from gateway.limits import estimate
from gateway.limits.base import Grant, TokenCounts
from gateway.limits.keys import KeyRecord
from gateway.limits.usage import NO_TOKENS, cost_of, counts_of, reservation_cost, usage_event
from gateway.observability.logging import AccessRecord
from gateway.providers.base import CallContext, speaks_messages, supports_embeddings
from gateway.resources import Resources
from gateway.routing.router import ModelRoute, Target
from gateway.schemas.anthropic import MessagesRequest
from gateway.schemas.openai import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    EmbeddingRequest,
    Usage,
)
from gateway.streaming import EventStreamResponse, StreamState

M = TypeVar("M", bound=BaseModel)


@dataclass(slots=True)
class Call(Generic[M]):
    """An admitted model call: settled exactly once, by the pipeline."""

    resources: Resources
    access: AccessRecord
    key: KeyRecord
    body: M
    route: ModelRoute
    grant: Grant
    prompt_tokens: int  # the estimate the reservation was made with
    # The client's own request, for a provider that speaks its ingress's API natively
    # (the Anthropic Messages ingress); None on the OpenAI ingress.
    native: Native | None = None


# ---------------------------------------------------------------- admission


async def _parse(request: Request, model: type[M]) -> M:
    """The body as ``model``, or a 400 naming its first problem.

    Parsed on the event loop whatever its size: pydantic holds the GIL for the
    whole call, so a worker thread would stall the loop just as long. What bounds
    the stall is what a body may hold: ``server.max_body_bytes``, the request
    models' list bounds, and errors that stop at the first bad item
    (docs/limits.md).
    """
    body = await request.body()
    if not body:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        return model_json(model).load(body)
    except ValidationError as exc:
        raise _refusal(exc) from None


def _refusal(exc: ValidationError) -> InvalidRequest:
    # Without each error's input: a too-long list's input is the whole list.
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    kind = first["type"]
    if kind in ("json_invalid", "json_type"):
        detail = first["msg"].removeprefix("Invalid JSON: ")
        return InvalidRequest(f"The request body is not valid JSON: {detail}")
    if kind == "model_type" and not first["loc"]:  # deeper, it names the field below
        return InvalidRequest("The request body must be a JSON object.")
    if kind == "too_long":  # OpenAI's own wording for it
        param = format_loc(tuple(first["loc"]))
        ctx = first.get("ctx") or {}
        return InvalidRequest(
            f"Invalid '{param}': array too long. Expected an array with maximum length "
            f"{ctx.get('max_length')}, but got an array with length "
            f"{ctx.get('actual_length')} instead.",
            param=param,
        )
    return validation_error(list(errors))


async def _admit(
    resources: Resources,
    access: AccessRecord,
    key: KeyRecord,
    body: M,
    prompt: int,
    max_output: int | None,
    choices: int = 1,
    *,
    embeds: bool = False,
) -> Call[M]:
    """Resolve the model (404), check the key may use it (403) and the model can do
    what is asked (400), then admit (429/503).

    The reservation (tpm tokens and budget cost) is the prompt estimate plus the
    output cap once per choice asked for (``n``): docs/limits.md. Whether admitted
    or refused, where the key now stands goes on the access record, for the
    ingress to render as the answer's rate-limit headers.
    """
    model: str = body.model  # type: ignore[attr-defined]
    route = resources.router.route(model)
    key.check_model(model)
    access.model = model
    if embeds and not any(supports_embeddings(t.provider) for t in route.targets):
        raise _no_embeddings(model)
    if max_output is None:
        max_output = (
            route.config.max_output_tokens or resources.settings.server.default_max_output_tokens
        )
    max_output *= choices
    # The budget reservation is an upper bound: the dearest deployment of the model.
    cost = 0.0
    if key.limits.budget_usd is not None:  # else nothing reserves it
        cost = max(
            (reservation_cost(t.price, prompt, max_output) for t in route.targets if t.price),
            default=0.0,
        )
    try:
        grant = await resources.gatekeeper.admit(key, prompt + max_output, cost)
    except GatewayError as exc:
        access.limits = exc.limits  # a refusal's, for its 429's headers
        raise
    access.limits = grant.limits
    return Call(resources, access, key, body, route, grant, prompt)


def _no_embeddings(model: str) -> InvalidRequest:
    return InvalidRequest(f"The model `{model}` does not support embeddings.", param="model")


# The admissions take the request and the resources only: on FastAPI's path every
# dependency costs its resolver a few microseconds, and AdmittedRoute
# (gateway/fastpath.py) calls them directly, handing them the app's resources.


@admission
async def admit_chat(request: Request, resources: ResourcesDep) -> Call[ChatCompletionRequest]:
    key = await authenticate_key(request, resources)
    body = await _parse(request, ChatCompletionRequest)
    max_output = body.max_completion_tokens or body.max_tokens
    access = request.scope["gateway.access"]
    prompt = estimate.prompt_tokens(body)
    return await _admit(resources, access, key, body, prompt, max_output, body.n or 1)


@admission
async def admit_embedding(request: Request, resources: ResourcesDep) -> Call[EmbeddingRequest]:
    key = await authenticate_key(request, resources)
    body = await _parse(request, EmbeddingRequest)
    access = request.scope["gateway.access"]
    prompt = estimate.embedding_tokens(body)
    return await _admit(resources, access, key, body, prompt, 0, embeds=True)


@admission
async def admit_messages(request: Request, resources: ResourcesDep) -> Call[ChatCompletionRequest]:
    """An Anthropic Messages call: the same key, limits and usage as chat, admitted
    with the canonical request it translates to; the client's own body is kept for a
    provider that speaks the Messages API (gateway/ingress/anthropic/request.py)."""
    key = await authenticate_key(request, resources)
    source = await _parse(request, MessagesRequest)
    body, refusal = translate(source)
    access = request.scope["gateway.access"]
    prompt = estimate.prompt_tokens(body)
    call = await _admit(resources, access, key, body, prompt, body.max_tokens)
    headers = request.headers
    forwarded = {name: headers[name] for name in FORWARDED_HEADERS if name in headers}
    call.native = Native(await request.body(), forwarded, refusal)
    return call


# What a test checks every model route has, and what AdmittedRoute calls directly.
LIMITERS = (admit_chat, admit_embedding, admit_messages)

ChatCall = Annotated[Call[ChatCompletionRequest], Depends(admit_chat)]
EmbeddingCall = Annotated[Call[EmbeddingRequest], Depends(admit_embedding)]
MessagesCall = Annotated[Call[ChatCompletionRequest], Depends(admit_messages)]


# ---------------------------------------------------------------- routing


def _pick(call: Call, *, embeds: bool = False) -> tuple[Target, CallContext]:
    """The deployment that serves ``call``."""
    route = call.route
    target = call.resources.router.pick(route)
    if embeds and not supports_embeddings(target.provider):
        # A model whose deployments differ: admission saw that one of them embeds.
        target = next(t for t in route.targets if supports_embeddings(t.provider))
    access = call.access
    access.served_by = target.served_by  # also the x-gateway-served-by header
    return target, CallContext(request_id=access.request_id, deployment=target.deployment)


# ---------------------------------------------------------------- the call


async def chat(call: Call[ChatCompletionRequest], codec: Codec) -> Response:
    """The answer to an admitted chat call, streamed or not, in ``codec``'s format."""
    body = call.body
    target: Target | None = None
    handed_over = False  # the response settles the call from then on
    left = False
    try:
        target, ctx = _pick(call)
        native = call.native
        if native is not None and speaks_messages(target.provider):
            response: Response = await _passthrough(call, native, target, ctx, codec)
        elif native is not None and native.refusal is not None:
            raise native.refusal  # what only the client's own API could carry
        elif body.stream:
            response = await _stream(call, target, ctx, codec)
        else:
            # A stream watches for its client itself; here the server cancels this task
            # (and so the upstream call) if the client leaves from now on.
            cancel_on_disconnect()
            started = time.perf_counter()
            answer = await target.provider.chat(body, ctx)
            call.access.ttft_ms = (time.perf_counter() - started) * 1000
            answer.model = body.model
            response = _SettlingJSON(
                codec.completion(answer), call, target, counts_of(answer.usage)
            )
        handed_over = True
        return response
    except (asyncio.CancelledError, ClientDisconnect):
        left = True
        raise
    finally:
        if not handed_over:
            await _settle_unanswered(call, target, left=left)


async def embeddings(call: Call[EmbeddingRequest], codec: EmbeddingCodec) -> Response:
    """The answer to an admitted embeddings call, in ``codec``'s format."""
    body = call.body
    target: Target | None = None
    handed_over = False
    left = False
    try:
        target, ctx = _pick(call, embeds=True)
        provider = target.provider
        if not supports_embeddings(provider):  # never: _pick chose one that embeds
            raise _no_embeddings(body.model)
        cancel_on_disconnect()
        answer = await provider.embed(body, ctx)
        answer.model = body.model
        response = _SettlingJSON(
            codec.embeddings(answer), call, target, TokenCounts(answer.usage.prompt_tokens, 0)
        )
        handed_over = True
        return response
    except (asyncio.CancelledError, ClientDisconnect):
        left = True
        raise
    finally:
        if not handed_over:
            await _settle_unanswered(call, target, left=left)


async def _stream(
    call: Call[ChatCompletionRequest], target: Target, ctx: CallContext, codec: Codec
) -> Response:
    """The stream's response, returned once the upstream has answered with its head.

    From then on the response owns the upstream stream: it peeks, relays and
    closes it (gateway/streaming.py), and ``on_close`` settles, with the
    upstream's last reported usage, else what the client was sent.
    """
    body, access = call.body, call.access
    model = body.model
    frame = codec.chunk_encoder(body, call.prompt_tokens)
    if isinstance(frame, StreamEncoder):  # its own end, after what it sent
        done_frame, error_frame = frame.done_frame, frame.error_frame
    else:
        done_frame, error_frame = codec.done_frame, codec.error_frame
    started = time.perf_counter()
    reported: Usage | None = None

    def encode(chunk: ChatCompletionChunk) -> bytes | None:
        nonlocal reported
        if access.ttft_ms is None:
            access.ttft_ms = (time.perf_counter() - started) * 1000
        if chunk.usage is not None:
            reported = chunk.usage
        chunk.model = model
        return frame(chunk)  # type: ignore[no-any-return]

    server = call.resources.settings.server
    stack = AsyncExitStack()
    try:
        chunks = await stack.enter_async_context(target.provider.stream(body, ctx))
    except BaseException:
        await stack.aclose()
        raise
    return EventStreamResponse(
        chunks,
        encode=encode,
        error_frame=error_frame,
        error_response=codec.error_response,
        done_frame=done_frame,
        on_close=_stream_closer(call, target, stack, lambda: reported),
        commit_after=server.stream_commit_seconds,
        keepalive=server.keepalive_seconds,
    )


def _stream_closer(
    call: Call, target: Target, stack: AsyncExitStack, reported: Callable[[], Usage | None]
) -> Callable[[StreamState], Awaitable[None]]:
    """A stream's ``on_close``: close the upstream, then settle with the upstream's last
    reported usage (``reported()``), else what the client was sent."""
    access = call.access

    async def on_close(state: StreamState) -> None:
        try:
            await stack.aclose()
        finally:  # settled whatever closing the upstream did: the lease must go back
            access.outcome = state.outcome
            if state.error is not None:
                access.failed(state.error)
            usage = reported()
            if usage is not None:
                counts = counts_of(usage)
            else:  # abandoned or failed midway: what the client was sent, one token a chunk
                counts = TokenCounts(call.prompt_tokens if state.chunks else 0, state.chunks)
            await settle(call, target, counts, error=state.outcome == "error")

    return on_close


async def _passthrough(
    call: Call[ChatCompletionRequest],
    native: Native,
    target: Target,
    ctx: CallContext,
    codec: Codec,
) -> Response:
    """A Messages call sent as the client wrote it to a provider that speaks the Messages
    API (only ``model`` replaced), its answer or events relayed as they come, settled
    with the usage they report (``message_start``, ``message_delta``)."""
    provider = target.provider
    assert speaks_messages(provider)
    relay = cast(RelayCodec, codec)  # the ingress whose request is native to the provider
    ctx.client_headers = native.headers
    raw = native.body_for(target.deployment.model)
    model, access = call.body.model, call.access
    started = time.perf_counter()
    if not call.body.stream:
        cancel_on_disconnect()
        answer, usage = await provider.messages(raw, ctx)
        access.ttft_ms = (time.perf_counter() - started) * 1000
        return _SettlingJSON(relay.native_answer(answer, model), call, target, counts_of(usage))
    stack = AsyncExitStack()
    try:
        events = await stack.enter_async_context(provider.messages_stream(raw, ctx))
    except BaseException:
        await stack.aclose()
        raise
    frame = relay.relay_encoder(model)

    def encode(item: Any) -> bytes:
        if access.ttft_ms is None:
            access.ttft_ms = (time.perf_counter() - started) * 1000
        return frame(item)

    server = call.resources.settings.server
    return EventStreamResponse(
        events,
        encode=encode,
        error_frame=codec.error_frame,
        error_response=codec.error_response,
        done_frame=None,  # the upstream's own message_stop was relayed
        on_close=_stream_closer(call, target, stack, lambda: events.usage),
        commit_after=server.stream_commit_seconds,
        keepalive=server.keepalive_seconds,
    )


# ---------------------------------------------------------------- settle


async def settle(call: Call, target: Target | None, counts: TokenCounts, *, error: bool) -> None:
    """The one store call after a model call: reconcile, release, record usage.

    The cost is priced here and only here, at the deployment that answered; the
    access-log line gets the same token counts.
    """
    access = call.access
    access.input_tokens, access.output_tokens = counts.input, counts.output
    cost = cost_of(target.price if target is not None else None, counts)
    usage = usage_event(call.body.model, counts, cost, error)  # type: ignore[attr-defined]
    await call.resources.gatekeeper.settle(call.grant, usage)


async def _settle_unanswered(call: Call, target: Target | None, *, left: bool) -> None:
    """Settle a call that never handed an answer over: it failed, or its client left.

    Shielded: the client leaving (or a shutdown) while this runs cancels the
    request, and the store call must still finish, or the lease stays taken.
    """
    await asyncio.shield(settle(call, target, NO_TOKENS, error=not left))


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

    def __init__(self, body: bytes, call: Call, target: Target, counts: TokenCounts) -> None:
        super().__init__(body)
        self._call, self._target, self._counts = call, target, counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await settle(self._call, self._target, self._counts, error=False)
