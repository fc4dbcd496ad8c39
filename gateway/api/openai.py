"""The OpenAI-compatible endpoints: chat completions, embeddings, models.

Thin: a model route hands its admitted call and the OpenAI codec to the call
pipeline (gateway/pipeline.py), which routes, calls, answers and settles.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from gateway import pipeline
from gateway.admission import ChatCall, EmbeddingCall
from gateway.deps import KeyDep, ResourcesDep
from gateway.errors import ModelNotFound
from gateway.ingress.openai import OPENAI
from gateway.resources import Resources
from gateway.schemas.openai import (
    ChatCompletion,
    DeploymentPrice,
    EmbeddingResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
)

router = APIRouter(tags=["openai"])

_ERRORS = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 413, 429, 502, 503, 504)
}


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=_ERRORS)
async def chat_completions(call: ChatCall) -> Response:
    return await pipeline.chat(call, OPENAI)


@router.post("/v1/embeddings", response_model=EmbeddingResponse, responses=_ERRORS)
async def embeddings(call: EmbeddingCall) -> Response:
    return await pipeline.embeddings(call, OPENAI)


@router.get("/v1/models", response_model=ModelList, responses=_ERRORS)
async def list_models(key: KeyDep, resources: ResourcesDep) -> ModelList:
    return ModelList(
        data=[_card(name, resources) for name in resources.router.names() if key.allows(name)]
    )


@router.get("/v1/models/{model:path}", response_model=ModelCard, responses=_ERRORS)
async def retrieve_model(model: str, key: KeyDep, resources: ResourcesDep) -> ModelCard:
    """One model's card (the SDKs' ``models.retrieve``); 404 for a model this key may not
    use, as for one that does not exist: a key learns nothing of the others' models."""
    if model not in resources.router.names() or not key.allows(model):
        raise ModelNotFound(f"The model `{model}` does not exist", param="model")
    return _card(model, resources)


def _card(model: str, resources: Resources) -> ModelCard:
    pricing = {
        target.name: DeploymentPrice(**target.price.model_dump())
        for target in resources.router.route(model).targets
        if target.price is not None
    }
    return ModelCard(id=model, created=resources.started_at, owned_by="gateway", pricing=pricing)
