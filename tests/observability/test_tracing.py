"""gateway/observability/tracing.py: the spans of a request, its store calls and its
upstream calls, with the GenAI attributes; and nothing of it while tracing is off.

In-process: the app (lifespan, embedded store, mock provider) with a tracer
provider whose spans land in the SDK's in-memory exporter. Then a real gateway
process exporting OTLP over HTTP, as the ``OTEL_*`` variables say, to a
collector of the test's own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import Settings, load_settings
from gateway.observability.access import AccessRecord
from gateway.observability.tracing import span_name
from tests.integration.stores import gateway_on
from tests.observability.otlp_collector import OTLPCollector, ReceivedSpan
from tests.servers import ROOT

KEY = "sk-test-tracing-key"
MASTER = "sk-master-" + uuid.uuid4().hex

CONFIG = f"""
providers:
  demo: {{type: mock}}
models:
  mock-chat:
    deployments: [{{provider: demo, model: mock-chat, price: {{input: 1.0, output: 2.0}}}}]
  mock-embedding: {{deployments: [{{provider: demo, model: mock-embedding}}]}}
  flaky:  # bad-a first (all but surely), then good-b
    deployments:
      - {{provider: demo, model: bad-a, weight: 1000000}}
      - {{provider: demo, model: good-b, weight: 0.000001}}
keys:
  - {{name: tracer, key: {KEY}}}
server:
  data_dir: data
  tracing: {{tracing}}
