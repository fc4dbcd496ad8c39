"""The admin API: keys, their quotas and their usage, for the master key only.

What an unauthenticated client can make it do is kept small: the master key
is checked (and failed logins counted per address) before anything reads the
body, and a body is read only up to ``MAX_BODY_BYTES`` (docs/operations.md).
Unknown query parameters are refused rather than ignored, so a typo never
looks like a filter that matched everything.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ValidationError

from gateway.api.audit import AuditDep, changed_fields
from gateway.config import Limits
from gateway.deps import GatekeeperDep, ResourcesDep, presented_key
from gateway.errors import (
    AdminDisabled,
    ConfigRefused,
    InvalidAPIKey,
    InvalidRequest,
    RequestTooLarge,
    validation_error,
)
from gateway.limits.base import Standing
from gateway.limits.keys import KeyRecord, as_utc
from gateway.live import ReloadRefused
from gateway.reload import signal_siblings
from gateway.schemas.admin import (
    AuditList,
    BudgetQuota,
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyOut,
    KeyQuota,
    KeyUpdate,
    ParallelQuota,
    ReloadOut,
    UsageDoc,
    UsageList,
    WindowQuota,
)
from gateway.schemas.openai import ErrorResponse
from gateway.validation import check_key_name, check_metadata

MAX_BODY_BYTES = 64 * 1024
M = TypeVar("M", bound=BaseModel)


async def require_master_key(request: Request, resources: ResourcesDep) -> None:
    master = resources.settings.master_key
    if master is None:
        raise AdminDisabled("admin API disabled: set GATEWAY_MASTER_KEY")
    logins = resources.gatekeeper.admin_logins
    client = request.client.host if request.client else "-"
    presented = presented_key(request)
    logins.check(client)  # while refused, a guess is not even compared
    if not hmac.compare_digest(presented.encode(), master.get_secret_value().encode()):
        logins.failed(client)
        raise InvalidAPIKey("Incorrect master key provided.")


def allow_query(*names: str) -> Callable[[Request], Awaitable[None]]:
    """A dependency refusing query parameters other than ``names`` (400, naming it)."""
    allowed = frozenset(names)

    async def only_known(request: Request) -> None:
        for name in request.query_params:
            if name not in allowed:
                raise InvalidRequest(f"Unrecognized query parameter: '{name}'.", param=name)

    return only_known


_NO_QUERY = Depends(allow_query())


router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_master_key)],
    responses={s: {"model": ErrorResponse} for s in (400, 401, 404, 409, 413, 429, 503)},
)


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    chunks, size = [], 0
    async for chunk in request.stream():  # a chunked body counted as it arrives
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large() -> RequestTooLarge:
    return RequestTooLarge(
        f"The request body is larger than the admin API's limit of {MAX_BODY_BYTES} bytes."
    )


def json_body(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """A dependency parsing the body as ``model``, run after the master key's check.

    FastAPI reads a body parameter before any dependency runs, so the body is
    a dependency of its own instead; the route's ``openapi_extra`` documents it.
    """

    async def parse(request: Request) -> M:
        raw = await _read_body(request)
        if not raw.strip():
            raise InvalidRequest("The request body is empty; expected a JSON object.")
        try:
            body = model.model_validate_json(raw)
        except ValidationError as exc:
            errors = exc.errors()
            kind = errors[0]["type"] if errors else ""
            if kind in ("json_invalid", "json_type"):
                detail = errors[0]["msg"].removeprefix("Invalid JSON: ")
                raise InvalidRequest(f"The request body is not valid JSON: {detail}") from None
            if kind == "model_type":
                raise InvalidRequest("The request body must be a JSON object.") from None
            raise validation_error(list(errors)) from None
        _check_values(body)
        return body

    return parse


def _check_values(body: BaseModel) -> None:
    """Checks shared with the config file's keys (gateway/validation.py)."""
    checks: tuple[tuple[str, Callable[[Any], Any]], ...] = (
        ("name", check_key_name),
        ("metadata", check_metadata),
    )
    for field, check in checks:
        value = getattr(body, field, None)
        if value is None:
            continue
        try:
            check(value)
        except ValueError as exc:
            raise InvalidRequest(f"Invalid value for '{field}': {exc}.", param=field) from None


