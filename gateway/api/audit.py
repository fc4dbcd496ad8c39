"""The audit trail of admin actions: one log line and one stored event each.

Each key create, update, revoke and config reload through the admin API,
refused ones included, is written as one line on the ``gateway.audit`` logger
(INFO) and one ``AuditEvent`` in the store: who (the master key's hint), what
(the action, its target, the names of the fields it set), when, from where
(the client's address) and how it ended (docs/operations.md, "Audit trail").
Never a secret, a key's plaintext, a changed value or an error's message
(a broken config's message may quote the file): an error is named by its code.

The line is written first, so a store that is down or slow never loses an
action silently: storing is bounded by ``STORE_SECONDS``, and when it fails an
ERROR line on the same logger says so, with the event's fields again.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Annotated

from fastapi import Depends, Request
from pydantic import BaseModel

from gateway.deps import ResourcesDep
from gateway.errors import GatewayError
from gateway.limits.base import Store
from gateway.limits.keys import key_hint
from gateway.observability.logging import REQUEST_ID, escape
from gateway.schemas.admin import AuditAction, AuditEvent

log = logging.getLogger("gateway.audit")

# The longest an admin answer waits for its event to be stored (a Redis that is down
# answers at once once noticed, and is noticed within its own timeout, 250 ms).
STORE_SECONDS = 1.0


@dataclass(slots=True)
class AuditedAction:
    """One action under way; the route names its target and changes as it learns them."""

    trail: AuditTrail
    action: AuditAction
    target: str | None = None
    changes: list[str] = field(default_factory=list)
    ok_status: int = 200  # the status the route answers with when the action succeeds

    async def __aenter__(self) -> AuditedAction:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        status, outcome, error = self.ok_status, "ok", None
        if isinstance(exc, GatewayError):
            status, error = exc.status, exc.code
            outcome = "refused" if status < 500 else "error"
        elif exc is not None:
            status, outcome, error = 500, "error", "internal_error"
        await self.trail.write(
            AuditEvent(
                at=datetime.now(UTC),
                actor=self.trail.actor,
                client=self.trail.client,
                action=self.action,
                target=self.target,
                changes=self.changes,
                outcome=outcome,
                status=status,
                error=error,
                request_id=self.trail.request_id,
            )
        )


@dataclass(slots=True)
class AuditTrail:
    """Where one admin request's actions are written, and who and where it came from."""

    store: Store
    actor: str
    client: str
    request_id: str | None

    def action(
        self, action: AuditAction, target: str | None = None, *, ok_status: int = 200
    ) -> AuditedAction:
        """An async context manager: the action's event is written when it exits, with
        the outcome of its exception (a ``GatewayError``'s status and code), which it
        lets through."""
        return AuditedAction(self, action, target, ok_status=ok_status)

    async def write(self, event: AuditEvent) -> None:
        """The log line, then the stored event; never raises for the store's sake."""
        log.info("%s", audit_line(event))
        try:
            async with asyncio.timeout(STORE_SECONDS):
                await self.store.record_audit(event)
        except Exception as exc:  # the action is done: its answer must go out
            reason = exc.code if isinstance(exc, GatewayError) else type(exc).__name__
            log.error(
                "audit event not stored (%s), its log line is its only record: %s",
                escape(str(reason)),
                audit_line(event),
            )


def changed_fields(body: BaseModel) -> list[str]:
    """The names of the fields an update sets, a limit as ``limits.<name>``; no values."""
    names = []
    for name in sorted(body.model_fields_set):
        value = getattr(body, name)
        if isinstance(value, BaseModel) and value.model_fields_set:
            names += [f"{name}.{inner}" for inner in sorted(value.model_fields_set)]
        else:
            names.append(name)
    return names


def audit_line(event: AuditEvent) -> str:
    """The event as ``name=value`` fields, each value escaped (one line, no forged field)."""
    fields = {
        "action": event.action,
        "target": event.target,
        "outcome": event.outcome,
        "status": str(event.status),
        "error": event.error,
        "actor": event.actor,
        "client": event.client,
        "changes": ",".join(event.changes) if event.changes else None,
        "request_id": event.request_id,
        "at": event.at.isoformat().replace("+00:00", "Z"),
    }
    return " ".join(f"{name}={escape(value)}" for name, value in fields.items() if value)


async def audit_trail(request: Request, resources: ResourcesDep) -> AuditTrail:
    """The trail of an admin request; only ever after the master key's check passed."""
    master = resources.settings.master_key
    return AuditTrail(
        store=resources.gatekeeper.store,
        actor=key_hint(master.get_secret_value()) if master is not None else "-",
        client=request.client.host if request.client else "-",
        request_id=REQUEST_ID.get(),
    )


AuditDep = Annotated[AuditTrail, Depends(audit_trail)]
