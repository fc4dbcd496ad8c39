"""OpenTelemetry spans of a request, its store calls and its upstream calls (``server.tracing``).

Imported only when tracing is on: a gateway without the ``tracing`` extra
installed serves with tracing off, and with tracing on it refuses to start,
naming the missing package. Off, nothing here runs, wraps or is imported.

The spans, following the GenAI semantic conventions where they have a name for
the thing (docs/operations.md, "Tracing"):

- one SERVER span per HTTP request (``Tracing.request_started`` to
  ``request_finished``), named ``chat <model>`` or ``embeddings <model>`` on the
  model endpoints, else ``<METHOD> <route>``; it is the current span while the
  request runs, so every span made inside the request is its child;
- one CLIENT span per upstream call routing made (``Tracing.attempt``), built after
  the fact from the call's own start and end times, a child of the request's;
- one CLIENT span per store call on the request path (``admit``, ``settle``,
  ``key_by_hash``), by ``TracedStore``.

Export is OTLP over HTTP, set up as the OpenTelemetry SDK reads the standard
``OTEL_*`` variables (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_SERVICE_NAME``,
``OTEL_TRACES_SAMPLER``, ...), in batches from a background thread.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from gateway.observability.observer import AttemptReport, Observer

try:
    from opentelemetry import context, trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind, StatusCode
except ModuleNotFoundError as exc:  # the extra is not installed
    raise ModuleNotFoundError(
        f"tracing needs the OpenTelemetry package {exc.name!r}, which is not installed: "
        "install the gateway with its tracing extra (pip install 'llm-gateway[tracing]') "
        "or set server.tracing: false",
        name=exc.name,
    ) from None

if TYPE_CHECKING:
    from gateway.observability.access import AccessRecord

SERVICE_NAME = "llm-gateway"  # unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES names one

# The GenAI operation each model endpoint performs; other paths have none.
OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/messages": "chat",
    "/v1/fanout/chat/completions": "chat",
    "/v1/embeddings": "embeddings",
}
# Routes with a path parameter, as their template (a span name must not hold an id).
_TEMPLATES = (
    (re.compile(r"/admin/keys/[^/]+/usage"), "/admin/keys/{key_id}/usage"),
    (re.compile(r"/admin/keys/[^/]+"), "/admin/keys/{key_id}"),
    (re.compile(r"/v1/models/.+"), "/v1/models/{model}"),
)
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9/_.\-]{0,63}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})
_DB_SYSTEMS = {"redis": "redis", "embedded": "sqlite"}  # store.backend -> db.system.name
# Outcomes that are failures of the request (streams: done | error | client_disconnect).
_FAILED_OUTCOMES = frozenset({"error", "client_disconnect", "client_timeout"})

# The token that detaches the request's span from the context when the request ends:
# set and read in the one task that runs the request (the middleware's).
_ATTACHED: ContextVar[object | None] = ContextVar("gateway_trace_token", default=None)


def default_provider() -> tuple[TracerProvider, BatchSpanProcessor]:
    """A provider exporting OTLP over HTTP in batches, configured by the ``OTEL_*``
    variables, and its batching processor; its resource is named ``llm-gateway``
    unless they name the service."""
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    batches = BatchSpanProcessor(OTLPSpanExporter())
    provider.add_span_processor(batches)
    return provider, batches


class Tracing(Observer):
    """The request and upstream-call spans, as an ``Observer``; ``traced_store`` gives
    the store-call spans. ``provider``: where spans go (tests pass one with an
    in-memory exporter); by default ``default_provider()``, which ``aclose`` shuts
    down (a provider passed in is only flushed: its owner shuts it down)."""

    # At shutdown the spans still buffered get this long to be sent: a collector that
    # is down must not hold the process up for the exporter's timeout and retries.
    SHUTDOWN_SECONDS = 3.0

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        self._batches: BatchSpanProcessor | None = None
        if provider is None:
            provider, self._batches = default_provider()
        self.provider = provider
        self.tracer = provider.get_tracer("gateway")

    # ------------------------------------------------------------ the request span

    def request_started(self, record: AccessRecord) -> None:
        operation = OPERATIONS.get(record.path)
        attributes: dict[str, Any] = {
            "http.request.method": record.method if record.method in _METHODS else "_OTHER",
            "url.path": record.path,
            "gateway.request_id": record.request_id,
        }
        if operation is not None:
            attributes["gen_ai.operation.name"] = operation
        span = self.tracer.start_span(
            operation or record.method, kind=SpanKind.SERVER, attributes=attributes
        )
        record.trace = span
        _ATTACHED.set(context.attach(trace.set_span_in_context(span)))

    def request_finished(self, record: AccessRecord, seconds: float) -> None:
        span = record.trace
        token = _ATTACHED.get()
        if token is not None:
            _ATTACHED.set(None)
            context.detach(token)  # type: ignore[arg-type]
        if not isinstance(span, trace.Span):
            return
        span.update_name(span_name(record))
        span.set_attributes(request_attributes(record))
        if record.status >= 500:
            span.set_status(StatusCode.ERROR)
        span.end()

    # ------------------------------------------------------------ upstream calls

    def attempt(self, record: AccessRecord, attempt: AttemptReport) -> None:
        parent = record.trace
        operation = OPERATIONS.get(record.path, "chat")
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": attempt.upstream_model,
            "gen_ai.provider.name": attempt.provider,
            "gen_ai.usage.input_tokens": attempt.input_tokens,
            "gen_ai.usage.output_tokens": attempt.output_tokens,
            "gateway.model": attempt.model,
            "gateway.attempt.via": attempt.via or "first",
            "gateway.attempt.outcome": attempt.outcome,
            "gateway.cost_usd": attempt.cost_usd,
        }
        failed = attempt.outcome == "error"
        if failed:
            attributes["error.type"] = attempt.reason or "error"
        span = self.tracer.start_span(
            f"{operation} {attempt.upstream_model}",
            context=trace.set_span_in_context(parent)  # type: ignore[arg-type]
            if isinstance(parent, trace.Span)
            else None,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=int(attempt.started * 1e9),
        )
        if failed:
            span.set_status(StatusCode.ERROR)
        span.end(end_time=max(int(attempt.ended * 1e9), int(attempt.started * 1e9)))

    # ------------------------------------------------------------ store calls

    def traced_store(self, store: Any) -> Any:
        """``store`` with a span around each of its request-path calls."""
        return TracedStore(store, self.tracer)

    async def aclose(self) -> None:
        """Send what is still buffered, within ``SHUTDOWN_SECONDS``; shut the provider
        down if it is ours (one passed in is only flushed: its owner shuts it down)."""
        await asyncio.to_thread(self._close)  # the exporter's HTTP calls block

    def _close(self) -> None:
        if self._batches is None:
            self.provider.force_flush(int(self.SHUTDOWN_SECONDS * 1000))  # type: ignore[attr-defined]
            return
        self._batches.shutdown(timeout_millis=int(self.SHUTDOWN_SECONDS * 1000))
        self.provider.shutdown()  # type: ignore[attr-defined]


def span_name(record: AccessRecord) -> str:
    """``chat <model>`` on the model endpoints; else ``<METHOD> <route>``, or the method
    alone when the path matched no route (a span name must not take user input)."""
    operation = OPERATIONS.get(record.path)
    if operation is not None:
        return f"{operation} {record.model}" if record.model else operation
    method = record.method if record.method in _METHODS else "HTTP"
    for pattern, template in _TEMPLATES:
        if pattern.fullmatch(record.path):
            return f"{method} {template}"
    if record.status != 404 and _PLAIN_PATH.fullmatch(record.path):
        return f"{method} {record.path}"
    return method


def request_attributes(record: AccessRecord) -> dict[str, Any]:
    """What the request did, as the request span's attributes once it is over."""
    attributes: dict[str, Any] = {"http.response.status_code": record.status}
    if record.model is not None:
        attributes["gen_ai.request.model"] = record.model
    if record.served_by is not None:
        provider, _, model = record.served_by.partition("/")
        attributes["gen_ai.provider.name"] = provider
        attributes["gen_ai.response.model"] = model
    if record.input_tokens is not None:
        attributes["gen_ai.usage.input_tokens"] = record.input_tokens
    if record.output_tokens is not None:
        attributes["gen_ai.usage.output_tokens"] = record.output_tokens
    if record.reason is not None:
        attributes["error.type"] = record.reason
    elif record.outcome in _FAILED_OUTCOMES:
        attributes["error.type"] = record.outcome
    elif record.status >= 400:
        attributes["error.type"] = str(record.status)
    if record.key is not None:
        attributes["gateway.key.name"] = record.key
    if record.cost_usd is not None:
        attributes["gateway.cost_usd"] = record.cost_usd
    if record.attempts:
        attributes["gateway.attempts"] = record.attempts
    if record.outcome is not None:
        attributes["gateway.outcome"] = record.outcome
    if record.limit is not None:
        attributes["gateway.limit"] = record.limit
    if record.stream:
        attributes["gateway.stream"] = True
    return attributes


