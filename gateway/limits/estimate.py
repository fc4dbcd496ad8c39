"""Offline token estimates for reservations: no tokenizer, no download, and high.

A reservation that is too low lets a key overshoot its tpm or budget by the
difference, so these count about one token per three bytes of UTF-8 (real
BPE tokenizers average nearer four for English) plus per-message overhead.
"""

from __future__ import annotations

from typing import Any

from gateway.schemas.openai import ChatCompletionRequest, EmbeddingRequest

IMAGE_TOKENS = 1_600  # above a high-detail image tile budget
MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3


def text_tokens(text: str) -> int:
    return (len(text.encode()) + 2) // 3


def _content_tokens(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return text_tokens(content)
    total = 0
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text":
            total += text_tokens(str(part.get("text", "")))
        elif kind in ("image_url", "input_image", "image"):
            total += IMAGE_TOKENS
        else:
            total += text_tokens(str(part))
    return total


def prompt_tokens(request: ChatCompletionRequest) -> int:
    total = REPLY_PRIMING
    for message in request.messages:
        total += MESSAGE_OVERHEAD + _content_tokens(message.content)
        if message.model_extra:  # tool_calls, name, ...
            total += text_tokens(str(message.model_extra))
    extra = request.model_extra or {}
    for field in ("tools", "functions", "response_format"):
        if field in extra:
            total += text_tokens(str(extra[field]))
    return total


def embedding_tokens(request: EmbeddingRequest) -> int:
    inputs = request.input if isinstance(request.input, list) else [request.input]
    total = 0
    for item in inputs:
        if isinstance(item, str):
            total += text_tokens(item)
        elif isinstance(item, int):
            total += 1
        else:
            total += len(item)
    return max(1, total)
