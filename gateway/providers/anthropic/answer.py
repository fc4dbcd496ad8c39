"""An Anthropic Messages answer -> the canonical ``ChatCompletion``; stop reasons and usage.

- ``text`` blocks are joined into ``message.content`` (None when there are none);
- ``tool_use`` blocks become ``message.tool_calls``, in order, their ``input``
  as JSON text in ``function.arguments``;
- ``thinking`` blocks are joined into an extra ``message.reasoning_content``
  field (as DeepSeek and vLLM name it; clients that do not know it ignore it).
  Their signatures and ``redacted_thinking`` blocks are dropped: OpenAI's
  shape has no place to hand them back in a later turn;
- any other block (server tool results, which the gateway never asks for) is left out.

Stop reasons map to OpenAI's finish reasons (``FINISH_REASONS``); usage follows
the gateway's convention (``usage``): the prompt counts cache reads and writes,
which Anthropic's ``input_tokens`` leaves out.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import to_json

from gateway.providers.failures import malformed
from gateway.schemas.openai import (
    ChatCompletion,
    ChatCompletionMessage,
    Choice,
    CompletionTokensDetails,
    PromptTokensDetails,
    Usage,
)

__all__ = ["FINISH_REASONS", "completion", "finish_reason", "usage"]

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",  # a server tool's long turn paused; the gateway sends none
}


def finish_reason(stop_reason: str | None) -> str:
    """OpenAI's finish reason for a stop reason; one it does not know yet: ``stop``."""
    return FINISH_REASONS.get(stop_reason, "stop")  # type: ignore[arg-type]


def usage(fields: dict[str, Any]) -> Usage:
    """Anthropic's usage counts (``input_tokens``, ``output_tokens``, the cache's
    ``cache_read_input_tokens`` and ``cache_creation_input_tokens``) in the gateway's
    convention; a count that is missing, null or not a count is 0."""
    fresh = _count(fields.get("input_tokens"))
    read = _count(fields.get("cache_read_input_tokens"))
    write = _count(fields.get("cache_creation_input_tokens"))
    output = _count(fields.get("output_tokens"))
    prompt = fresh + read + write
    counted = Usage(
        prompt_tokens=prompt,
        completion_tokens=output,
        total_tokens=prompt + output,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=read, cache_write_tokens=write),
    )
    details = fields.get("output_tokens_details")
    if isinstance(details, dict) and details.get("thinking_tokens") is not None:
        counted.completion_tokens_details = CompletionTokensDetails(
            reasoning_tokens=_count(details["thinking_tokens"])
        )
    return counted


def _count(value: Any) -> int:
    """A token count as reported; anything but a non-negative integer counts 0."""
    return value if type(value) is int and value > 0 else 0


class _Answer(BaseModel):
    """What the translation reads of a Messages answer; the rest is ignored."""

    model_config = ConfigDict(extra="ignore")

    id: str
    model: str
    content: list[dict[str, Any]]
    stop_reason: str | None = None
    usage: dict[str, Any] | None = None


def completion(body: bytes) -> ChatCompletion:
    """The answer's body as a ``ChatCompletion``; ``failures.malformed`` if unreadable."""
    try:
        answer = _Answer.model_validate_json(body)
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in answer.content:
            kind = block.get("type")
            if kind == "text":
                texts.append(block["text"])
            elif kind == "tool_use":
                calls.append(
                    {
                        "id": block["id"],
                        "type": "function",
                        "function": {
                            "name": block["name"],
                            "arguments": _json_text(block.get("input")),
                        },
                    }
                )
            elif kind == "thinking":
                thoughts.append(block["thinking"])
        fields: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
        if calls:
            fields["tool_calls"] = calls
        if thoughts:
            fields["reasoning_content"] = "".join(thoughts)
        message = ChatCompletionMessage(**fields)
    except ValidationError as exc:
        raise malformed(exc) from None
    except (KeyError, TypeError) as exc:
        raise malformed(ValueError(f"a content block without its {exc}")) from None
    return ChatCompletion(
        id=answer.id,
        created=int(time.time()),
        model=answer.model,
        choices=[Choice(index=0, message=message, finish_reason=finish_reason(answer.stop_reason))],
        usage=usage(answer.usage or {}),
    )


def _json_text(value: Any) -> str:
    """A tool call's ``input`` as the JSON text OpenAI's ``arguments`` is."""
    return to_json(value if value is not None else {}).decode()
