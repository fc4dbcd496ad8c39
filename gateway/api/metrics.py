"""``GET /metrics``: the Prometheus text of the gateway's metrics (docs/operations.md, "Metrics")."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import Response

from gateway.deps import ResourcesDep
from gateway.observability.metrics import CONTENT_TYPE, Metrics

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
async def metrics(resources: ResourcesDep) -> Response:
    """Every metric, as prometheus-client writes it; with several workers, the whole
    server's from whichever worker answers. 404, as for any unknown path, when
    ``server.metrics`` is false (no ``Metrics`` observes the app)."""
    found = Metrics.of(resources.observer)
    if found is None:
        raise HTTPException(status_code=404)
    # Several workers: the scrape reads every worker's files, off the event loop.
    body = await run_in_threadpool(found.exposition)
    return Response(body, media_type=CONTENT_TYPE)
