"""``Edge``: the limits of ``server:`` as gateway/server.py applies them, with the
answers it refuses with prebuilt (docs/operations.md, "The edge's protections").

Each refusal is a whole HTTP answer, written by the protocol itself before any
app sees the request: the error in the OpenAI envelope (docs/wire-formats.md)
and ``connection: close``.
"""

from __future__ import annotations

import functools
import http
from dataclasses import dataclass

from gateway.config import ServerConfig
from gateway.errors import (
    GatewayError,
    HeadTooLarge,
    InvalidRequest,
    RequestTimeout,
    TooManyConnections,
)
from gateway.ingress.openai import error_json

# After a refusal, what the client still sends is read and dropped this long (or until
# it closes), so that it reads the answer instead of a reset for unread data.
LINGER_SECONDS = 2.0


def _refusal(error: GatewayError, *headers: tuple[bytes, bytes]) -> bytes:
    """A whole answer, ready to write: the error in the envelope, and ``connection: close``."""
    body = error_json(error)
    lines = [
        b"HTTP/1.1 %d %s" % (error.status, http.HTTPStatus(error.status).phrase.encode()),
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"connection: close",
        *(name + b": " + value for name, value in headers),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@dataclass(frozen=True, slots=True)
class Edge:
    """The limits of ``server:`` as the protocol applies them, with its refusals prebuilt."""

    max_head_bytes: int
    max_header_fields: int
    head_timeout: float
    body_timeout: float
    keepalive_timeout: float
    max_connections: int
    tick: float  # the connection timer's longest sleep: no deadline is nearer than this
    head_too_large: bytes
    too_many_fields: bytes
    head_too_slow: bytes
    body_too_slow: bytes
    too_many_connections: bytes
    bad_request: bytes

    @classmethod
    def from_config(cls, server: ServerConfig) -> Edge:
        head, body = server.head_timeout_seconds, server.body_timeout_seconds
        keepalive = server.keepalive_timeout_seconds
        return cls(
            max_head_bytes=server.max_head_bytes,
            max_header_fields=server.max_header_fields,
            head_timeout=head,
            body_timeout=body,
            keepalive_timeout=keepalive,
            max_connections=server.max_connections,
            tick=min(head, body, keepalive, LINGER_SECONDS),
            head_too_large=_refusal(
                HeadTooLarge(
                    "The request head (request line and headers) is larger than the limit "
                    f"of {server.max_head_bytes} bytes."
                )
            ),
            too_many_fields=_refusal(
                HeadTooLarge(f"The request has more than {server.max_header_fields} header fields.")
            ),
            head_too_slow=_refusal(
                RequestTimeout(f"The request head did not arrive within {head:g} seconds.")
            ),
            body_too_slow=_refusal(
                RequestTimeout(f"The request body stalled for more than {body:g} seconds.")
            ),
            too_many_connections=_refusal(
                TooManyConnections("The gateway has too many open connections; retry shortly."),
                (b"retry-after", b"1"),
            ),
            bad_request=_refusal(InvalidRequest("The request is not valid HTTP/1.1.")),
        )


@functools.cache
def default_edge() -> Edge:
    return Edge.from_config(ServerConfig())
