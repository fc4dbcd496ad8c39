"""Every model route admits through a limiter: no POST under /v1/ skips the quotas.

A new model endpoint that forgets its admission dependency (``ChatCall``,
``EmbeddingCall``, ...) would serve requests without rpm, tpm, max_parallel or
budget checks; this walks the real app's routes and fails on such a route.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.responses import Response

from gateway.admission import LIMITERS, Call, ChatCall, admit_chat
from gateway.app import create_app
from gateway.config import load_settings
from gateway.deps import KeyDep

try:  # FastAPI >= 0.120 keeps included routers nested; this yields their effective routes
    from fastapi.routing import iter_route_contexts
except ImportError:  # older FastAPI copies every included route into app.routes
    iter_route_contexts = None


def has_limiter(dependant: Dependant) -> bool:
    """Whether one of ``LIMITERS`` is anywhere in the dependency tree."""
    return any(dep.call in LIMITERS or has_limiter(dep) for dep in dependant.dependencies)


def _flat(routes: Iterable[Any]) -> Iterator[Any]:
    routes = list(routes)
    yield from iter_route_contexts(routes) if iter_route_contexts else routes


def model_routes(routes: Iterable[Any]) -> list[Any]:
    """The API routes that serve a model call: POST under /v1/ (with router prefixes)."""
    return [
        r
        for r in _flat(routes)
        if isinstance(getattr(r, "original_route", r), APIRoute)
        and r.path.startswith("/v1/")
        and "POST" in r.methods
    ]


def routes_without_limiter(routes: Iterable[Any]) -> list[str]:
    return [
        f"{','.join(sorted(r.methods))} {r.path}"
        for r in model_routes(routes)
        if not has_limiter(r.dependant)
    ]


def test_every_model_route_of_the_app_has_a_limiter() -> None:
    app = create_app(load_settings())
    checked = {r.path for r in model_routes(app.routes)}
    # Not vacuous: the model endpoints are among the routes walked.
    assert {"/v1/chat/completions", "/v1/embeddings"} <= checked, checked
    assert routes_without_limiter(app.routes) == []


def test_a_post_route_without_a_limiter_is_detected() -> None:
    router = APIRouter()

    @router.post("/v1/unguarded/completions")
    async def unguarded(key: KeyDep) -> Response:  # authenticated, but never admitted
        return Response()

    @router.post("/v1/guarded/completions")
    async def guarded(call: ChatCall) -> Response:
        return Response()

    @router.get("/v1/listing")
    async def listing(key: KeyDep) -> Response:  # not a model call
        return Response()

    assert routes_without_limiter(router.routes) == ["POST /v1/unguarded/completions"]


def test_detected_through_an_included_router_with_a_prefix() -> None:
    router = APIRouter(prefix="/v1")

    @router.post("/new/completions")
    async def new(key: KeyDep) -> Response:
        return Response()

    app = FastAPI()
    app.include_router(router)
    assert routes_without_limiter(app.routes) == ["POST /v1/new/completions"]


def test_a_limiter_nested_in_another_dependency_or_on_the_router_counts() -> None:
    async def wrapped(call: Call = Depends(admit_chat)) -> Call:
        return call

    nested = APIRouter()

    @nested.post("/v1/wrapped/completions")
    async def via_wrapper(call: Call = Depends(wrapped)) -> Response:
        return Response()

    on_router = APIRouter(dependencies=[Depends(admit_chat)])

    @on_router.post("/v1/router-level/completions")
    async def via_router() -> Response:
        return Response()

    app = FastAPI()
    app.include_router(nested)
    app.include_router(on_router)
    assert len(model_routes(app.routes)) == 2
    assert routes_without_limiter(app.routes) == []
