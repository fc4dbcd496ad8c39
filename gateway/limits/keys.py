"""Gateway keys: what a key is, and how a presented secret becomes one.

Only a hash of a key is ever kept; the lookup is by hash, so the plaintext is
never compared byte by byte against stored secrets.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.config import KeyConfig, Limits
from gateway.errors import InvalidAPIKey, ModelNotAllowed


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def key_hint(secret: str) -> str:
    return f"sk-...{secret[-4:]}"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    name: str
    models: tuple[str, ...]
    limits: Limits
    source: str
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def check_usable(self, now: datetime | None = None) -> None:
        if self.revoked_at is not None:
            raise InvalidAPIKey("This API key has been revoked.")
        if self.expires_at is not None and (now or datetime.now(UTC)) >= self.expires_at:
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


def record_from_config(key: KeyConfig) -> tuple[str, KeyRecord]:
    """A static key from the config file: (its hash, its record)."""
    digest = hash_key(key.key.get_secret_value())
    expires = key.expires_at
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    record = KeyRecord(
        id=f"key-cfg-{digest[:12]}",
        name=key.name,
        models=tuple(key.models),
        limits=key.limits,
        source="config",
        expires_at=expires,
    )
    return digest, record


class StaticKeys:
    """The keys of the config file; the key store of the limits issue replaces it."""

    def __init__(self, keys: list[KeyConfig]) -> None:
        self._by_hash = dict(record_from_config(k) for k in keys)

    async def authenticate(self, secret: str) -> KeyRecord:
        record = self._by_hash.get(hash_key(secret))
        if record is None:
            raise InvalidAPIKey("Incorrect API key provided.")
        record.check_usable()
        return record
