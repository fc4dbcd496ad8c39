"""FastAPI dependencies: the only door from a route to the app's resources.

Each is declared once as an ``Annotated`` alias; tests replace any of them
with ``app.dependency_overrides``.
"""

from __future__ import annotations

from typing import Annotated, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from gateway.api.handlers import validation_error
from gateway.errors import InvalidAPIKey, InvalidRequest
from gateway.limits.keys import KeyRecord
from gateway.observability.logging import AccessRecord
from gateway.resources import Resources
from gateway.routing.router import Router
from gateway.schemas.openai import ChatCompletionRequest, EmbeddingRequest

M = TypeVar("M", bound=BaseModel)


async def get_resources(request: Request) -> Resources:
    return request.state.resources


async def get_router(request: Request) -> Router:
    return request.state.resources.router


async def get_access(request: Request) -> AccessRecord:
    return request.scope["gateway.access"]


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


async def authenticate(request: Request) -> KeyRecord:
    record = await request.state.resources.keys.authenticate(presented_key(request))
    access: AccessRecord = request.scope["gateway.access"]
    access.key = record.name
    return record


async def _parse(request: Request, model: type[M]) -> M:
    body = await request.body()
    if not body:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors()
        if errors and errors[0]["type"] in ("json_invalid", "json_type"):
            raise InvalidRequest(
                "The request body is not valid JSON: "
                + errors[0]["msg"].removeprefix("Invalid JSON: ")
            ) from None
        if errors and errors[0]["type"] == "model_type":
            raise InvalidRequest("The request body must be a JSON object.") from None
        raise validation_error(list(errors)) from None


async def chat_body(request: Request) -> ChatCompletionRequest:
    return await _parse(request, ChatCompletionRequest)


async def embedding_body(request: Request) -> EmbeddingRequest:
    return await _parse(request, EmbeddingRequest)


ResourcesDep = Annotated[Resources, Depends(get_resources)]
RouterDep = Annotated[Router, Depends(get_router)]
AccessDep = Annotated[AccessRecord, Depends(get_access)]
KeyDep = Annotated[KeyRecord, Depends(authenticate)]
ChatBody = Annotated[ChatCompletionRequest, Depends(chat_body)]
EmbeddingBody = Annotated[EmbeddingRequest, Depends(embedding_body)]
