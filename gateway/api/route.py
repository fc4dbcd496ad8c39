"""``AdmittedRoute``: a model route whose one dependency is its admission.

A model route declares exactly one dependency, the admission (``ChatCall``,
``EmbeddingCall``), which takes nothing but the request. FastAPI's general
resolver (dependency cache keys, parameter extraction, sub-dependency walks,
exit stacks, operation spans) cost about as much per request as the admission
itself, for a dependency graph that is always the same one call. This route
calls the admission and then the endpoint directly: same dependency, same
errors, same OpenAPI. While ``app.dependency_overrides`` is set (tests), the
request goes through FastAPI's own handler, so every override is honoured.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from gateway.deps import LIMITERS

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class AdmittedRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        standard = super().get_route_handler()
        dependant = self.dependant
        only = dependant.dependencies[0] if len(dependant.dependencies) == 1 else None
        # Anything else (a body, a query, a second dependency) is FastAPI's to resolve.
        if (
            only is None
            or not only.name  # a router-level dependency: its value goes nowhere
            or only.call not in LIMITERS
            or only.dependencies
            or dependant.query_params
            or dependant.path_params
            or dependant.header_params
            or dependant.cookie_params
            or dependant.body_params
            or self.body_field is not None
        ):
            return standard
        admit, name, endpoint = only.call, only.name, dependant.call

        async def handler(request: Request) -> Response:
            if request.app.dependency_overrides:
                return await standard(request)
            return await endpoint(**{name: await admit(request)})

        return handler
