"""Gateway keys: the record, the secret, and how one becomes the other.

Only a SHA-256 of a key is ever stored; a presented key is looked up by its
hash (a dict or Redis lookup, not a byte-by-byte comparison with stored
secrets), and the plaintext exists once: in the answer that created it.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from gateway.config import KeyConfig, Limits
from gateway.errors import GatewayError, InvalidAPIKey, ModelNotAllowed


class KeyNameTaken(GatewayError):
    """Names are unique among keys, as in the config file (revoked keys keep theirs)."""

    status, type, code = 409, "invalid_request_error", "key_name_taken"

    def __init__(self, name: str, holder: str | None = None) -> None:
        by = f" ({holder})" if holder else ""
        super().__init__(
            f"A key named {name!r} already exists{by}; key names are unique.", param="name"
        )


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def key_hint(secret: str) -> str:
    return f"sk-...{secret[-4:]}"


def new_secret() -> str:
    return "sk-gw-" + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def utcnow() -> datetime:
    return datetime.now(UTC)


class KeyRecord(BaseModel):
    """A key as the gateway knows it; never holds the secret or its hash."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    key_hint: str
    models: tuple[str, ...] = ("*",)
    limits: Limits = Limits()
    expires_at: datetime | None = None
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    source: Literal["api", "config"] = "api"
    metadata: dict[str, Any] = {}
    log_prompts: bool = False  # its requests' messages are logged (gateway.prompts)

    def check_usable(self) -> None:
        if self.revoked_at is not None:
            raise InvalidAPIKey("This API key has been revoked.")
        if self.expires_at is not None and utcnow() >= self.expires_at:
            raise InvalidAPIKey("This API key has expired.")

    def allows(self, model: str) -> bool:
        for pattern in self.models:
            if pattern == "*" or pattern == model:
                return True
            if pattern.endswith("*") and model.startswith(pattern[:-1]):
                return True
        return False

    def check_model(self, model: str) -> None:
        if not self.allows(model):
            raise ModelNotAllowed(f"This key may not use the model `{model}`.", param="model")


def as_utc(moment: datetime | None) -> datetime | None:
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def record_from_config(key: KeyConfig, started: datetime) -> tuple[str, KeyRecord]:
    """A static key from the config file: (its hash, its record). Its id is stable."""
    secret = key.key.get_secret_value()
    digest = hash_key(secret)
    record = KeyRecord(
        id=f"key_cfg_{digest[:12]}",
        name=key.name,
        key_hint=key_hint(secret),
        models=tuple(key.models),
        limits=key.limits,
        expires_at=as_utc(key.expires_at),
        created_at=started,
        source="config",
        metadata=key.metadata,
        log_prompts=key.log_prompts,
    )
    return digest, record


def new_record(
    *,
    name: str,
    models: list[str],
    limits: Limits,
    expires_at: datetime | None,
    metadata: dict[str, Any],
    log_prompts: bool = False,
) -> tuple[str, str, KeyRecord]:
    """A new API key: (plaintext, hash, record)."""
    secret = new_secret()
    record = KeyRecord(
        id=new_key_id(),
        name=name,
        key_hint=key_hint(secret),
        models=tuple(models),
        limits=limits,
        expires_at=as_utc(expires_at),
        created_at=utcnow(),
        log_prompts=log_prompts,
    )
    if metadata:
        record = record.model_copy(update={"metadata": metadata})
    return secret, hash_key(secret), record
