"""POST /v1/fanout/chat/completions: one request, several models at once (docs/wire-formats.md, "Fan-out").

The app in process (lifespan and all, the embedded store in tmp_path), its
models on the in-process mock, each on a deployment model of its own so the
body's ``mock.models`` script fails one of them alone. What a test sees is what
a client sees: statuses, headers, bodies, stream events in order, and the usage
the admin API reports.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import load_settings
from gateway.schemas.openai import MAX_FANOUT_MODELS

FULL = "sk-test-fanout-full"
SOME = "sk-test-fanout-some"  # may use alpha and gamma only
MASTER = "sk-master-" + uuid.uuid4().hex
PATH = "/v1/fanout/chat/completions"
MODELS = ["alpha", "beta", "gamma"]
HI = [{"role": "user", "content": "hi"}]

# Each model's own output cap, so a reservation that took one cap for all would show.
CONFIG = f"""
providers:
  demo: {{type: mock}}
models:
  alpha:
    deployments: [{{provider: demo, model: alpha-up, price: {{input: 1.0, output: 2.0}}}}]
    max_output_tokens: 100
  beta:
    deployments: [{{provider: demo, model: beta-up}}]
    max_output_tokens: 200
    routing: {{retries: {{attempts: 2, backoff_ms: 1, max_backoff_ms: 1}}}}
  gamma:
    deployments: [{{provider: demo, model: gamma-up}}]
    max_output_tokens: 300
  delta:
    deployments: [{{provider: demo, model: delta-up}}]
    routing: {{retries: {{attempts: 1}}}}
    fallbacks: [gamma]
keys:
  - {{name: full, key: {FULL}}}
  - {{name: some, key: {SOME}, models: [alpha, gamma]}}
server:
  data_dir: data
