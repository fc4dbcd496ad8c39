"""A Gemini ``GenerateContentResponse`` -> ``ChatCompletion``, and a stream of them
(``streamGenerateContent?alt=sse``) -> ``ChatCompletionChunk``s.

- ``candidates[i]`` -> ``choices[i]``: text parts -> ``content``; thought parts
  (``thought: true``, sent only when thoughts are asked for) ->
  ``reasoning_content``; ``functionCall`` parts -> ``tool_calls`` (Gemini's
  ``id``, else a generated one; ``arguments`` the JSON of ``args``), a part's
  ``thoughtSignature`` on the call as ``extra_content.google.thought_signature``
  (a text part's on the message), where request.py finds it again;
  ``logprobsResult`` -> ``logprobs``. Other parts (inline data, code execution)
  have no place in a chat answer and are left out.
- ``finishReason`` (``finish_reason``): STOP -> stop, or tool_calls when the
  candidate called functions; MAX_TOKENS -> length; the safety family,
  RECITATION and LANGUAGE -> content_filter; MALFORMED_FUNCTION_CALL,
  UNEXPECTED_TOOL_CALL and TOO_MANY_TOOL_CALLS -> an ``UpstreamUnavailable``
  saying so (retryable: another sample may well succeed); any other reason ->
  stop if the candidate said something, else the same kind of error. A prompt
  blocked (``promptFeedback.blockReason``, no candidates) -> a 400
  ``UpstreamRejected`` with code ``content_filter``.
- ``usageMetadata`` -> ``Usage`` (docs/limits.md, "Usage"): prompt tokens
  include cached ones (``cachedContentTokenCount`` -> ``cached_tokens``) and tool
  use prompt tokens; completion tokens include thoughts
  (``thoughtsTokenCount`` -> ``reasoning_tokens``).

A stream's events each carry a piece of every candidate still going; function
calls arrive whole, so each is one ``tool_calls`` delta with its full
arguments. The stream ends at EOF (Gemini sends no ``[DONE]``): complete once
every candidate has a finish reason, cut otherwise; the last ``usageMetadata``
seen then becomes the final usage chunk (``choices=[]``).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError
from pydantic_core import from_json, to_json

from gateway.errors import Reason, UpstreamRejected, UpstreamUnavailable
from gateway.ids import new_id
from gateway.providers.base import CallContext
from gateway.providers.failures import malformed
from gateway.providers.sse import SSEEvent, SSEStream
from gateway.schemas.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    Choice,
    ChoiceDelta,
    ChunkChoice,
    CompletionTokensDetails,
    PromptTokensDetails,
    Usage,
)

__all__ = ["GeminiChunks", "completion", "finish_reason", "usage_of"]

_FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "LANGUAGE": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
}
_FAILED = {
    "MALFORMED_FUNCTION_CALL": "the model produced a malformed function call",
    "UNEXPECTED_TOOL_CALL": "the model called a function that was not declared",
    "TOO_MANY_TOOL_CALLS": "the model made too many function calls in a row",
}
_WORD = re.compile(r"[A-Z][A-Z_]{0,47}")

Data = dict[str, Any]


def finish_reason(reason: object, *, calls: bool, output: bool) -> str:
    """The OpenAI ``finish_reason`` of a candidate's ``finishReason``, or the error a
    candidate that failed is (``calls``: it called functions; ``output``: it said
    anything at all)."""
    mapped = _FINISH.get(reason)  # type: ignore[arg-type]
    if mapped == "stop" or (mapped is None and output and reason not in _FAILED):
        return "tool_calls" if calls else "stop"
    if mapped is not None:
        return mapped
    word = reason if isinstance(reason, str) and _WORD.fullmatch(reason) else "unknown"
    what = _FAILED.get(word, "the upstream stopped without an answer")
    raise UpstreamUnavailable(f"{what} (finishReason {word})", reason=Reason.MALFORMED)


def blocked(feedback: Data) -> UpstreamRejected:
    """A prompt the upstream refused to answer: a 400 the client can see and act on."""
    reason = feedback.get("blockReason")
    word = reason if isinstance(reason, str) and _WORD.fullmatch(reason) else "unknown"
    return UpstreamRejected(
        f"the upstream refused the prompt (blockReason {word})",
        status=400,
        code="content_filter",
    )


def usage_of(meta: Data) -> Usage:
    prompt = (meta.get("promptTokenCount") or 0) + (meta.get("toolUsePromptTokenCount") or 0)
    thoughts = meta.get("thoughtsTokenCount") or 0
    completion = (meta.get("candidatesTokenCount") or 0) + thoughts
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(
            cached_tokens=meta.get("cachedContentTokenCount") or 0
        ),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=thoughts),
    )


def new_call_id() -> str:
    return f"call_{new_id()[8:]}"


def _tool_call(call: Data, signature: object) -> Data:
    out: Data = {
        "id": call.get("id") or new_call_id(),
        "type": "function",
        "function": {
            "name": call.get("name") or "",
            "arguments": to_json(call.get("args") or {}).decode(),
        },
    }
    if signature:
        out["extra_content"] = {"google": {"thought_signature": signature}}
    return out


def _token(entry: Data) -> Data:
    token = entry.get("token") or ""
    return {
        "token": token,
        "logprob": entry.get("logProbability", 0.0),
        "bytes": list(token.encode()),
    }


def logprobs_of(result: Data) -> Data:
    """``logprobsResult`` -> OpenAI's ``logprobs`` (``content``, one entry a token)."""
    top = result.get("topCandidates") or []
    content = []
    for k, chosen in enumerate(result.get("chosenCandidates") or ()):
        entry = _token(chosen)
        alternatives = top[k].get("candidates") if k < len(top) else None
        entry["top_logprobs"] = [_token(t) for t in alternatives or ()]
        content.append(entry)
    return {"content": content, "refusal": None}


