"""Admission: every model route's one dependency, which admits its call or refuses it.

In order (docs/architecture.md, "The request path"): the key (401), the body
(400), the model (404), whether the key may use it (403) and whether it can do
what is asked (400), then ONE store call that admits (429/503), reserving the
prompt estimate plus the output cap once per call the request makes and, for a
key with a budget, what that could cost at the dearest deployment the call may
reach, its fallbacks' included (docs/limits.md). The admitted ``Call`` goes on
to the pipeline (gateway/pipeline.py), which settles it exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from gateway.deps import ResourcesDep, authenticate_key
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
    format_loc,
    validation_error,
)
from gateway.fastpath import admission, model_json
from gateway.ingress.anthropic.request import FORWARDED_HEADERS, Native, translate
from gateway.limits import estimate
from gateway.limits.base import Grant
from gateway.limits.keys import KeyRecord
from gateway.limits.usage import reservation_cost
from gateway.observability.access import AccessRecord
from gateway.observability.logging import log_prompt
from gateway.resources import Resources
from gateway.routing.deployments import no_embeddings
from gateway.routing.router import ModelRoute, Router
from gateway.schemas.anthropic import MessagesRequest
from gateway.schemas.openai import ChatCompletionRequest, EmbeddingRequest, FanoutRequest

M = TypeVar("M", bound=BaseModel)


@dataclass(slots=True)
class Call(Generic[M]):
    """An admitted model call: settled exactly once, by the pipeline."""

    resources: Resources
    access: AccessRecord
    key: KeyRecord
    body: M
    grant: Grant
    prompt_tokens: int  # the estimate the reservation was made with
    # The client's own request, for a provider that speaks its ingress's API natively
    # (the Anthropic Messages ingress); None on the OpenAI ingress.
    native: Native | None = None


async def _parse(request: Request, model: type[M]) -> M:
    """The body as ``model``, or a 400 naming its first problem.

    Parsed on the event loop whatever its size: pydantic holds the GIL for the
    whole call, so a worker thread would stall the loop just as long. What bounds
    the stall is what a body may hold: ``server.max_body_bytes``, the request
    models' list bounds, and errors that stop at the first bad item
    (docs/limits.md).
    """
    body = await request.body()
    if not body:
        raise InvalidRequest("The request body is empty; expected a JSON object.")
    try:
        return model_json(model).load(body)
    except ValidationError as exc:
        raise _refusal(exc) from None


def _refusal(exc: ValidationError) -> InvalidRequest:
    # Without each error's input: a too-long list's input is the whole list.
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    kind = first["type"]
    if kind in ("json_invalid", "json_type"):
        detail = first["msg"].removeprefix("Invalid JSON: ")
        return InvalidRequest(f"The request body is not valid JSON: {detail}")
    if kind == "model_type" and not first["loc"]:  # deeper, it names the field below
        return InvalidRequest("The request body must be a JSON object.")
    if kind == "too_long":  # OpenAI's own wording for it
        param = format_loc(tuple(first["loc"]))
        ctx = first.get("ctx") or {}
        return InvalidRequest(
            f"Invalid '{param}': array too long. Expected an array with maximum length "
            f"{ctx.get('max_length')}, but got an array with length "
            f"{ctx.get('actual_length')} instead.",
            param=param,
        )
    return validation_error(list(errors))


async def _admit(
    resources: Resources,
    access: AccessRecord,
    key: KeyRecord,
    body: M,
    prompt: int,
    max_output: int | None,
    choices: int = 1,
    *,
    embeds: bool = False,
    models: Sequence[str] | None = None,
) -> Call[M]:
    """Resolve the model (404), check the key may use it (403) and the model can do
    what is asked (400), then admit (429/503). ``models``: a fan-out's, each one a
    call of the admission (404 and 403 name ``models[i]``).

    The reservation (tpm tokens and budget cost) is the prompt estimate plus the
    output cap once per choice asked for (``n``) and per model: docs/limits.md.
    Whether admitted or refused, where the key now stands goes on the access
    record, for the ingress to render as the answer's rate-limit headers.
    """
    router = resources.router
    if models is None:
        model: str = body.model  # type: ignore[attr-defined]
        route = router.route(model)
        key.check_model(model)
        routes = (route,)
    else:
        routes = tuple(_route_of(router, key, name, i) for i, name in enumerate(models))
        model = ",".join(models)
    access.model = model
    if embeds and not routes[0].caller.deployments.embedders:
        raise no_embeddings(model)
    tokens, cost = 0, 0.0
    budget = key.limits.budget_usd is not None  # else nothing reserves it
    for route in routes:
        cap = max_output
        if cap is None:
            cap = (
                route.config.max_output_tokens
                or resources.settings.server.default_max_output_tokens
            )
        cap *= choices
        tokens += prompt + cap
        # The budget reservation is an upper bound: the dearest deployment the call may
        # reach, its fallbacks' included.
        if budget:
            cost += max((reservation_cost(p, prompt, cap) for p in route.prices), default=0.0)
    try:
        grant = await resources.gatekeeper.admit(key, tokens, cost, len(routes))
    except GatewayError as exc:
        access.limits = exc.limits  # a refusal's, for its 429's headers
        if exc.limit is not None:
            access.limit = exc.limit
            resources.observer.refused(access, exc.limit)
        raise
    access.limits = grant.limits
    if key.log_prompts:  # off: this check is all it costs
        _log_prompt(access, key, body, embeds)
    return Call(resources, access, key, body, grant, prompt)


def _log_prompt(access: AccessRecord, key: KeyRecord, body: BaseModel, embeds: bool) -> None:
    """The admitted request's messages (or embedding input), for a key that asked for it."""
    if embeds:
        log_prompt(access.request_id, key.name, access.model, "input", body.input)  # type: ignore[attr-defined]
        return
    messages = body.model_dump(mode="json", include={"messages"}, exclude_none=True)["messages"]
    log_prompt(access.request_id, key.name, access.model, "messages", messages)


