"""``GET /v1/models/{model}`` as the openai SDK's ``models.retrieve`` uses it."""

from __future__ import annotations

import openai
import pytest

from tests.servers import TEST_KEY, ServerProcess


@pytest.fixture
def client(gateway: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=TEST_KEY, max_retries=0)


def test_retrieve_a_model_the_key_may_use(client: openai.OpenAI) -> None:
    card = client.models.retrieve("local-chat")
    assert card.id == "local-chat"
    assert card.object == "model"
    assert card.owned_by == "gateway"
    listed = {m.id: m for m in client.models.list()}
    assert listed["local-chat"] == card


@pytest.mark.parametrize(
    "model",
    [
        pytest.param("no-such-model", id="unknown"),
        pytest.param("secret-model", id="exists-but-not-for-this-key"),
    ],
)
def test_retrieve_any_other_model_is_404(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve(model)
    error = info.value.body
    assert isinstance(error, dict)
    assert error["code"] == "model_not_found"
    assert error["type"] == "invalid_request_error"
    assert model in error["message"]


def test_retrieve_needs_a_key(gateway: ServerProcess) -> None:
    anonymous = openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key="sk-not-a-gateway-key", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.retrieve("local-chat")
