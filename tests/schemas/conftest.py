"""The gateway in-process for the request-schema tests: a mock model, and an
OpenAI-type model whose upstream (an injected transport) records what it gets."""

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
from tests.schemas.support import CONFIG


@pytest.fixture(scope="module")
def upstream_bodies() -> list[dict[str, Any]]:
    return []


@pytest.fixture(scope="module")
def upstream_raw() -> list[bytes]:
    """The bodies the upstream got, as bytes."""
    return []


@pytest.fixture(scope="module")
def client(
    tmp_path_factory: pytest.TempPathFactory,
    upstream_bodies: list[dict[str, Any]],
    upstream_raw: list[bytes],
) -> Iterator[TestClient]:
    def upstream(request: httpx.Request) -> httpx.Response:
        upstream_raw.append(request.content)
        upstream_bodies.append(json.loads(request.content))
        answer = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1741569952,
            "model": "upstream-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        }
        return httpx.Response(200, json=answer)

    path: Path = tmp_path_factory.mktemp("request") / "gateway.yaml"
    path.write_text(CONFIG)
    app = create_app(load_settings(path, env={}), transport=httpx.MockTransport(upstream))
    with TestClient(app) as client:
        yield client
