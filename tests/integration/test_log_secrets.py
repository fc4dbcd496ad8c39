"""What a gateway with ``server.log_format: json`` writes: one JSON object a line, the
request id on each line written for a request, and never a secret or a prompt, but
for a key whose ``log_prompts`` is on, and then only on ``gateway.prompts``
(docs/operations.md, "Logs").

One gateway, in front of the mock upstream with a provider key, with a master key,
a key from its config and two made through the admin API, prompts logged for one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests import secrets_scan
from tests.servers import ServerProcess, start_gateway, write_config

SLACK = 5.0  # seconds a stalled machine may add to any wait
PROVIDER_KEY = "sk-provider-log-secrets-8c1d2e3f4a5b"
MASTER = "sk-master-log-secrets-6f5e4d3c2b1a"
CONFIG_KEY = "sk-config-log-secrets-0a9b8c7d6e5f"
ADMIN = {"authorization": f"Bearer {MASTER}"}
QUIET_PROMPT = "quiet prompt about marmalade 7741"  # its key's log_prompts is off
CHATTY_PROMPT = "chatty prompt about kumquats 1893"  # its key's log_prompts is on


@pytest.fixture(scope="module")
def gateway(
    upstream: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    config = {
        "providers": {
            "upstream": {
                "type": "openai",
                "base_url": f"{upstream.url}/v1",
                "api_key": PROVIDER_KEY,
            }
        },
        "models": {"up-chat": {"deployments": [{"provider": "upstream", "model": "mock-chat"}]}},
        "keys": [{"name": "configured", "key": CONFIG_KEY}],
        "server": {"log_format": "json"},
    }
    path = write_config(tmp_path_factory.mktemp("log-secrets"), config)
    server = start_gateway(path, env={"GATEWAY_MASTER_KEY": MASTER})
    try:
        yield server
    finally:
        server.stop()


def create_key(gateway: ServerProcess, name: str, log_prompts: bool) -> str:
    r = httpx.post(
        f"{gateway.url}/admin/keys",
        json={"name": name, "log_prompts": log_prompts},
        headers=ADMIN,
        timeout=10 + SLACK,
    )
    assert r.status_code == 201, r.text
    assert r.json()["log_prompts"] is log_prompts
    key = r.json()["key"]
    secrets_scan.register_secret(key)  # searched for in every log of the session
    return key


def chat(gateway: ServerProcess, key: str, request_id: str, prompt: str, **extra: Any) -> int:
    body = {"model": "up-chat", "messages": [{"role": "user", "content": prompt}], **extra}
    headers = {"authorization": f"Bearer {key}", "x-request-id": request_id}
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers=headers,
        timeout=10 + SLACK,
    ) as r:
        r.read()  # a stream to its end
        assert r.headers["x-request-id"] == request_id
        return r.status_code


REQUESTS = ["quiet-ok", "quiet-stream", "quiet-fail", "chatty-ok", "chatty-stream", "bad-key"]


@pytest.fixture(scope="module")
def served(gateway: ServerProcess) -> dict[str, Any]:
    """The traffic, and the log once every request's access line is in it."""
    quiet = create_key(gateway, "quiet", log_prompts=False)
    chatty = create_key(gateway, "chatty", log_prompts=True)
    statuses = {
        "quiet-ok": chat(gateway, quiet, "quiet-ok", QUIET_PROMPT),
        "quiet-stream": chat(gateway, quiet, "quiet-stream", QUIET_PROMPT, stream=True),
        # The upstream fails: an error's lines carry the id and no secret either.
        "quiet-fail": chat(gateway, quiet, "quiet-fail", QUIET_PROMPT, mock={"status": 500}),
        "chatty-ok": chat(gateway, chatty, "chatty-ok", CHATTY_PROMPT),
        "chatty-stream": chat(gateway, chatty, "chatty-stream", CHATTY_PROMPT, stream=True),
        "bad-key": chat(gateway, quiet[:-1] + "x", "bad-key", QUIET_PROMPT),
    }
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=10 + SLACK)
    assert metrics.status_code == 200
    deadline = time.monotonic() + 10 + SLACK
    while True:
        objects = [json.loads(line) for line in gateway.logs().splitlines() if line.strip()]
        logged = {o.get("request_id") for o in objects if o.get("logger") == "gateway.access"}
        if logged >= set(REQUESTS):
            break
        assert time.monotonic() < deadline, f"access lines missing:\n{gateway.logs()}"
        time.sleep(0.05)
    return {
        "statuses": statuses,
        "secrets": [PROVIDER_KEY, MASTER, CONFIG_KEY, quiet, chatty],
        "created": [quiet, chatty],
        "metrics": metrics.text,
    }


def lines(gateway: ServerProcess) -> list[dict[str, Any]]:
    out = []
    for line in gateway.logs().splitlines():
        value = json.loads(line)  # every line, the start-up's and uvicorn's too
        assert isinstance(value, dict), line
        out.append(value)
    return out