def _route_of(router: Router, key: KeyRecord, model: str, i: int) -> ModelRoute:
    try:
        route = router.route(model)
    except ModelNotFound as exc:
        exc.param = f"models[{i}]"
        raise
    try:
        key.check_model(model)
    except ModelNotAllowed as exc:
        exc.param = f"models[{i}]"
        raise
    return route


# The admissions take the request and the resources only: on FastAPI's path every
# dependency costs its resolver a few microseconds, and AdmittedRoute
# (gateway/fastpath.py) calls them directly, handing them the app's resources.


@admission
async def admit_chat(request: Request, resources: ResourcesDep) -> Call[ChatCompletionRequest]:
    key = await authenticate_key(request, resources)
    body = await _parse(request, ChatCompletionRequest)
    max_output = body.max_completion_tokens or body.max_tokens
    access = request.scope["gateway.access"]
    prompt = estimate.prompt_tokens(body)
    return await _admit(resources, access, key, body, prompt, max_output, body.n or 1)


@admission
async def admit_embedding(request: Request, resources: ResourcesDep) -> Call[EmbeddingRequest]:
    key = await authenticate_key(request, resources)
    body = await _parse(request, EmbeddingRequest)
    access = request.scope["gateway.access"]
    prompt = estimate.embedding_tokens(body)
    return await _admit(resources, access, key, body, prompt, 0, embeds=True)


@admission
async def admit_messages(request: Request, resources: ResourcesDep) -> Call[ChatCompletionRequest]:
    """An Anthropic Messages call: the same key, limits and usage as chat, admitted
    with the canonical request it translates to; the client's own body is kept for a
    provider that speaks the Messages API (gateway/ingress/anthropic/request.py)."""
    key = await authenticate_key(request, resources)
    source = await _parse(request, MessagesRequest)
    body, refusal = translate(source)
    access = request.scope["gateway.access"]
    prompt = estimate.prompt_tokens(body)
    call = await _admit(resources, access, key, body, prompt, body.max_tokens)
    headers = request.headers
    forwarded = {name: headers[name] for name in FORWARDED_HEADERS if name in headers}
    call.native = Native(await request.body(), forwarded, refusal)
    return call


@admission
async def admit_fanout(request: Request, resources: ResourcesDep) -> Call[FanoutRequest]:
    """A fan-out: one admission for the calls to every model it names, all or none."""
    key = await authenticate_key(request, resources)
    body = await _parse(request, FanoutRequest)
    max_output = body.max_completion_tokens or body.max_tokens
    access = request.scope["gateway.access"]
    prompt = estimate.prompt_tokens(body)
    return await _admit(resources, access, key, body, prompt, max_output, models=body.models)


# What a test checks every model route has, and what AdmittedRoute calls directly.
LIMITERS = (admit_chat, admit_embedding, admit_messages, admit_fanout)

ChatCall = Annotated[Call[ChatCompletionRequest], Depends(admit_chat)]
EmbeddingCall = Annotated[Call[EmbeddingRequest], Depends(admit_embedding)]
MessagesCall = Annotated[Call[ChatCompletionRequest], Depends(admit_messages)]
FanoutCall = Annotated[Call[FanoutRequest], Depends(admit_fanout)]
