"""Liveness and readiness, for load balancers and orchestrators (docs/operations.md,
"Health and readiness")."""

from __future__ import annotations

import math

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from gateway.deps import ResourcesDep
from gateway.routing.router import Router

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process answers. Reads nothing: liveness must stay cheap."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request, resources: ResourcesDep) -> JSONResponse:
    """Whether this process can serve, and if not fully, what is wrong.

    ``ready`` (200): the store answers and every model has a usable deployment.
    ``degraded`` (200): Redis is down under ``fail_mode: open`` (known keys go on, on
    per-process limits), or some models have every deployment cooling down (routing
    still tries the one whose cooldown ends first, and their fallbacks).
    ``unavailable`` (503): Redis is down under ``fail_mode: closed``, or no model has a
    usable deployment. The store is probed (Redis pinged), so an idle process notices
    an outage too.
    """
    store = resources.gatekeeper.store
    store_status = await store.status()  # ok | degraded | unavailable
    unusable = unusable_models(resources.router)
    total = len(resources.router.names())
    if store_status == "unavailable" or len(unusable) == total:
        status = "unavailable"
    elif store_status != "ok" or unusable:
        status = "degraded"
    else:
        status = "ready"
    body = {
        "status": status,
        "store": _store_body(store.backend, store_status, store.last_error),
        "models": {"total": total, "unavailable": unusable},
        "config": {
            "generation": request.state.live.generation,
            "source": resources.settings.source,
        },
    }
    return JSONResponse(body, status_code=503 if status == "unavailable" else 200)


def _store_body(backend: str, status: str, error: str | None) -> dict[str, str]:
    """The store's part of the answer; while it is down, why (Redis's own words, as
    the log has them: an address, a refusal, never a credential)."""
    body = {"backend": backend, "status": status}
    if status != "ok" and error:
        body["error"] = error
    return body


def unusable_models(router: Router) -> dict[str, str]:
    """The served models without a usable deployment right now, each with why."""
    state = router.state
    found = {}
    for name in router.names():
        targets = router.route(name).targets
        if not targets:
            found[name] = "no deployment on an enabled provider"
            continue
        left = [(state.cooldown_left(t.name), t.name) for t in targets]
        if all(seconds > 0 for seconds, _ in left):
            found[name] = "every deployment is cooling down: " + ", ".join(
                f"{deployment} for {math.ceil(seconds)} s" for seconds, deployment in sorted(left)
            )
    return found
