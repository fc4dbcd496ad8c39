"""The built-in mock provider: offline, deterministic, with faults on request.

The answer's text is derived from the prompt (the same prompt always gets the
same words), usage is reported, and a request scripts timing and faults with
a ``mock`` body field (docs/configuration.md, "The mock provider")::

    "mock": {"status": 500, "ttft_ms": 200, "tokens_per_s": 50, "chunks": 20,
             "cut_after": 3, "malformed_after": 3, "delay_ms": 0, "tool_calls": 2,
             "models": {"slow-a": {"ttft_ms": 3000}, "bad-b": {"status": 500}}}

where ``models`` overrides knobs for the upstream models it names, so one body sent to
each deployment of a route can fail or slow some of them.

A request with function tools is answered with tool calls when its ``tool_choice``
or its script asks for them (``gateway/providers/mock_tools.py``), streamed as
OpenAI streams them; a tool's result is answered with text.

The same generator backs ``gateway mock-upstream`` (``gateway/mockserver.py``),
which serves it over HTTP as an OpenAI-compatible server; in-process, faults
surface as the errors the openai provider would raise for them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import re
import struct
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from gateway.config import ProviderConfig
from gateway.errors import (
    InvalidRequest,
    Reason,
    UpstreamUnavailable,
    format_loc,
    upstream_status_error,
)
from gateway.providers.base import CallContext
from gateway.providers.mock_tools import MAX_TOOL_CALLS, MockCall, planned_calls
from gateway.schemas.messages import TextPart
from gateway.schemas.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionRequest,
    Choice,
    ChoiceDelta,
    ChunkChoice,
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    Usage,
)

DEFAULT_TOKENS = 12
DEFAULT_DIMENSIONS = 16
# The most numbers one mock embeddings answer makes (inputs x dimensions): the mock answers
# the demo key on a public gateway, and each number costs the event loop ~0.4 µs to make.
MAX_EMBEDDING_NUMBERS = 1 << 18
_WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "gateways",
    "relay",
    "tokens",
    "from",
    "many",
    "models",
    "to",
    "every",
    "client",
    "that",
    "asks",
    "politely",
    "and",
    "streams",
    "arrive",
    "one",
    "word",
    "at",
    "a",
    "time",
    "through",
    "proxies",
    "caches",
    "queues",
    "and",
    "careful",
    "code",
]


# Bounds of the script's knobs: a request may make the mock slow or long, not hold a
# connection or the loop for days (a value past one is a 400 naming the field).
MAX_WAIT_MS = 600_000  # ten minutes, for delay_ms and ttft_ms
MAX_CHUNKS = 100_000
MIN_TOKENS_PER_S = 0.1
MAX_TOKENS_PER_S = 1_000_000
MAX_RETRY_AFTER_S = 3600
MAX_MESSAGE = 4096
# A script's per-model entries: enough for every deployment of a route.
MAX_SCRIPT_MODELS = 16
MAX_MODEL_NAME = 256
# A tool call streams as its name, then its arguments in at most three pieces.
CHUNKS_PER_CALL = 4
# A scripted reply's chunks: each word with the space before it (the last with what
# follows it too), so the chunks joined are the reply exactly.
_REPLY_WORDS = re.compile(r"\s*\S+\s*$|\s*\S+")


class MockKnobs(BaseModel):
    """Timing and faults: a script's knobs, at its top level or for one model."""

    # Infinity and NaN (JSON's ``Infinity``, or ``1e400``) are refused like any other
    # out-of-range value rather than reaching a sleep or a Retry-After header.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    status: int | None = Field(default=None, ge=400, le=599)
    message: str | None = Field(default=None, max_length=MAX_MESSAGE)
    retry_after: float | None = Field(default=None, ge=0, le=MAX_RETRY_AFTER_S)
    delay_ms: float = Field(default=0, ge=0, le=MAX_WAIT_MS)
    ttft_ms: float = Field(default=0, ge=0, le=MAX_WAIT_MS)
    tokens_per_s: float | None = Field(default=None, ge=MIN_TOKENS_PER_S, le=MAX_TOKENS_PER_S)
    chunks: int | None = Field(default=None, ge=1, le=MAX_CHUNKS)
    cut_after: int | None = Field(default=None, ge=0, le=MAX_CHUNKS + 2)
    malformed_after: int | None = Field(default=None, ge=0, le=MAX_CHUNKS + 2)
    tool_calls: int | None = Field(default=None, ge=1, le=MAX_TOOL_CALLS)
    # The answer's text instead of the prompt's words, one word (with the space before
    # it) a chunk; ``chunks`` is then ignored.
    reply: str | None = Field(default=None, min_length=1, max_length=MAX_MESSAGE)


