"""Log setup: every line one record, never a secret or a prompt (unless asked for).

What a client sent (a path, a key's name) can hold a newline, an ANSI escape
or ``x=y``: written as it is, it would forge a log line or a field. So every
field of the access line goes through ``escape``, and every ``gateway`` log
record through ``SafeFormatter``: in what they write, each line that starts
at the left margin is one record, and each ``name=value`` is one field. In the
JSON format (``server.log_format: json``) each line is one JSON object and
JSON's own encoding escapes every value (``JsonFormatter``). The fields of both
formats are in docs/operations.md, "Logs".

Every line written while a request is served carries its id: the
request-context middleware sets ``REQUEST_ID``, and both formatters add it.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
import time
from contextvars import ContextVar
from typing import Any

# The id of the request this code runs for, set by the request-context middleware: every
# log line written while a request is served carries it (``SafeFormatter``, ``JsonFormatter``).
REQUEST_ID: ContextVar[str | None] = ContextVar("gateway_request_id", default=None)

LOG_FORMATS = ("text", "json")

_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# Anything but printable ASCII other than space, "=" and "\\": only a value holding
# one of these takes the slow path. One regex search, a fraction of a microsecond.
UNSAFE = re.compile(r"[^\x21-\x3c\x3e-\x5b\x5d-\x7e]").search

# A string as a JSON string literal, quotes included, non-ASCII and controls escaped
# (the C encoder json.dumps uses for a str: a tenth of a microsecond).
json_string = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]

# OpenTelemetry's SeverityNumber of each of Python's levels.
SEVERITY_NUMBER = {
    logging.DEBUG: 5,
    logging.INFO: 9,
    logging.WARNING: 13,
    logging.ERROR: 17,
    logging.CRITICAL: 21,
}


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


def _request_id(record: logging.LogRecord) -> str | None:
    """The request the record was written for: its own ``request_id`` (``extra``), else
    the request being served where it was logged (formatting runs in the logging call)."""
    return getattr(record, "request_id", None) or REQUEST_ID.get()


class SafeFormatter(logging.Formatter):
    """A record is one line, whatever its arguments hold; a traceback follows it
    indented, so no line of it can pass for a record of its own. A record written
    while a request is served ends with `` request_id=<id>``, unless its message
    names it already."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        request_id = _request_id(record)
        if request_id is not None and "request_id=" not in record.message:
            text = f"{text} request_id={escape(request_id)}"
        if text.isascii() and text.isprintable():
            return text
        return _escape_control(text).replace("\n", "\\x0a")

    def formatException(self, ei) -> str:  # type: ignore[no-untyped-def]
        return _indent(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indent(super().formatStack(stack_info))


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in _escape_control(text).split("\n"))


def rfc3339(seconds: float) -> str:
    """``seconds`` since the epoch as RFC 3339 UTC, to the millisecond."""
    whole = int(seconds)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{stamp}.{int((seconds - whole) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """A record as one JSON object on one line, with OpenTelemetry's names:
    ``timestamp``, ``severity_text``, ``severity_number``, ``logger``, ``body``,
    ``process.pid``, ``request_id`` while a request is served, and
    ``exception.type`` / ``exception.message`` / ``exception.stacktrace`` for an
    exception. A record may bring its own ``body`` and ``attributes`` (a dict
    merged into the object) through ``extra``; what a client sent can never end
    the line or add a key, since JSON's encoding escapes every value."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "timestamp": rfc3339(record.created),
            "severity_text": record.levelname,
            "severity_number": SEVERITY_NUMBER.get(record.levelno, 9),
            "logger": record.name,
            "body": getattr(record, "body", None) or record.getMessage(),
            "process.pid": record.process,
        }
        request_id = _request_id(record)
        if request_id is not None:
            out["request_id"] = request_id
        attributes = getattr(record, "attributes", None)
        if attributes:
            out.update(attributes)
        if record.exc_info and record.exc_info[0] is not None:
            kind, error = record.exc_info[0], record.exc_info[1]
            out["exception.type"] = f"{kind.__module__}.{kind.__qualname__}"
            out["exception.message"] = str(error)
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception.stacktrace"] = record.exc_text
        if record.stack_info:
            out["code.stacktrace"] = self.formatStack(record.stack_info)
        return json.dumps(out, separators=(",", ":"), default=str)


def formatter_for(log_format: str) -> logging.Formatter:
    """The formatter of ``server.log_format``: ``text`` or ``json``."""
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return SafeFormatter(_FORMAT)
    raise ValueError(f"unknown log format {log_format!r}: expected one of {LOG_FORMATS}")


# Marks the handlers configure_logging installed, so that it replaces its own only.
_OURS = "_gateway_handler"


def _replace_ours(logger: logging.Logger, handler: logging.Handler | None) -> None:
    kept = [h for h in logger.handlers if not getattr(h, _OURS, False)]
    logger.handlers[:] = kept if handler is None else [*kept, handler]


def configure_logging(level: str = "INFO", log_format: str = "text", *, hold: bool = False) -> None:
    """Send the ``gateway`` loggers to stderr in ``log_format`` at ``level``.

    ``json``: uvicorn's loggers (for a server started without uvicorn's own
    ``log_config``) and the root logger's warnings (the libraries') are written as
    JSON objects too, so that every line on stderr is one. ``text`` leaves both
    to uvicorn and Python's defaults.

    ``hold``: keep the records until the next call, which writes them in the
    format it sets (the config, read after logging starts, chooses it); records
    still held at exit are written as text.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter_for(log_format))
    setattr(handler, _OURS, True)
    gateway = logging.getLogger("gateway")
    held = [h for h in gateway.handlers if isinstance(h, logging.handlers.MemoryHandler)]
    if hold:
        memory = logging.handlers.MemoryHandler(10_000, logging.CRITICAL + 1, handler)
        setattr(memory, _OURS, True)
        gateway.handlers[:] = [memory]
    else:
        gateway.handlers[:] = [handler]
    gateway.setLevel(level)
    gateway.propagate = False
    for memory in held:  # what was logged before this format was known
        memory.setTarget(handler)
        memory.close()  # flushes to the target
    wide = handler if log_format == "json" else None
    uvicorn = logging.getLogger("uvicorn")
    _replace_ours(uvicorn, wide)
    if wide is not None:
        uvicorn.propagate = False
    _replace_ours(logging.getLogger(), wide)


# Prompts go to their own logger, and only for a key whose ``log_prompts`` is on.
prompts_log = logging.getLogger("gateway.prompts")


def log_prompt(request_id: str, key: str, model: str | None, name: str, value: object) -> None:
    """One INFO line on ``gateway.prompts`` holding what the request asked with: ``name``
    is ``messages`` (a chat's, as JSON) or ``input`` (an embedding's). Called only for
    a key with ``log_prompts`` on; the text line is ``prompt request_id=.. key=..
    model=.. <name>=<JSON>``, the JSON value being the rest of the line."""
    text = json.dumps(value, separators=(",", ":"), default=str)
    attribute = "gen_ai.input.messages" if name == "messages" else f"gateway.{name}"
    prompts_log.info(
        "prompt request_id=%s key=%s model=%s %s=%s",
        escape(request_id),
        escape(key),
        escape(model or "-"),
        name,
        text,
        extra={
            "request_id": request_id,
            "body": "prompt",
            "attributes": {
                "gateway.key": key,
                "gen_ai.request.model": model,
                attribute: value,
            },
        },
    )
