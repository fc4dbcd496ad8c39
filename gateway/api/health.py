"""Liveness and readiness, for load balancers and orchestrators."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import JSONResponse

from gateway.deps import ResourcesDep

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(resources: ResourcesDep) -> JSONResponse:
    """Config loaded and the store reachable. ``degraded``: Redis is down and
    ``fail_mode: open`` keeps serving known keys on per-process limits (200);
    ``unavailable``: it is down and ``fail_mode: closed`` (503)."""
    store = resources.gatekeeper.store
    status = await store.status()
    body = {
        "status": "ready" if status == "ok" else status,
        "store": store.backend,
        "models": len(resources.router.names()),
    }
    return JSONResponse(body, status_code=503 if status == "unavailable" else 200)