ModelName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_MODEL_NAME)]


class MockScript(MockKnobs):
    """Timing, faults and text for one mock request.

    ``models`` maps an upstream model name (the ``model`` the mock receives: a
    deployment's ``model:``) to knobs that override the top-level ones for that model
    only, so one body sent to every deployment of a route can fail or slow some of
    them. A knob an entry sets replaces the top-level one, ``null`` included."""

    models: dict[ModelName, MockKnobs] | None = Field(default=None, max_length=MAX_SCRIPT_MODELS)

    @classmethod
    def from_request(cls, request: BaseModel, model: str | None = None) -> MockScript:
        """The script that applies to ``model`` (by default the request's own): its
        top-level knobs with those of its ``models`` entry, if any, set over them.

        An InvalidRequest naming the field (``mock.models.<name>.<knob>``) if any part
        is out of bounds, whichever model it is for."""
        raw = (request.model_extra or {}).get("mock")
        if raw is None:
            return _NO_SCRIPT
        try:
            script = cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc, message = first["loc"], first["msg"]
            if loc[-1] == "[key]":  # a bad name is not echoed: it may be megabytes long
                loc, message = loc[:-2], f"{message} (a model name)"
            where = format_loc(("mock", *loc))
            raise InvalidRequest(f"{where}: {message}", param=where) from None
        script._check_duration("mock")
        if not script.models:
            return script
        if model is None:
            model = getattr(request, "model", None)
        resolved = script
        # Every entry is checked, not only the one that applies: a route sends the same
        # body to each deployment, and a 400 should not depend on which one answered.
        for name, knobs in script.models.items():
            entry = script.model_copy(
                update={"models": None, **{k: getattr(knobs, k) for k in knobs.model_fields_set}}
            )
            entry._check_duration(f"mock.models.{name}")
            if name == model:
                resolved = entry
        return resolved

    def _check_duration(self, where: str) -> None:
        # Each knob is bounded; so is what they make together (100,000 chunks at 0.1/s
        # would be eleven days).
        longest = max(self.chunks or DEFAULT_TOKENS, CHUNKS_PER_CALL * (self.tool_calls or 1))
        seconds = self.delay_ms / 1000 + self.pause(longest)
        if seconds > MAX_WAIT_MS / 1000:
            raise InvalidRequest(
                f"{where}: the scripted answer would take {seconds:,.0f} s; "
                f"a script may take at most {MAX_WAIT_MS // 1000} s",
                param=where,
            )

    @property
    def interval(self) -> float:
        return 1.0 / self.tokens_per_s if self.tokens_per_s else 0.0

    def pause(self, steps: int) -> float:
        """Seconds a whole answer of ``steps`` chunks (``MockAnswer.steps``) takes: the
        first, then the pace."""
        return self.ttft_ms / 1000 + self.interval * max(0, steps - 1)

    def breaks(self, steps: int) -> bool:
        """Whether a scripted fault falls within the answer: as a stream it is ``steps``
        chunks, a finish chunk and a usage chunk, and a fault past them never fires."""
        chunks = steps + 2
        return any(x is not None and x < chunks for x in (self.cut_after, self.malformed_after))


_NO_SCRIPT = MockScript()


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # typed parts: only text parts have text (a part of
        # an unknown type may carry a "text" of any JSON type)
        return " ".join(p.text for p in content if isinstance(p, TextPart))
    return ""


def prompt_text(request: ChatCompletionRequest) -> str:
    return "\n".join(_text_of(m.content) for m in request.messages)


