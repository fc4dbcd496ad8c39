"""Liveness and readiness, for load balancers and orchestrators."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.deps import ResourcesDep

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(resources: ResourcesDep) -> dict[str, object]:
    """Config loaded and the store reachable: ready for traffic."""
    return {"status": "ready", "models": len(resources.router.names())}
