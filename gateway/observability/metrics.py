"""Prometheus metrics: an ``Observer`` that counts what the request path reports.

The names, labels and meanings are documented in docs/operations.md
("Metrics"). Every label takes a value from a bounded set the gateway or its
operators chose (a route of a fixed table, a configured model, provider or
deployment, a key's name, a status code, a reason of the gateway's own),
never what a client wrote; no secret is ever a label value.

Two modes, chosen by ``PROMETHEUS_MULTIPROC_DIR`` as prometheus-client chooses
them (it reads the variable when it is imported):

- **one process** (unset): the values live in this process, in a registry of
  this ``Metrics``' own (with the process, platform and GC collectors the
  client library's default registry has), so several apps in one process never
  collide;
- **several workers** (set, by ``gateway serve --workers N`` or the operator):
  every worker writes its values to files in that directory and any worker's
  scrape reads them all (``MultiProcessCollector``), so each scrape answers
  for the whole server. A worker's live gauges leave with it (``close``).

The methods run inline on every request: each label set's children are made
once and kept in a dict keyed by the label values, so a request costs a few
dict lookups and increments.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from gateway.observability.observer import AttemptReport, Observer

if TYPE_CHECKING:
    from gateway.observability.access import AccessRecord

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# From a cache hit (a few ms) to a long generation (minutes): LLM calls span both.
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
)  # fmt: skip
TTFT_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
)  # fmt: skip

# The ``route`` label: a fixed table of the gateway's paths, never the path itself.
ROUTES = {
    "/v1/chat/completions": "chat",
    "/v1/embeddings": "embeddings",
    "/v1/messages": "messages",
    "/v1/fanout/chat/completions": "fanout",
    "/v1/models": "models",
    "/health": "health",
    "/ready": "health",
    "/metrics": "metrics",
}
SCRAPE_PATH = "/metrics"


def route_of(path: str) -> str:
    """The ``route`` label of a request path: one of ROUTES' values, admin or other."""
    route = ROUTES.get(path)
    if route is not None:
        return route
    if path.startswith("/admin/"):
        return "admin"
    if path.startswith("/v1/models/"):
        return "models"
    if path == "/ui" or path.startswith("/ui/"):
        return "ui"
    return "other"


