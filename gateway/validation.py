"""Checks of single values that the config file, the environment and the admin API share.

Each ``check_*`` returns its value or raises ``ValueError`` with a message for a
person (pydantic validators turn it into a field error). URLs in messages have
their user-info masked: they may carry passwords.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic_core import to_json

MIN_MASTER_KEY_CHARS = 32
KEY_NAME_MAX_CHARS = 200
METADATA_MAX_BYTES = 16 * 1024


def check_http_url(value: str) -> str:
    """An absolute http(s) URL with a host that httpx can use, or ValueError saying why.

    Caught here, a bad ``base_url`` is a config error at start instead of a 502
    on every request (``not a url``) or a traceback when the client is built.
    """
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"{mask_url(value)!r} is not a URL (it is empty or has spaces)")
    try:
        url = httpx.URL(value)
        port = url.port  # parsing the port is lazy in places; ask for it here
    except (httpx.InvalidURL, ValueError) as exc:
        raise ValueError(f"{mask_url(value)!r} is not a valid URL: {exc}") from None
    if url.scheme not in ("http", "https"):
        raise ValueError(
            f"{mask_url(value)!r} is not an absolute http:// or https:// URL"
            + (f" (scheme {url.scheme!r})" if url.scheme else "")
        )
    if not url.host or "%" in url.host:
        raise ValueError(f"{mask_url(value)!r} has no valid host")
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"{mask_url(value)!r} has a port out of range")
    if url.fragment:
        raise ValueError(f"{mask_url(value)!r} has a #fragment, which a base URL cannot use")
    return value


def mask_url(value: str) -> str:
    """The URL with its user-info (``user:password@``) masked, for printing."""
    scheme, sep, rest = value.partition("://")
    if not sep:
        return value
    authority, slash, path = rest.partition("/")
    _, at, host = authority.rpartition("@")
    if not at:
        return value
    return f"{scheme}://****@{host}{slash}{path}"


def check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    """Metadata is stored with the key and returned on every read: kept small."""
    size = len(to_json(value))
    if size > METADATA_MAX_BYTES:
        raise ValueError(f"metadata is {size} bytes as JSON, more than {METADATA_MAX_BYTES}")
    return value


def check_key_name(value: str) -> str:
    """Names land in logs, consoles and terminals: printable text, no control characters."""
    if not value.isprintable():
        raise ValueError("a key name must be printable text, without control characters")
    return value


_REDIS_SCHEMES = ("redis", "rediss")  # what gateway/limits/resp.py connects to


def check_redis_url(value: str) -> str:
    """``redis://[user:password@]host:port/db`` or ``rediss://...``, or ValueError saying why."""
    shown = mask_url(value)
    parsed = urlsplit(value)
    if parsed.scheme not in _REDIS_SCHEMES:
        raise ValueError(f"{shown!r} must start with redis:// or rediss://")
    try:
        port = parsed.port
    except ValueError:
        raise ValueError(f"{shown!r} has an invalid port") from None
    if port == 0:
        raise ValueError(f"{shown!r} has an invalid port")
    db = parsed.path.lstrip("/")
    if db and not db.isdigit():
        raise ValueError(f"{shown!r}: the path must be a database number, not {db!r}")
    return value