# ---------------------------------------------------------------- answers


def completion(content: bytes, model: str) -> ChatCompletion:
    """A ``generateContent`` answer translated; ``failures.malformed`` if unreadable."""
    try:
        data = from_json(content)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return _completion(data, model)
    except (ValidationError, ValueError) as exc:
        raise malformed(exc) from None
    except (TypeError, AttributeError, KeyError) as exc:  # a field of the wrong shape
        raise malformed(ValueError(type(exc).__name__)) from None


def _completion(data: Data, model: str) -> ChatCompletion:
    candidates = data.get("candidates")
    if not candidates:
        feedback = data.get("promptFeedback")
        if feedback and feedback.get("blockReason"):
            raise blocked(feedback)
        raise UpstreamUnavailable(
            "the upstream answered without a candidate", reason=Reason.MALFORMED
        )
    choices = []
    for position, candidate in enumerate(candidates):
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[Data] = []
        signature = None
        for part in (candidate.get("content") or {}).get("parts") or ():
            call = part.get("functionCall")
            if call is not None:
                calls.append(_tool_call(call, part.get("thoughtSignature")))
                continue
            text = part.get("text")
            if text is not None:
                (thoughts if part.get("thought") else texts).append(text)
            if part.get("thoughtSignature") and not part.get("thought"):
                signature = part["thoughtSignature"]
        fields: Data = {"role": "assistant", "content": "".join(texts) if texts else None}
        if calls:
            fields["tool_calls"] = calls
        if thoughts:
            fields["reasoning_content"] = "".join(thoughts)
        if signature:
            fields["extra_content"] = {"google": {"thought_signature": signature}}
        finish = finish_reason(
            candidate.get("finishReason") or "STOP",
            calls=bool(calls),
            output=bool(calls) or any(texts),
        )
        extra: Data = {}
        result = candidate.get("logprobsResult")
        if result:
            extra["logprobs"] = logprobs_of(result)
        choices.append(
            Choice(
                index=position,
                message=ChatCompletionMessage(**fields),
                finish_reason=finish,
                **extra,
            )
        )
    meta = data.get("usageMetadata")
    response_id = data.get("responseId")
    return ChatCompletion(
        id=f"chatcmpl-{response_id}" if response_id else f"chatcmpl-{new_id()}",
        created=int(time.time()),
        model=model,
        choices=choices,
        usage=usage_of(meta) if meta else None,
    )


# ---------------------------------------------------------------- streams


class _Candidate:
    """Where one candidate of a stream stands."""

    __slots__ = ("calls", "finished", "output")

    def __init__(self) -> None:
        self.calls = 0  # tool calls sent: the next one's index
        self.output = False  # said anything
        self.finished = False