class Metrics(Observer):
    """The gateway's Prometheus metrics, fed by the observer points.

    Made once per app (``create_app``); ``exposition()`` is the text a scrape
    gets, ``close()`` is called once the app has stopped serving.

    Raises ``RuntimeError`` when ``PROMETHEUS_MULTIPROC_DIR`` was set after
    prometheus-client was imported (or unset since): the values would be kept
    in one mode and read in the other, and every scrape would be wrong.
    """

    def __init__(self) -> None:
        directory = os.environ.get(MULTIPROC_ENV) or None
        imported_multiprocess = bool(getattr(values.ValueClass, "_multiprocess", False))
        if (directory is not None) != imported_multiprocess:
            raise RuntimeError(
                f"{MULTIPROC_ENV} must be set (or unset) before prometheus_client is "
                "imported: it chooses where the metrics' values live when it is imported"
            )
        self.directory = directory
        # Several workers: the values go to files, and nothing needs a registry until a
        # scrape builds one to read them all.
        if directory is None:
            self.registry: CollectorRegistry | None = CollectorRegistry()
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                if collector is not None:
                    self.registry.register(collector)
        else:
            self.registry = None
        registry = self.registry

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def gauge(name: str, doc: str, mode: str) -> Gauge:
            # ``mode``: how a scrape combines the workers' values (live*: live ones only).
            return Gauge(name, doc, registry=registry, multiprocess_mode=mode)

        self.requests = counter(
            "gateway_requests",
            "HTTP requests answered, by route, model, provider, key name and status.",
            ("route", "model", "provider", "key", "status"),
        )
        self.requests_in_flight = gauge(
            "gateway_requests_in_flight",
            "HTTP requests being served (the scrape itself not counted).",
            "livesum",
        )
        self.streams_in_flight = gauge(
            "gateway_streams_in_flight",
            "Event streams open to clients.",
            "livesum",
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from a request's arrival to the end of its answer (a stream's included).",
            ("route", "model"),
            registry=registry,
            buckets=DURATION_BUCKETS,
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "Time from the upstream call to its first chunk (the whole answer, non-stream).",
            ("model",),
            registry=registry,
            buckets=TTFT_BUCKETS,
        )
        self.tokens = counter(
            "gateway_tokens",
            "Tokens of upstream calls, by gateway model, provider, key name and type.",
            ("model", "provider", "key", "type"),
        )
        self.cost = counter(
            "gateway_cost_usd",
            "What upstream calls cost in USD, by gateway model, provider and key name.",
            ("model", "provider", "key"),
        )
        self.rate_limited = counter(
            "gateway_rate_limited",
            "Requests refused by a key's limit (rpm, tpm, max_parallel, budget).",
            ("limit", "key"),
        )
        self.store_up = gauge(
            "gateway_store_up",
            "1 while the shared store answers, 0 while it is down (degraded).",
            "livemin",
        )
        self.store_last_failure = gauge(
            "gateway_store_last_failure_timestamp_seconds",
            "When the store last went down (Unix time; 0: not since the start).",
            "livemax",
        )
        self.upstream_errors = counter(
            "gateway_upstream_errors",
            "Upstream calls that failed, by deployment and reason.",
            ("deployment", "reason"),
        )
        self.retries = counter("gateway_retries", "Upstream calls made as retries.", ("model",))
        self.fallbacks = counter(
            "gateway_fallbacks", "Upstream calls made for a fallback model.", ("model",)
        )
        self.hedges_won = counter(
            "gateway_hedges_won", "Hedged upstream calls that answered first.", ("model",)
        )
        self.cooldowns = counter(
            "gateway_cooldowns", "Cooldowns started, by deployment.", ("deployment",)
        )
        self.store_up.set(1)
        self._in_flight_inc = self.requests_in_flight.inc
        self._in_flight_dec = self.requests_in_flight.dec
        # label values -> the children they select, made on first use
        self._finished: dict[tuple[Any, ...], tuple[Any, Any, Any]] = {}
        self._spent: dict[tuple[Any, ...], tuple[Any, Any, Any]] = {}
        self._by_model: dict[tuple[Counter, str], Any] = {}
        self._by_labels: dict[tuple[Counter, tuple[str, ...]], Any] = {}

    # ---------------------------------------------------------------- the points

    def request_started(self, record: AccessRecord) -> None:
        if record.path != SCRAPE_PATH:
            self._in_flight_inc()

    def request_finished(self, record: AccessRecord, seconds: float) -> None:
        path = record.path
        if path != SCRAPE_PATH:
            self._in_flight_dec()
        route = ROUTES.get(path) or route_of(path)
        model, served_by = record.model, record.served_by
        if route == "fanout" and model is not None:
            # One request to several models and providers (their split is in the
            # per-call metrics). Its model list is the client's to order and repeat:
            # keyed as it came, the cache of children would grow with every new list.
            model, served_by = "fanout", None
        label = (route, model, served_by, record.key, record.status)
        children = self._finished.get(label)
        if children is None:
            children = self._finished[label] = self._request_children(*label)
        children[0].inc()
        children[1].observe(seconds)
        ttft = record.ttft_ms
        if ttft is not None and model is not None:
            children[2].observe(ttft / 1000)

    def _request_children(
        self, route: str, model: str | None, served_by: str | None, key: str | None, status: int
    ) -> tuple[Any, Any, Any]:
        provider = "" if served_by is None else served_by.partition("/")[0]
        return (
            self.requests.labels(route, model or "", provider, key or "", str(status)),
            self.duration.labels(route, model or ""),
            self.ttft.labels(model) if model is not None else None,
        )

    def refused(self, record: AccessRecord, limit: str) -> None:
        self._labelled(self.rate_limited, (limit, record.key or "")).inc()

    def stream_opened(self, record: AccessRecord) -> None:
        self.streams_in_flight.inc()

    def stream_closed(self, record: AccessRecord) -> None:
        self.streams_in_flight.dec()

    def attempt(self, record: AccessRecord, attempt: AttemptReport) -> None:
        label = (attempt.model, attempt.provider, record.key)
        children = self._spent.get(label)
        if children is None:
            model, provider, key = attempt.model, attempt.provider, record.key or ""
            children = self._spent[label] = (
                self.tokens.labels(model, provider, key, "input"),
                self.tokens.labels(model, provider, key, "output"),
                self.cost.labels(model, provider, key),
            )
        if attempt.input_tokens:
            children[0].inc(attempt.input_tokens)
        if attempt.output_tokens:
            children[1].inc(attempt.output_tokens)
        if attempt.cost_usd:
            children[2].inc(attempt.cost_usd)
        if attempt.outcome == "error":
            reason = attempt.reason or "unknown"
            self._labelled(self.upstream_errors, (attempt.deployment, reason)).inc()
        via = attempt.via
        if via:
            if via == "retry":
                self._for_model(self.retries, attempt.model).inc()
            elif via == "fallback":
                self._for_model(self.fallbacks, attempt.model).inc()
            elif via == "hedge" and attempt.outcome == "ok":
                self._for_model(self.hedges_won, attempt.model).inc()

    def cooled(self, deployment: str, seconds: float) -> None:
        self._labelled(self.cooldowns, (deployment,)).inc()

    def store_changed(self, up: bool, at: float) -> None:
        self.store_up.set(1 if up else 0)
        if not up:
            self.store_last_failure.set(at)

    # ---------------------------------------------------------------- children

    def _for_model(self, metric: Counter, model: str) -> Any:
        child = self._by_model.get((metric, model))
        if child is None:
            child = self._by_model[metric, model] = metric.labels(model)
        return child

    def _labelled(self, metric: Counter, labels: tuple[str, ...]) -> Any:
        child = self._by_labels.get((metric, labels))
        if child is None:
            child = self._by_labels[metric, labels] = metric.labels(*labels)
        return child

    # ---------------------------------------------------------------- scrape, close

    def exposition(self) -> bytes:
        """The Prometheus text of every metric: this process's, or with several
        workers all of theirs (it reads files: call it off the event loop)."""
        registry = self.registry
        if registry is None:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.directory)
        return generate_latest(registry)

    def close(self) -> None:
        """This process serves no more: with several workers, its live gauges (in
        flight, store state) leave the totals; its counters stay in them."""
        if self.directory is not None:
            multiprocess.mark_process_dead(os.getpid(), self.directory)

    @staticmethod
    def of(observer: Observer) -> Metrics | None:
        """The ``Metrics`` among ``observer`` (itself, or one of an ``Observers``), if any."""
        if isinstance(observer, Metrics):
            return observer
        for each in getattr(observer, "observers", ()):
            found = Metrics.of(each)
            if found is not None:
                return found
        return None
