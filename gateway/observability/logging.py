"""Log setup and the access log: one line per request, never a secret or a prompt."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass
from typing import TextIO

access_log = logging.getLogger("gateway.access")

_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
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
    # The admitted key's rate-limit headers, which every answer after admission carries.
    headers: dict[str, str] | None = None

    def line(self, latency_ms: float) -> str:
        parts = [
            f"request_id={self.request_id}",
            f"method={self.method}",
            f"path={self.path}",
            f"status={self.status}",
            f"latency_ms={latency_ms:.1f}",
        ]
        for name in ("key", "model", "served_by", "outcome", "input_tokens", "output_tokens"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value}")
        if self.ttft_ms is not None:
            parts.append(f"ttft_ms={self.ttft_ms:.1f}")
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
