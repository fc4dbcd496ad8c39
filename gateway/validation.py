"""Checks of single values that the config file, the environment and the admin API share.

Each ``check_*`` returns its value or raises ``ValueError`` with a message for a
person (pydantic validators turn it into a field error). URLs in messages have
their user-info masked: they may carry passwords.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

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


# REDIS_URL's forms (docs/configuration.md, "Environment variables"): one Redis, a
# Redis Cluster by one or several seed nodes, or the primary Sentinel names; a
# ``rediss`` scheme is the same over TLS (server.redis_tls).
_REDIS_KINDS = {
    "redis": "single",
    "rediss": "single",
    "redis+cluster": "cluster",
    "rediss+cluster": "cluster",
    "redis+sentinel": "sentinel",
    "rediss+sentinel": "sentinel",
}
_DEFAULT_PORTS = {"single": 6379, "cluster": 6379, "sentinel": 26379}


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What a REDIS_URL names. ``kind`` single may still turn out to be a node of a
    cluster: that is detected at connect (gateway/limits/connect.py)."""

    kind: Literal["single", "cluster", "sentinel"]
    nodes: tuple[tuple[str, int], ...]  # the one Redis, the cluster's seeds, or the sentinels
    tls: bool = False
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    db: int = 0
    master_name: str | None = None  # sentinel: the primary's name


def parse_redis_url(value: str) -> RedisTarget:
    """The parts of a REDIS_URL, or ValueError saying (with the password masked) why not."""
    shown = mask_url(value)
    scheme, sep, rest = value.partition("://")
    kind = _REDIS_KINDS.get(scheme.lower()) if sep else None
    if kind is None:
        raise ValueError(
            f"{shown!r} must start with redis://, rediss://, redis+cluster:// or "
            "redis+sentinel:// (rediss+...: the same over TLS)"
        )
    rest, question, _ = rest.partition("?")
    authority, _, path = rest.partition("/")
    if question:
        raise ValueError(f"{shown!r}: options go in the config's server: section, not the URL")
    userinfo, at, hosts = authority.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
        if not colon:  # redis://secret@host: a password alone, as redis-py reads it
            username, password = None, unquote(user)
    nodes = tuple(_host_port(part, _DEFAULT_PORTS[kind], shown) for part in hosts.split(","))
    if kind == "single" and len(nodes) > 1:
        raise ValueError(
            f"{shown!r} names several hosts: use redis+cluster:// for a cluster's seeds or "
            "redis+sentinel:// for sentinels"
        )
    db, master_name, named = 0, None, path.strip("/")
    if kind == "sentinel":
        master_name = unquote(named)
        if not master_name:
            raise ValueError(f"{shown!r}: name the primary after the sentinels (/mymaster)")
    elif named:
        if kind == "cluster":
            raise ValueError(f"{shown!r}: a cluster has one database: no /db in the URL")
        if not named.isdigit():
            raise ValueError(f"{shown!r}: the path must be a database number, not {path!r}")
        db = int(named)
    return RedisTarget(
        kind,  # type: ignore[arg-type]
        nodes,
        tls=scheme.lower().startswith("rediss"),
        username=username,
        password=password,
        db=db,
        master_name=master_name,
    )


def _host_port(part: str, default_port: int, shown: str) -> tuple[str, int]:
    if not part:
        raise ValueError(f"{shown!r} has an empty host")
    try:
        parsed = urlsplit(f"//{part}")
        port = parsed.port
    except ValueError:
        raise ValueError(f"{shown!r} has an invalid port") from None
    if port == 0 or not parsed.hostname:
        raise ValueError(f"{shown!r} has an invalid host or port")
    return parsed.hostname, port or default_port


def check_redis_url(value: str) -> str:
    """A REDIS_URL of one of its forms (``parse_redis_url``), or ValueError saying why."""
    parse_redis_url(value)
    return value
