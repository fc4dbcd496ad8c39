"""gateway/fastpath.py AdmittedRoute: model routes call their admission directly, and answer as FastAPI would.

The app in-process (lifespan and all, the embedded store in tmp_path): every
answer through the direct path is compared with the same request through
FastAPI's own handler, which the route falls back to while any dependency
override is set.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, Depends, Request
from starlette.testclient import TestClient

from gateway.admission import ChatCall, admit_chat
from gateway.app import create_app
from gateway.config import load_settings
from gateway.deps import get_gatekeeper
from gateway.fastpath import AdmittedRoute
from tests.api.test_handlers import CONFIG, FULL, LIMITED, RATED, auth, hello

extra = APIRouter(route_class=AdmittedRoute)


@extra.post("/v1/test/with-query")
async def with_query(call: ChatCall, n: int = 0) -> dict[str, Any]:
    return {"key": call.key.name, "n": n}


@extra.post("/v1/test/with-request")
async def with_request(call: ChatCall, request: Request) -> dict[str, Any]:
    return {"key": call.key.name, "path": request.url.path}


@extra.post("/v1/test/router-level", dependencies=[Depends(admit_chat)])
async def router_level(request: Request) -> dict[str, Any]:
    return {"path": request.url.path}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG)
    app = create_app(load_settings(path, env={}))
    app.include_router(extra)
    with TestClient(app) as client:
        yield client


def _unrelated_override(client: TestClient) -> None:
    """An override of a dependency model routes do not use: FastAPI's handler serves them."""
    app: Any = client.app
    app.dependency_overrides[get_gatekeeper] = get_gatekeeper


def _seen(response: Any) -> tuple[int, Any, dict[str, str]]:
    # Everything but what differs per request by design.
    headers = {k: v for k, v in response.headers.items() if k not in ("x-request-id",)}
    body = response.json()
    if "id" in body:
        body["id"] = "..."
    body.pop("created", None)
    return response.status_code, body, headers


REQUESTS = [
    pytest.param(hello(), auth(), 200, id="answered"),
    pytest.param(hello(), {}, 401, id="401"),
    pytest.param(hello(model="other-chat"), auth(LIMITED), 403, id="403"),
    pytest.param(hello(model="nope"), auth(), 404, id="404"),
    pytest.param({"model": "mock-chat"}, auth(), 400, id="400"),
    pytest.param(hello(max_tokens=10**6), auth(RATED), 429, id="429"),
]


@pytest.mark.parametrize(("body", "headers", "status"), REQUESTS)
def test_the_direct_path_answers_as_fastapis_handler_does(
    client: TestClient, body: dict[str, Any], headers: dict[str, str], status: int
) -> None:
    direct = _seen(client.post("/v1/chat/completions", json=body, headers=headers))
    _unrelated_override(client)
    through_fastapi = _seen(client.post("/v1/chat/completions", json=body, headers=headers))
    assert direct == through_fastapi
    assert direct[0] == status


def test_a_route_with_more_than_its_admission_is_resolved_by_fastapi(client: TestClient) -> None:
    response = client.post("/v1/test/with-query?n=7", json=hello(), headers=auth())
    assert response.status_code == 200
    assert response.json() == {"key": "full", "n": 7}
    refused = client.post("/v1/test/with-query?n=seven", json=hello(), headers=auth())
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "n"


def test_a_route_that_also_takes_the_request_gets_it(client: TestClient) -> None:
    response = client.post("/v1/test/with-request", json=hello(), headers=auth())
    assert response.status_code == 200
    assert response.json() == {"key": "full", "path": "/v1/test/with-request"}


def test_a_route_level_admission_still_admits(client: TestClient) -> None:
    assert client.post("/v1/test/router-level", json=hello(), headers=auth()).json() == {
        "path": "/v1/test/router-level"
    }
    assert client.post("/v1/test/router-level", json=hello(), headers={}).status_code == 401


def test_an_override_of_the_admission_is_honoured(client: TestClient) -> None:
    async def refuse() -> None:
        from gateway.errors import InvalidAPIKey

        raise InvalidAPIKey("refused by the test's override")

    app: Any = client.app
    app.dependency_overrides[admit_chat] = refuse
    response = client.post("/v1/chat/completions", json=hello(), headers=auth(FULL))
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "refused by the test's override"
