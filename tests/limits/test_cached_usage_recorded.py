"""Cached tokens from an upstream's answer to the key's usage document and spend.

The gateway in-process (embedded store), an OpenAI-type upstream answering
through an injected transport with prompt cache reads and writes in its usage,
streamed and not: the client gets the usage as the upstream sent it, and the
usage document counts the cache tokens and prices them at the model's cache
prices (docs/limits.md, "Usage" and "Budgets").
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import load_settings

KEY = "sk-test-cached-usage-0001"
MASTER = "sk-master-cached-usage-0123456789abcdef"
PRICE = {"input": 2.0, "output": 8.0, "cache_read": 0.5, "cache_write": 2.5}

CONFIG = f"""
providers:
  up: {{type: openai, base_url: "https://upstream.test/v1", api_key: sk-upstream}}
models:
  cached:
    deployments: [{{provider: up, model: upstream-model, price: {json.dumps(PRICE)}}}]
keys:
  - {{name: cached-usage, key: {KEY}}}
server:
  data_dir: data
"""

USAGE = {
    "prompt_tokens": 2048,
    "completion_tokens": 100,
    "total_tokens": 2148,
    "prompt_tokens_details": {"cached_tokens": 1024, "cache_write_tokens": 512, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 30},
}
# 512 fresh prompt tokens, 1024 read from the cache, 512 written to it, 100 out.
COST = (512 * 2.0 + 1024 * 0.5 + 512 * 2.5 + 100 * 8.0) / 1_000_000


def _answer() -> dict[str, Any]:
    return {
        "id": "chatcmpl-cached",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "upstream-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "cached"},
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }


def _stream() -> bytes:
    base = {"id": "chatcmpl-cached", "object": "chat.completion.chunk", "created": 1741569952}
    base["model"] = "upstream-model"
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "cached"}}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**base, "choices": [], "usage": USAGE},
    ]
    frames = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    return frames + b"data: [DONE]\n\n"


def _upstream(request: httpx.Request) -> httpx.Response:
    if json.loads(request.content).get("stream"):
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=_stream())
    return httpx.Response(200, json=_answer())


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG)
    settings = load_settings(path, env={"GATEWAY_MASTER_KEY": MASTER})
    app = create_app(settings, transport=httpx.MockTransport(_upstream))
    with TestClient(app) as client:
        yield client


def _usage_doc(client: TestClient) -> dict[str, Any]:
    response = client.get("/admin/usage", headers={"authorization": f"Bearer {MASTER}"})
    assert response.status_code == 200, response.text
    (doc,) = response.json()["data"]
    return doc


def _chat(client: TestClient, *, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "cached", "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    response = client.post(
        "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}
    )
    assert response.status_code == 200, response.text
    if not stream:
        return response.json()["usage"]
    frames = [f.removeprefix("data: ") for f in response.text.split("\n\n") if f]
    assert frames[-1] == "[DONE]"
    return json.loads(frames[-2])["usage"]


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
def test_the_client_gets_the_usage_details_as_the_upstream_sent_them(
    client: TestClient, stream: bool
) -> None:
    assert _chat(client, stream=stream) == USAGE


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
def test_cache_reads_and_writes_are_recorded_and_priced(client: TestClient, stream: bool) -> None:
    _chat(client, stream=stream)
    doc = _usage_doc(client)
    assert (doc["requests"], doc["input_tokens"], doc["output_tokens"]) == (1, 2048, 100)
    assert (doc["cache_read_tokens"], doc["cache_write_tokens"]) == (1024, 512)
    assert doc["cost_usd"] == pytest.approx(COST, rel=1e-9)
    (by_model,) = doc["by_model"]
    assert (by_model["cache_read_tokens"], by_model["cache_write_tokens"]) == (1024, 512)
    (by_day,) = doc["by_day"]
    assert (by_day["cache_read_tokens"], by_day["cache_write_tokens"]) == (1024, 512)
