"""gateway/fastpath.py: one switch turns every framework bypass off, and the gateway
answers the same either way.

Each way is chosen here explicitly (``GATEWAY_FRAMEWORK_BYPASSES``), so these
tests check both whichever way the suite runs. The last ones start two real
gateways, one each way, and compare what a client reads from them.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from uvicorn.server import ServerState

from gateway import fastpath
from gateway.app import ROUTERS, create_app
from gateway.config import ConfigError, ServerConfig, load_settings
from gateway.fastpath import ENV, SERVER_SEND, AdmittedRoute, enabled
from gateway.ingress.openai import OPENAI
from gateway.schemas.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    EmbeddingResponse,
    FanoutRequest,
)
from gateway.server import EdgeProtocol, HttpProtocol, protocol_for
from gateway.streaming import EventStreamResponse, StreamPlan, StreamState
from tests.servers import (
    TEST_KEY,
    ServerProcess,
    standard_config,
    start_gateway,
    start_mock_upstream,
    write_config,
)
from tests.test_server import REQUEST, RecordingTransport


@pytest.fixture
def switch(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``switch(on)``: the bypasses on or off for what the test makes from then on;
    the process-wide ones are put back as they were afterwards."""
    before = fastpath.selected()

    def set_to(on: bool) -> None:
        monkeypatch.setenv(ENV, "1" if on else "0")

    yield set_to
    fastpath.select(before)


# ---------------------------------------------------------------- the switch


def test_the_setting_decides_unless_the_environment_overrides_it() -> None:
    on, off = ServerConfig(), ServerConfig(framework_bypasses=False)
    assert enabled(on, {}) is True
    assert enabled(off, {}) is False
    assert enabled(on, {ENV: ""}) is True  # set but empty: the config's
    for value in ("0", "false", "off", "No"):
        assert enabled(on, {ENV: value}) is False, value
    for value in ("1", "true", "on", "YES"):
        assert enabled(off, {ENV: value}) is True, value
    with pytest.raises(ConfigError, match=ENV):
        enabled(on, {ENV: "sometimes"})


def test_the_config_file_can_switch_them_off(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "providers: {demo: {type: mock}}\n"
        "models: {m: {deployments: [{provider: demo, model: mock-chat}]}}\n"
        "server: {framework_bypasses: false}\n"
    )
    assert load_settings(path, env={}).server.framework_bypasses is False


# ---------------------------------------------------------------- the routes, per app


def _app(switch: Any, on: bool) -> FastAPI:
    switch(on)
    return create_app(load_settings(None, env={}))


def _signature(route: Any) -> tuple[Any, ...]:
    return (route.path, sorted(route.methods), route.name, route.endpoint)


def test_on_the_routes_sit_flat_on_the_app_as_admitted_routes(switch: Any) -> None:
    app = _app(switch, True)
    routes = [r for r in app.router.routes if isinstance(r, APIRoute)]
    declared = [r for router in ROUTERS for r in router.routes]
    assert [_signature(r) for r in routes] == [_signature(r) for r in declared]
    assert all(type(r) is AdmittedRoute for r in routes)
    # Declared anew for this app: overrides set on it reach FastAPI's own handler.
    assert all(r.dependency_overrides_provider is app for r in routes)
    by_path = {r.path: r for r in routes}
    for path in ("/v1/chat/completions", "/v1/embeddings", "/v1/messages"):  # no resolver
        assert by_path[path].get_route_handler().__qualname__.startswith("AdmittedRoute."), path
    assert fastpath.selected() is True


def test_off_the_routers_are_included_as_declared(switch: Any) -> None:
    app = _app(switch, False)
    assert not [r for r in app.router.routes if isinstance(r, APIRoute)]  # all nested
    assert all(type(r) is APIRoute for router in ROUTERS for r in router.routes)
    assert fastpath.selected() is False


def test_both_ways_publish_the_same_openapi_schema(switch: Any) -> None:
    assert _app(switch, True).openapi() == _app(switch, False).openapi()


_FASTAPIS_OWN = ["/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"]


def _paths(app: FastAPI) -> list[str | None]:
    return [getattr(r, "path", None) for r in app.router.routes]


