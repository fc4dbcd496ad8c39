"""The access log: one record per request, written as one line, never a secret or a prompt.

The line is ``name=value`` text or, with ``server.log_format: json``, one JSON
object with OpenTelemetry's attribute names (docs/operations.md, "Logs").
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import TextIO

from gateway.observability.logging import UNSAFE, escape, json_string
from gateway.observability.observer import Observer

access_log = logging.getLogger("gateway.access")


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
    cost_usd: float | None = None  # what the request's upstream calls cost, once settled
    limit: str | None = None  # the limit that refused it (Observer.refused)
    stream: bool = False  # answered with an event stream
    # What an observer keeps per request (the tracing's span): one slot, so the
    # record stays a fixed shape; None unless tracing is on.
    trace: object | None = None

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
        if UNSAFE(f"{request_id}{method}{path}{key or ''}{model or ''}{served_by or ''}"):
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
        if self.cost_usd is not None:
            parts.append(f"cost_usd={self.cost_usd:.6f}")
        if self.ttft_ms is not None:
            parts.append(f"ttft_ms={self.ttft_ms:.1f}")
        if self.attempts > 1:
            parts.append(f"attempts={self.attempts}")
        if self.limit is not None:
            parts.append(f"limit={self.limit}")
        return " ".join(parts)

    def json_line(self, latency_ms: float, timestamp: str, pid: int) -> str:
        """The record as one JSON object (no newline): the fields of ``line`` under
        OpenTelemetry's names where they have one, ``gateway.*`` for the rest.

        Written by hand rather than by ``json.dumps`` (a tenth of its cost); every
        string goes through JSON's own encoder, so no value can end the line or
        add a key, and the numbers are numbers.
        """
        request_id, method, path, status = self.request_id, self.method, self.path, self.status
        q = json_string
        parts = [
            f'{{"timestamp":"{timestamp}","severity_text":"INFO","severity_number":9,'
            f'"logger":"gateway.access","body":{q(f"{method} {path} {status}")},'
            f'"process.pid":{pid},"request_id":{q(request_id)},'
            f'"http.request.method":{q(method)},"url.path":{q(path)},'
            f'"http.response.status_code":{status},"gateway.latency_ms":{latency_ms:.1f}'
        ]
        if self.key is not None:
            parts.append(f',"gateway.key":{q(self.key)}')
        if self.model is not None:
            parts.append(f',"gen_ai.request.model":{q(self.model)}')
        served_by = self.served_by
        if served_by is not None:
            provider = served_by.partition("/")[0]
            parts.append(
                f',"gateway.served_by":{q(served_by)},"gen_ai.provider.name":{q(provider)}'
            )
        if self.outcome is not None:
            parts.append(f',"gateway.outcome":{q(self.outcome)}')
        if self.reason is not None:
            parts.append(f',"error.type":{q(self.reason)}')
        if self.upstream_status is not None:
            parts.append(f',"gateway.upstream_status":{self.upstream_status}')
        if self.input_tokens is not None:
            parts.append(f',"gen_ai.usage.input_tokens":{self.input_tokens}')
        if self.output_tokens is not None:
            parts.append(f',"gen_ai.usage.output_tokens":{self.output_tokens}')
        if self.cost_usd is not None:
            parts.append(f',"gateway.cost_usd":{self.cost_usd:.6f}')
        if self.ttft_ms is not None:
            parts.append(f',"gateway.ttft_ms":{self.ttft_ms:.1f}')
        if self.attempts > 1:
            parts.append(f',"gateway.attempts":{self.attempts}')
        if self.limit is not None:
            parts.append(f',"gateway.limit":{q(self.limit)}')
        parts.append("}")
        return "".join(parts)


class AccessLog(Observer):
    """The access log, written in batches: one write a flush instead of one a request.

    ``text`` lines look like the ``logging`` lines beside them (``<time> INFO
    gateway.access ...``); ``json`` ones are objects like ``JsonFormatter``'s
    (``AccessRecord.json_line``). Whether they are written follows the level of
    the ``gateway.access`` logger when the app starts.
    """

    FLUSH_SECONDS = 0.1
    MAX_BUFFERED = 2_000

    def __init__(self, stream: TextIO | None = None, *, log_format: str = "text") -> None:
        if log_format not in ("text", "json"):
            raise ValueError(f"unknown log format {log_format!r}")
        self.enabled = access_log.isEnabledFor(logging.INFO)
        self.json = log_format == "json"
        self._stream = stream
        self._lines: list[str] = []
        self._second = -1
        self._stamp = ""
        self._pid = os.getpid()
        self._task: asyncio.Task[None] | None = None

    def request_finished(self, record: AccessRecord, seconds: float) -> None:
        if not self.enabled:
            return
        if self.json:
            stamp, millis = self._now()
            line = record.json_line(seconds * 1000, f"{stamp}.{millis:03d}Z", self._pid)
            self._add(line + "\n")
        else:
            self.write(record.line(seconds * 1000))

    def write(self, line: str) -> None:
        """Add one text line (``AccessRecord.line``), stamped like a ``logging`` line."""
        if not self.enabled:
            return
        stamp, millis = self._now()
        self._add(f"{stamp},{millis:03d} INFO gateway.access {line}\n")

    def _now(self) -> tuple[str, int]:
        """This second as text (formatted once a second) and the milliseconds past it:
        local time for ``text``, UTC in RFC 3339 for ``json``."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            if self.json:
                self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            else:
                self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return self._stamp, int((now - second) * 1000)

    def _add(self, line: str) -> None:
        self._lines.append(line)
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
        self._pid = os.getpid()  # the serving process's, should the app be made before a fork
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._flush_forever(), name="gateway-access-log")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.flush()