def estimate_tokens(text: str) -> int:
    """Roughly what a BPE tokenizer counts: about four characters a token."""
    return max(1, (len(text.encode()) + 3) // 4)


def completion_tokens(request: ChatCompletionRequest, script: MockScript) -> list[str]:
    """The answer, one token a chunk: words picked by a PRNG seeded with the prompt."""
    limit = request.max_completion_tokens or request.max_tokens
    if script.reply is not None:
        words = _REPLY_WORDS.findall(script.reply) or [script.reply]
        return words[:limit] if limit else words
    count = script.chunks or DEFAULT_TOKENS
    if limit:
        count = min(count, limit)
    seed = hashlib.sha256(prompt_text(request).encode()).digest()
    rng = random.Random(seed)
    words = [rng.choice(_WORDS) for _ in range(count)]
    return [words[0].capitalize(), *(" " + w for w in words[1:])]


def usage_for(request: ChatCompletionRequest, completion: int) -> Usage:
    prompt = estimate_tokens(prompt_text(request)) + 3 * len(request.messages)
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def _finish_reason(request: ChatCompletionRequest, script: MockScript, tokens: list[str]) -> str:
    limit = request.max_completion_tokens or request.max_tokens
    return (
        "length"
        if limit and len(tokens) == limit and limit < (script.chunks or DEFAULT_TOKENS)
        else "stop"
    )


def new_id() -> str:
    return f"chatcmpl-mock{random.getrandbits(64):016x}"


@dataclass(frozen=True, slots=True)
class MockAnswer:
    """What the mock says to one request: text tokens, or tool calls."""

    tokens: list[str]  # one a chunk; none when the answer is tool calls
    calls: list[MockCall]
    finish_reason: str
    usage: Usage

    @property
    def steps(self) -> int:
        """The chunks before the finish chunk: a token each, or a call's name and pieces."""
        if self.calls:
            return sum(1 + len(call.pieces()) for call in self.calls)
        return len(self.tokens)


_NO_CALL_CHOICES = (None, "auto", "none")


def plan_answer(request: ChatCompletionRequest, script: MockScript) -> MockAnswer:
    """The answer to ``request``; an InvalidRequest if it asks for calls it cannot have.

    Tool calls are whole whatever ``max_tokens`` says (their arguments always parse),
    and their usage is estimated from their names and arguments."""
    if script.tool_calls or (request.tools and request.tool_choice not in _NO_CALL_CHOICES):
        seed = hashlib.sha256(f"{len(request.messages)}\n{prompt_text(request)}".encode()).digest()
        calls = planned_calls(request, script.tool_calls, seed, _WORDS)
        if calls:
            completion = sum(estimate_tokens(c.name) + estimate_tokens(c.arguments) for c in calls)
            return MockAnswer([], calls, "tool_calls", usage_for(request, completion))
    tokens = completion_tokens(request, script)
    return MockAnswer(
        tokens, [], _finish_reason(request, script, tokens), usage_for(request, len(tokens))
    )


def build_completion(answer: MockAnswer, model: str) -> ChatCompletion:
    if answer.calls:
        message = ChatCompletionMessage(
            role="assistant", content=None, tool_calls=[c.as_dict() for c in answer.calls]
        )
    else:
        message = ChatCompletionMessage(role="assistant", content="".join(answer.tokens))
    return ChatCompletion(
        id=new_id(),
        created=int(time.time()),
        model=model,
        choices=[Choice(index=0, message=message, finish_reason=answer.finish_reason)],
        usage=answer.usage,
    )


def _deltas(answer: MockAnswer) -> Iterator[ChoiceDelta]:
    """The answer's deltas before the finish, made as they are sent, as OpenAI streams
    them: a token each; or for each tool call its id and name (``arguments: ""``), then
    its arguments in pieces."""
    for i, token in enumerate(answer.tokens):
        yield ChoiceDelta(role="assistant", content=token) if i == 0 else ChoiceDelta(content=token)
    for i, call in enumerate(answer.calls):
        head = {
            "index": i,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        if i == 0:
            yield ChoiceDelta(role="assistant", content=None, tool_calls=[head])
        else:
            yield ChoiceDelta(tool_calls=[head])
        for piece in call.pieces():
            yield ChoiceDelta(tool_calls=[{"index": i, "function": {"arguments": piece}}])


async def generate_chunks(
    answer: MockAnswer, script: MockScript, model: str
) -> AsyncIterator[ChatCompletionChunk]:
    """The stream of an answer, paced by the script; faults are the caller's."""
    chunk_id, created = new_id(), int(time.time())

    def chunk(delta: ChoiceDelta, finish: str | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=chunk_id,
            created=created,
            model=model,
            choices=[ChunkChoice(index=0, delta=delta, finish_reason=finish)],
        )

    if script.ttft_ms:
        await asyncio.sleep(script.ttft_ms / 1000)
    interval = script.interval
    for i, delta in enumerate(_deltas(answer)):
        if i and interval:
            await asyncio.sleep(interval)
        yield chunk(delta)
    yield chunk(ChoiceDelta(), answer.finish_reason)
    yield ChatCompletionChunk(
        id=chunk_id, created=created, model=model, choices=[], usage=answer.usage
    )


def build_embeddings(request: EmbeddingRequest, model: str) -> EmbeddingResponse:
    inputs = request.input if isinstance(request.input, list) else [request.input]
    if inputs and isinstance(inputs[0], int):  # one tokenized input
        inputs = [inputs]
    dims = request.dimensions or DEFAULT_DIMENSIONS
    if len(inputs) * dims > MAX_EMBEDDING_NUMBERS:
        raise InvalidRequest(
            f"The mock makes at most {MAX_EMBEDDING_NUMBERS} numbers an answer "
            f"(inputs x dimensions); this asks for {len(inputs) * dims}.",
            param="dimensions",
        )
    data, tokens = [], 0
    for i, item in enumerate(inputs):
        text = item if isinstance(item, str) else " ".join(map(str, item))
        tokens += estimate_tokens(text) if isinstance(item, str) else len(item)
        rng = random.Random(hashlib.sha256(text.encode()).digest())
        vector = [round(rng.uniform(-1, 1), 6) for _ in range(dims)]
        if request.encoding_format == "base64":
            packed = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append(Embedding(index=i, embedding=packed))
        else:
            data.append(Embedding(index=i, embedding=vector))
    return EmbeddingResponse(
        data=data, model=model, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
    )


def scripted_error(script: MockScript) -> Exception:
    assert script.status is not None
    return upstream_status_error(
        script.status,
        script.message or f"mock failure {script.status}",
        retry_after=script.retry_after,
    )


class MockProvider:
    """The mock in-process: no HTTP, no client, the same answers and faults."""

    needs_http = False

    def __init__(self, name: str, config: ProviderConfig, upstream: object = None) -> None:
        self.name = name

    async def _before(self, script: MockScript) -> None:
        if script.delay_ms:
            await asyncio.sleep(script.delay_ms / 1000)
        if script.status:
            raise scripted_error(script)

    async def chat(self, request: ChatCompletionRequest, ctx: CallContext) -> ChatCompletion:
        script = MockScript.from_request(request, ctx.deployment.model)
        await self._before(script)
        answer = plan_answer(request, script)
        if script.breaks(answer.steps):
            raise UpstreamUnavailable(
                "the upstream sent a malformed answer (mock fault)", reason=Reason.MALFORMED
            )
        pause = script.pause(answer.steps)
        if pause:
            await asyncio.sleep(pause)
        return build_completion(answer, ctx.deployment.model)

    async def embed(self, request: EmbeddingRequest, ctx: CallContext) -> EmbeddingResponse:
        await self._before(MockScript.from_request(request, ctx.deployment.model))
        return build_embeddings(request, ctx.deployment.model)

    @asynccontextmanager
    async def stream(
        self, request: ChatCompletionRequest, ctx: CallContext
    ) -> AsyncIterator[AsyncIterator[ChatCompletionChunk]]:
        script = MockScript.from_request(request, ctx.deployment.model)
        await self._before(script)
        answer = plan_answer(request, script)
        chunks = _faulty(generate_chunks(answer, script, ctx.deployment.model), script)
        try:
            yield chunks
        finally:
            await chunks.aclose()

    async def aclose(self) -> None:
        return None


async def _faulty(
    chunks: AsyncIterator[ChatCompletionChunk], script: MockScript
) -> AsyncIterator[ChatCompletionChunk]:
    cut = min(x for x in (script.cut_after, script.malformed_after, 1 << 30) if x is not None)
    try:
        i = 0
        async for chunk in chunks:
            if i == cut:
                if cut == script.cut_after:
                    raise UpstreamUnavailable(
                        "the upstream closed the connection mid-answer (mock fault)",
                        reason=Reason.STREAM_CUT,
                    )
                raise UpstreamUnavailable(
                    "the upstream sent a malformed chunk (mock fault)", reason=Reason.MALFORMED
                )
            i += 1
            yield chunk
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
