"""Log setup and the access log: one line per request, never a secret or a prompt.

What a client sent (a path, a key's name) can hold a newline, an ANSI escape
or ``x=y``: written as it is, it would forge a log line or a field. So every
field of the access line goes through ``escape``, and every ``gateway`` log
record through ``SafeFormatter``: in what they write, each line that starts
at the left margin is one record, and each ``name=value`` is one field.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from dataclasses import dataclass
from typing import TextIO

access_log = logging.getLogger("gateway.access")

_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# Anything but printable ASCII other than space, "=" and "\\": only a value holding
# one of these takes the slow path. One regex search, a fraction of a microsecond.
_UNSAFE = re.compile(r"[^\x21-\x3c\x3e-\x5b\x5d-\x7e]").search


def _escape_char(char: str) -> str:
    if char.isprintable() and char not in " =\\":
        return char  # printable non-ASCII (a name in another script) stays readable
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape(value: str) -> str:
    """``value`` as one field of a log line: control characters (C0, DEL, C1 and
    the rest of Unicode's unprintable ones), space, ``=`` and backslash as
    ``\\xNN`` / ``\\uNNNN`` escapes, so no value can end the line or fake a field."""
    if _UNSAFE(value) is None:
        return value
    return "".join(map(_escape_char, value))


# Control characters other than the newline, which a traceback needs; with Unicode's
# line separators and the bidirectional overrides that reorder what a terminal shows.
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def _escape_control(text: str) -> str:
    return _CONTROL.sub(lambda m: _escape_char(m.group()), text)


class SafeFormatter(logging.Formatter):
    """A record is one line, whatever its arguments hold; a traceback follows it
    indented, so no line of it can pass for a record of its own."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        if text.isascii() and text.isprintable():
            return text
        return _escape_control(text).replace("\n", "\\x0a")

    def formatException(self, ei) -> str:  # type: ignore[no-untyped-def]
        return _indent(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indent(super().formatStack(stack_info))


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in _escape_control(text).split("\n"))


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter(_FORMAT))
    root = logging.getLogger("gateway")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@dataclass(slots=True)
class AccessRecord:
    """What one request did; the route fills it in, the middleware writes it."""

    request_id: str
    method: str
    path: str
    status: int = 0
    key: str | None = None
    model: str | None = None
    served_by: str | None = None
    ttft_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    outcome: str | None = None  # for streams: done | error | client_disconnect
    # Why an upstream call failed (errors.Reason), and the status it answered with.
    reason: str | None = None
    upstream_status: int | None = None
    attempts: int = 0  # upstream calls routing made: retries and hedges counted
    # Where the key stands against its limits once admission decided (a LimitsState of
    # gateway/limits/base.py): the ingress renders it on every answer after admission.
    limits: object | None = None

    def failed(self, error: object) -> None:
        """Put why an upstream call failed (a GatewayError's ``reason`` and
        ``upstream_status``) on the line; called once, where the error is rendered."""
        reason = getattr(error, "reason", None)
        if reason is not None:
            self.reason, self.upstream_status = reason, getattr(error, "upstream_status", None)

    def line(self, latency_ms: float) -> str:
        """The record as ``name=value`` fields, every text value escaped (``escape``).

        ``outcome`` and ``reason`` come from fixed vocabularies of the gateway's own
        and the numbers are numbers; the rest may hold what a client or an operator
        wrote. One search over all of that decides whether anything needs escaping.
        """
        request_id, method, path = self.request_id, self.method, self.path
        key, model, served_by = self.key, self.model, self.served_by
        if _UNSAFE(f"{request_id}{method}{path}{key or ''}{model or ''}{served_by or ''}"):
            request_id, method, path = escape(request_id), escape(method), escape(path)
            key = None if key is None else escape(key)
            model = None if model is None else escape(model)
            served_by = None if served_by is None else escape(served_by)
        parts = [
            f"request_id={request_id}",
            f"method={method}",
            f"path={path}",
            f"status={self.status}",
            f"latency_ms={latency_ms:.1f}",
        ]
        if key is not None:
            parts.append(f"key={key}")
        if model is not None:
            parts.append(f"model={model}")
        if served_by is not None:
            parts.append(f"served_by={served_by}")
        if self.outcome is not None:
            parts.append(f"outcome={self.outcome}")
        if self.reason is not None:
            parts.append(f"reason={self.reason}")
        if self.upstream_status is not None:
            parts.append(f"upstream_status={self.upstream_status}")
        if self.input_tokens is not None:
            parts.append(f"input_tokens={self.input_tokens}")
        if self.output_tokens is not None:
            parts.append(f"output_tokens={self.output_tokens}")
        if self.ttft_ms is not None:
            parts.append(f"ttft_ms={self.ttft_ms:.1f}")
        if self.attempts > 1:
            parts.append(f"attempts={self.attempts}")
        return " ".join(parts)


class AccessLog:
    """The access log, written in batches: one write a flush instead of one a request.

    Lines look like the ``logging`` lines beside them (``<time> INFO
    gateway.access ...``); whether they are written follows the level of the
    ``gateway.access`` logger when the app starts.
    """

    FLUSH_SECONDS = 0.1
    MAX_BUFFERED = 2_000

    def __init__(self, stream: TextIO | None = None) -> None:
        self.enabled = access_log.isEnabledFor(logging.INFO)
        self._stream = stream
        self._lines: list[str] = []
        self._second = -1
        self._stamp = ""
        self._task: asyncio.Task[None] | None = None

    def write(self, line: str) -> None:
        if not self.enabled:
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        millis = int((now - second) * 1000)
        self._lines.append(f"{self._stamp},{millis:03d} INFO gateway.access {line}\n")
        if len(self._lines) >= self.MAX_BUFFERED:
            self.flush()

    def flush(self) -> None:
        if self._lines:
            stream = self._stream or sys.stderr
            stream.write("".join(self._lines))
            stream.flush()
            self._lines.clear()

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.FLUSH_SECONDS)
            self.flush()

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._flush_forever(), name="gateway-access-log")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.flush()
