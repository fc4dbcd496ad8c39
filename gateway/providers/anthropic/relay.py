"""A Messages call passed through: the upstream's answer and events as they came.

The Anthropic ingress sends a client's own body to an ``anthropic`` provider
(gateway/routing/deployments.py). Nothing is translated: the answer is
parsed once (for its usage; the ingress sets its ``model``), and the stream's
events are relayed one by one, ``ping`` included. Only ``message_start`` and
``message_delta`` are parsed, for the usage the call settles with; an ``error``
event becomes the typed error (errors.py), so it is answered as an HTTP error
before the stream's headers and as the ingress's error event after them; a
body that ends before ``message_stop`` was cut.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from pydantic_core import from_json

from gateway.errors import Reason, UpstreamUnavailable
from gateway.providers.anthropic.answer import usage
from gateway.providers.anthropic.errors import error_from_event
from gateway.providers.base import CallContext
from gateway.providers.failures import malformed
from gateway.providers.redact import Redactor
from gateway.providers.sse import SSEEvent, SSEStream
from gateway.schemas.openai import Usage

__all__ = ["RelayedMessages", "answer"]

_USAGE_FIELDS = (
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "output_tokens",
)


def _parsed(data: bytes) -> dict[str, Any]:
    try:
        value = from_json(data)
    except ValueError as exc:
        raise malformed(exc) from None
    if not isinstance(value, dict):
        raise malformed(ValueError("an answer or event that is not an object"))
    return value


def answer(content: bytes) -> tuple[dict[str, Any], Usage]:
    """A Messages answer, parsed, and its usage in the gateway's convention."""
    parsed = _parsed(content)
    fields = parsed.get("usage")
    return parsed, usage(fields if isinstance(fields, dict) else {})


class RelayedMessages(SSEStream):
    """A Messages stream's events, relayed; ``usage`` is what they reported so far."""

    __slots__ = ("_counts", "_redactor", "_stopped")

    def __init__(
        self, raw: AsyncIterator[bytes], ctx: CallContext, deadline: float, redactor: Redactor
    ) -> None:
        timeouts = ctx.timeouts
        super().__init__(
            raw, first_token=timeouts.first_token, idle=timeouts.idle, deadline=deadline
        )
        self._redactor = redactor
        self._counts: dict[str, Any] = {}
        self._stopped = False

    @property
    def usage(self) -> Usage | None:
        return usage(self._counts) if self._counts else None

    def _take(self, fields: Any) -> None:
        if isinstance(fields, dict):
            for name in _USAGE_FIELDS:
                value = fields.get(name)
                if value is not None:
                    self._counts[name] = value

    def translate(self, event: SSEEvent) -> SSEEvent:
        name = event.event
        if name is None:  # Anthropic names every event; its data says the type too
            kind = _parsed(event.data).get("type")
            name = event.event = kind if isinstance(kind, str) else "message"
        if name == "message_start":
            message = _parsed(event.data).get("message")
            if isinstance(message, dict):
                self._take(message.get("usage"))
        elif name == "message_delta":
            self._take(_parsed(event.data).get("usage"))
        elif name == "message_stop":
            self._stopped = True
            self.emit(event)
            raise StopAsyncIteration
        elif name == "error":
            raise error_from_event(_parsed(event.data), self._redactor)
        return event

    def ended(self) -> None:
        if not self._stopped:
            raise UpstreamUnavailable(
                "the upstream stream ended before it was complete", reason=Reason.STREAM_CUT
            )