"""


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG)
    settings = load_settings(path, env={"GATEWAY_MASTER_KEY": MASTER})
    with TestClient(create_app(settings)) as client:
        yield client


def auth(key: str = FULL) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def fanout(models: list[str] = MODELS, **fields: Any) -> dict[str, Any]:
    return {"models": models, "messages": HI, **fields}


def new_key(client: TestClient, limits: dict[str, Any]) -> tuple[str, str]:
    """A key of its own through the admin API: (id, secret)."""
    r = client.post(
        "/admin/keys",
        json={"name": f"fanout-{uuid.uuid4().hex[:12]}", "limits": limits},
        headers=auth(MASTER),
    )
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["key"]


def key_id(client: TestClient, name: str) -> str:
    keys = client.get("/admin/keys", headers=auth(MASTER)).json()["data"]
    return next(k["id"] for k in keys if k["name"] == name)


def usage(client: TestClient, key: str) -> dict[str, Any]:
    r = client.get(f"/admin/keys/{key}/usage", headers=auth(MASTER))
    assert r.status_code == 200, r.text
    return r.json()


def by_model(recorded: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["model"]: m for m in recorded["by_model"]}


def events(response: httpx.Response) -> list[Any]:
    """The stream's ``data:`` payloads in order, ``[DONE]`` as the string."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("\n\n")
    out: list[Any] = []
    for frame in response.text.split("\n\n")[:-1]:
        if frame.startswith(":"):  # a keep-alive comment
            continue
        assert frame.startswith("data: "), frame
        data = frame.removeprefix("data: ")
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def by_choice(chunks: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Each choice's entries in arrival order, with the chunk's ``model`` beside them."""
    choices: dict[int, list[dict[str, Any]]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            choices.setdefault(choice["index"], []).append({**choice, "model": chunk["model"]})
    return choices


ERROR = {
    "message": "the upstream failed with status 500",
    "type": "api_error",
    "code": "upstream_error",
}


# ---------------------------------------------------------------- non-stream answers


def test_an_answer_has_choice_i_from_models_i(client: TestClient) -> None:
    r = client.post(PATH, json=fanout(), headers=auth())
    assert r.status_code == 200, r.text
    assert r.headers["x-gateway-served-by"] == "demo/alpha-up,demo/beta-up,demo/gamma-up"
    answer = r.json()
    assert answer["object"] == "chat.completion"
    assert answer["id"].startswith("chatcmpl-")
    assert answer["model"] == "alpha,beta,gamma"
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2]
    assert [c["model"] for c in answer["choices"]] == MODELS
    for choice in answer["choices"]:
        assert choice["finish_reason"] == "stop"
        assert choice["message"]["role"] == "assistant"
        assert choice["message"]["content"]
        assert "error" not in choice

    # One call per model, each recorded under its own model; the answer's usage is their sum.
    recorded = usage(client, key_id(client, "full"))
    assert recorded["requests"] == 3
    assert recorded["errors"] == 0
    models = by_model(recorded)
    assert {m: models[m]["requests"] for m in models} == {"alpha": 1, "beta": 1, "gamma": 1}
    reported = answer["usage"]
    assert reported["prompt_tokens"] == sum(m["input_tokens"] for m in models.values())
    assert reported["completion_tokens"] == sum(m["output_tokens"] for m in models.values())
    assert reported["total_tokens"] == reported["prompt_tokens"] + reported["completion_tokens"]
    # Priced at alpha's deployment alone (the mock's own models cost nothing).
    alpha = models["alpha"]
    assert alpha["cost_usd"] == pytest.approx(
        (alpha["input_tokens"] * 1.0 + alpha["output_tokens"] * 2.0) / 1_000_000
    )
    assert models["beta"]["cost_usd"] == 0


def test_a_failing_model_ends_its_own_choice_and_the_others_answer(client: TestClient) -> None:
    body = fanout(mock={"models": {"beta-up": {"status": 500}}})
    r = client.post(PATH, json=body, headers=auth())
    assert r.status_code == 200, r.text
    assert "error" not in r.json()
    alpha, beta, gamma = r.json()["choices"]
    assert (alpha["finish_reason"], gamma["finish_reason"]) == ("stop", "stop")
    assert alpha["message"]["content"]
    assert gamma["message"]["content"]
    assert beta["index"] == 1
    assert beta["model"] == "beta"
    assert beta["finish_reason"] == "error"
    assert beta["error"] == ERROR
    assert beta["message"]["content"] is None

    # beta's retry reached the upstream too: two calls, two errors, and no tokens.
    recorded = usage(client, key_id(client, "full"))
    assert (recorded["requests"], recorded["errors"]) == (4, 2)
    models = by_model(recorded)
    assert (models["beta"]["requests"], models["beta"]["errors"]) == (2, 2)
    assert models["beta"]["input_tokens"] == models["beta"]["output_tokens"] == 0
    reported = r.json()["usage"]
    assert (
        reported["prompt_tokens"]
        == models["alpha"]["input_tokens"] + models["gamma"]["input_tokens"]
    )


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
def test_a_choice_a_fallback_answered_names_the_fallback(client: TestClient, stream: bool) -> None:
    body = fanout(["alpha", "delta"], stream=stream, mock={"models": {"delta-up": {"status": 503}}})
    r = client.post(PATH, json=body, headers=auth())
    if stream:
        choices = by_choice([c for c in events(r) if c != "[DONE]"])
        assert {entry["model"] for entry in choices[0]} == {"alpha"}
        assert {entry["model"] for entry in choices[1]} == {"gamma"}
        assert choices[1][-1]["finish_reason"] == "stop"
    else:
        assert r.status_code == 200, r.text
        alpha, delta = r.json()["choices"]
        assert (alpha["model"], delta["model"]) == ("alpha", "gamma")
        assert delta["finish_reason"] == "stop"
        # A stream's header goes out with its first chunk, before the fallback is known.
        assert r.headers["x-gateway-served-by"] == "demo/alpha-up,demo/gamma-up"


def test_an_answer_with_every_model_failed_is_still_200(client: TestClient) -> None:
    r = client.post(PATH, json=fanout(["beta", "beta"], mock={"status": 500}), headers=auth())
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [(c["index"], c["finish_reason"], c["error"]) for c in choices] == [
        (0, "error", ERROR),
        (1, "error", ERROR),
    ]
    assert r.json()["usage"]["total_tokens"] == 0


# ---------------------------------------------------------------- streams


def test_a_stream_multiplexes_the_choices_under_one_id(client: TestClient) -> None:
    body = fanout(stream=True, stream_options={"include_usage": True}, mock={"chunks": 4})
    r = client.post(PATH, json=body, headers=auth())
    assert r.headers["x-gateway-served-by"] == "demo/alpha-up,demo/beta-up,demo/gamma-up"
    *chunks, usage_chunk, done = events(r)
    assert done == "[DONE]"
    assert len({c["id"] for c in [*chunks, usage_chunk]}) == 1
    assert chunks[0]["id"].startswith("chatcmpl-")
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert all(len(c["choices"]) == 1 and c.get("usage") is None for c in chunks)

    choices = by_choice(chunks)
    assert sorted(choices) == [0, 1, 2]
    for index, entries in choices.items():
        assert {e["model"] for e in entries} == {MODELS[index]}
        assert entries[0]["delta"]["role"] == "assistant"
        # Its last entry, and only that one, finishes it.
        assert [e["finish_reason"] for e in entries] == [None] * (len(entries) - 1) + ["stop"]
        assert "".join(e["delta"].get("content") or "" for e in entries)

    # The models' usage, summed, in the one last chunk, as the key was charged.
    assert usage_chunk["choices"] == []
    models = by_model(usage(client, key_id(client, "full")))
    assert usage_chunk["usage"]["prompt_tokens"] == sum(m["input_tokens"] for m in models.values())
    assert usage_chunk["usage"]["completion_tokens"] == sum(
        m["output_tokens"] for m in models.values()
    )
    assert {m: models[m]["requests"] for m in models} == {"alpha": 1, "beta": 1, "gamma": 1}


def test_a_stream_without_include_usage_has_no_usage(client: TestClient) -> None:
    *chunks, done = events(client.post(PATH, json=fanout(stream=True), headers=auth()))
    assert done == "[DONE]"
    assert all(c["choices"] and "usage" not in c for c in chunks)
    assert sorted(by_choice(chunks)) == [0, 1, 2]


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ({"status": 500}, ERROR["message"]),
        ({"cut_after": 2}, None),  # mid-stream: after the client saw some of it
    ],
    ids=["before-output", "mid-stream"],
)
def test_a_failing_model_ends_its_stream_choice_with_an_error_chunk(
    client: TestClient, script: dict[str, Any], message: str | None
) -> None:
    body = fanout(stream=True, mock={"chunks": 4, "models": {"beta-up": script}})
    *chunks, done = events(client.post(PATH, json=body, headers=auth()))
    assert done == "[DONE]"
    # Never an error at a chunk's top level: the SDK would end the whole stream on it.
    assert all("error" not in c for c in chunks)
    choices = by_choice(chunks)
    for index in (0, 2):
        assert choices[index][-1]["finish_reason"] == "stop"
        assert all("error" not in e for e in choices[index])
    *before, last = choices[1]
    assert all(e["finish_reason"] is None for e in before)
    if "cut_after" in script:
        assert "".join(e["delta"].get("content") or "" for e in before)
    else:
        assert before == []
    assert last["index"] == 1
    assert last["model"] == "beta"
    assert last["delta"] == {}
    assert last["finish_reason"] == "error"
    assert set(last["error"]) == {"message", "type", "code"}
    assert (last["error"]["type"], last["error"]["code"]) == ("api_error", "upstream_error")
    if message is not None:
        assert last["error"]["message"] == message

    recorded = by_model(usage(client, key_id(client, "full")))
    assert recorded["beta"]["errors"] >= 1
    assert recorded["alpha"]["errors"] == recorded["gamma"]["errors"] == 0


# ---------------------------------------------------------------- refused before any call


@pytest.mark.parametrize(
    ("body", "key", "status", "param", "code"),
    [
        (fanout(["alpha", "nope"]), FULL, 404, "models[1]", "model_not_found"),
        (fanout(["alpha", "beta"]), SOME, 403, "models[1]", "model_not_allowed"),
        (fanout(["beta", "nope"]), SOME, 403, "models[0]", "model_not_allowed"),
        (fanout(n=2), FULL, 400, "n", "invalid_value"),
        (fanout([]), FULL, 400, "models", "invalid_value"),
        (fanout(["alpha"] * (MAX_FANOUT_MODELS + 1)), FULL, 400, "models", "invalid_value"),
        ({"messages": HI}, FULL, 400, "models", "invalid_value"),
        ({"model": "alpha", "messages": HI}, FULL, 400, "model", "invalid_value"),
        ({**fanout(["alpha"]), "model": "alpha"}, FULL, 400, "model", "invalid_value"),
        (fanout(["alpha", ""]), FULL, 400, "models[1]", "invalid_value"),
    ],
    ids=[
        "unknown",
        "not-allowed",
        "first-bad-named",
        "n",
        "no-models",
        "nine-models",
        "missing",
        "model-alone",
        "model-beside-models",
        "empty-name",
    ],
)
def test_a_bad_fanout_is_refused_naming_what(
    client: TestClient, body: dict[str, Any], key: str, status: int, param: str, code: str
) -> None:
    r = client.post(PATH, json=body, headers=auth(key))
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"]) == (param, code)
    assert usage(client, key_id(client, "full" if key == FULL else "some"))["requests"] == 0


def test_eight_models_are_allowed(client: TestClient) -> None:
    models = ["alpha", "gamma"] * (MAX_FANOUT_MODELS // 2)
    r = client.post(PATH, json=fanout(models, max_tokens=2), headers=auth())
    assert r.status_code == 200, r.text
    assert [c["model"] for c in r.json()["choices"]] == models


# ---------------------------------------------------------------- limits: every call counts


def test_a_key_that_cannot_make_every_call_is_refused_whole(client: TestClient) -> None:
    # rpm 2 can never take three calls at once: refused for good, nothing taken.
    two, secret = new_key(client, {"rpm": 2})
    r = client.post(PATH, json=fanout(), headers=auth(secret))
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "insufficient_quota"
    assert r.headers["x-should-retry"] == "false"
    assert r.headers["x-ratelimit-remaining-requests"] == "2"
    recorded = usage(client, two)
    assert (recorded["requests"], recorded["by_model"]) == (0, [])
    # Both of its requests are still there, for two calls.
    r = client.post(PATH, json=fanout(["alpha", "gamma"]), headers=auth(secret))
    assert r.status_code == 200, r.text
    assert r.headers["x-ratelimit-remaining-requests"] == "0"


def test_a_key_with_rpm_3_makes_a_three_model_fanout_and_no_more(client: TestClient) -> None:
    three, secret = new_key(client, {"rpm": 3})
    r = client.post(PATH, json=fanout(stream=True), headers=auth(secret))
    assert r.headers["x-ratelimit-limit-requests"] == "3"
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert events(r)[-1] == "[DONE]"
    recorded = usage(client, three)
    assert recorded["requests"] == 3
    assert {m["model"]: m["requests"] for m in recorded["by_model"]} == {
        "alpha": 1,
        "beta": 1,
        "gamma": 1,
    }
    # The window is full: even one more call waits.
    r = client.post(PATH, json=fanout(["alpha"]), headers=auth(secret))
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert usage(client, three)["requests"] == 3


def test_a_fanout_that_does_not_fit_what_is_left_of_rpm_waits(client: TestClient) -> None:
    three, secret = new_key(client, {"rpm": 3})
    one = {"model": "alpha", "messages": HI}
    assert client.post("/v1/chat/completions", json=one, headers=auth(secret)).status_code == 200
    r = client.post(PATH, json=fanout(), headers=auth(secret))
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert r.headers["x-ratelimit-remaining-requests"] == "2"
    assert usage(client, three)["requests"] == 1


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
def test_max_parallel_counts_every_call_and_gets_them_all_back(
    client: TestClient, stream: bool
) -> None:
    _, two = new_key(client, {"max_parallel": 2})
    r = client.post(PATH, json=fanout(stream=stream), headers=auth(two))
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "insufficient_quota"

    three_id, three = new_key(client, {"max_parallel": 3})
    for _ in range(3):  # a lease not given back whole would refuse the next
        r = client.post(PATH, json=fanout(stream=stream), headers=auth(three))
        assert r.status_code == 200, r.text
    assert usage(client, three_id)["requests"] == 9


def _reserved(client: TestClient, path: str, body: dict[str, Any]) -> int:
    """The tokens a request reserved: what its admission left a fresh key of tpm."""
    tpm = 1_000_000
    _, secret = new_key(client, {"tpm": tpm})
    r = client.post(path, json=body, headers=auth(secret))
    assert r.status_code == 200, r.text
    assert r.headers["x-ratelimit-limit-tokens"] == str(tpm)
    return tpm - int(r.headers["x-ratelimit-remaining-tokens"])


def test_the_tpm_reservation_is_each_models_summed(client: TestClient) -> None:
    chat = "/v1/chat/completions"
    alone = {m: _reserved(client, chat, {"model": m, "messages": HI}) for m in MODELS}
    # Each at its own max_output_tokens (100, 200, 300) plus the same prompt estimate.
    assert alone["beta"] - alone["alpha"] == alone["gamma"] - alone["beta"] == 100
    assert _reserved(client, PATH, fanout()) == sum(alone.values())
    # With the request's own cap, each model reserves it.
    capped = _reserved(client, chat, {"model": "alpha", "messages": HI, "max_tokens": 7})
    assert _reserved(client, PATH, fanout(max_tokens=7)) == 3 * capped


def test_a_fanout_over_the_whole_tpm_is_refused_though_each_model_fits(
    client: TestClient,
) -> None:
    chat = "/v1/chat/completions"
    needed = sum(_reserved(client, chat, {"model": m, "messages": HI}) for m in MODELS)
    key, secret = new_key(client, {"tpm": needed - 1})
    r = client.post(PATH, json=fanout(), headers=auth(secret))
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "insufficient_quota"
    assert usage(client, key)["requests"] == 0
    for model in MODELS:
        one = {"model": model, "messages": HI}
        assert client.post(chat, json=one, headers=auth(secret)).status_code == 200