def test_on_the_apps_routes_are_tried_before_fastapis_own(switch: Any) -> None:
    on = _paths(_app(switch, True))
    assert on[0] == "/v1/chat/completions"
    assert on[-len(_FASTAPIS_OWN) :] == _FASTAPIS_OWN
    assert _paths(_app(switch, False))[: len(_FASTAPIS_OWN)] == _FASTAPIS_OWN


def test_fastapis_own_routes_still_answer_from_the_end(switch: Any) -> None:
    with TestClient(_app(switch, True)) as client:  # the lifespan runs: every request needs it
        for path in _FASTAPIS_OWN[:2] + _FASTAPIS_OWN[3:]:
            assert client.get(path).status_code == 200, path
        assert client.post("/docs").status_code == 405


def test_a_route_that_claims_one_of_their_paths_keeps_fastapis_first() -> None:
    router = APIRouter()

    @router.get("/{page:path}")
    async def page(page: str) -> str:
        return page

    app = FastAPI()
    fastpath.add_routes(app, [router], bypass=True)
    assert _paths(app) == [*_FASTAPIS_OWN, "/{page:path}"]


# ---------------------------------------------------------------- serializers, per process

_CHUNK = (
    b'{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
    b'"delta":{"content":"hi"},"finish_reason":null}],"usage":{"prompt_tokens":1,'
    b'"completion_tokens":2,"total_tokens":3},"system_fingerprint":"fp"}'
)
_ANSWER = (
    b'{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}'
)
_EMBEDDINGS = (
    b'{"object":"list","model":"m","data":[{"object":"embedding","index":0,'
    b'"embedding":[0.5,-1.25]}],"usage":{"prompt_tokens":1,"total_tokens":1}}'
)


def _written() -> list[bytes | None]:
    """What the OpenAI codec writes for an answer, embeddings and a chunk (with and
    without the usage the client asked for)."""
    chunk = ChatCompletionChunk.model_validate_json(_CHUNK)
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    asked = ChatCompletionRequest.model_validate(
        {**request, "stream_options": {"include_usage": True}}
    )
    unasked = ChatCompletionRequest.model_validate(request)
    return [
        OPENAI.completion(ChatCompletion.model_validate_json(_ANSWER)),
        OPENAI.embeddings(EmbeddingResponse.model_validate_json(_EMBEDDINGS)),
        OPENAI.chunk_encoder(asked)(chunk),
        OPENAI.chunk_encoder(unasked)(chunk),
    ]


def test_the_codec_writes_the_same_bytes_either_way(switch: Any) -> None:
    fastpath.select(True)
    fast = _written()
    fastpath.select(False)
    plain = _written()
    assert fast == plain
    assert fast[0] == _ANSWER  # exclude_unset: as the upstream sent it
    assert fast[3] is not None
    assert b"usage" not in fast[3]


def test_the_switch_picks_the_serializer() -> None:
    before = fastpath.selected()
    made = fastpath.ModelJSON(ChatCompletionChunk)
    try:
        fastpath.select(True)
        assert made.dump == ChatCompletionChunk.__pydantic_serializer__.to_json
        fastpath.select(False)
        assert made.dump is fastpath._plain
        assert fastpath.ModelJSON(ChatCompletion).dump is fastpath._plain  # made after
    finally:
        fastpath.select(before)


_REQUEST = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"x":[1,"\xc3\xa9"]}'
_REFUSED = b'{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}'


@pytest.mark.parametrize("bypass", [True, False])
def test_load_reads_as_model_validate_json_refusals_included(bypass: bool) -> None:
    before = fastpath.selected()
    try:
        fastpath.select(bypass)
        for model, data in (
            (ChatCompletionRequest, _REQUEST),
            (ChatCompletion, _ANSWER),
            (ChatCompletionChunk, _CHUNK),
            (EmbeddingResponse, _EMBEDDINGS),
        ):
            assert fastpath.ModelJSON(model).load(data) == model.model_validate_json(data)
        # A request model's own refusal: located in the client's JSON (its client_error).
        with pytest.raises(ValidationError) as loaded:
            fastpath.model_json(ChatCompletionRequest).load(_REFUSED)
        with pytest.raises(ValidationError) as plain:
            ChatCompletionRequest.model_validate_json(_REFUSED)
        assert loaded.value.errors() == plain.value.errors()
        assert loaded.value.errors()[0]["loc"][:2] == ("messages", 0)
    finally:
        fastpath.select(before)


