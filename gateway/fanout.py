"""The answer to ``POST /v1/fanout/chat/completions``: one request, several models at once.

The models' calls are admitted together (gateway/admission.py, ``admit_fanout``:
each counts against the key's limits, all or none) and routed concurrently
(gateway/routing/fanout.py). The answer is an ordinary ``chat.completion``, or
chunk stream, whose choice ``index`` i belongs to ``models[i]``
(docs/wire-formats.md, "Fan-out"):

- a stream multiplexes the models' chunks as they arrive; every chunk has the
  request's one ``id`` and its choice's model as ``model``; when the client asked
  for usage, each model's finish chunk carries that model's on its choice, and
  one last usage chunk their sum;
- a model that fails ends its own choice with ``finish_reason: "error"`` and an
  ``error`` object on the choice (never at the chunk's top level, where the SDK
  would end the whole stream) while the others go on; a non-stream answer
  carries the same per choice;
- the status is 200 once admitted: failures are per choice.

Settled once, for every upstream call any model's routing made.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from pydantic_core import to_json
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from gateway.admission import Call
from gateway.disconnect import cancel_on_disconnect
from gateway.errors import GatewayError, UpstreamUnavailable
from gateway.fastpath import request_for
from gateway.ingress.base import Codec
from gateway.pipeline import SettlingJSON, settle, stream_response
from gateway.routing.call import Answered, RoutedCall
from gateway.routing.fanout import Merged, answer_all
from gateway.routing.router import RoutedStream
from gateway.schemas.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    Choice,
    FanoutRequest,
    Usage,
)
from gateway.streaming import StreamPlan, StreamState


async def fanout(call: Call[FanoutRequest], codec: Codec) -> Response:
    """The answer to an admitted fan-out call, streamed or not, in ``codec``'s format."""
    body = call.body
    router = call.resources.router
    request_id = call.access.request_id
    routed = [RoutedCall(name, request_for(body, name), request_id, 0.0) for name in body.models]
    handed_over = False
    left = False
    try:
        if body.stream:
            streams = [await router.run(one) for one in routed]  # not opened yet: no I/O
            response: Response = _stream(call, routed, streams, codec)  # type: ignore[arg-type]
        else:
            cancel_on_disconnect()
            answers = await answer_all(router, routed)
            _name_servers(call, routed)
            merged = _merged(call, routed, answers)
            response = SettlingJSON(codec.completion(merged), call, routed)
        handed_over = True
        return response
    except (asyncio.CancelledError, ClientDisconnect):
        left = True
        raise
    finally:
        if not handed_over:
            await asyncio.shield(settle(call, routed, left=left))


def _name_servers(call: Call, routed: Sequence[RoutedCall]) -> None:
    """x-gateway-served-by: each model's deployment called last, in the models' order."""
    names = [one.attempts[-1].target.name for one in routed if one.attempts]
    call.access.served_by = ",".join(names) or None


def _merged(
    call: Call[FanoutRequest],
    routed: Sequence[RoutedCall],
    answers: list[Answered | GatewayError],
) -> ChatCompletion:
    models = call.body.models
    choices: list[Choice] = []
    prompt = completion = 0
    for i, answer in enumerate(answers):
        if isinstance(answer, Answered):
            answered = answer.body
            assert isinstance(answered, ChatCompletion)
            if answered.usage is not None:
                prompt += answered.usage.prompt_tokens
                completion += answered.usage.completion_tokens
            if not answered.choices:
                answer = UpstreamUnavailable("the upstream answered with no choice")
        if isinstance(answer, GatewayError):
            message = ChatCompletionMessage(role="assistant", content=None)
            choice = Choice(index=i, message=message, finish_reason="error")
            choice.error = _error_object(answer)  # type: ignore[attr-defined]
        else:
            choice = answered.choices[0]
            choice.index = i
        # The model that answered: a fallback's, after a fallback.
        choice.model = routed[i].served_model or models[i]  # type: ignore[attr-defined]
        choices.append(choice)
    return ChatCompletion(
        id=_completion_id(call),
        created=int(time.time()),
        model=",".join(models),
        choices=choices,
        usage=Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        ),
    )