def access_line(gateway: ServerProcess, request_id: str) -> dict[str, Any]:
    [line] = [
        o
        for o in lines(gateway)
        if o["logger"] == "gateway.access" and o.get("request_id") == request_id
    ]
    return line


def test_the_traffic_was_answered_as_expected(served: dict[str, Any]) -> None:
    assert served["statuses"] == {
        "quiet-ok": 200,
        "quiet-stream": 200,
        "quiet-fail": 502,
        "chatty-ok": 200,
        "chatty-stream": 200,
        "bad-key": 401,
    }


def test_every_line_is_one_json_object(gateway: ServerProcess, served: dict[str, Any]) -> None:
    objects = lines(gateway)
    assert len(objects) > len(REQUESTS)
    for o in objects:
        assert {"timestamp", "severity_text", "severity_number", "logger", "body"} <= set(o), o


def test_an_access_line_has_opentelemetry_names(
    gateway: ServerProcess, served: dict[str, Any]
) -> None:
    ok = access_line(gateway, "quiet-ok")
    assert ok["http.request.method"] == "POST"
    assert ok["url.path"] == "/v1/chat/completions"
    assert ok["http.response.status_code"] == 200
    assert ok["gateway.key"] == "quiet"  # the name, never the key
    assert ok["gen_ai.request.model"] == "up-chat"
    assert ok["gateway.served_by"] == "upstream/mock-chat"
    assert ok["gen_ai.provider.name"] == "upstream"
    assert ok["gen_ai.usage.output_tokens"] == 12
    assert ok["gen_ai.usage.input_tokens"] > 0
    assert ok["gateway.latency_ms"] >= 0
    assert ok["gateway.ttft_ms"] >= 0
    assert access_line(gateway, "quiet-stream")["gateway.outcome"] == "done"
    failed = access_line(gateway, "quiet-fail")
    assert failed["http.response.status_code"] == 502
    assert (failed["error.type"], failed["gateway.upstream_status"]) == ("upstream_status", 500)
    refused = access_line(gateway, "bad-key")
    assert refused["http.response.status_code"] == 401
    assert "gateway.key" not in refused


def test_every_line_written_for_a_request_carries_its_id(
    gateway: ServerProcess, served: dict[str, Any]
) -> None:
    objects = lines(gateway)
    answered = {o["request_id"] for o in objects if o["logger"] == "gateway.access"}
    # The error answers' lines too: the id is the client's x-request-id.
    assert set(REQUESTS) <= answered
    # The other lines a request writes name the request their access line does.
    written = [o for o in objects if o["logger"] in ("gateway.prompts", "gateway.audit")]
    assert [o["logger"] for o in written].count("gateway.audit") == 2  # the keys made
    for o in written:
        assert o.get("request_id") in answered, o
    # What is not written for a request (start-up, uvicorn's, shutdown) has no id.
    for o in objects:
        if o["logger"].startswith("uvicorn"):
            assert "request_id" not in o, o


def test_no_secret_in_the_log_or_the_metrics(
    gateway: ServerProcess, served: dict[str, Any]
) -> None:
    logs, metrics = gateway.logs(), served["metrics"]
    # Keys are there by name only.
    assert 'key="quiet"' in metrics
    assert 'key="chatty"' in metrics
    for secret in served["secrets"]:
        assert secret not in logs, secrets_scan.hint(secret)
        assert secret not in metrics, secrets_scan.hint(secret)
    # The admin API's keys are found by the session's scan without being registered.
    for secret in served["created"]:
        assert secrets_scan.GENERATED_KEY.fullmatch(secret)
    assert secrets_scan.find(logs + metrics, secrets_scan.REGISTRY.secrets) == []


def test_a_prompt_is_logged_only_for_its_key_and_only_on_gateway_prompts(
    gateway: ServerProcess, served: dict[str, Any]
) -> None:
    logs = gateway.logs()
    assert QUIET_PROMPT not in logs
    assert "marmalade" not in served["metrics"]
    assert "kumquats" not in served["metrics"]
    prompts = [o for o in lines(gateway) if CHATTY_PROMPT in json.dumps(o)]
    assert {o["logger"] for o in prompts} == {"gateway.prompts"}
    assert sorted(o["request_id"] for o in prompts) == ["chatty-ok", "chatty-stream"]
    for o in prompts:
        assert o["body"] == "prompt"
        assert o["gateway.key"] == "chatty"
        assert o["gen_ai.input.messages"] == [{"role": "user", "content": CHATTY_PROMPT}]


def test_the_session_scan_covers_this_gateway(
    gateway: ServerProcess, served: dict[str, Any]
) -> None:
    # Its log is searched at the end of the session for its secrets (tests/secrets_scan.py).
    assert gateway.log_path in secrets_scan.REGISTRY.logs
    assert {PROVIDER_KEY, MASTER, CONFIG_KEY} <= secrets_scan.REGISTRY.secrets
    assert set(served["created"]) <= secrets_scan.REGISTRY.secrets