class _OwnRefusal(BaseModel):
    a: int

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Any:
        try:
            return super().model_validate_json(json_data, **kwargs)
        except ValidationError:
            raise ValueError("refused its own way") from None


def test_the_switch_picks_the_reader() -> None:
    before = fastpath.selected()
    made = fastpath.ModelJSON(ChatCompletion)
    own = fastpath.ModelJSON(_OwnRefusal)
    try:
        fastpath.select(True)
        assert made.load == ChatCompletion.__pydantic_validator__.validate_json
        # An override that does not name its rewrite: read the plain way, as it refuses.
        assert own.load == _OwnRefusal.model_validate_json
        with pytest.raises(ValueError, match="its own way"):
            own.load(b'{"a":"x"}')
        fastpath.select(False)
        assert made.load == ChatCompletion.model_validate_json
        assert fastpath.model_json(ChatCompletion) is fastpath.model_json(ChatCompletion)
    finally:
        fastpath.select(before)


# ---------------------------------------------------------------- the server, per server


def test_the_switch_picks_the_servers_protocol(switch: Any) -> None:
    switch(True)
    assert protocol_for(ServerConfig()).func is HttpProtocol
    switch(False)
    assert protocol_for(ServerConfig()).func is EdgeProtocol


async def _serve(protocol_class: type[EdgeProtocol], app: Any) -> RecordingTransport:
    config = uvicorn.Config(app, http=protocol_class, lifespan="off", access_log=False)
    config.load()
    protocol = protocol_class(config, ServerState(), app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(REQUEST)
    await asyncio.gather(*protocol.tasks)
    for _ in range(3):  # the turns after the app is done
        await asyncio.sleep(0)
    return transport


@pytest.mark.parametrize(
    ("protocol_class", "writes", "offered"),
    [pytest.param(HttpProtocol, 1, True, id="on"), pytest.param(EdgeProtocol, 2, False, id="off")],
)
async def test_on_an_answer_is_one_write_and_the_send_is_offered(
    protocol_class: type[EdgeProtocol], writes: int, offered: bool
) -> None:
    seen: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(SERVER_SEND in scope)
        await Response(b'{"ok":true}', media_type="application/json")(scope, receive, send)

    transport = await _serve(protocol_class, app)
    assert seen == [offered]
    assert len(transport.writes) == writes
    assert b"".join(transport.writes).endswith(b'\r\n\r\n{"ok":true}')


@pytest.mark.parametrize(
    ("protocol_class", "wrapped"),
    [
        pytest.param(HttpProtocol, ["http.response.start", "http.response.body"], id="on"),
        pytest.param(EdgeProtocol, ["http.response.start"] + ["http.response.body"] * 3, id="off"),
    ],
)
async def test_a_streams_frames_pass_the_apps_send_unless_the_server_offers_its_own(
    protocol_class: type[EdgeProtocol], wrapped: list[str]
) -> None:
    seen: list[str] = []

    async def chunks() -> AsyncIterator[bytes]:
        for text in (b"a", b"b"):
            yield text

    async def on_close(state: StreamState) -> None:
        seen.append(f"closed {state.outcome} {state.chunks}")

    async def opened() -> StreamPlan:
        return StreamPlan(
            [], chunks(), lambda text: b"data: " + text + b"\n\n", b"data: [DONE]\n\n", _no_frame
        )

    response = EventStreamResponse(
        opened,
        error_frame=_no_frame,
        error_response=lambda exc: Response(status_code=500),
        on_close=on_close,
        commit_after=5.0,
        keepalive=15.0,
    )

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        async def wrapper(message: Message) -> None:
            seen.append(message["type"])
            await send(message)

        await response(scope, receive, wrapper)

    transport = await _serve(protocol_class, app)
    assert seen == [*wrapped, "closed done 2"]
    _, _, body = b"".join(transport.writes).partition(b"\r\n\r\n")
    assert body == b"9\r\ndata: a\n\n\r\n9\r\ndata: b\n\n\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"


# ---------------------------------------------------------------- both ways answer the same


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProcess]]:
    """The same config served twice, the bypasses on and off, over one mock upstream."""
    upstream = start_mock_upstream()
    started: dict[str, ServerProcess] = {}
    try:
        for name, value in (("on", "1"), ("off", "0")):
            path = write_config(tmp_path_factory.mktemp(name), standard_config(upstream.url))
            started[name] = start_gateway(path, env={ENV: value})
        yield started
    finally:
        for process in started.values():
            process.stop()
        upstream.stop()


