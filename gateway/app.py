"""``create_app(settings)``: the composition root of the HTTP service."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import httpx
from fastapi import FastAPI

from gateway import __version__, fastpath
from gateway.api import admin, anthropic, fanout, health, metrics, openai, ui
from gateway.api.handlers import install_error_handlers
from gateway.api.middleware import ModelEndpointsCORS, RequestContextMiddleware
from gateway.config import Settings, load_settings, resolve_config_path
from gateway.live import Live, Reloaded
from gateway.observability.access import AccessLog
from gateway.observability.logging import configure_logging
from gateway.observability.metrics import Metrics
from gateway.observability.observer import Observers
from gateway.reload import listen_for_sighup, reload_config
from gateway.resources import Resources

if TYPE_CHECKING:  # imported only when tracing is on
    from opentelemetry.trace import TracerProvider

    from gateway.observability.tracing import Tracing

# FastAPI's built-in OpenTelemetry asks, on every request, whether a provider is
# configured; the gateway configures none, so it is switched off.
# The app's routers, in the order their routes are tried.
ROUTERS = (
    openai.router,
    anthropic.router,
    fanout.router,
    health.router,
    admin.router,
    metrics.router,
    ui.router,
)

_NO_TELEMETRY = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}


def create_app(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    signals: bool = False,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """The gateway for ``settings``; ``transport`` replaces every provider's (tests).
    ``signals``: SIGHUP reloads the config (the served process's, not a test's).
    ``tracer_provider``: where spans go with ``server.tracing`` on (tests); by default
    OTLP as the ``OTEL_*`` variables say (gateway/observability/tracing.py)."""

    # The framework bypasses, chosen here once: the routes' for this app, the
    # serializers' for the process (gateway/fastpath.py).
    bypass = fastpath.enabled(settings.server)
    fastpath.select(bypass)
    access_log = AccessLog(log_format=settings.server.log_format)
    # server.metrics: false: no /metrics, and nothing counted (docs/operations.md, "Metrics").
    prometheus = Metrics() if settings.server.metrics else None
    observer = Observers([access_log, *([prometheus] if prometheus is not None else [])])
    # server.tracing: spans, their modules imported only then (docs/operations.md, "Tracing").
    tracing: Tracing | None = None
    if settings.server.tracing:
        from gateway.observability.tracing import Tracing

        tracing = Tracing(tracer_provider)
        observer = Observers([*observer, tracing])
    live = Live()

    async def build(new: Settings, previous: Resources) -> Resources:
        return await Resources.build(new, transport, previous=previous)

    async def reload(cause: str = "signal") -> Reloaded:
        return await reload_config(live, build, cause=cause)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, object]]:
        resources = await Resources.build(
            settings,
            transport,
            observer=observer,
            wrap_store=tracing.traced_store if tracing is not None else None,
        )
        live.start(resources)
        access_log.start()
        stop_listening = listen_for_sighup(reload) if signals else None
        _tune_gc()
        try:
            yield {"resources": resources, "live": live, "reload": reload}
        finally:
            if stop_listening is not None:
                stop_listening()
            await live.aclose()
            await access_log.aclose()
            if tracing is not None:  # the spans still buffered are sent
                await tracing.aclose()
            if prometheus is not None:
                prometheus.close()

    # server.docs: false keeps the API's map from strangers (docs/operations.md).
    docs = (
        {} if settings.server.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    )
    app = FastAPI(
        title="LLM gateway",
        version=__version__,
        lifespan=lifespan,
        telemetry=_NO_TELEMETRY,
        **docs,
    )
    install_error_handlers(app)
    fastpath.add_routes(app, ROUTERS, bypass=bypass)
    if settings.server.cors_origins:
        app.add_middleware(ModelEndpointsCORS, origins=settings.server.cors_origins)
    app.add_middleware(RequestContextMiddleware, live=live, observer=observer)
    return app


def _tune_gc() -> None:
    """Keep the collector's full passes off the request path's latency tail.

    What start-up built (modules, models, config) lives as long as the process:
    freezing it takes it out of every later collection, and a larger first
    generation runs the young collections less often (README.md, "Performance").
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)


def app_from_env() -> FastAPI:
    """uvicorn factory for ``--workers N``: each worker sets up its logging (or its
    access log would be off) and loads the config itself."""
    import os

    configure_logging(
        os.environ.get("GATEWAY_LOG_LEVEL", "INFO"), os.environ.get("GATEWAY_LOG_FORMAT", "text")
    )
    return create_app(load_settings(resolve_config_path(None, os.environ)), signals=True)
