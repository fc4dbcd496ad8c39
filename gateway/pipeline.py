"""The one call pipeline every model route uses: admitted, routed, answered, settled.

A model route is thin: its one dependency is an admission (gateway/admission.py),
and it hands the admitted ``Call`` with the codec of its ingress (gateway/ingress/)
to ``chat`` or ``embeddings`` here, which ask routing (``Router.run``) for the
answer and write it in the codec's format. In order (docs/architecture.md, "The
request path"):

- routing, asked here and nowhere else: which deployments, retries, hedges and
  fallbacks serve the call (gateway/routing/), every upstream call it made
  recorded on the ``RoutedCall``;
- the answer, written by the codec: a JSON body, or an event stream that opens
  the routed stream itself, so routing's retry window (until the first output)
  runs under the response's keep-alive and disconnect watch;
- settle: ONE store call, in the response's own ``finally``: after a
  non-stream answer is sent, when a stream ends however it ends, or at once for
  a call that never handed an answer over. It records each upstream call
  routing made as a call of its own (docs/limits.md, "Usage").

The server may cancel the request's task when its client leaves, but only
once the call is admitted, inside the ``try`` whose ``finally`` settles
(gateway/disconnect.py): an admission is never cut midway.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, cast

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.admission import Call
from gateway.disconnect import cancel_on_disconnect
from gateway.ingress.base import Codec, EmbeddingCodec, RelayCodec, StreamEncoder
from gateway.limits.base import TokenCounts
from gateway.limits.usage import NO_TOKENS, cost_of, counts_of, usage_event
from gateway.observability.observer import AttemptReport
from gateway.routing.call import Answered, Attempt, RoutedCall
from gateway.routing.router import RoutedStream
from gateway.schemas.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    Usage,
)
from gateway.streaming import EventStreamResponse, StreamPlan, StreamState


def _routed(call: Call) -> RoutedCall:
    return RoutedCall(
        call.body.model,  # type: ignore[attr-defined]
        call.body,  # type: ignore[arg-type]
        call.access.request_id,
        0.0,
        native=call.native,
        embeds=isinstance(call.body, EmbeddingRequest),
    )


# ``chat`` and ``embeddings`` hand back ``_answer``'s own coroutine rather than awaiting
# it in one of theirs: a wrapping coroutine is one more frame to make and resume per call.


def chat(call: Call[ChatCompletionRequest], codec: Codec) -> Coroutine[Any, Any, Response]:
    """The answer to an admitted chat call, streamed or not, in ``codec``'s format."""
    return _answer(call, codec)


def embeddings(
    call: Call[EmbeddingRequest], codec: EmbeddingCodec
) -> Coroutine[Any, Any, Response]:
    """The answer to an admitted embeddings call, in ``codec``'s format."""
    return _answer(call, codec)


async def _answer(call: Call, codec: Codec) -> Response:
    routed = _routed(call)
    handed_over = False  # the response settles the call from then on
    left = False
    try:
        if routed.stream:
            # Routed and opened by the response (``_stream``): nothing awaited here.
            stream = await call.resources.router.run(routed)
            assert isinstance(stream, RoutedStream)
            response: Response = _stream(call, stream, codec)
        else:
            # A stream watches for its client itself; here the server cancels this task
            # (and so the upstream calls) if the client leaves from now on.
            cancel_on_disconnect()
            started = time.perf_counter()
            answered = await call.resources.router.run(routed)
            assert isinstance(answered, Answered)
            call.access.ttft_ms = (time.perf_counter() - started) * 1000
            call.access.served_by = answered.attempt.target.name
            response = SettlingJSON(_written(answered, routed.served_model, codec), call, (routed,))
        handed_over = True
        return response
    except (asyncio.CancelledError, ClientDisconnect):
        left = True
        raise
    finally:
        if not handed_over:
            _name_server(call, routed)
            await asyncio.shield(settle(call, (routed,), left=left))


def _name_server(call: Call, routed: RoutedCall) -> None:
    """A failed call's x-gateway-served-by header: the deployment called last."""
    if routed.attempts:
        call.access.served_by = routed.attempts[-1].target.name


def _written(answered: Answered, model: str, codec: Codec) -> bytes:
    body = answered.body
    if answered.native:  # the upstream's own answer, relayed to the ingress it speaks
        return cast(RelayCodec, codec).native_answer(cast(dict[str, Any], body), model)
    if isinstance(body, EmbeddingResponse):
        body.model = model
        return cast(EmbeddingCodec, codec).embeddings(body)
    assert isinstance(body, ChatCompletion)
    body.model = model
    return codec.completion(body)


