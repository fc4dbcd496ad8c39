"""Canonical chunks -> Anthropic's stream events, one stream at a time.

=====================================  ===========================================
canonical chunk                        events
=====================================  ===========================================
the first one                          ``message_start`` (usage: the admission's
                                       estimate of the input, 0 output tokens)
``delta.content``                      a text block's ``content_block_delta``
                                       (``text_delta``), started if none is open
``delta.tool_calls[i]`` with an id     the open block stopped, a ``tool_use``
                                       block started (``input: {}``)
``... function.arguments``             ``input_json_delta`` of that call's block
``finish_reason``                      kept: Anthropic's stop reason
the usage chunk                        kept: the counts
the end (``done_frame``)               the open block stopped, ``message_delta``
                                       (stop reason, the usage: output tokens and
                                       the real input counts), ``message_stop``
a failure (``error_frame``)            ``event: error`` with the error envelope
=====================================  ===========================================

Reasoning text (``reasoning_content``) is not sent: a thinking block needs a
signature that only Anthropic makes. Events are built as plain data and written
with ``pydantic_core.to_json``, each as ``event: <type>`` and ``data: <json>``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic_core import to_json

from gateway.errors import GatewayError
from gateway.ingress.anthropic.errors import error_envelope
from gateway.ingress.base import StreamEncoder
from gateway.schemas.openai import ChatCompletionChunk, Usage

__all__ = ["STOP_REASONS", "MessageStream", "event", "stop_reason", "usage_fields"]

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def stop_reason(finish_reason: str | None) -> str:
    """Anthropic's stop reason for a canonical finish reason (``end_turn`` if unknown)."""
    return STOP_REASONS.get(finish_reason, "end_turn")  # type: ignore[arg-type]


def usage_fields(usage: Usage | None) -> dict[str, int]:
    """Canonical usage in Anthropic's convention: ``input_tokens`` without the cache's
    reads and writes, which get their own counts."""
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0}
    details = usage.prompt_tokens_details
    read = (details.cached_tokens or 0) if details is not None else 0
    write = (details.cache_write_tokens or 0) if details is not None else 0
    return {
        "input_tokens": max(0, usage.prompt_tokens - read - write),
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
    }


def event(name: bytes, data: dict[str, Any]) -> bytes:
    """One server-sent event: ``event: <name>`` and its JSON ``data``."""
    return b"event: " + name + b"\ndata: " + to_json(data) + b"\n\n"


_TEXT_START = {"type": "text", "text": ""}
_STOP = b"message_stop"


class MessageStream(StreamEncoder):
    """One stream's encoder: which block is open, which call owns which block."""

    __slots__ = ("_blocks", "_model", "_open", "_prompt", "_reason", "_started", "_tools", "_usage")

    def __init__(self, model: str, prompt_tokens: int) -> None:
        self._model = model
        self._prompt = prompt_tokens
        self._started = False
        self._blocks = 0  # blocks started so far: the next one's index
        self._open: int | None = None  # the index of the block open now
        self._tools: dict[int, int] = {}  # tool call index -> its block's index
        self._reason: str | None = None
        self._usage: Usage | None = None

    def _start(self, chunk: ChatCompletionChunk) -> bytes:
        self._started = True
        message = {
            "id": chunk.id if chunk.id.startswith("msg_") else f"msg_{chunk.id}",
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self._prompt, "output_tokens": 0},
        }
        return event(b"message_start", {"type": "message_start", "message": message})

    def _close(self) -> bytes:
        index, self._open = self._open, None
        if index is None:
            return b""
        return event(b"content_block_stop", {"type": "content_block_stop", "index": index})

    def _open_block(self, block: dict[str, Any]) -> tuple[int, bytes]:
        out = self._close()
        index = self._open = self._blocks
        self._blocks += 1
        start = {"type": "content_block_start", "index": index, "content_block": block}
        return index, out + event(b"content_block_start", start)

    def __call__(self, chunk: ChatCompletionChunk) -> bytes | None:
        out = b"" if self._started else self._start(chunk)
        if chunk.usage is not None:
            self._usage = chunk.usage
        for choice in chunk.choices:
            if choice.index != 0:
                continue  # one message: the first choice (the translation never asks for n)
            delta = choice.delta
            text = delta.content
            if text:
                if self._open is None or self._open in self._tools.values():
                    index, started = self._open_block(_TEXT_START)
                    out += started
                else:
                    index = self._open
                out += event(
                    b"content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": text},
                    },
                )
            calls = (delta.__pydantic_extra__ or {}).get("tool_calls")
            if calls:
                out += self._tool_calls(calls)
            if choice.finish_reason is not None:
                self._reason = stop_reason(choice.finish_reason)
        return out or None

    def _tool_calls(self, calls: list[Any]) -> bytes:
        out = b""
        for call in calls:
            if isinstance(call, BaseModel):  # a provider that built it as a model
                call = call.model_dump(exclude_unset=True)
            if not isinstance(call, dict):
                continue
            position = call.get("index", 0)
            function = call.get("function") or {}
            index = self._tools.get(position)
            if index is None:
                block = {
                    "type": "tool_use",
                    "id": call.get("id") or f"toolu_{position}",
                    "name": function.get("name") or "",
                    "input": {},
                }
                index, started = self._open_block(block)
                self._tools[position] = index
                out += started
            arguments = function.get("arguments")
            if arguments:
                out += event(
                    b"content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": arguments},
                    },
                )
        return out

    def done_frame(self) -> bytes | None:
        out = b""
        if not self._started:  # an upstream that sent nothing at all: still a message
            out = self._start(ChatCompletionChunk(id="msg_empty", created=0, model="", choices=[]))
        out += self._close()
        fields = usage_fields(self._usage)
        if self._usage is None:
            fields["input_tokens"] = self._prompt
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": self._reason or "end_turn", "stop_sequence": None},
            "usage": fields,
        }
        return out + event(b"message_delta", delta) + event(_STOP, {"type": "message_stop"})

    def error_frame(self, error: GatewayError) -> bytes:
        return event(b"error", error_envelope(error))
