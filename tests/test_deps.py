"""The body a model route parses: its bounds, and what a client is told past them.

In-process against the default body limit (no ``max_body_bytes`` in the
config), with the mock provider answering what gets through.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import load_settings
from gateway.schemas.openai import (
    MAX_EMBEDDING_DIMENSIONS,
    MAX_EMBEDDING_INPUTS,
    MAX_MESSAGES,
    MAX_TOKENS,
)

KEY = "sk-test-deps-000001"
MiB = 1024 * 1024
DEFAULT_LIMIT = 8 * MiB

CONFIG = f"""
providers:
  demo: {{type: mock}}
models:
  mock-chat:
    deployments: [{{provider: demo, model: mock-chat, price: {{input: 1.0, output: 2.0}}}}]
  mock-embedding: {{deployments: [{{provider: demo, model: mock-embedding}}]}}
keys:
  - {{name: deps, key: {KEY}, limits: {{budget_usd: 1000000, tpm: 1000000000000}}}}
server:
  data_dir: data
"""


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    path = tmp_path_factory.mktemp("deps") / "gateway.yaml"
    path.write_text(CONFIG)
    with TestClient(create_app(load_settings(path, env={}))) as client:
        yield client


HEADERS = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}


def post(client: TestClient, path: str, body: bytes | dict[str, Any]) -> Any:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, content=content, headers=HEADERS)


def error_of(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def messages(count: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"m{i}"} for i in range(count)]


# ---------------------------------------------------------------- bounds on a chat body


def test_the_most_messages_allowed_are_served(client: TestClient) -> None:
    response = post(
        client, "/v1/chat/completions", {"model": "mock-chat", "messages": messages(MAX_MESSAGES)}
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] > MAX_MESSAGES


def test_one_message_too_many_is_400_naming_messages(client: TestClient) -> None:
    response = post(
        client,
        "/v1/chat/completions",
        {"model": "mock-chat", "messages": messages(MAX_MESSAGES + 1)},
    )
    assert response.status_code == 400
    assert error_of(response) == {
        "message": f"Invalid 'messages': array too long. Expected an array with maximum "
        f"length {MAX_MESSAGES}, but got an array with length {MAX_MESSAGES + 1} instead.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "invalid_value",
    }


def filled(prefix: bytes, item: bytes, suffix: bytes, size: int) -> bytes:
    """``prefix item,item,...,item suffix`` of about ``size`` bytes (under it)."""
    count = (size - len(prefix) - len(suffix)) // (len(item) + 1)
    return prefix + b",".join([item] * count) + suffix


@pytest.mark.parametrize(
    ("prefix", "item", "suffix", "param"),
    [
        # Bad messages, then bad content parts: each stops at the first bad item.
        (b'{"model":"mock-chat","messages":[', b"1", b"]}", "messages[0]"),
        (b'{"model":"mock-chat","messages":[', b"{}", b"]}", "messages[0].role"),
        (
            b'{"model":"mock-chat","messages":[{"role":"user","content":[',
            b"1",
            b"]}]}",
            "messages[0].content",
        ),
    ],
)
def test_a_body_full_of_bad_items_is_one_error(
    client: TestClient, prefix: bytes, item: bytes, suffix: bytes, param: str
) -> None:
    # Millions of bad items once made one error each: 30 s of CPU and gigabytes for
    # an 8 MiB body. Now the first one answers; the bound is far above the ~0.1 s
    # it takes, and far below what it took.
    body = filled(prefix, item, suffix, DEFAULT_LIMIT - 1024)
    started = time.monotonic()
    response = post(client, "/v1/chat/completions", body)
    elapsed = time.monotonic() - started
    assert response.status_code == 400
    assert error_of(response)["param"].startswith(param)
    assert elapsed < 5, f"refusing {len(body)} bytes of bad items took {elapsed:.1f} s"


def test_too_many_tiny_messages_in_a_full_body_is_400(client: TestClient) -> None:
    body = filled(
        b'{"model":"mock-chat","messages":[',
        b'{"role":"user","content":""}',
        b"]}",
        DEFAULT_LIMIT - 1024,
    )
    response = post(client, "/v1/chat/completions", body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "messages"
    assert f"maximum length {MAX_MESSAGES}," in error["message"]


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize(
    "value", [MAX_TOKENS + 1, 2**64, "9" * 400], ids=["int32", "64-bit", "400-digits"]
)
def test_an_output_bound_past_32_bits_is_400(client: TestClient, field: str, value: Any) -> None:
    # Reserved at a price, a 400-digit bound overflowed the float of the cost: a 500.
    body = b'{"model":"mock-chat","messages":[{"role":"user","content":"hi"}],"%s":%s}' % (
        field.encode(),
        str(value).encode(),
    )
    response = post(client, "/v1/chat/completions", body)
    assert response.status_code == 400
    assert error_of(response)["param"] == field


def test_the_largest_output_bound_is_admitted(client: TestClient) -> None:
    body = {"model": "mock-chat", "messages": messages(1), "max_tokens": MAX_TOKENS}
    response = post(client, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text


# ---------------------------------------------------------------- bounds on an embeddings body


def test_the_most_embedding_inputs_allowed_are_served(client: TestClient) -> None:
    body = {"model": "mock-embedding", "input": [f"t{i}" for i in range(MAX_EMBEDDING_INPUTS)]}
    response = post(client, "/v1/embeddings", body)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == MAX_EMBEDDING_INPUTS


@pytest.mark.parametrize(
    "inputs",
    [
        [f"t{i}" for i in range(MAX_EMBEDDING_INPUTS + 1)],
        [[1, 2]] * (MAX_EMBEDDING_INPUTS + 1),
    ],
    ids=["strings", "token-arrays"],
)
def test_one_embedding_input_too_many_is_400_naming_input(
    client: TestClient, inputs: list[Any]
) -> None:
    response = post(client, "/v1/embeddings", {"model": "mock-embedding", "input": inputs})
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "input"
    assert error["message"] == (
        f"Invalid 'input': array too long. Expected an array with maximum length "
        f"{MAX_EMBEDDING_INPUTS}, but got an array with length {MAX_EMBEDDING_INPUTS + 1} "
        "instead."
    )


def test_one_long_tokenized_input_is_one_input(client: TestClient) -> None:
    tokens = list(range(MAX_EMBEDDING_INPUTS * 2))
    response = post(client, "/v1/embeddings", {"model": "mock-embedding", "input": tokens})
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 1
    assert response.json()["usage"]["prompt_tokens"] == len(tokens)


@pytest.mark.parametrize(
    "value",
    [5, None, {"x": 1}, [1, "a"], [["a"]], [[1], 2], True],
    ids=["number", "null", "object", "mixed", "nested-strings", "mixed-arrays", "bool"],
)
def test_a_bad_embedding_input_is_one_error_naming_input(client: TestClient, value: Any) -> None:
    response = post(client, "/v1/embeddings", {"model": "mock-embedding", "input": value})
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "input"
    assert error["message"] == (
        "Invalid value for 'input': expected a string, an array of strings, an array of "
        "token ids or an array of arrays of token ids."
    )


def test_embedding_dimensions_are_bounded(client: TestClient) -> None:
    # The mock makes as many numbers as it is asked for: a billion hung the gateway.
    body = {"model": "mock-embedding", "input": "x", "dimensions": MAX_EMBEDDING_DIMENSIONS}
    response = post(client, "/v1/embeddings", body)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"][0]["embedding"]) == MAX_EMBEDDING_DIMENSIONS
    response = post(client, "/v1/embeddings", {**body, "dimensions": 10**9})
    assert response.status_code == 400
    assert error_of(response)["param"] == "dimensions"


# ---------------------------------------------------------------- the body limit


def test_the_default_body_limit_is_8_mib(client: TestClient) -> None:
    def body(size: int) -> bytes:
        head, tail = b'{"model":"mock-chat","messages":[{"role":"user","content":"', b'"}]}'
        return head + b"x" * (size - len(head) - len(tail)) + tail

    response = post(client, "/v1/chat/completions", body(DEFAULT_LIMIT + 1))
    assert response.status_code == 413
    assert error_of(response)["message"] == (
        f"The request body is larger than the limit of {DEFAULT_LIMIT} bytes."
    )
    response = post(client, "/v1/chat/completions", body(DEFAULT_LIMIT))
    assert response.status_code == 200, response.text
