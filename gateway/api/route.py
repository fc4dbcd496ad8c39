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

import inspect
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
        endpoint = dependant.call
        # Only an endpoint whose one parameter is its admission; anything else (a body,
        # a query, the request itself, a router-level or second dependency) is FastAPI's.
        if (
            only is None
            or only.call not in LIMITERS
            or only.dependencies
            or list(inspect.signature(endpoint).parameters) != [only.name]
        ):
            return standard
        admit, name = only.call, only.name

        async def handler(request: Request) -> Response:
            if request.app.dependency_overrides:
                return await standard(request)
            return await endpoint(**{name: await admit(request)})

        return handler