"""


def _settings(tmp_path: Path, *, tracing: bool = True) -> Settings:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG.replace("{tracing}", "true" if tracing else "false"))
    return load_settings(path, env={"GATEWAY_MASTER_KEY": MASTER})


def auth(key: str = KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def hello(model: str = "mock-chat", **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}


class Traced:
    def __init__(self, client: TestClient, exporter: InMemorySpanExporter) -> None:
        self.client, self.exporter = client, exporter

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def request(self) -> ReadableSpan:
        """The one request span exported since the last ``clear``."""
        (server,) = [s for s in self.spans() if s.kind == SpanKind.SERVER]
        return server

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        return sorted(
            (s for s in self.spans() if s.parent is not None and s.parent.span_id == id_of(parent)),
            key=lambda s: s.start_time or 0,
        )


def id_of(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[Traced]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with TestClient(create_app(_settings(tmp_path), tracer_provider=provider)) as client:
        exporter.clear()  # what start-up did
        yield Traced(client, exporter)
    provider.shutdown()


# ---------------------------------------------------------------- in-process


def test_a_chat_call_is_one_request_span_with_store_and_upstream_children(traced: Traced) -> None:
    answer = traced.client.post("/v1/chat/completions", json=hello(), headers=auth())
    assert answer.status_code == 200, answer.text
    usage = answer.json()["usage"]

    server = traced.request()
    assert server.name == "chat mock-chat"
    attributes = dict(server.attributes or {})
    assert attributes["http.request.method"] == "POST"
    assert attributes["url.path"] == "/v1/chat/completions"
    assert attributes["http.response.status_code"] == 200
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "mock-chat"
    assert attributes["gen_ai.response.model"] == "mock-chat"
    assert attributes["gen_ai.provider.name"] == "demo"
    assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert attributes["gateway.key.name"] == "tracer"
    assert attributes["gateway.request_id"] == answer.headers["x-request-id"]
    assert attributes["gateway.attempts"] == 1
    assert attributes["gateway.cost_usd"] > 0
    assert "error.type" not in attributes
    assert server.status.status_code == StatusCode.UNSET

    children = traced.children(server)
    names = [s.name for s in children]
    assert "gateway.store admit" in names
    assert "gateway.store settle" in names
    admit = next(s for s in children if s.name == "gateway.store admit")
    assert admit.kind == SpanKind.CLIENT
    assert dict(admit.attributes or {})["db.system.name"] == "sqlite"
    (call,) = [s for s in children if s.name.startswith("chat ")]
    assert call.name == "chat mock-chat"
    assert call.kind == SpanKind.CLIENT
    call_attributes = dict(call.attributes or {})
    assert call_attributes["gen_ai.request.model"] == "mock-chat"
    assert call_attributes["gen_ai.provider.name"] == "demo"
    assert call_attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert call_attributes["gateway.attempt.via"] == "first"
    assert call_attributes["gateway.attempt.outcome"] == "ok"
    # Built after the fact from the call's own times, inside the request's.
    assert server.start_time <= call.start_time <= call.end_time <= server.end_time  # type: ignore[operator]
    assert {s.context.trace_id for s in traced.spans()} == {server.context.trace_id}  # type: ignore[union-attr]


def test_a_call_retried_on_another_deployment_has_two_upstream_spans(traced: Traced) -> None:
    body = hello("flaky", mock={"models": {"bad-a": {"status": 500}}})
    answer = traced.client.post("/v1/chat/completions", json=body, headers=auth())
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-gateway-served-by"] == "demo/good-b"

    server = traced.request()
    attributes = dict(server.attributes or {})
    assert attributes["gateway.attempts"] == 2
    assert attributes["gen_ai.response.model"] == "good-b"
    first, second = [s for s in traced.children(server) if s.name.startswith("chat ")]
    assert first.name == "chat bad-a"
    assert dict(first.attributes or {})["gateway.attempt.via"] == "first"
    assert dict(first.attributes or {})["gateway.attempt.outcome"] == "error"
    assert dict(first.attributes or {})["error.type"]
    assert first.status.status_code == StatusCode.ERROR
    assert second.name == "chat good-b"
    assert dict(second.attributes or {})["gateway.attempt.via"] == "retry"
    assert dict(second.attributes or {})["gateway.attempt.outcome"] == "ok"
    assert second.status.status_code == StatusCode.UNSET


def test_a_stream_is_one_request_span_with_its_usage(traced: Traced) -> None:
    body = hello(stream=True, stream_options={"include_usage": True})
    with traced.client.stream("POST", "/v1/chat/completions", json=body, headers=auth()) as answer:
        assert answer.status_code == 200
        frames = [line for line in answer.iter_lines() if line.startswith("data: {")]
    usage = json.loads(frames[-1].removeprefix("data: "))["usage"]

    server = traced.request()
    attributes = dict(server.attributes or {})
    assert server.name == "chat mock-chat"
    assert attributes["gateway.stream"] is True
    assert attributes["gateway.outcome"] == "done"
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    names = [s.name for s in traced.children(server)]
    # Settled as the stream closed, still under the request's span.
    assert names.count("chat mock-chat") == 1
    assert "gateway.store settle" in names


def test_a_refused_key_has_no_store_or_upstream_span(traced: Traced) -> None:
    answer = traced.client.post("/v1/chat/completions", json=hello(), headers=auth("sk-nope"))
    assert answer.status_code == 401

    server = traced.request()
    # Looked up in the store (no such key), never admitted, never sent upstream.
    assert [s.name for s in traced.spans() if s is not server] == ["gateway.store key_by_hash"]
    assert traced.children(server)[0].name == "gateway.store key_by_hash"
    attributes = dict(server.attributes or {})
    assert attributes["http.response.status_code"] == 401
    assert attributes["error.type"] == "401"
    assert server.status.status_code == StatusCode.UNSET  # a 4xx is the client's


def test_a_key_the_store_holds_is_looked_up_under_the_request(traced: Traced) -> None:
    made = traced.client.post(
        "/admin/keys", json={"name": "made"}, headers={"authorization": f"Bearer {MASTER}"}
    )
    assert made.status_code == 201, made.text
    assert traced.request().name == "POST /admin/keys"
    traced.exporter.clear()

    answer = traced.client.post(
        "/v1/embeddings",
        json={"model": "mock-embedding", "input": "hi"},
        headers=auth(made.json()["key"]),
    )
    assert answer.status_code == 200, answer.text
    server = traced.request()
    assert server.name == "embeddings mock-embedding"
    assert dict(server.attributes or {})["gateway.key.name"] == "made"
    names = [s.name for s in traced.children(server)]
    assert "gateway.store key_by_hash" in names
    assert "embeddings mock-embedding" in names


def test_a_failed_request_is_an_error_span(traced: Traced) -> None:
    body = hello(mock={"status": 500})
    answer = traced.client.post("/v1/chat/completions", json=body, headers=auth())
    assert answer.status_code == 502

    server = traced.request()
    assert server.status.status_code == StatusCode.ERROR
    attributes = dict(server.attributes or {})
    assert attributes["http.response.status_code"] == 502
    assert attributes["error.type"] == "upstream_status"  # the access line's reason=
    calls = [s for s in traced.children(server) if s.name == "chat mock-chat"]
    assert calls  # each attempt, retried ones included, failed
    assert all(s.status.status_code == StatusCode.ERROR for s in calls)
    assert len(calls) == attributes["gateway.attempts"]


@pytest.mark.parametrize(
    ("method", "path", "status", "name"),
    [
        ("GET", "/health", 200, "GET /health"),
        ("GET", "/admin/keys/key_0123", 200, "GET /admin/keys/{key_id}"),
        ("GET", "/admin/keys/key_0123/usage", 200, "GET /admin/keys/{key_id}/usage"),
        ("GET", "/v1/models/mock-chat", 200, "GET /v1/models/{model}"),
        ("GET", "/wp-login.php", 404, "GET"),  # no route: nothing the client wrote
        ("BREW", "/health", 405, "HTTP /health"),
        ("POST", "/v1/chat/completions", 404, "chat nope"),
    ],
)
def test_span_names_never_take_what_a_client_wrote(
    method: str, path: str, status: int, name: str
) -> None:
    record = AccessRecord("req-1", method, path, status=status)
    if path == "/v1/chat/completions":
        record.model = "nope"
    assert span_name(record) == name


# ---------------------------------------------------------------- off, and the extra missing

OFF = """
import sys
from pathlib import Path
{block}
from starlette.testclient import TestClient
from gateway.app import create_app
from gateway.config import load_settings

