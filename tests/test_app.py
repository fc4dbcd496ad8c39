"""gateway/app.py: the app serves the API that ``include_router`` gives, whether its
routes are declared flat (the framework bypasses, tests/test_fastpath.py) or not."""

from __future__ import annotations

from fastapi import FastAPI

from gateway import __version__
from gateway.app import ROUTERS, create_app
from gateway.config import load_settings


def _included() -> FastAPI:
    """The app's routes the way FastAPI's documentation includes routers."""
    reference = FastAPI(title="LLM gateway", version=__version__)
    for router in ROUTERS:
        reference.include_router(router)
    return reference


def test_the_openapi_schema_is_the_one_include_router_gives() -> None:
    app = create_app(load_settings())
    reference = _included()
    assert app.openapi()["paths"] == reference.openapi()["paths"]
    assert app.openapi()["components"] == reference.openapi()["components"]
