"""The admission overlaps building the upstream request, and still decides first.

A model route starts its key's admission and lets the provider build its
upstream request while the store answers; the provider awaits the grant before
sending. These tests take a provider that fails while building (as a
translating provider rejects what it cannot translate), registered as a
provider type of its own, and check that the answer is what it was when the
admission came first: a refused request gets its 429, an admitted one the
provider's error, settled as one request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import ProviderConfig, load_settings
from gateway.errors import InvalidRequest
from gateway.providers import registry
from gateway.providers.base import CallContext

KEY = "sk-test-gate-rpm1-0001"
MASTER = "sk-test-gate-master-0001"
CONFIG = f"""
providers:
  strict: {{type: cannot-translate}}
models:
  strict-chat: {{deployments: [{{provider: strict, model: strict-chat}}]}}
keys:
  - {{name: one-a-minute, key: {KEY}, limits: {{rpm: 1}}}}
server:
  data_dir: data
"""


class CannotTranslate:
    """Rejects every request while building it, before awaiting the admission."""

    needs_http = False
    built = 0

    def __init__(self, name: str, config: ProviderConfig, upstream: object = None) -> None:
        self.name = name

    def _build(self) -> None:
        CannotTranslate.built += 1
        raise InvalidRequest("This provider cannot translate 'messages'.", param="messages")

    async def chat(self, request: Any, ctx: CallContext) -> Any:
        self._build()

    @asynccontextmanager
    async def stream(self, request: Any, ctx: CallContext) -> AsyncIterator[Any]:
        self._build()
        yield  # pragma: no cover

    async def embed(self, request: Any, ctx: CallContext) -> Any:
        self._build()

    async def aclose(self) -> None:
        return None


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setitem(registry.PROVIDERS, "cannot-translate", f"{__name__}:CannotTranslate")
    CannotTranslate.built = 0
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG)
    with TestClient(create_app(load_settings(path, env={"GATEWAY_MASTER_KEY": MASTER}))) as client:
        yield client


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
def test_a_refusal_beats_an_error_raised_while_the_admission_was_on_its_way(
    client: TestClient, stream: bool
) -> None:
    body = {"model": "strict-chat", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {KEY}"}
    if stream:
        body["stream"] = True

    admitted = client.post("/v1/chat/completions", json=body, headers=headers)
    assert admitted.status_code == 400, admitted.text
    assert admitted.json()["error"]["param"] == "messages"
    assert admitted.headers["x-ratelimit-remaining-requests"] == "0"

    refused = client.post("/v1/chat/completions", json=body, headers=headers)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-limit-requests"] == "1"
    assert int(refused.headers["retry-after"]) >= 1
    assert CannotTranslate.built == 2  # both were built while their admission was pending

    admin = {"authorization": f"Bearer {MASTER}"}
    (key,) = client.get("/admin/keys", headers=admin).json()["data"]
    usage = client.get(f"/admin/keys/{key['id']}/usage", headers=admin).json()
    assert (usage["requests"], usage["errors"]) == (1, 1)  # the admitted one; the refused: none
