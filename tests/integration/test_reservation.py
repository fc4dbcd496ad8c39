"""The size of a request's tpm reservation, as a client sees it: a real gateway on each
store (docs/limits.md, "tpm").

Before the call a request reserves its prompt estimate plus its output cap,
once per choice (``n``); the cap is ``max_completion_tokens`` ?? ``max_tokens``
?? the model's ``max_output_tokens`` ?? ``server.default_max_output_tokens``
(4096). ``x-ratelimit-remaining-tokens`` on the answer shows the key's tpm less
that reservation, for a fresh key with nothing else in its window.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.limits import estimate
from gateway.schemas.openai import ChatCompletionRequest, EmbeddingRequest
from tests.integration.stores import STORES, auth, create_key, gateway_on
from tests.servers import ServerProcess

TPM = 1_000_000
DEFAULT_CAP = 4096  # server.default_max_output_tokens when the config says nothing
MODEL_CAP = 777


def _config() -> dict[str, Any]:
    mock = [{"provider": "local", "model": "mock-chat"}]
    return {
        "providers": {"local": {"type": "mock"}},
        "models": {
            "plain": {"deployments": mock},
            "capped": {"deployments": mock, "max_output_tokens": MODEL_CAP},
            "embed": {"deployments": [{"provider": "local", "model": "mock-embedding"}]},
        },
    }


@pytest.fixture(scope="module", params=STORES)
def gw(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with gateway_on(request.param, tmp_path_factory.mktemp("reservation"), _config()) as g:
        yield g


MESSAGES = [
    {"role": "system", "content": "You count tokens."},
    {"role": "user", "content": "How many tokens does this reservation hold?"},
]


@pytest.mark.parametrize(
    ("fields", "cap"),
    [
        ({"model": "plain", "max_tokens": 100}, 100),
        ({"model": "plain", "max_completion_tokens": 50, "max_tokens": 100}, 50),
        ({"model": "plain", "max_tokens": 100, "n": 3}, 300),
        ({"model": "plain"}, DEFAULT_CAP),
        ({"model": "plain", "n": 2}, 2 * DEFAULT_CAP),
        ({"model": "capped"}, MODEL_CAP),
        ({"model": "capped", "n": 4}, 4 * MODEL_CAP),
        ({"model": "capped", "max_tokens": 10}, 10),
    ],
    ids=[
        "max_tokens",
        "max_completion_tokens_first",
        "max_tokens_times_n",
        "server_default",
        "server_default_times_n",
        "model_default",
        "model_default_times_n",
        "max_tokens_over_model_default",
    ],
)
def test_chat_reserves_the_prompt_estimate_and_the_output_cap_per_choice(
    gw: ServerProcess, fields: dict[str, Any], cap: int
) -> None:
    body = {"messages": MESSAGES, **fields}
    prompt = estimate.prompt_tokens(ChatCompletionRequest.model_validate(body))
    assert prompt > 2 * 4  # the estimate counts the messages, not only their overhead
    _, secret = create_key(gw.url, {"tpm": TPM})
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=auth(secret), timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["x-ratelimit-limit-tokens"] == str(TPM)
    assert int(r.headers["x-ratelimit-remaining-tokens"]) == TPM - (prompt + cap)


def test_embeddings_reserve_their_input_and_no_output(gw: ServerProcess) -> None:
    body = {"model": "embed", "input": ["one text to embed", "and another, a little longer"]}
    prompt = estimate.embedding_tokens(EmbeddingRequest.model_validate(body))
    _, secret = create_key(gw.url, {"tpm": TPM})
    r = httpx.post(f"{gw.url}/v1/embeddings", json=body, headers=auth(secret), timeout=10)
    assert r.status_code == 200, r.text
    assert int(r.headers["x-ratelimit-remaining-tokens"]) == TPM - prompt


def test_a_reservation_larger_than_the_whole_tpm_is_refused_for_good(gw: ServerProcess) -> None:
    # n=3 of the 4096 default is 12,288 tokens: more than a 10,000 tpm could ever hold.
    _, secret = create_key(gw.url, {"tpm": 10_000})
    url = f"{gw.url}/v1/chat/completions"
    one = httpx.post(url, json={"model": "plain", "messages": MESSAGES}, headers=auth(secret))
    assert one.status_code == 200, one.text
    body = {"model": "plain", "messages": MESSAGES, "n": 3}
    r = httpx.post(url, json=body, headers=auth(secret), timeout=10)
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "insufficient_quota"
    assert r.headers["x-should-retry"] == "false"
    assert "max_tokens" in r.json()["error"]["message"]
