"""Stand-ins for the app's resources where a test runs one layer alone."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from gateway.live import Live


def stub_live(max_body_bytes: int) -> Live:
    """A ``Live`` whose one generation has only what the request-context middleware
    reads of it: the body limit, and the count of requests on it."""
    live = Live()
    resources: Any = SimpleNamespace(
        settings=SimpleNamespace(server=SimpleNamespace(max_body_bytes=max_body_bytes)),
        in_flight=0,
    )
    live.start(resources)
    return live