class GeminiChunks(SSEStream):
    """``streamGenerateContent?alt=sse`` events -> ``ChatCompletionChunk``s."""

    __slots__ = ("_candidates", "_created", "_id", "_model", "_usage")

    def __init__(self, raw: AsyncIterator[bytes], ctx: CallContext, deadline: float) -> None:
        timeouts = ctx.timeouts
        super().__init__(
            raw, first_token=timeouts.first_token, idle=timeouts.idle, deadline=deadline
        )
        self._id: str | None = None
        self._created = int(time.time())
        self._model = ctx.deployment.model
        self._candidates: dict[int, _Candidate] = {}
        self._usage: Data | None = None

    def translate(self, event: SSEEvent) -> ChatCompletionChunk | None:
        try:
            data = from_json(event.data)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return self._chunk(data)
        except (ValidationError, ValueError) as exc:
            raise malformed(exc) from None
        except (TypeError, AttributeError, KeyError) as exc:
            raise malformed(ValueError(type(exc).__name__)) from None

    def _chunk(self, data: Data) -> ChatCompletionChunk | None:
        if "error" in data:
            # Its text is not relayed: it came after a 200, so it is the upstream's own
            # failure (what a 5xx would say), not a verdict on the request.
            raise UpstreamUnavailable(
                "the upstream reported an error mid-answer", reason=Reason.ERROR_EVENT
            )
        meta = data.get("usageMetadata")
        if meta:  # counts so far: the last event's are the answer's
            self._usage = meta
        if self._id is None:
            response_id = data.get("responseId")
            self._id = f"chatcmpl-{response_id}" if response_id else f"chatcmpl-{new_id()}"
        candidates = data.get("candidates")
        if not candidates:
            feedback = data.get("promptFeedback")
            if feedback and feedback.get("blockReason"):
                raise blocked(feedback)
            return None
        choices = []
        for candidate in candidates:
            choice = self._choice(candidate)
            if choice is not None:
                choices.append(choice)
        if not choices:
            return None
        return ChatCompletionChunk(
            id=self._id, created=self._created, model=self._model, choices=choices
        )

    def _choice(self, candidate: Data) -> ChunkChoice | None:
        index = candidate.get("index", 0)
        state = self._candidates.get(index)
        fields: Data = {}
        if state is None:
            state = self._candidates[index] = _Candidate()
            fields["role"] = "assistant"
        content = candidate.get("content")
        parts = content.get("parts") if content else None
        if parts:
            text = thought_text = ""
            calls: list[Data] | None = None
            for part in parts:
                call = part.get("functionCall")
                if call is not None:
                    tool_call = _tool_call(call, part.get("thoughtSignature"))
                    tool_call["index"] = state.calls
                    state.calls += 1
                    if calls is None:
                        calls = []
                    calls.append(tool_call)
                    continue
                if part.get("thought"):
                    thought_text += part.get("text") or ""
                    continue
                text += part.get("text") or ""
                if part.get("thoughtSignature"):
                    fields["extra_content"] = {
                        "google": {"thought_signature": part["thoughtSignature"]}
                    }
            if text:
                fields["content"] = text
                state.output = True
            if thought_text:
                fields["reasoning_content"] = thought_text
            if calls is not None:
                fields["tool_calls"] = calls
                state.output = True
        reason = candidate.get("finishReason")
        finish = None
        if reason:
            finish = finish_reason(reason, calls=state.calls > 0, output=state.output)
            state.finished = True
        result = candidate.get("logprobsResult")
        if not fields and finish is None and not result:
            return None
        if result:
            return ChunkChoice(
                index=index,
                delta=ChoiceDelta(**fields),
                finish_reason=finish,
                logprobs=logprobs_of(result),
            )
        return ChunkChoice(index=index, delta=ChoiceDelta(**fields), finish_reason=finish)

    def ended(self) -> None:
        candidates = self._candidates
        if not candidates or not all(state.finished for state in candidates.values()):
            raise UpstreamUnavailable(
                "the upstream stream ended before it was complete", reason=Reason.STREAM_CUT
            )
        if self._usage is None:
            return
        try:
            usage = usage_of(self._usage)
        except ValidationError as exc:
            raise malformed(exc) from None
        except (TypeError, AttributeError) as exc:
            raise malformed(ValueError(type(exc).__name__)) from None
        self.emit(
            ChatCompletionChunk(
                id=self._id or f"chatcmpl-{new_id()}",
                created=self._created,
                model=self._model,
                choices=[],
                usage=usage,
            )
        )
