"""Admin API wire models: keys, their limits, usage documents (docs/wire-formats.md, "Admin API")."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyLimits(_Strict):
    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None
    max_parallel: PositiveInt | None = None
    budget_usd: float | None = Field(default=None, gt=0)
    budget_period: Literal["day", "month", "total"] | None = None


class KeyCreate(_Strict):
    name: str = Field(min_length=1, max_length=200)
    models: list[str] = Field(default=["*"], min_length=1)
    limits: KeyLimits = KeyLimits()
    expires_at: datetime | None = None
    metadata: dict[str, Any] = {}
    log_prompts: bool = False  # log its requests' messages (docs/operations.md, "Logs")


class KeyUpdate(_Strict):
    """Every field optional; ``limits`` merges field by field, ``null`` removes one."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    models: list[str] | None = Field(default=None, min_length=1)
    limits: KeyLimits | None = None
    expires_at: datetime | None = None
    metadata: dict[str, Any] | None = None
    log_prompts: bool | None = None


class KeyOut(BaseModel):
    id: str
    object: Literal["gateway.key"] = "gateway.key"
    name: str
    key_hint: str
    models: list[str]
    limits: KeyLimits
    expires_at: datetime | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    source: Literal["api", "config"]
    metadata: dict[str, Any]
    log_prompts: bool = False


class KeyCreated(KeyOut):
    key: str = Field(description="The plaintext key; shown this once only.")


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyOut]
    has_more: bool
    last_id: str | None


class UsageCounters(BaseModel):
    """``input_tokens`` includes the cache reads and writes counted apart below."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    errors: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


class ModelUsage(UsageCounters):
    model: str


class DayUsage(UsageCounters):
    day: str


class UsageDoc(UsageCounters):
    key_id: str
    by_model: list[ModelUsage] = []
    by_day: list[DayUsage] = []


class UsageList(BaseModel):
    object: Literal["list"] = "list"
    data: list[UsageDoc]


class WindowQuota(BaseModel):
    """One rolling-minute limit (rpm or tpm) as it stands. ``limit`` null: the key has
    none, and nothing is counted against it."""

    limit: int | None
    used: int
    remaining: int | None
    reset_seconds: float  # until the oldest use counted leaves the window; 0: none counted


class ParallelQuota(BaseModel):
    limit: int | None
    in_flight: int  # requests in flight (a fan-out's each model call)
    remaining: int | None


class BudgetQuota(BaseModel):
    limit_usd: float | None
    period: Literal["day", "month", "total"] | None
    spent_usd: float  # settled in the current period
    held_usd: float  # reserved by requests in flight until they settle
    remaining_usd: float | None


class KeyQuota(BaseModel):
    """``GET /admin/keys/{id}/quota``: where the key stands against its limits now,
    read from the store every instance shares (docs/wire-formats.md, "Admin API")."""

    object: Literal["gateway.key_quota"] = "gateway.key_quota"
    key_id: str
    requests: WindowQuota
    tokens: WindowQuota
    parallel: ParallelQuota
    budget: BudgetQuota


class ReloadOut(BaseModel):
    """``POST /admin/reload``: what the reload changed on the worker that answered."""

    object: Literal["reload"] = "reload"
    generation: int  # counts the configs this worker has run, 1 at start
    source: str  # the file read
    changed: list[str]  # one line per kind of change; empty: the file is unchanged
    restart_needed: list[str]  # server: settings that changed but apply only at restart
    workers_signalled: bool  # serve --workers N: the other workers were told to reload


AuditAction = Literal["key.create", "key.update", "key.revoke", "config.reload"]


class AuditEvent(BaseModel):
    """One admin action (docs/operations.md, "Audit trail"). Never holds a secret, a
    key's plaintext or a changed value: an update names the fields it set, nothing more."""

    id: str = ""  # given by the store that keeps it; "" until stored
    object: Literal["gateway.audit_event"] = "gateway.audit_event"
    at: datetime  # when the action was answered, UTC
    actor: str  # the hint of the master key used (sk-...abcd)
    client: str  # the address the request came from
    action: AuditAction
    target: str | None  # the key's id; for a reload, the config file read
    # Fields an update set ("limits.rpm"); what a reload changed ("models added: a").
    changes: list[str] = []
    outcome: Literal["ok", "refused", "error"]  # refused: a 4xx answer; error: a 5xx
    status: int  # the HTTP status answered
    error: str | None = None  # the error's code when not ok (key_not_found, config_invalid)
    request_id: str | None = None  # the request's x-request-id, as in the access line


class AuditList(BaseModel):
    """``GET /admin/audit``: newest first; ``after`` a ``last_id`` for the next page."""

    object: Literal["list"] = "list"
    data: list[AuditEvent]
    has_more: bool
    last_id: str | None
