"""The app in-process: the OpenAI error envelope for every refusal before a provider is called.

Starlette's TestClient runs the lifespan; it buffers whole responses, so only
non-streaming behaviour is checked here (streams are tested against uvicorn).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.admission import admit_chat
from gateway.app import create_app
from gateway.config import load_settings

FULL = "sk-test-full-000001"
LIMITED = "sk-test-limited-02"
EXPIRED = "sk-test-expired-03"
RATED = "sk-test-rated-0004"
MAX_BODY = 4096

CONFIG = f"""
providers:
  demo: {{type: mock}}
  openai: {{type: openai, api_key: "${{OPENAI_API_KEY:-}}"}}
models:
  mock-chat: {{deployments: [{{provider: demo, model: mock-chat}}]}}
  mock-embedding: {{deployments: [{{provider: demo, model: mock-embedding}}]}}
  other-chat: {{deployments: [{{provider: demo, model: other}}]}}
  gpt-4o: {{deployments: [{{provider: openai, model: gpt-4o}}]}}
keys:
  - {{name: full, key: {FULL}, models: ["*"]}}
  - {{name: limited, key: {LIMITED}, models: ["mock-*"]}}
  - {{name: expired, key: {EXPIRED}, expires_at: "2001-01-01T00:00:00Z"}}
  - {{name: rated, key: {RATED}, limits: {{rpm: 100, tpm: 100000}}}}
server:
  max_body_bytes: {MAX_BODY}
  data_dir: data
