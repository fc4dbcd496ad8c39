"""Log setup and the access log: one line per request, never a secret or a prompt."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

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
