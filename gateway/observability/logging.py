"""Log setup and the access log: one line per request, never a secret or a prompt.

What a client sent (a path, a key's name) can hold a newline, an ANSI escape
or ``x=y``: written as it is, it would forge a log line or a field. So every
field of the access line goes through ``escape``, and every ``gateway`` log
record through ``SafeFormatter``: in what they write, each line that starts
at the left margin is one record, and each ``name=value`` is one field.
"""

from __future__ import annotations

import logging
import re
import sys
from contextvars import ContextVar

# The id of the request this code runs for, set by the request-context middleware: every
# log line written while a request is served carries it (``SafeFormatter``).
REQUEST_ID: ContextVar[str | None] = ContextVar("gateway_request_id", default=None)

_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# Anything but printable ASCII other than space, "=" and "\\": only a value holding
# one of these takes the slow path. One regex search, a fraction of a microsecond.
UNSAFE = re.compile(r"[^\x21-\x3c\x3e-\x5b\x5d-\x7e]").search


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
    if UNSAFE(value) is None:
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
