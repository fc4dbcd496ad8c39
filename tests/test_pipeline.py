"""gateway/pipeline.py: every model call is admitted, routed, answered and settled once.

The app in-process (lifespan and all, the embedded store in tmp_path, the mock
provider answering). What a test sees is what a client sees: statuses,
headers, bodies, and the usage the admin API reports.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import Request
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import Settings, load_settings
from gateway.deps import get_resources
from gateway.providers.base import CallContext, Provider, supports_embeddings
from gateway.resources import Resources
from gateway.routing.router import Router
from gateway.routing.state import RoutingState
from gateway.schemas.openai import ChatCompletion, ChatCompletionRequest

FULL = "sk-test-pipeline-full"
ONCE = "sk-test-pipeline-once"  # one request a minute
SERIAL = "sk-test-pipeline-serial"  # one request in flight at a time
OTHER = "sk-test-pipeline-other"  # a key only the overriding resources know
MASTER = "sk-master-" + uuid.uuid4().hex

CONFIG = f"""
providers:
  demo: {{type: mock}}
  talker: {{type: mock}}
models:
  mock-chat:
    deployments: [{{provider: demo, model: mock-chat, price: {{input: 1.0, output: 2.0}}}}]
  mock-embedding: {{deployments: [{{provider: demo, model: mock-embedding}}]}}
  talk: {{deployments: [{{provider: talker, model: talk}}]}}
  mixed:
    deployments:
      - {{provider: talker, model: talk, weight: 1000}}
      - {{provider: demo, model: mock-embedding, weight: 1}}
keys:
  - {{name: full, key: {FULL}}}
  - {{name: once, key: {ONCE}, limits: {{rpm: 1}}}}
  - {{name: serial, key: {SERIAL}, limits: {{max_parallel: 1}}}}
server:
  data_dir: data
"""

# The same, with one more model and one more key: what an override hands admission.
OVERRIDE = CONFIG.replace(
    "models:\n", "models:\n  only-here: {deployments: [{provider: demo, model: mock-chat}]}\n"
).replace("keys:\n", f"keys:\n  - {{name: other, key: {OTHER}}}\n")


def _settings(tmp_path: Path, text: str, name: str) -> Settings:
    path = tmp_path / name
    path.write_text(text)
    return load_settings(path, env={"GATEWAY_MASTER_KEY": MASTER})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return _settings(tmp_path, CONFIG, "gateway.yaml")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def auth(key: str = FULL) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def hello(model: str = "mock-chat", **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}


def override_resources(client: TestClient, change: Any) -> None:
    """Have ``get_resources`` answer the app's resources as ``change`` makes them."""
    made: list[Resources] = []

    async def resources(request: Request) -> Resources:
        if not made:
            made.append(change(request.state.resources))
        return made[0]

    client.app.dependency_overrides[get_resources] = resources  # type: ignore[attr-defined]


# ---------------------------------------------------------------- admission and its resources


def test_an_override_of_the_resources_reaches_admission(client: TestClient, tmp_path: Path) -> None:
    assert client.post("/v1/chat/completions", json=hello("only-here")).status_code == 401
    assert (
        client.post("/v1/chat/completions", json=hello("only-here"), headers=auth()).status_code
        == 404
    )
    assert client.post("/v1/chat/completions", json=hello(), headers=auth(OTHER)).status_code == 401

    other = _settings(tmp_path, OVERRIDE, "override.yaml")

    def change(resources: Resources) -> Resources:
        gatekeeper = type(resources.gatekeeper)(resources.gatekeeper.store, other)
        router = Router(other, resources.providers, RoutingState())
        return dataclasses.replace(resources, router=router, gatekeeper=gatekeeper)

    override_resources(client, change)
    answered = client.post("/v1/chat/completions", json=hello("only-here"), headers=auth(OTHER))
    assert answered.status_code == 200, answered.text
    assert answered.json()["model"] == "only-here"
    assert answered.headers["x-gateway-served-by"] == "demo/mock-chat"
    listed = client.get("/v1/models", headers=auth(OTHER)).json()["data"]
    assert "only-here" in [m["id"] for m in listed]


def test_a_refusal_carries_where_the_key_stands_once(client: TestClient) -> None:
    first = client.post("/v1/chat/completions", json=hello(), headers=auth(ONCE))
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "1"
    assert first.headers["x-ratelimit-remaining-requests"] == "0"

    refused = client.post("/v1/chat/completions", json=hello(), headers=auth(ONCE))
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers.get_list("x-ratelimit-limit-requests") == ["1"]
    assert refused.headers.get_list("x-ratelimit-remaining-requests") == ["0"]
    assert "x-ratelimit-limit-tokens" not in refused.headers  # the key has no tpm


# ---------------------------------------------------------------- embeddings as a capability


