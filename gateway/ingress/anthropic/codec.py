"""``AnthropicCodec``: the Anthropic Messages ingress's wire format (``/v1/messages``).

Errors are Anthropic's envelope (gateway/ingress/anthropic/errors.py) with the
gateway's status and headers (``retry-after``, ``x-should-retry``); a non-stream
answer is a ``message`` object; a stream is Anthropic's events, framed per
stream by ``MessageStream`` (gateway/ingress/anthropic/stream.py), which also
writes its end and its failure. The rate-limit headers are
``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}``, the resets
as RFC 3339 times (docs/wire-formats.md).

A call passed through to a provider that speaks the Messages API
(gateway/pipeline.py) is relayed: ``native_answer`` and ``relay_encoder`` set
only the ``model`` to the gateway's name and keep every other field as sent.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from pydantic_core import from_json, to_json
from starlette.responses import Response

from gateway.errors import GatewayError
from gateway.ingress.anthropic.errors import error_envelope
from gateway.ingress.anthropic.stream import MessageStream, event, stop_reason, usage_fields
from gateway.ingress.base import RawHeaders
from gateway.limits.base import LimitsState
from gateway.providers.sse import SSEEvent
from gateway.schemas.openai import ChatCompletion, ChatCompletionRequest

__all__ = ["ANTHROPIC", "AnthropicCodec", "rfc3339"]


def rfc3339(ms: float, now: float | None = None) -> str:
    """The time ``ms`` from now (rounded up to the second), as RFC 3339 UTC."""
    at = math.ceil((time.time() if now is None else now) + max(ms, 0) / 1000)
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _input(arguments: Any) -> Any:
    """A tool call's arguments (JSON text) as the object ``tool_use.input`` is."""
    if isinstance(arguments, str):
        try:
            value = from_json(arguments) if arguments.strip() else {}
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}
    return arguments if isinstance(arguments, dict) else {}


class AnthropicCodec:
    name = "anthropic"
    done_frame = None  # each stream ends itself (MessageStream.done_frame)

    def error_body(self, error: GatewayError) -> bytes:
        return to_json(error_envelope(error))

    def error_response(
        self, error: GatewayError, headers: dict[str, str] | None = None
    ) -> Response:
        return Response(
            self.error_body(error),
            status_code=error.status,
            headers={**(headers or {}), **error.response_headers()},
            media_type="application/json",
        )

    def error_frame(self, error: GatewayError) -> bytes:
        return event(b"error", error_envelope(error))

    def completion(self, answer: ChatCompletion) -> bytes:
        content: list[dict[str, Any]] = []
        reason = "end_turn"
        if answer.choices:
            choice = answer.choices[0]
            message = choice.message
            extra = message.__pydantic_extra__ or {}
            text = message.content or extra.get("refusal")
            if text:
                content.append({"type": "text", "text": text})
            for call in extra.get("tool_calls") or ():
                if isinstance(call, BaseModel):  # a provider that built it as a model
                    call = call.model_dump(exclude_unset=True)
                if isinstance(call, dict) and isinstance(call.get("function"), dict):
                    function = call["function"]
                    content.append(
                        {
                            "type": "tool_use",
                            "id": call.get("id") or f"toolu_{len(content)}",
                            "name": function.get("name") or "",
                            "input": _input(function.get("arguments")),
                        }
                    )
            reason = stop_reason(choice.finish_reason)
        return to_json(
            {
                "id": answer.id if answer.id.startswith("msg_") else f"msg_{answer.id}",
                "type": "message",
                "role": "assistant",
                "model": answer.model,
                "content": content,
                "stop_reason": reason,
                "stop_sequence": None,
                "usage": usage_fields(answer.usage),
            }
        )

    def chunk_encoder(
        self, request: ChatCompletionRequest, prompt_tokens: int = 0
    ) -> MessageStream:
        return MessageStream(request.model, prompt_tokens)

    def rate_headers(self, state: LimitsState) -> RawHeaders:
        headers: RawHeaders = []
        now = time.time()
        for kind, limit, used, reset in (
            (b"requests", state.rpm_limit, state.rpm_used, state.rpm_reset_ms),
            (b"tokens", state.tpm_limit, state.tpm_used, state.tpm_reset_ms),
        ):
            if limit:
                prefix = b"anthropic-ratelimit-" + kind
                headers += (
                    (prefix + b"-limit", b"%d" % limit),
                    (prefix + b"-remaining", b"%d" % max(0, limit - used)),
                    (prefix + b"-reset", rfc3339(reset, now).encode()),
                )
        return headers

    # ------------------------------------------------------------ pass-through

    def native_answer(self, answer: dict[str, Any], model: str) -> bytes:
        """A Messages answer from the upstream, as sent but for ``model``."""
        answer["model"] = model
        return to_json(answer)

    def relay_encoder(self, model: str) -> Callable[[SSEEvent], bytes]:
        """The framing of a relayed Messages stream: each upstream event as it came,
        ``message_start``'s model set to ``model``."""

        def frame(item: SSEEvent) -> bytes:
            name = (item.event or "message").encode()
            data = item.data
            if name == b"message_start":
                parsed = from_json(data)
                if isinstance(parsed, dict) and isinstance(parsed.get("message"), dict):
                    parsed["message"]["model"] = model
                    data = to_json(parsed)
            return b"event: " + name + b"\ndata: " + data + b"\n\n"

        return frame


ANTHROPIC = AnthropicCodec()
