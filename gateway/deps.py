"""FastAPI dependencies: the only door from a route to the app's resources.

Each is declared once as an ``Annotated`` alias; tests replace any of them
with ``app.dependency_overrides``. A model route's one dependency, its
admission (``ChatCall``, ``EmbeddingCall``), is gateway/admission.py's and
takes the resources from here.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.errors import InvalidAPIKey
from gateway.limits.gatekeeper import Gatekeeper
from gateway.limits.keys import KeyRecord
from gateway.resources import Resources


async def get_resources(request: Request) -> Resources:
    return request.state.resources


async def get_gatekeeper(request: Request) -> Gatekeeper:
    return request.state.resources.gatekeeper


ResourcesDep = Annotated[Resources, Depends(get_resources)]
GatekeeperDep = Annotated[Gatekeeper, Depends(get_gatekeeper)]


def presented_key(request: Request) -> str:
    """The secret from ``Authorization: Bearer sk-...`` or ``x-api-key: sk-...``."""
    headers = request.headers
    auth = headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    raise InvalidAPIKey("You didn't provide an API key. Send it as 'Authorization: Bearer sk-...'.")


async def authenticate_key(request: Request, resources: Resources) -> KeyRecord:
    """The key the request presents (401 without a usable one), named in its access line."""
    record = await resources.gatekeeper.authenticate(presented_key(request))
    request.scope["gateway.access"].key = record.name
    return record


async def authenticate(request: Request, resources: ResourcesDep) -> KeyRecord:
    return await authenticate_key(request, resources)


KeyDep = Annotated[KeyRecord, Depends(authenticate)]