def _stream(call: Call[ChatCompletionRequest], stream: RoutedStream, codec: Codec) -> Response:
    """The stream's response. It opens the routed stream (routing's retry window) and
    relays it (gateway/streaming.py); ``on_close`` closes it, then settles with the
    upstream's last reported usage, else what the client was sent."""
    body, access = call.body, call.access
    started = time.perf_counter()
    usage_of = _no_usage

    async def open_stream() -> StreamPlan:
        nonlocal usage_of
        try:
            opened = await stream.open()
        except BaseException:
            _name_server(call, stream.call)
            raise
        access.served_by = opened.attempt.target.name
        model = stream.call.served_model
        if opened.native:  # the upstream's own events, relayed
            relayed = opened.rest
            usage_of = lambda: relayed.usage  # type: ignore[attr-defined]  # noqa: E731
            frame = cast(RelayCodec, codec).relay_encoder(model)

            def relay(item: Any) -> bytes:
                if access.ttft_ms is None:
                    access.ttft_ms = (time.perf_counter() - started) * 1000
                return frame(item)

            return StreamPlan(opened.head, opened.rest, relay, None, codec.error_frame)
        encoder = codec.chunk_encoder(body, call.prompt_tokens)
        reported: Usage | None = None
        usage_of = lambda: reported  # noqa: E731

        def encode(chunk: ChatCompletionChunk) -> bytes | None:
            nonlocal reported
            if access.ttft_ms is None:
                access.ttft_ms = (time.perf_counter() - started) * 1000
            if chunk.usage is not None:
                reported = chunk.usage
            chunk.model = model
            return encoder(chunk)  # type: ignore[no-any-return]

        if isinstance(encoder, StreamEncoder):  # its own end, after what it sent
            return StreamPlan(
                opened.head, opened.rest, encode, encoder.done_frame, encoder.error_frame
            )
        return StreamPlan(opened.head, opened.rest, encode, codec.done_frame, codec.error_frame)

    async def close(state: StreamState) -> None:
        await stream.close(
            state.error if state.outcome == "error" else None,
            usage_of(),
            state.chunks,
            left=state.outcome == "client_disconnect",
        )

    return stream_response(call, (stream.call,), codec, open_stream, close)


def stream_response(
    call: Call,
    routed: Sequence[RoutedCall],
    codec: Codec,
    open_stream: Callable[[], Awaitable[StreamPlan]],
    close: Callable[[StreamState], Awaitable[None]],
) -> Response:
    """An event stream that opens with ``open_stream`` and, however it ends, is closed by
    ``close`` (its upstreams), then has its outcome on the access line and is settled."""
    access = call.access
    observer = call.resources.observer

    async def opening() -> StreamPlan:
        access.stream = True
        observer.stream_opened(access)
        return await open_stream()

    async def on_close(state: StreamState) -> None:
        try:
            await close(state)
        finally:  # settled whatever closing the upstream did: the lease must go back
            access.outcome = state.outcome
            if state.error is not None:
                access.failed(state.error)
            try:
                await settle(call, routed, left=state.outcome == "client_disconnect")
            finally:
                observer.stream_closed(access)

    server = call.resources.settings.server
    return EventStreamResponse(
        opening,
        error_frame=codec.error_frame,
        error_response=codec.error_response,
        on_close=on_close,
        commit_after=server.stream_commit_seconds,
        keepalive=server.keepalive_seconds,
    )


def _no_usage() -> Usage | None:
    return None


# ---------------------------------------------------------------- settle


async def settle(call: Call, routed: Sequence[RoutedCall], *, left: bool) -> None:
    """The one store call after a model call: reconcile, release, record usage.

    Each upstream call routing made is recorded as a call of its own, priced here
    and only here at its deployment: what it reported; else, for a stream cut or
    abandoned midway and for a losing hedge, its prompt and the chunks it sent;
    else (it failed before any output) nothing but the error. A call that reached no upstream records one
    error, unless its client left. The access-log line gets the summed tokens.
    """
    events = []
    total_in = total_out = 0
    total_cost = 0.0
    access, observer = call.access, call.resources.observer
    attempts = (
        [a for one in routed for a in one.attempts] if len(routed) > 1 else routed[0].attempts
    )
    for attempt in attempts:
        if attempt.usage is not None:
            counts = counts_of(attempt.usage)
        elif attempt.outputs or attempt.superseded:
            counts = TokenCounts(call.prompt_tokens, attempt.outputs)
        else:
            counts = NO_TOKENS
        total_in += counts.input
        total_out += counts.output
        cost = cost_of(attempt.target.price, counts)
        total_cost += cost
        failed = attempt.error is not None
        events.append(usage_event(attempt.target.model, counts, cost, failed))
        observer.attempt(access, _report(attempt, counts, cost))
    if not events:
        events.append(usage_event(routed[0].model, NO_TOKENS, 0.0, not left))
    access.input_tokens, access.output_tokens = total_in, total_out
    access.cost_usd = total_cost
    access.attempts = len(attempts)
    await call.resources.gatekeeper.settle(call.grant, events)


def _report(attempt: Attempt, counts: TokenCounts, cost: float) -> AttemptReport:
    target, error = attempt.target, attempt.error
    if error is not None:
        outcome = "error"
    elif attempt.superseded:
        outcome = "superseded"
    elif attempt.cancelled:
        outcome = "cancelled"
    else:
        outcome = "ok"
    return AttemptReport(
        target.model,
        target.provider.name,
        target.deployment.model,
        outcome,
        error.reason if error is not None else None,
        attempt.via,
        counts.input,
        counts.output,
        cost,
        attempt.started,
        attempt.ended_at or time.time(),
    )


class SettlingJSON(Response):
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

    def __init__(self, body: bytes, call: Call, routed: Sequence[RoutedCall]) -> None:
        super().__init__(body)
        self._call, self._routed = call, routed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await settle(self._call, self._routed, left=False)