_VARYING = [
    (re.compile(rb"chatcmpl-[A-Za-z0-9]+"), b"chatcmpl-<id>"),
    (re.compile(rb'"created":\d+'), b'"created":0'),
]
_HEADERS_THAT_VARY = {"date", "x-request-id"}


def _seen(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    """What a client reads, less what differs per request by design."""
    body = response.content
    for pattern, same in _VARYING:
        body = pattern.sub(same, body)
    headers = [(k, v) for k, v in response.headers.multi_items() if k not in _HEADERS_THAT_VARY]
    return response.status_code, headers, body


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": "up-chat", "messages": [{"role": "user", "content": "hi"}], **fields}


AUTH = {"authorization": f"Bearer {TEST_KEY}"}
SAME = [
    pytest.param("POST", "/v1/chat/completions", _chat(), AUTH, 200, id="chat"),
    pytest.param(
        "POST", "/v1/chat/completions", _chat(model="local-chat"), AUTH, 200, id="chat-in-process"
    ),
    pytest.param(
        "POST",
        "/v1/chat/completions",
        _chat(stream=True, stream_options={"include_usage": True}),
        AUTH,
        200,
        id="stream-with-usage",
    ),
    pytest.param("POST", "/v1/chat/completions", _chat(stream=True), AUTH, 200, id="stream"),
    pytest.param(
        "POST",
        "/v1/chat/completions",
        _chat(stream=True, mock={"cut_after": 3}),
        AUTH,
        200,
        id="stream-failing-midway",
    ),
    pytest.param(
        "POST", "/v1/embeddings", {"model": "up-embed", "input": "hi"}, AUTH, 200, id="embeddings"
    ),
    pytest.param("GET", "/v1/models", None, AUTH, 200, id="models"),
    pytest.param("POST", "/v1/chat/completions", _chat(), {}, 401, id="401"),
    pytest.param("POST", "/v1/chat/completions", _chat(model="nope"), AUTH, 404, id="404"),
    pytest.param("POST", "/v1/chat/completions", {"model": "up-chat"}, AUTH, 400, id="400"),
    pytest.param(
        "POST", "/v1/chat/completions", _chat(mock={"status": 429}), AUTH, 429, id="upstream-429"
    ),
    pytest.param("GET", "/nowhere", None, AUTH, 404, id="no-route"),
    pytest.param("GET", "/openapi.json", None, {}, 200, id="openapi"),
]


@pytest.mark.parametrize(("method", "path", "body", "headers", "status"), SAME)
def test_both_ways_answer_the_same(
    gateways: dict[str, ServerProcess],
    method: str,
    path: str,
    body: dict[str, Any] | None,
    headers: dict[str, str],
    status: int,
) -> None:
    seen = {}
    for name, gateway in gateways.items():
        response = httpx.request(method, gateway.url + path, json=body, headers=headers, timeout=10)
        seen[name] = _seen(response)
    assert seen["on"] == seen["off"]
    assert seen["on"][0] == status


def test_a_gateway_serving_without_them_says_so(gateways: dict[str, ServerProcess]) -> None:
    assert "framework bypasses are off" in gateways["off"].logs()
    assert "framework bypasses are off" not in gateways["on"].logs()


def _no_frame(error: object) -> bytes:
    return b""


def test_a_fanout_request_per_model_is_the_plain_one() -> None:
    body = FanoutRequest.model_validate_json(
        b'{"models": ["a", "b"], "messages": [{"role": "user", "content": "hi"}],'
        b' "stream": true, "temperature": 0.5, "mock": {"chunks": 3}}'
    )
    fast, plain = fastpath.request_for(body, "b"), body.for_model("b")
    assert type(fast) is type(plain) is ChatCompletionRequest
    assert fast.model_fields_set == plain.model_fields_set
    assert "models" not in fast.model_fields_set
    assert fast.model_extra == plain.model_extra == {"mock": {"chunks": 3}}
    dumped = fast.model_dump_json(exclude_unset=True)
    assert dumped == plain.model_dump_json(exclude_unset=True)
    assert json.loads(dumped)["model"] == "b"
    assert body.model_extra == {"mock": {"chunks": 3}}  # the fan-out's own, untouched