class TracedStore:
    """A store whose ``admit``, ``settle`` and ``key_by_hash`` each make a CLIENT span
    (``gateway.store admit``, with ``db.system.name`` redis or sqlite), a child of the
    current span. Everything else, attributes set included, is the store's own."""

    __slots__ = ("_spans", "_traced", "_tracer")

    def __init__(self, store: Any, tracer: trace.Tracer) -> None:
        system = _DB_SYSTEMS.get(store.backend, store.backend)
        object.__setattr__(self, "_traced", store)
        object.__setattr__(self, "_tracer", tracer)
        object.__setattr__(
            self,
            "_spans",
            {
                name: (
                    f"gateway.store {name}",
                    {"db.system.name": system, "db.operation.name": name},
                )
                for name in ("admit", "settle", "key_by_hash")
            },
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._traced, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._traced, name, value)

    async def admit(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("admit", self._traced.admit, args, kwargs)

    async def settle(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("settle", self._traced.settle, args, kwargs)

    async def key_by_hash(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("key_by_hash", self._traced.key_by_hash, args, kwargs)

    async def _call(
        self,
        name: str,
        call: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        span_name, attributes = self._spans[name]
        with self._tracer.start_as_current_span(
            span_name,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                return await call(*args, **kwargs)
            except Exception as exc:
                # A refusal (a limit reached) is an answer, not a failure of the store.
                span.set_attribute("error.type", getattr(exc, "code", None) or type(exc).__name__)
                if getattr(exc, "status", 500) >= 500:
                    span.set_status(StatusCode.ERROR)
                raise