"""


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG)  # the embedded store lives in tmp_path/data
    app = create_app(load_settings(path, env={}))
    with TestClient(app) as client:
        yield client


def auth(key: str = FULL) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def hello(**fields: Any) -> dict[str, Any]:
    return {"model": "mock-chat", "messages": [{"role": "user", "content": "hi"}], **fields}


def error_of(response: Any) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


# ---------------------------------------------------------------- 400


@pytest.mark.parametrize(
    "content",
    [b'{"model": "mock-chat", "messages": [', b"not json", b'{"model": "mock-chat",}'],
)
def test_malformed_json_is_400(client: TestClient, content: bytes) -> None:
    response = client.post(
        "/v1/chat/completions",
        content=content,
        headers={**auth(), "content-type": "application/json"},
    )
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_value"
    assert error["param"] is None
    assert error["message"].startswith("The request body is not valid JSON: ")


def test_json_that_is_not_an_object_is_400(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json=[1, 2], headers=auth())
    assert response.status_code == 400
    assert error_of(response) == {
        "message": "The request body must be a JSON object.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_value",
    }


def test_empty_body_is_400(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", content=b"", headers=auth())
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_value"
    assert error["message"] == "The request body is empty; expected a JSON object."


def test_bad_field_names_its_param(client: TestClient) -> None:
    body = {"model": "mock-chat", "messages": [{"role": "robot", "content": "hi"}]}
    response = client.post("/v1/chat/completions", json=body, headers=auth())
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "messages[0].role"
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_value"
    assert error["message"].startswith("Invalid value for 'messages[0].role': ")


def test_bad_nested_field_deeper_in_the_list(client: TestClient) -> None:
    body = hello(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": 7}])
    response = client.post("/v1/chat/completions", json=body, headers=auth())
    assert response.status_code == 400
    assert error_of(response)["param"].startswith("messages[1].content")


def test_missing_messages_is_400(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json={"model": "mock-chat"}, headers=auth())
    assert response.status_code == 400
    assert error_of(response) == {
        "message": "Missing required parameter: 'messages'.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "invalid_value",
    }


def test_out_of_range_field_is_400(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json=hello(max_tokens=0), headers=auth())
    assert response.status_code == 400
    assert error_of(response)["param"] == "max_tokens"


def test_embeddings_bad_body_is_400(client: TestClient) -> None:
    response = client.post(
        "/v1/embeddings", json={"model": "mock-embedding", "input": {"x": 1}}, headers=auth()
    )
    assert response.status_code == 400
    assert error_of(response)["param"].startswith("input")


# ---------------------------------------------------------------- 413


def test_body_over_limit_with_content_length_is_413(client: TestClient) -> None:
    body = hello(messages=[{"role": "user", "content": "x" * (MAX_BODY + 10)}])
    response = client.post("/v1/chat/completions", json=body, headers=auth())
    assert response.status_code == 413
    assert error_of(response) == {
        "message": f"The request body is larger than the limit of {MAX_BODY} bytes.",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_too_large",
    }
    assert response.headers["x-request-id"]


def test_body_over_limit_chunked_is_413(client: TestClient) -> None:
    def pieces() -> Iterator[bytes]:
        yield b'{"model": "mock-chat", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'

    response = client.post(
        "/v1/chat/completions",
        content=pieces(),
        headers={**auth(), "content-type": "application/json"},
    )
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    error = error_of(response)
    assert error["code"] == "request_too_large"
    assert error["type"] == "invalid_request_error"


def test_unexpected_error_is_a_500_with_its_request_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG)
    app = create_app(load_settings(path, env={}))

    async def broken() -> None:
        raise RuntimeError("a bug, with a detail the client must not see")

    app.dependency_overrides[admit_chat] = broken
    with TestClient(app) as client:
        response = client.post(
            "/v1/chat/completions", json=hello(), headers={**auth(), "x-request-id": "req-bug-1"}
        )
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "req-bug-1"
    assert error_of(response) == {
        "message": "The gateway had an internal error.",
        "type": "api_error",
        "param": None,
        "code": "internal_error",
    }
    assert "a bug" not in response.text
    logged = [r for r in caplog.records if r.levelname == "ERROR" and r.exc_info]
    assert [r.getMessage() for r in logged] == ["unhandled error request_id=req-bug-1"]


def test_body_under_limit_chunked_is_served(client: TestClient) -> None:
    def pieces() -> Iterator[bytes]:
        yield b'{"model": "mock-chat", '
        yield b'"messages": [{"role": "user", "content": "hi"}]}'

    response = client.post(
        "/v1/chat/completions",
        content=pieces(),
        headers={**auth(), "content-type": "application/json"},
    )
    assert response.status_code == 200
    assert response.json()["object"] == "chat.completion"


# ---------------------------------------------------------------- 401


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "You didn't provide an API key. Send it as 'Authorization: Bearer sk-...'."),
        ({"authorization": "Bearer "}, None),
        ({"authorization": "Basic dXNlcjpwYXNz"}, None),
        ({"authorization": "Bearer sk-nobody-knows-this"}, "Incorrect API key provided."),
        ({"x-api-key": "sk-nobody-knows-this"}, "Incorrect API key provided."),
        ({"authorization": f"Bearer {EXPIRED}"}, "This API key has expired."),
        ({"x-api-key": EXPIRED}, "This API key has expired."),
    ],
    ids=[
        "missing",
        "empty-bearer",
        "basic",
        "unknown",
        "unknown-x-api-key",
        "expired",
        "expired-x",
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/chat/completions"), ("POST", "/v1/embeddings"), ("GET", "/v1/models")],
)
def test_bad_key_is_401(
    client: TestClient, headers: dict[str, str], message: str | None, method: str, path: str
) -> None:
    response = client.request(method, path, json=hello(), headers=headers)
    assert response.status_code == 401
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_api_key"
    assert error["message"] == (
        message or "You didn't provide an API key. Send it as 'Authorization: Bearer sk-...'."
    )


def test_key_is_checked_before_the_body(client: TestClient) -> None:
    response = client.post(
        "/v1/chat/completions", content=b"not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 401


def test_x_api_key_is_accepted(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json=hello(), headers={"x-api-key": FULL})
    assert response.status_code == 200


# ---------------------------------------------------------------- 403 / 404


def test_model_not_allowed_is_403(client: TestClient) -> None:
    response = client.post(
        "/v1/chat/completions", json=hello(model="other-chat"), headers=auth(LIMITED)
    )
    assert response.status_code == 403
    assert error_of(response) == {
        "message": "This key may not use the model `other-chat`.",
        "type": "permission_error",
        "param": "model",
        "code": "model_not_allowed",
    }


@pytest.mark.parametrize("model", ["no-such-model", "gpt-4o"], ids=["unknown", "disabled"])
def test_unknown_model_is_404(client: TestClient, model: str) -> None:
    response = client.post("/v1/chat/completions", json=hello(model=model), headers=auth())
    assert response.status_code == 404
    assert error_of(response) == {
        "message": f"The model `{model}` does not exist",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/nope", 404, "not_found"),
        ("POST", "/v2/chat/completions", 404, "not_found"),
        ("GET", "/v1/chat/completions", 405, "method_not_allowed"),
    ],
)
def test_unknown_route_uses_the_openai_envelope(
    client: TestClient, method: str, path: str, status: int, code: str
) -> None:
    response = client.request(method, path, headers=auth())
    assert response.status_code == status
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    if status == 404:
        assert error["message"] == f"Unknown request URL: {method} {path}."


# ---------------------------------------------------------------- request id, health, models


def test_request_id_is_echoed(client: TestClient) -> None:
    response = client.post(
        "/v1/chat/completions", json=hello(), headers={**auth(), "x-request-id": "trace-42.a:b"}
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-42.a:b"


@pytest.mark.parametrize("sent", [None, "has spaces in it", "x" * 200])
def test_request_id_is_generated(client: TestClient, sent: str | None) -> None:
    headers = auth() if sent is None else {**auth(), "x-request-id": sent}
    first = client.post("/v1/chat/completions", json=hello(), headers=headers)
    second = client.get("/v1/nope", headers=headers)
    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert ids[0] != ids[1]


def test_request_id_on_errors(client: TestClient) -> None:
    response = client.get("/v1/models", headers={"x-request-id": "req-401"})
    assert response.status_code == 401
    assert response.headers["x-request-id"] == "req-401"


def test_health_and_ready(client: TestClient) -> None:
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["store"] == {"backend": "embedded", "status": "ok"}
    assert body["models"] == {"total": 3, "unavailable": {}}
    assert body["config"]["generation"] == 1


@pytest.mark.parametrize(
    ("key", "models"),
    [
        (FULL, ["mock-chat", "mock-embedding", "other-chat"]),
        (LIMITED, ["mock-chat", "mock-embedding"]),
    ],
    ids=["all", "allow-list"],
)
def test_models_lists_what_the_key_may_use(client: TestClient, key: str, models: list[str]) -> None:
    response = client.get("/v1/models", headers=auth(key))
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == models
    assert all(m["object"] == "model" and m["owned_by"] == "gateway" for m in body["data"])


def test_chat_answers_with_the_gateway_model(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json=hello(), headers=auth())
    assert response.status_code == 200
    assert response.headers["x-gateway-served-by"] == "demo/mock-chat"
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "mock-chat"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 12


def test_scripted_upstream_failure_renders_in_the_envelope(client: TestClient) -> None:
    response = client.post(
        "/v1/chat/completions",
        json=hello(mock={"status": 429, "retry_after": 1.2}),
        headers=auth(),
    )
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert error_of(response) == {
        "message": "the upstream is rate limiting the gateway (429)",
        "type": "rate_limit_error",
        "param": None,
        "code": "upstream_rate_limited",
    }


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({}, 200),
        ({"stream": True}, 200),
        ({"mock": {"status": 503}}, 502),  # the upstream failed after admission
    ],
    ids=["answer", "stream", "upstream-error"],
)
def test_every_answer_after_admission_carries_the_rate_limit_headers(
    client: TestClient, fields: dict[str, Any], status: int
) -> None:
    response = client.post("/v1/chat/completions", json=hello(**fields), headers=auth(RATED))
    assert response.status_code == status
    headers = response.headers
    assert headers["x-ratelimit-limit-requests"] == "100"
    assert int(headers["x-ratelimit-remaining-requests"]) < 100
    assert headers["x-ratelimit-limit-tokens"] == "100000"
    assert headers["x-gateway-served-by"] == "demo/mock-chat"
    assert headers["x-request-id"]
    assert len(headers.get_list("x-ratelimit-limit-requests")) == 1  # once, not twice