class ChatOnly:
    """A provider without embeddings, as Anthropic's will be: chat and streams only."""

    def __init__(self, inner: Provider) -> None:
        self.name = inner.name
        self._inner = inner

    async def chat(self, request: ChatCompletionRequest, ctx: CallContext) -> ChatCompletion:
        return await self._inner.chat(request, ctx)

    def stream(self, request: ChatCompletionRequest, ctx: CallContext) -> Any:
        return self._inner.stream(request, ctx)

    async def aclose(self) -> None:
        pass


def _talker_chats_only(client: TestClient, settings: Settings) -> None:
    def change(resources: Resources) -> Resources:
        providers = {**resources.providers}
        providers["talker"] = ChatOnly(providers["talker"])
        assert not supports_embeddings(providers["talker"])
        return dataclasses.replace(
            resources, providers=providers, router=Router(settings, providers, RoutingState())
        )

    override_resources(client, change)


def test_embeddings_of_a_model_that_cannot_embed_are_400_naming_model(
    client: TestClient, settings: Settings
) -> None:
    _talker_chats_only(client, settings)
    refused = client.post(
        "/v1/embeddings", json={"model": "talk", "input": "x"}, headers=auth(ONCE)
    )
    assert refused.status_code == 400
    assert refused.json()["error"] == {
        "message": "The model `talk` does not support embeddings.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "invalid_value",
    }
    assert "x-ratelimit-limit-requests" not in refused.headers  # refused before admission
    # ... so it took nothing: the key's one request a minute is still there.
    answered = client.post("/v1/chat/completions", json=hello("talk"), headers=auth(ONCE))
    assert answered.status_code == 200, answered.text


def test_embeddings_of_a_mixed_model_go_to_a_deployment_that_embeds(
    client: TestClient, settings: Settings
) -> None:
    _talker_chats_only(client, settings)
    for _ in range(5):
        response = client.post(
            "/v1/embeddings", json={"model": "mixed", "input": "x"}, headers=auth()
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-gateway-served-by"] == "demo/mock-embedding"
        assert response.json()["model"] == "mixed"


@pytest.mark.parametrize("stream", [True, {"an": {"object": 1}}])
def test_embeddings_never_stream_whatever_their_body_says(
    client: TestClient, stream: object
) -> None:
    """``stream`` is no embeddings field: passed on as unknown, it never turns the
    answer into an event stream (it once sent the call down the chat stream path: 502)."""
    response = client.post(
        "/v1/embeddings",
        json={"model": "mixed", "input": "x", "stream": stream},
        headers=auth(),
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["object"] == "list"


# ---------------------------------------------------------------- settled once, however it ends


def _usage(client: TestClient, name: str) -> dict[str, Any]:
    admin = auth(MASTER)
    keys = client.get("/admin/keys", headers=admin).json()["data"]
    key_id = next(k["id"] for k in keys if k["name"] == name)
    return client.get(f"/admin/keys/{key_id}/usage", headers=admin).json()


def test_every_outcome_settles_once_and_gives_the_lease_back(client: TestClient) -> None:
    # One request in flight at a time: a call that was not settled would keep its lease,
    # and the next one would be refused.
    post = client.post
    answer = post("/v1/chat/completions", json=hello(), headers=auth(SERIAL))
    assert answer.status_code == 200
    usage = answer.json()["usage"]
    stream = post("/v1/chat/completions", json=hello(stream=True), headers=auth(SERIAL))
    assert stream.status_code == 200
    assert stream.text.endswith("data: [DONE]\n\n")
    failed = post("/v1/chat/completions", json=hello(mock={"status": 503}), headers=auth(SERIAL))
    assert failed.status_code == 502
    assert failed.headers["x-should-retry"] == "false"  # the gateway retried it: 3 calls
    broken = post(
        "/v1/chat/completions",
        json=hello(stream=True, mock={"malformed_after": 2}),
        headers=auth(SERIAL),
    )
    assert broken.status_code == 200
    assert '"error"' in broken.text.rsplit("data: ", 1)[-1]  # the final error event
    embedded = post(
        "/v1/embeddings", json={"model": "mock-embedding", "input": "x"}, headers=auth(SERIAL)
    )
    assert embedded.status_code == 200
    assert post("/v1/chat/completions", json=hello(), headers=auth(SERIAL)).status_code == 200

    recorded = _usage(client, "serial")
    # Every upstream call is a call of its own: the failed request's three attempts too.
    assert recorded["requests"] == 8
    assert recorded["errors"] == 4
    by_model = {m["model"]: m for m in recorded["by_model"]}
    assert by_model["mock-embedding"]["input_tokens"] == embedded.json()["usage"]["prompt_tokens"]
    # Settled at the deployment's price: 1 and 2 USD per million tokens in and out.
    chat = by_model["mock-chat"]
    assert chat["requests"] == 7
    assert chat["input_tokens"] >= 2 * usage["prompt_tokens"]
    assert chat["cost_usd"] == pytest.approx(
        (chat["input_tokens"] * 1.0 + chat["output_tokens"] * 2.0) / 1_000_000
    )
