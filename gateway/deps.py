"""FastAPI dependencies: the only door from a route to the app's resources.

Each is declared once as an ``Annotated`` alias; tests replace any of them
with ``app.dependency_overrides``. A model route declares exactly one
admission dependency (``ChatCall``, ``EmbeddingCall``), which runs the checks
of docs/architecture.md in order: key, body, model, then ONE store call that admits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from gateway.api.handlers import validation_error
from gateway.errors import InvalidAPIKey, InvalidRequest, format_loc
from gateway.limits import estimate
from gateway.limits.base import Grant, UsageEvent, today
from gateway.limits.gatekeeper import Gatekeeper
from gateway.limits.keys import KeyRecord
from gateway.limits.usage import price_cost
from gateway.observability.logging import AccessRecord
from gateway.resources import Resources
from gateway.routing.router import ModelRoute, Target
from gateway.schemas.openai import ChatCompletionRequest, EmbeddingRequest

M = TypeVar("M", bound=BaseModel)


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


async def _authenticate(request: Request, resources: Resources) -> KeyRecord:
    record = await resources.gatekeeper.authenticate(presented_key(request))
    request.scope["gateway.access"].key = record.name
    return record


async def authenticate(request: Request, resources: ResourcesDep) -> KeyRecord:
    return await _authenticate(request, resources)


KeyDep = Annotated[KeyRecord, Depends(authenticate)]


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
        return model.model_validate_json(body)
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


@dataclass(slots=True)
class Call(Generic[M]):
    """An admitted model call: settle ``grant`` in the response's ``finally``."""

    resources: Resources
    access: AccessRecord
    key: KeyRecord
    body: M
    route: ModelRoute
    grant: Grant
    prompt_tokens: int  # the estimate the reservation was made with


async def _admit(
    resources: Resources,
    access: AccessRecord,
    key: KeyRecord,
    body: M,
    prompt: int,
    max_output: int | None,
    choices: int = 1,
) -> Call[M]:
    """Resolve the model (404), check the key may use it (403), then admit (429/503).

    The reservation (tpm tokens and budget cost) is the prompt estimate plus the
    output cap once per choice asked for (``n``): docs/limits.md.
    """
    model: str = body.model  # type: ignore[attr-defined]
    route = resources.router.route(model)
    key.check_model(model)
    access.model = model
    if max_output is None:
        max_output = (
            route.config.max_output_tokens or resources.settings.server.default_max_output_tokens
        )
    max_output *= choices
    # The budget reservation is an upper bound: the dearest deployment of the model.
    cost = 0.0
    if key.limits.budget_usd is not None:  # else nothing reserves it
        cost = max(
            (
                price_cost(t.price.input, t.price.output, prompt, max_output)
                for t in route.targets
                if t.price
            ),
            default=0.0,
        )
    grant = await resources.gatekeeper.admit(key, prompt + max_output, cost)
    access.headers = grant.headers
    return Call(resources, access, key, body, route, grant, prompt)


# The admission dependencies take only the request and the resources: on the hot
# path every extra dependency costs FastAPI's resolver a few microseconds.


async def admit_chat(request: Request) -> Call[ChatCompletionRequest]:
    resources: Resources = request.state.resources
    key = await _authenticate(request, resources)
    body = await _parse(request, ChatCompletionRequest)
    max_output = body.max_completion_tokens or body.max_tokens
    access = request.scope["gateway.access"]
    prompt = estimate.prompt_tokens(body)
    return await _admit(resources, access, key, body, prompt, max_output, body.n or 1)


async def admit_embedding(request: Request) -> Call[EmbeddingRequest]:
    resources: Resources = request.state.resources
    key = await _authenticate(request, resources)
    body = await _parse(request, EmbeddingRequest)
    access = request.scope["gateway.access"]
    return await _admit(resources, access, key, body, estimate.embedding_tokens(body), 0)


async def settle(
    call: Call,
    target: Target | None,
    *,
    input_tokens: int,
    output_tokens: int,
    error: bool,
) -> None:
    """The one store call after a model call: reconcile, release, record usage.

    The access-log line gets the same token counts, so they are set here once.
    """
    call.access.input_tokens, call.access.output_tokens = input_tokens, output_tokens
    price = target.price if target is not None else None
    cost = price_cost(price.input, price.output, input_tokens, output_tokens) if price else 0.0
    usage = UsageEvent(call.body.model, input_tokens, output_tokens, cost, error, today())  # type: ignore[attr-defined]
    await call.resources.gatekeeper.settle(call.grant, usage)


# What a test checks every model route has.
LIMITERS = (admit_chat, admit_embedding)

ChatCall = Annotated[Call[ChatCompletionRequest], Depends(admit_chat)]
EmbeddingCall = Annotated[Call[EmbeddingRequest], Depends(admit_embedding)]