def _stream(
    call: Call[FanoutRequest],
    routed: Sequence[RoutedCall],
    streams: Sequence[RoutedStream],
    codec: Codec,
) -> Response:
    body, access = call.body, call.access
    models = body.models
    merged = Merged(streams)
    chunk_id, created = _completion_id(call), int(time.time())
    frame = codec.chunk_encoder(body, call.prompt_tokens)
    include_usage = body.stream_options is not None and bool(body.stream_options.include_usage)
    started = time.perf_counter()

    # With include_usage, a model's finish chunk waits for that model's usage (the chunk
    # right after it, from OpenAI-style upstreams) and carries it on its choice.
    held: dict[int, ChatCompletionChunk] = {}

    def encode(item: tuple[int, Any]) -> bytes | None:
        index, chunk = item
        if access.ttft_ms is None:
            access.ttft_ms = (time.perf_counter() - started) * 1000
        if isinstance(chunk, GatewayError):
            return _error_frame(chunk_id, created, models, index, chunk)
        usage = chunk.usage
        if not chunk.choices:  # a model's usage alone: on its finish chunk, and in the sum
            finish = held.pop(index, None)
            if finish is None:
                return None
            return _with_usage(finish, usage) if usage is not None else frame(finish)
        model = routed[index].served_model or models[index]  # a fallback's, after a fallback
        chunk.id, chunk.created, chunk.model, chunk.usage = chunk_id, created, model, None
        for choice in chunk.choices:
            choice.index = index
        if include_usage and chunk.choices[0].finish_reason is not None:
            if usage is not None:
                return _with_usage(chunk, usage)
            held[index] = chunk
            return None
        return frame(chunk)  # type: ignore[no-any-return]

    def done() -> bytes:
        if not include_usage:
            return b"data: [DONE]\n\n"
        unpriced = b"".join(frame(c) for c in held.values())  # models that sent no usage
        held.clear()
        reported = [u for u in merged.usage if u is not None]
        prompt = sum(u.prompt_tokens for u in reported)
        completion = sum(u.completion_tokens for u in reported)
        usage = ChatCompletionChunk(
            id=chunk_id,
            created=created,
            model=",".join(models),
            choices=[],
            usage=Usage(
                prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
            ),
        )
        return unpriced + (frame(usage) or b"") + b"data: [DONE]\n\n"  # type: ignore[operator]

    async def open_stream() -> StreamPlan:
        merged.start()
        head = []
        try:
            head.append(await anext(merged))  # the first output of any model, or an error
        except StopAsyncIteration:
            pass
        _name_servers(call, routed)
        return StreamPlan(head, merged, encode, done, codec.error_frame)

    async def close(state: StreamState) -> None:
        await merged.aclose()

    return stream_response(call, routed, codec, open_stream, close)


def _completion_id(call: Call) -> str:
    return f"chatcmpl-{call.access.request_id}"


def _error_object(error: GatewayError) -> dict[str, Any]:
    return {"message": error.message, "type": error.type, "code": error.code}


def _one_choice_frame(chunk_id: str, created: int, model: str, choice: dict[str, Any]) -> bytes:
    """A chunk frame of one choice that carries a field of the gateway's own (``error``,
    ``usage``): built as a dict, since the chunk model has no such field."""
    chunk = {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [choice],
    }
    return b"data: " + to_json(chunk) + b"\n\n"


def _error_frame(
    chunk_id: str, created: int, models: Sequence[str], index: int, error: GatewayError
) -> bytes:
    choice = {"index": index, "delta": {}, "finish_reason": "error", "error": _error_object(error)}
    return _one_choice_frame(chunk_id, created, models[index], choice)


def _with_usage(chunk: ChatCompletionChunk, usage: Usage) -> bytes:
    """A model's finish chunk with its own usage on its choice (a field the SDKs keep)."""
    choice = chunk.choices[0]
    return _one_choice_frame(
        chunk.id,
        chunk.created,
        chunk.model,
        {
            "index": choice.index,
            "delta": choice.delta.model_dump(exclude_none=True),
            "finish_reason": choice.finish_reason,
            "usage": usage.model_dump(exclude_none=True),
        },
    )
