"""gateway/app.py declares the routers' routes flat on the app: the same API as
``include_router`` gives, without its per-request walk of the router tree."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from gateway import __version__
from gateway.api import admin, health, openai
from gateway.api.route import AdmittedRoute
from gateway.app import create_app
from gateway.config import load_settings


def _included() -> FastAPI:
    """The app's routes the way FastAPI's documentation includes routers."""
    reference = FastAPI(title="LLM gateway", version=__version__)
    for router in (openai.router, health.router, admin.router):
        reference.include_router(router)
    return reference


def _signature(route: Any) -> tuple[Any, ...]:
    return (route.path, sorted(route.methods), route.name, type(route), route.endpoint)


def test_the_openapi_schema_is_the_one_include_router_gives() -> None:
    app = create_app(load_settings())
    reference = _included()
    assert app.openapi()["paths"] == reference.openapi()["paths"]
    assert app.openapi()["components"] == reference.openapi()["components"]


def test_every_route_sits_on_the_apps_own_router_with_its_route_class() -> None:
    app = create_app(load_settings())
    routes = [r for r in app.router.routes if isinstance(r, APIRoute)]
    declared = [r for router in (openai.router, health.router, admin.router) for r in router.routes]
    assert [_signature(r) for r in routes] == [_signature(r) for r in declared]
    chat = next(r for r in routes if r.path == "/v1/chat/completions")
    assert isinstance(chat, AdmittedRoute)
    # Declared anew for this app: overrides set on it reach FastAPI's own handler.
    assert all(r.dependency_overrides_provider is app for r in routes)
