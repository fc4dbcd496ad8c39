"""The framework bypasses, each beside the plain way it replaces, and the one
switch that turns them all off.

Where speed made the gateway step around FastAPI, Starlette, uvicorn or
pydantic, the bypass is here, and only here: what it replaces, the figure that
justified it (the README's *Performance* table, row named in each docstring)
and its plain counterpart, the framework's own way. The switch is
``server.framework_bypasses`` (default true); the environment variable
``GATEWAY_FRAMEWORK_BYPASSES`` (``0`` or ``1``), when set, overrides it for
the whole process (docs/configuration.md). Switched off, the gateway answers
exactly as before (status, headers, bodies, streams, the OpenAPI schema), only
slower. The test suite runs both ways, so an upgrade of the framework that
breaks a bypass fails the fast pass beside a passing plain one, and switching
off is an operator's way round it until the bypass is mended.

The choice is made once, where the thing it chooses is made, never per
request: per app in ``create_app`` (the routes: ``add_routes``), per server
in gateway/server.py ``protocol_for`` (the protocol: ``ServerBypasses``), and
per process for what lives at module level (the serializers: ``select``),
the way uvicorn's config picks a loop and a protocol in one place.

Not here, because they are not bypasses: the edge's protocol
(gateway/server.py's ``EdgeProtocol``: its limits are behaviour, with no plain
counterpart that answers the same), the gateway's own HTTP client and Redis
connection (they replace httpx's transport and redis-py, chosen by their own
settings) and the lean event-stream response (gateway/streaming.py: a
response class of ours, built through Starlette's own ``StreamingResponse``
initialiser; setting its fields by hand saved ~0.3 µs a stream, 1.3 against
1.6 µs in a loop, too little to keep a bypass for).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import weakref
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import Scope, Send

from gateway.config import ConfigError, ServerConfig
from gateway.schemas.openai import ChatCompletionRequest, FanoutRequest

if TYPE_CHECKING:  # a mixin of uvicorn's protocol; imported with the server, not here
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Protocol
else:
    _Protocol = object

ENV = "GATEWAY_FRAMEWORK_BYPASSES"
_ON = frozenset({"1", "true", "yes", "on"})
_OFF = frozenset({"0", "false", "no", "off"})


def enabled(server: ServerConfig, env: Mapping[str, str] | None = None) -> bool:
    """Whether the bypasses are on: ``GATEWAY_FRAMEWORK_BYPASSES`` when set, else
    ``server.framework_bypasses``. Read where an app or a server is made, so a test
    run that sets the variable reaches every gateway it starts, in process or not."""
    value = (os.environ if env is None else env).get(ENV, "").strip().lower()
    if not value:
        return server.framework_bypasses
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ConfigError(f"{ENV}: expected 0 or 1 (or true/false), got {value!r}")


# ---------------------------------------------------------------- the routes (per app)

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class AdmittedRoute(APIRoute):
    """A model route whose one dependency is its admission, called directly.

    Replaces FastAPI's request handler (``APIRoute.get_route_handler``) for a route
    whose endpoint takes exactly one parameter, its admission (``ChatCall``,
    ``EmbeddingCall`` of gateway/admission.py), whose one dependency is the app's
    resources. FastAPI's general resolver (dependency cache keys, parameter
    extraction, sub-dependency walks, exit stacks) cost about as much per request as
    the admission itself, for a graph that is always the same call. This handler
    calls the admission with the resources ``get_resources`` would give it, then the
    endpoint: same dependency, same errors, same OpenAPI. README row "one admission
    dependency ... called directly by the model routes' ``AdmittedRoute``": 418 ->
    344 µs/request.

    Any other route (a body, a query, the request itself, a router-level or second
    dependency), and every request while ``app.dependency_overrides`` is set
    (tests), gets FastAPI's own handler, so every override is honoured.

    Plain counterpart: ``APIRoute``.
    """

    def get_route_handler(self) -> Handler:
        # Imported here, when a route is made: deps imports the resources, whose
        # providers' modules import this one for their serializers.
        from gateway.deps import get_resources

        standard = super().get_route_handler()
        dependant = self.dependant
        only = dependant.dependencies[0] if len(dependant.dependencies) == 1 else None
        endpoint = dependant.call
        if (
            only is None
            or only.call not in ADMISSIONS
            or [sub.call for sub in only.dependencies] != [get_resources]
            or list(inspect.signature(endpoint).parameters) != [only.name]
        ):
            return standard
        admit, name = only.call, only.name

        async def handler(request: Request) -> Response:
            if request.app.dependency_overrides:
                return await standard(request)
            # What get_resources answers, without its resolver.
            return await endpoint(**{name: await admit(request, request.state.resources)})

        return handler


# The admission dependencies AdmittedRoute may call directly (gateway/admission.py marks
# them): registered from above, so this module never imports the pipeline.
ADMISSIONS: set[Callable[..., Any]] = set()

A = TypeVar("A", bound=Callable[..., Any])


def admission(fn: A) -> A:
    """Mark ``fn`` as an admission that ``AdmittedRoute`` calls as ``fn(request, resources)``."""
    ADMISSIONS.add(fn)
    return fn


# What a route was declared with, as ``add_api_route`` takes it (and the route keeps it).
_ROUTE_FIELDS = tuple(
    name
    for name in inspect.signature(APIRouter.add_api_route).parameters
    if name not in ("self", "path", "endpoint", "route_class_override")
)


def add_routes(app: FastAPI, routers: Iterable[APIRouter], *, bypass: bool) -> None:
    """The routers' routes on ``app``: flat, as ``AdmittedRoute``s, or included.

    Flat replaces ``include_router``, which since FastAPI 0.137 keeps each router as
    a node that every request walks (effective-route caches, version checks, scope
    bookkeeping). README row "routes declared flat on the app": ~31 µs a request in
    one process, 254-296 vs 279-363 µs/request. Each route is declared anew on the
    app's own router with what it was declared with, so it belongs to this app (its
    ``dependency_overrides`` among them) and the OpenAPI schema is the same. A plain
    ``APIRoute`` becomes an ``AdmittedRoute`` (which keeps FastAPI's handler where it
    does not apply); a route of another class keeps it. Nothing here nests or prefixes.

    Flat, the routes also go before FastAPI's own (the schema and the docs pages),
    which it declares when the app is made: a request is tried against each route in
    turn, and those four path matches came before every model route's (README row
    "the app's routes tried before FastAPI's own": ~25,000 instructions a request,
    ~3% of the gateway's own). Only when none of the app's routes claims one
    of their paths, so every request still reaches the route it reached.

    Plain counterpart (``bypass`` false): ``app.include_router(router)`` for each, the
    routes as they were declared, after FastAPI's own.
    """
    framework = list(app.router.routes)
    for router in routers:
        if not bypass:
            app.include_router(router)
            continue
        for route in router.routes:
            if not isinstance(route, APIRoute):
                raise TypeError(f"only plain API routes can be declared flat, not {route!r}")
            fields = {name: getattr(route, name) for name in _ROUTE_FIELDS}
            kind = AdmittedRoute if type(route) is APIRoute else type(route)
            app.router.add_api_route(
                route.path, route.endpoint, route_class_override=kind, **fields
            )
    if bypass:
        _framework_routes_last(app, framework)


def _framework_routes_last(app: FastAPI, framework: list[BaseRoute]) -> None:
    routes = app.router.routes
    if routes[: len(framework)] != framework:
        return
    ours = routes[len(framework) :]
    paths = [getattr(route, "path", None) for route in framework]
    for route in ours:
        regex = getattr(route, "path_regex", None)
        if regex is None or any(path is None or regex.match(path) for path in paths):
            return
    routes[:] = [*ours, *framework]


# ---------------------------------------------------------------- the server (per server)

_HEAD_START = b"HTTP/1.1 "  # how uvicorn begins every head it writes (also for HTTP/1.0 clients)


class HeadHoldingTransport:
    """The connection's transport as the protocol sees it: a response head waits for
    the rest of the loop turn, so head and body leave in one write.

    Replaces uvicorn's two writes per answer (the head at ``http.response.start``,
    the body on the next message). On loopback and on virtual machines a write is
    among the dearest things the gateway does (it runs the receiver's TCP path and
    often wakes another CPU). An answer whose body follows in the same turn (every
    JSON answer, a stream's first event) leaves in one write; a head whose body comes
    later goes out on the next turn by itself. README row "uvicorn's httptools
    protocol holding a response head": 395 -> 354 µs/request. Only ``write`` and
    ``close`` differ; everything else is the transport's own.

    Plain counterpart: the transport itself.
    """

    __slots__ = ("_call_soon", "_held", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._call_soon = loop.call_soon
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data.startswith(_HEAD_START):
            self._held = data
            self._call_soon(self.release)
        else:
            self._transport.write(data)

    def release(self) -> None:
        """Write the held head now, if there is one."""
        held, self._held = self._held, None
        if held is not None:
            self._transport.write(held)

    def close(self) -> None:
        # Closing flushes what the transport buffers; what is held here goes first.
        self.release()
        self._transport.close()

    def is_closing(self) -> bool:  # asked on every request: spare it the __getattr__
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


# Where the server puts a weak reference to the request's own cycle, whose ``send``
# is the server's ASGI send for it.
SERVER_SEND = "gateway.server_send"


class ServerBypasses(_Protocol):
    """What the fast protocol adds to the edge's (gateway/server.py composes it first
    in ``HttpProtocol``'s bases): it writes through a ``HeadHoldingTransport``, and
    offers each request its own ``send`` under ``SERVER_SEND`` in the scope.

    The offer replaces, for a stream's body frames (``body_send``), Starlette's and
    FastAPI's three send wrappers a frame, which act only on the response's start.
    README row "stream body frames sent through the server's own ``send``": 55.3 ->
    51.1 µs/chunk one at a time. Held weakly: scope -> cycle -> scope would make every
    request's cycle garbage for the collector (+10-20% CPU a request). A weak
    reference to the cycle, not a WeakMethod of its send: 0.1 against 0.75 µs.

    Plain counterpart: the edge's protocol alone (nothing offered, every frame
    through the app's send, the head and the body in two writes).
    """

    def _transport_for(self, transport: asyncio.Transport) -> Any:
        return HeadHoldingTransport(transport, self.loop)

    def _release_held(self) -> None:
        self.transport.release()  # type: ignore[attr-defined]

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        # The new request's cycle holds this very scope (an upgrade returns before
        # making one); its task has not run yet, so the app sees the key from the start.
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:
            self.scope[SERVER_SEND] = weakref.ref(cycle)


def body_send(scope: Scope, send: Send) -> Send:
    """The send for a stream's body frames: the server's own when it offers it
    (``ServerBypasses``), else ``send``. The start and the last frame still go
    through ``send``: the app's wrappers add headers there. Asked once a stream."""
    server = scope.get(SERVER_SEND)
    request = server() if server is not None else None
    return request.send if request is not None else send  # type: ignore[no-any-return]


# ---------------------------------------------------------------- serializers (per process)

M = TypeVar("M", bound=BaseModel)
_made: list[ModelJSON[Any]] = []
_selected = True


def _plain(instance: BaseModel, **options: Any) -> bytes:
    return instance.model_dump_json(**options).encode()


class ModelJSON(Generic[M]):
    """One model's JSON, both ways: ``dump(instance, **options)`` with
    ``model_dump_json``'s options (``exclude_unset``, ``exclude``, ...) as bytes, and
    ``load(data)``, the model read from JSON bytes as ``model_validate_json`` reads it,
    refusals included.

    Fast: the model's prebuilt pydantic-core serializer and validator
    (``__pydantic_serializer__``, ``__pydantic_validator__``, pydantic's internals),
    called directly. The serializer replaces ``model_dump_json``, whose wrapper
    passes every option per call and decodes the bytes to a string that the answer
    then encodes again. README row "chunks and answers serialised by the models'
    pydantic-core serializer": 1.30 vs 1.89 µs a chunk, on every chunk. The
    validator replaces ``model_validate_json``'s wrapper and a request model's
    override of it, whose error rewrite (the model's ``client_error``) it applies
    itself; a model that overrides ``model_validate_json`` without naming its
    rewrite is read the plain way. README row "requests, answers and chunks read by
    the models' pydantic-core validator": 34.5k vs 40.7k instructions a request read
    (3.1 vs 3.9 µs in a loop), 37.8k vs 42.1k an answer.

    Plain counterparts: ``instance.model_dump_json(**options).encode()`` and
    ``model.model_validate_json(data)``.

    The choice is the process's (``select``): these live at module level, beside
    the codecs and adapters that use them (``model_json`` for one made on demand).
    """

    __slots__ = ("dump", "load", "model")

    def __init__(self, model: type[M]) -> None:
        self.model = model
        self.dump: Callable[..., bytes] = self._pick(_selected)
        self.load: Callable[[str | bytes | bytearray], M] = self._pick_load(_selected)
        _made.append(self)

    def _pick(self, bypass: bool) -> Callable[..., bytes]:
        return self.model.__pydantic_serializer__.to_json if bypass else _plain

    def _pick_load(self, bypass: bool) -> Callable[[str | bytes | bytearray], M]:
        model = self.model
        rewrite: Callable[[ValidationError], ValidationError] | None
        rewrite = getattr(model, "client_error", None)
        overridden = model.model_validate_json.__func__ is not _VALIDATE_JSON  # type: ignore[attr-defined]
        if not bypass or (overridden and rewrite is None):
            return model.model_validate_json
        validate = model.__pydantic_validator__.validate_json
        if rewrite is None:
            return validate  # type: ignore[no-any-return]

        def load(data: str | bytes | bytearray) -> M:
            try:
                return validate(data)  # type: ignore[no-any-return]
            except ValidationError as exc:
                raise rewrite(exc) from None

        return load


_VALIDATE_JSON = BaseModel.model_validate_json.__func__  # type: ignore[attr-defined]
_by_model: dict[type[BaseModel], ModelJSON[Any]] = {}


def model_json(model: type[M]) -> ModelJSON[M]:
    """The ``ModelJSON`` of ``model``, made on first use, for code handed a model
    class (the pipeline's admissions, an adapter's request body)."""
    made = _by_model.get(model)
    if made is None:
        made = _by_model[model] = ModelJSON(model)
    return made


def request_for(request: FanoutRequest, model: str) -> ChatCompletionRequest:
    """A fan-out's request for one of its models, as ``FanoutRequest.for_model`` makes
    it: the request's own state copied as ``model_copy`` copies it, ``models`` left
    out and ``model`` set, into a plain chat request. ``model_construct`` looks up the
    default of every unset field again (README row "a fan-out's request per model":
    2.4 vs 28.8 µs a model). The values are shared with ``request``, as
    ``model_construct`` shares them.

    Plain counterpart: ``request.for_model(model)``.
    """
    if not _selected:
        return request.for_model(model)
    values = request.__dict__.copy()
    del values["models"]
    values["model"] = model
    extra = request.__pydantic_extra__
    made = ChatCompletionRequest.__new__(ChatCompletionRequest)
    object.__setattr__(made, "__dict__", values)
    object.__setattr__(
        made, "__pydantic_fields_set__", request.model_fields_set - {"models"} | {"model"}
    )
    object.__setattr__(made, "__pydantic_extra__", None if extra is None else dict(extra))
    object.__setattr__(made, "__pydantic_private__", None)
    return made


def select(bypass: bool) -> None:
    """Switch the process-wide bypasses (the serializers and readers): ``create_app``
    does, for the app it makes. A process serves one app; the last one made decides."""
    global _selected
    _selected = bypass
    for made in _made:
        made.dump = made._pick(bypass)
        made.load = made._pick_load(bypass)


def selected() -> bool:
    """Whether the process-wide bypasses are on."""
    return _selected
