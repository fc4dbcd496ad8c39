"""The Anthropic Messages endpoint, ``POST /v1/messages``.

Thin: the admission (``MessagesCall``) authenticates, parses and translates the
body and admits it as chat; the call pipeline (gateway/pipeline.py) answers it
in Anthropic's format, passing it through to a provider that speaks the
Messages API natively.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from gateway import pipeline
from gateway.admission import MessagesCall
from gateway.ingress.anthropic import ANTHROPIC
from gateway.schemas.anthropic import ErrorResponse, Message

router = APIRouter(tags=["anthropic"])

_ERRORS = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 413, 429, 502, 503, 504)
}


@router.post("/v1/messages", response_model=Message, responses=_ERRORS)
async def messages(call: MessagesCall) -> Response:
    return await pipeline.chat(call, ANTHROPIC)
