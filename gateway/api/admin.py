"""The admin API: keys, their quotas and their usage (DESIGN §5), for the master key only."""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import ValidationError

from gateway.api.handlers import validation_error
from gateway.config import Limits
from gateway.deps import GatekeeperDep, ResourcesDep, presented_key
from gateway.errors import AdminDisabled, InvalidAPIKey
from gateway.limits.keys import KeyRecord, as_utc
from gateway.schemas.admin import (
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyOut,
    KeyUpdate,
    UsageDoc,
    UsageList,
)
from gateway.schemas.openai import ErrorResponse


async def require_master_key(request: Request, resources: ResourcesDep) -> None:
    master = resources.settings.master_key
    if master is None:
        raise AdminDisabled("admin API disabled: set GATEWAY_MASTER_KEY")
    presented = presented_key(request).encode()
    if not hmac.compare_digest(presented, master.get_secret_value().encode()):
        raise InvalidAPIKey("Incorrect master key provided.")


router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_master_key)],
    responses={s: {"model": ErrorResponse} for s in (400, 401, 404, 409, 503)},
)


def _out(record: KeyRecord) -> KeyOut:
    return KeyOut.model_validate(record, from_attributes=True)


def _limits(value: dict) -> Limits:
    try:
        return Limits.model_validate(value)
    except ValidationError as exc:
        raise validation_error(
            [{**e, "loc": ("limits", *e["loc"])} for e in exc.errors()]
        ) from None


@router.post("/keys", status_code=201, response_model=KeyCreated)
async def create_key(body: KeyCreate, gatekeeper: GatekeeperDep) -> KeyCreated:
    secret, record = await gatekeeper.create_key(
        name=body.name,
        models=body.models,
        limits=_limits(body.limits.model_dump()),
        expires_at=body.expires_at,
        metadata=body.metadata,
    )
    return KeyCreated(**_out(record).model_dump(), key=secret)


@router.get("/keys", response_model=KeyList)
async def list_keys(
    gatekeeper: GatekeeperDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> KeyList:
    records, has_more = await gatekeeper.list_keys(limit, after)
    return KeyList(
        data=[_out(r) for r in records],
        has_more=has_more,
        last_id=records[-1].id if records else None,
    )


@router.get("/keys/{key_id}", response_model=KeyOut)
async def get_key(key_id: str, gatekeeper: GatekeeperDep) -> KeyOut:
    return _out(await gatekeeper.get_key(key_id))


@router.patch("/keys/{key_id}", response_model=KeyOut)
async def update_key(key_id: str, body: KeyUpdate, gatekeeper: GatekeeperDep) -> KeyOut:
    current = await gatekeeper.get_key(key_id)
    changes: dict[str, object] = {}
    for field in body.model_fields_set:
        value = getattr(body, field)
        if field == "limits":
            merged = current.limits.model_dump()
            if value is not None:  # field by field; an explicit null removes that limit
                merged.update({f: getattr(value, f) for f in value.model_fields_set})
            else:
                merged = {}
            changes["limits"] = _limits(merged)
        elif field == "models":
            changes["models"] = tuple(value or ("*",))
        elif field == "metadata":
            changes["metadata"] = value or {}
        elif field == "name" and value is None:
            continue
        elif field == "expires_at":
            changes[field] = as_utc(value)
        else:
            changes[field] = value
    return _out(await gatekeeper.update_key(key_id, changes))


@router.delete("/keys/{key_id}", status_code=204, response_class=Response)
async def revoke_key(key_id: str, gatekeeper: GatekeeperDep) -> Response:
    await gatekeeper.revoke_key(key_id)
    return Response(status_code=204)


@router.get("/keys/{key_id}/usage", response_model=UsageDoc)
async def key_usage(key_id: str, gatekeeper: GatekeeperDep) -> UsageDoc:
    await gatekeeper.get_key(key_id)  # 404 for an unknown id
    return await gatekeeper.store.usage(key_id)


@router.get("/usage", response_model=UsageList)
async def all_usage(gatekeeper: GatekeeperDep) -> UsageList:
    docs, after = [], None
    while True:
        records, has_more = await gatekeeper.list_keys(100, after)
        # Concurrent: on Redis one pipelined round trip a page, not one a key.
        docs += await asyncio.gather(*(gatekeeper.store.usage(r.id) for r in records))
        if not has_more or not records:
            return UsageList(data=docs)
        after = records[-1].id
