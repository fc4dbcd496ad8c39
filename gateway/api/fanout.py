"""``POST /v1/fanout/chat/completions``: one chat request to several models at once.

Thin: the admission (``FanoutCall``) admits a call per model, all or none; the
fan-out answer (gateway/fanout.py) routes them concurrently and writes one
``chat.completion`` or chunk stream whose choice i is ``models[i]``'s.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from gateway.admission import FanoutCall
from gateway.fanout import fanout
from gateway.ingress.openai import OPENAI
from gateway.schemas.openai import ChatCompletion, ErrorResponse

router = APIRouter(tags=["fanout"])

_ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 413, 429, 503)}


@router.post("/v1/fanout/chat/completions", response_model=ChatCompletion, responses=_ERRORS)
async def fanout_chat_completions(call: FanoutCall) -> Response:
    return await fanout(call, OPENAI)