def _documented(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a body read by ``json_body``: the model's schema, inline.

    Models it refers to (KeyLimits) are components already, through the answers.
    """
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    }


def _out(record: KeyRecord) -> KeyOut:
    return KeyOut.model_validate(record, from_attributes=True)


def quota_of(key: KeyRecord, now: Standing) -> KeyQuota:
    limits = key.limits

    def left(limit: float | None, used: float) -> float | None:
        return None if limit is None else max(0, limit - used)

    spent = round(now.spent_usd, 9)
    held = round(now.held_usd, 9)
    return KeyQuota(
        key_id=key.id,
        requests=WindowQuota(
            limit=limits.rpm,
            used=now.requests_used,
            remaining=left(limits.rpm, now.requests_used),
            reset_seconds=round(max(0.0, now.requests_reset_ms) / 1000, 3),
        ),
        tokens=WindowQuota(
            limit=limits.tpm,
            used=now.tokens_used,
            remaining=left(limits.tpm, now.tokens_used),
            reset_seconds=round(max(0.0, now.tokens_reset_ms) / 1000, 3),
        ),
        parallel=ParallelQuota(
            limit=limits.max_parallel,
            in_flight=now.in_flight,
            remaining=left(limits.max_parallel, now.in_flight),
        ),
        budget=BudgetQuota(
            limit_usd=limits.budget_usd,
            period=(limits.budget_period or "total") if limits.budget_usd is not None else None,
            spent_usd=spent,
            held_usd=held,
            remaining_usd=left(limits.budget_usd, spent + held),
        ),
    )


def _limits(value: dict) -> Limits:
    try:
        return Limits.model_validate(value)
    except ValidationError as exc:
        raise validation_error(
            [
                {**e, "loc": ("limits", *e["loc"]), "msg": e["msg"].removeprefix("Value error, ")}
                for e in exc.errors()
            ]
        ) from None


@router.post(
    "/keys",
    status_code=201,
    response_model=KeyCreated,
    dependencies=[_NO_QUERY],
    openapi_extra=_documented(KeyCreate),
)
async def create_key(
    body: Annotated[KeyCreate, Depends(json_body(KeyCreate))],
    gatekeeper: GatekeeperDep,
    audit: AuditDep,
) -> KeyCreated:
    async with audit.action("key.create", ok_status=201) as action:
        secret, record = await gatekeeper.create_key(
            name=body.name,
            models=body.models,
            limits=_limits(body.limits.model_dump()),
            expires_at=body.expires_at,
            metadata=body.metadata,
            log_prompts=body.log_prompts,
        )
        action.target = record.id
    return KeyCreated(**_out(record).model_dump(), key=secret)


@router.get("/keys", response_model=KeyList, dependencies=[Depends(allow_query("limit", "after"))])
async def list_keys(
    gatekeeper: GatekeeperDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(min_length=1)] = None,
) -> KeyList:
    records, has_more = await gatekeeper.list_keys(limit, after)
    return KeyList(
        data=[_out(r) for r in records],
        has_more=has_more,
        last_id=records[-1].id if records else None,
    )


@router.get("/keys/{key_id}", response_model=KeyOut, dependencies=[_NO_QUERY])
async def get_key(key_id: str, gatekeeper: GatekeeperDep) -> KeyOut:
    return _out(await gatekeeper.get_key(key_id))


def _change(body: KeyUpdate) -> Callable[[KeyRecord], KeyRecord]:
    """What the PATCH does to a key, applied by the store to the key as it is then."""
    fixed: dict[str, object] = {}
    for field in body.model_fields_set:
        value = getattr(body, field)
        if field == "models":
            fixed["models"] = tuple(value or ("*",))
        elif field == "metadata":
            fixed["metadata"] = value or {}
        elif field == "name" and value is not None:
            fixed["name"] = value
        elif field == "expires_at":
            fixed["expires_at"] = as_utc(value)
        elif field == "log_prompts":
            fixed["log_prompts"] = bool(value)  # null: off, like the default
    # Limits merge field by field with the key's own (an explicit null removes one, a
    # null ``limits`` all), so they are merged with the key as the store holds it.
    limits = body.limits
    patch = None if limits is None else {f: getattr(limits, f) for f in limits.model_fields_set}
    touches_limits = "limits" in body.model_fields_set

    def apply(record: KeyRecord) -> KeyRecord:
        update = dict(fixed)
        if touches_limits:
            merged = {} if patch is None else {**record.limits.model_dump(), **patch}
            update["limits"] = _limits(merged)
        return record.model_copy(update=update)

    return apply


@router.patch(
    "/keys/{key_id}",
    response_model=KeyOut,
    dependencies=[_NO_QUERY],
    openapi_extra=_documented(KeyUpdate),
)
async def update_key(
    key_id: str,
    body: Annotated[KeyUpdate, Depends(json_body(KeyUpdate))],
    gatekeeper: GatekeeperDep,
    audit: AuditDep,
) -> KeyOut:
    async with audit.action("key.update", key_id) as action:
        action.changes = changed_fields(body)
        updated = await gatekeeper.update_key(key_id, _change(body))
    return _out(updated)


@router.delete("/keys/{key_id}", status_code=204, response_class=Response, dependencies=[_NO_QUERY])
async def revoke_key(key_id: str, gatekeeper: GatekeeperDep, audit: AuditDep) -> Response:
    async with audit.action("key.revoke", key_id, ok_status=204):
        await gatekeeper.revoke_key(key_id)
    return Response(status_code=204)


@router.get("/keys/{key_id}/usage", response_model=UsageDoc, dependencies=[_NO_QUERY])
async def key_usage(key_id: str, gatekeeper: GatekeeperDep) -> UsageDoc:
    await gatekeeper.get_key(key_id)  # 404 for an unknown id
    return await gatekeeper.store.usage(key_id)


@router.get("/keys/{key_id}/quota", response_model=KeyQuota, dependencies=[_NO_QUERY])
async def key_quota(key_id: str, gatekeeper: GatekeeperDep) -> KeyQuota:
    key = await gatekeeper.get_key(key_id)
    return quota_of(key, await gatekeeper.store.standing(key))


@router.get("/usage", response_model=UsageList, dependencies=[_NO_QUERY])
async def all_usage(gatekeeper: GatekeeperDep) -> UsageList:
    docs, after = [], None
    while True:
        records, has_more = await gatekeeper.list_keys(100, after)
        # Concurrent: on Redis one pipelined round trip a page, not one a key.
        docs += await asyncio.gather(*(gatekeeper.store.usage(r.id) for r in records))
        if not has_more or not records:
            return UsageList(data=docs)
        after = records[-1].id


@router.post("/reload", response_model=ReloadOut, dependencies=[_NO_QUERY])
async def reload_config(request: Request, resources: ResourcesDep, audit: AuditDep) -> ReloadOut:
    """Read the config file again, on this worker and (through the supervisor) on its
    siblings; 400 with the file's problem when it is refused, the running config kept."""
    async with audit.action("config.reload", resources.settings.source) as action:
        try:
            reloaded = await request.state.reload("admin API")
        except ReloadRefused as exc:
            raise ConfigRefused(str(exc)) from None
        action.changes = reloaded.changed
    return ReloadOut(
        generation=reloaded.generation,
        source=reloaded.source,
        changed=reloaded.changed,
        restart_needed=reloaded.restart_needed,
        workers_signalled=signal_siblings(),
    )


@router.get(
    "/audit", response_model=AuditList, dependencies=[Depends(allow_query("limit", "after"))]
)
async def list_audit(
    gatekeeper: GatekeeperDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(min_length=1)] = None,
) -> AuditList:
    """The admin actions, newest first (docs/operations.md, "Audit trail")."""
    events, has_more = await gatekeeper.store.list_audit(limit, after)
    return AuditList(data=events, has_more=has_more, last_id=events[-1].id if events else None)