with TestClient(create_app(load_settings(Path(sys.argv[1])))) as client:
    answer = client.post(
        "/v1/chat/completions",
        json={{"model": "mock-chat", "messages": [{{"role": "user", "content": "hi"}}]}},
        headers={{"authorization": "Bearer {key}"}},
    )
    assert answer.status_code == 200, answer.text
print(sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk",
      "opentelemetry.exporter", "gateway.observability.tracing")) and sys.modules[m]))
"""
# As if the tracing extra were not installed.
MISSING = 'sys.modules["opentelemetry.sdk"] = None\nsys.modules["opentelemetry.exporter"] = None'


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("block", ["", MISSING], ids=["installed", "extra-missing"])
def test_off_nothing_of_the_tracing_is_imported(tmp_path: Path, block: str) -> None:
    _settings(tmp_path, tracing=False)
    done = _python(OFF.format(block=block, key=KEY), str(tmp_path / "gateway.yaml"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_on_without_the_extra_the_gateway_refuses_to_start(tmp_path: Path) -> None:
    _settings(tmp_path, tracing=True)
    code = f"import sys\n{MISSING}\nfrom gateway.cli import main\nsys.exit(main(sys.argv[1:]))"
    done = _python(code, "check-config", "--config", str(tmp_path / "gateway.yaml"))
    assert done.returncode == 1
    assert "server.tracing" in done.stderr
    assert "pip install 'llm-gateway[tracing]'" in done.stderr
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------- a real gateway, OTLP out


def test_a_gateway_exports_its_spans_over_otlp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = {
        "providers": {"demo": {"type": "mock"}},
        "models": {"mock-chat": {"deployments": [{"provider": "demo", "model": "mock-chat"}]}},
        "keys": [{"name": "tracer", "key": KEY}],
        "server": {"tracing": True},
    }
    with OTLPCollector() as collector:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-under-test")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        with gateway_on("redis", tmp_path, config) as gateway:
            answer = httpx.post(
                f"{gateway.url}/v1/chat/completions", json=hello(), headers=auth(), timeout=10
            )
            assert answer.status_code == 200, answer.text

            def chat_done(spans: list[ReceivedSpan]) -> bool:
                names = {s.name for s in spans}
                return {"chat mock-chat", "gateway.store settle"} <= names and any(
                    s.kind == "SERVER" and s.name == "chat mock-chat" for s in spans
                )

            spans = collector.wait_for(chat_done)
    (server,) = [s for s in spans if s.kind == "SERVER" and s.name == "chat mock-chat"]
    assert server.resource["service.name"] == "gateway-under-test"
    assert server.attributes["gen_ai.request.model"] == "mock-chat"
    assert server.attributes["gen_ai.usage.output_tokens"] > 0
    assert server.attributes["gateway.request_id"] == answer.headers["x-request-id"]
    children = [s for s in spans if s.parent_span_id == server.span_id]
    admit = next(s for s in children if s.name == "gateway.store admit")
    assert admit.attributes["db.system.name"] == "redis"
    call = next(s for s in children if s.kind == "CLIENT" and s.name == "chat mock-chat")
    assert call.attributes["gen_ai.provider.name"] == "demo"
    assert {s.trace_id for s in children} == {server.trace_id}
