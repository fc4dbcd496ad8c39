"""Fuzzing the edge: 2,000 generated requests against one real gateway.

Bodies (JSON of random shapes, and valid bodies with one thing changed: wrong
types, huge numbers, NaN, deep nesting, odd unicode, nulls, bytes cut or
flipped), header fields and paths go to /v1/chat/completions, /v1/embeddings
and /admin/keys. Every answer must be a 2xx (the body happened to be valid) or
a 4xx in the OpenAI error envelope: never a 5xx, never a hang. Afterwards the
gateway still serves, and its log holds no error and no traceback.

Bounded for CI: a fixed number of examples per test, no deadline, no example
database, and derandomized when ``CI`` is set so a failure there replays.
Bodies go through one pooled httpx connection; header fields and paths,
which httpx would check or normalise, go out as raw bytes on a socket.
"""

from __future__ import annotations

import copy
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.servers import ServerProcess, start_gateway, write_config

KEY = "sk-test-fuzz-key-000001"
MASTER = "sk-master-fuzz-" + "k" * 32
CHAT, EMBED, KEYS = "/v1/chat/completions", "/v1/embeddings", "/admin/keys"


def fuzz(examples: int) -> Any:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=bool(os.environ.get("CI")),
        suppress_health_check=list(HealthCheck),
        # No shrinking: each step is a request, and after a hang every one times out.
        # The failing example is reported as it was generated.
        phases=(Phase.explicit, Phase.generate),
    )


# ---------------------------------------------------------------- the gateway


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Priced models and a key with limits, so every admission computes and stores a
    # reservation from whatever the body says (max_tokens, n, input sizes).
    config = {
        "providers": {"local": {"type": "mock"}},
        "models": {
            "local-chat": {
                "deployments": [
                    {
                        "provider": "local",
                        "model": "mock-chat",
                        "price": {"input": 1.0, "output": 2.0},
                    }
                ]
            },
            "local-embed": {
                "deployments": [
                    {
                        "provider": "local",
                        "model": "mock-embedding",
                        "price": {"input": 0.1, "output": 0.0},
                    }
                ]
            },
        },
        "keys": [
            {
                "name": "fuzz",
                "key": KEY,
                "models": ["local-*"],
                "limits": {"tpm": 10**12, "budget_usd": 1e9, "budget_period": "total"},
            }
        ],
    }
    path = write_config(tmp_path_factory.mktemp("fuzz"), config)
    server = start_gateway(path, env={"GATEWAY_MASTER_KEY": MASTER})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(gateway: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        yield client


AUTH = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
ADMIN = {"authorization": f"Bearer {MASTER}", "content-type": "application/json"}


def check(status: int, content_type: str, body: bytes, sent: object) -> None:
    """A 2xx, or a 4xx whose body is the OpenAI error envelope."""
    where = f"sent {str(sent)[:600]!r}\ngot {status} {body[:600]!r}"
    assert status < 500, f"a server error\n{where}"
    assert status >= 200, where
    if status < 400:
        return
    assert content_type.startswith("application/json"), where
    error = json.loads(body)
    assert set(error) == {"error"}, where
    assert set(error["error"]) == {"message", "type", "param", "code"}, where
    assert isinstance(error["error"]["message"], str), where
    assert error["error"]["message"], where
    assert isinstance(error["error"]["type"], str), where


def send(client: httpx.Client, method: str, path: str, content: bytes, headers: dict) -> None:
    response = client.request(method, path, content=content, headers=headers)
    check(response.status_code, response.headers.get("content-type", ""), response.content, content)


# ---------------------------------------------------------------- JSON, valid and not


@dataclass(frozen=True)
class Raw:
    """A JSON fragment written as is: what ``json.dumps`` cannot make."""

    text: str


# Numbers past every bound: 64 bits, a double's range, a double's precision.
HUGE = st.sampled_from(
    [
        Raw("9" * 400),
        Raw("-" + "9" * 400),
        Raw("1" + "0" * 309),
        Raw("1e400"),
        Raw("-1e400"),
        Raw("1e-400"),
        Raw("123456789012345678901234567890.5"),
        2**31,
        2**63,
        -(2**63) - 1,
        2**64,
        10**30,
        1.7976931348623157e308,
        5e-324,
    ]
)
ODD = st.sampled_from(
    [
        Raw("NaN"),
        Raw("Infinity"),
        Raw("-Infinity"),
        Raw("-0"),
        Raw('"\\ud800"'),
        Raw('"\\udfff\\ud800"'),
        Raw('"\\u0000"'),
        Raw("[" * 300 + "]" * 300),
        Raw('{"a":' * 300 + "1" + "}" * 300),
        Raw("[" * 100 + "]" * 100),
        Raw("[" * 5000 + "]" * 5000),
        float("nan"),
        "",
        " ",
        "\x00",
        "\u202e\u200b",
        "\ud800",  # a lone surrogate, written raw: invalid UTF-8 on the wire
        "🙂" * 50,
        "x" * 20_000,
        [],
        {},
        None,
        True,
        False,
        0,
        -1,
        1,
    ]
)
SPECIAL = HUGE | ODD
# "mock" is the mock provider's fault script: it may ask for a 5xx on purpose.
KEYS_TEXT = st.text(max_size=10).filter(lambda k: k != "mock") | st.sampled_from(
    ["model", "messages", "role", "content", "input", "stream", "type", "text", "name", "n"]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | SPECIAL
)
VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(KEYS_TEXT, children, max_size=4)
    ),
    max_leaves=20,
)


def encode(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        items = (json.dumps(k, ensure_ascii=False) + ":" + encode(v) for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False, allow_nan=True)


def to_bytes(value: Any) -> bytes:
    # Lone surrogates go out as they are: bytes that are not UTF-8.
    return encode(value).encode("utf-8", "surrogatepass")


def paths_of(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every place in a JSON tree that can be changed or removed."""
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for key, child in items:
        yield (*prefix, key)
        yield from paths_of(child, (*prefix, key))


@st.composite
def mutated(draw: st.DrawFn, bases: list[dict[str, Any]], read: list[tuple]) -> bytes:
    """A valid body with one thing changed: a value, a field gone or added, its bytes,
    or (most often) one of the fields the gateway itself reads (``read``)."""
    body = copy.deepcopy(draw(st.sampled_from(bases)))
    places = list(paths_of(body))
    how = draw(st.sampled_from(["read", "read", "replace", "replace", "remove", "add", "bytes"]))
    if how == "read":
        *parents, last = draw(st.sampled_from(read))
        parent = body
        for key in parents:
            parent = parent.setdefault(key, {}) if isinstance(parent, dict) else parent[key]
        parent[last] = draw(SPECIAL | SPECIAL | VALUES)
        return to_bytes(body)
    if how == "bytes":
        raw = to_bytes(body)
        at = draw(st.integers(0, len(raw)))
        cut = draw(st.sampled_from(["truncate", "insert", "flip"]))
        if cut == "truncate":
            return raw[:at]
        byte = bytes([draw(st.integers(0, 255))])
        return raw[:at] + byte + raw[at + (cut == "flip") :]
    if how == "add":
        containers = [p for p in [(), *places] if isinstance(get(body, p), dict | list)]
        place = draw(st.sampled_from(containers))
        parent = get(body, place)
        value = draw(VALUES)
        if isinstance(parent, dict):
            parent[draw(KEYS_TEXT)] = value
        else:
            parent.insert(draw(st.integers(0, len(parent))), value)
        return to_bytes(body)
    place = draw(st.sampled_from(places))
    parent, last = get(body, place[:-1]), place[-1]
    if how == "remove":
        del parent[last]
    else:
        parent[last] = draw(SPECIAL | VALUES)
    return to_bytes(body)


def get(value: Any, place: tuple) -> Any:
    for key in place:
        value = value[key]
    return value


CHAT_BASES = [
    {"model": "local-chat", "messages": [{"role": "user", "content": "hi"}]},
    {
        "model": "local-chat",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "what is this?"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ],
        "max_tokens": 16,
        "temperature": 0.5,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    },
    {
        "model": "local-chat",
        "messages": [{"role": "user", "content": "stream it"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 8,
        "n": 1,
    },
]
EMBED_BASES = [
    {"model": "local-embed", "input": "hello"},
    {"model": "local-embed", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 8},
    {"model": "local-embed", "input": [[1, 2, 3], [4]], "encoding_format": "float"},
]
CHAT_READS = [
    ("model",),
    ("messages",),
    ("messages", 0),
    ("messages", 0, "role"),
    ("messages", 0, "content"),
    ("stream",),
    ("stream_options",),
    ("stream_options", "include_usage"),
    ("max_tokens",),
    ("max_completion_tokens",),
    ("n",),
    # The typed options and message fields (any base: each has messages[0]).
    ("temperature",),
    ("stop",),
    ("logit_bias",),
    ("tools",),
    ("tool_choice",),
    ("response_format",),
    ("messages", 0, "name"),
    ("messages", 0, "tool_calls"),
    ("messages", 0, "tool_call_id"),
]
EMBED_READS = [("model",), ("input",), ("encoding_format",), ("dimensions",)]
KEY_READS = [
    ("name",),
    ("models",),
    ("limits",),
    ("limits", "rpm"),
    ("limits", "tpm"),
    ("limits", "max_parallel"),
    ("limits", "budget_usd"),
    ("limits", "budget_period"),
    ("expires_at",),
    ("metadata",),
]
KEY_BASES = [
    {"name": "fuzzed"},
    {
        "name": "fuzzed-full",
        "models": ["local-*"],
        "limits": {"rpm": 10, "tpm": 1000, "max_parallel": 2, "budget_usd": 1.5},
        "expires_at": "2031-01-01T00:00:00Z",
        "metadata": {"team": "a", "tags": ["x"]},
    },
]


# ---------------------------------------------------------------- bodies (httpx, pooled)


@fuzz(500)
@given(body=mutated(CHAT_BASES, CHAT_READS))
def test_chat_bodies_with_one_thing_changed(client: httpx.Client, body: bytes) -> None:
    send(client, "POST", CHAT, body, AUTH)


@fuzz(150)
@given(value=VALUES | SPECIAL)
def test_chat_bodies_of_any_shape(client: httpx.Client, value: Any) -> None:
    send(client, "POST", CHAT, to_bytes(value), AUTH)


@fuzz(300)
@given(body=mutated(EMBED_BASES, EMBED_READS) | VALUES.map(to_bytes))
def test_embedding_bodies(client: httpx.Client, body: bytes) -> None:
    send(client, "POST", EMBED, body, AUTH)


@fuzz(300)
@given(
    method=st.sampled_from(["POST", "POST", "PATCH"]),
    body=mutated(KEY_BASES, KEY_READS) | VALUES.map(to_bytes),
)
def test_admin_key_bodies(
    client: httpx.Client, admin_key_id: str, method: str, body: bytes
) -> None:
    path = KEYS if method == "POST" else f"{KEYS}/{admin_key_id}"
    send(client, method, path, body, ADMIN)


@pytest.fixture(scope="module")
def admin_key_id(client: httpx.Client) -> str:
    response = client.post(KEYS, json={"name": "patched-by-fuzz"}, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()["id"]


# ---------------------------------------------------------------- raw requests (sockets)


def raw_exchange(port: int, request: bytes) -> tuple[int, str, bytes] | None:
    """One request on a new connection; the answer, or None if closed unanswered."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-request: the answer may still be there to read
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    if not data:
        return None
    while data.startswith(b"HTTP/1.1 1"):  # interim (100 Continue): the answer follows
        data = data.partition(b"\r\n\r\n")[2]
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding") == b"chunked":
        body = dechunk(body)
    return status, headers.get(b"content-type", b"").decode("latin-1"), body


def dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, data = data.partition(b"\r\n")
        length = int(size.split(b";")[0], 16)
        if length == 0:
            break
        out, data = out + data[:length], data[length + 2 :]
    return out


def raw_request(
    method: bytes, target: bytes, fields: list[tuple[bytes, bytes]], body: bytes
) -> bytes:
    head = [method + b" " + target + b" HTTP/1.1", b"Host: gateway", b"Connection: close"]
    head += [name + b": " + value for name, value in fields]
    head.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def send_raw(gateway: ServerProcess, request: bytes, *, answered: bool = True) -> None:
    answer = raw_exchange(gateway.port, request)
    if answer is None:
        assert not answered, f"closed without an answer: sent {request[:600]!r}"
        return
    check(*answer, request)


TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
FIELD_NAMES = st.text(TCHARS, min_size=1, max_size=20).filter(
    lambda n: n.lower() not in ("host", "connection", "content-length", "transfer-encoding")
) | st.sampled_from(
    [
        "authorization",
        "x-api-key",
        "content-type",
        "x-request-id",
        "accept",
        "accept-encoding",
        "origin",
        "cookie",
        "expect",
        "te",
        "upgrade",
        "x-forwarded-for",
        "content-encoding",
    ]
)
# What a field value may hold on the wire: visible ASCII, spaces and tabs inside,
# and obs-text (0x80-0xff).
FIELD_VALUES = st.binary(max_size=80).map(
    lambda b: bytes(c for c in b if c == 9 or 32 <= c <= 126 or c >= 128).strip(b" \t")
) | st.sampled_from(
    [
        f"Bearer {KEY}".encode(),
        f"Bearer {MASTER}".encode(),
        b"Bearer",
        b"Bearer ",
        b"bearer sk-" + b"\xff" * 8,
        b"application/json; charset=latin-1",
        b"text/plain",
        b"gzip",
        b"100-continue",
        b"websocket",
        b"x" * 4000,
    ]
)
ROUTES = [
    (b"POST", CHAT.encode()),
    (b"POST", EMBED.encode()),
    (b"POST", KEYS.encode()),
    (b"GET", KEYS.encode()),
]
VALID = {
    CHAT.encode(): to_bytes(CHAT_BASES[0]),
    EMBED.encode(): to_bytes(EMBED_BASES[0]),
    KEYS.encode(): b'{"name": "by-raw-fuzz"}',
}


@fuzz(300)
@given(
    route=st.sampled_from(ROUTES),
    fields=st.lists(st.tuples(FIELD_NAMES.map(str.encode), FIELD_VALUES), max_size=12),
    auth=st.sampled_from([b"", f"Bearer {KEY}".encode(), f"Bearer {MASTER}".encode()]),
)
def test_header_fields(
    gateway: ServerProcess, route: tuple[bytes, bytes], fields: list, auth: bytes
) -> None:
    method, path = route
    if auth:
        fields = [(b"Authorization", auth), *fields]
    body = VALID[path] if method == b"POST" else b""
    send_raw(gateway, raw_request(method, path, fields, body))


def percent_encoded(text: str) -> str:
    unreserved = "-._~"
    return "".join(
        chr(b) if b < 128 and (chr(b).isalnum() or chr(b) in unreserved) else f"%{b:02X}"
        for b in text.encode()
    )


SEGMENT = st.text(st.characters(codec="utf-8"), max_size=12).map(percent_encoded) | st.sampled_from(
    [
        "..",
        ".",
        "",
        "%00",
        "%0A",
        "%0d%0a",
        "%1b[31m",
        "%2F",
        "%ff",
        "%",
        "%zz",
        "v1",
        "admin",
        "keys",
        "chat",
        "completions",
        "embeddings",
        "models",
        "usage",
        "key_0",
    ]
)


@fuzz(300)
@given(
    method=st.sampled_from([b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"HEAD"]),
    prefix=st.sampled_from(
        ["", "/v1", "/v1/chat", "/admin", "/admin/keys", "/v1/models", "/health"]
    ),
    segments=st.lists(SEGMENT, max_size=4),
    query=st.one_of(
        st.just(""),
        st.lists(st.tuples(SEGMENT, SEGMENT), max_size=3).map(
            lambda pairs: "?" + "&".join(f"{k}={v}" for k, v in pairs)
        ),
    ),
    auth=st.sampled_from([f"Bearer {KEY}", f"Bearer {MASTER}"]),
)
def test_paths(
    gateway: ServerProcess, method: bytes, prefix: str, segments: list, query: str, auth: str
) -> None:
    target = (prefix + "".join("/" + s for s in segments) or "/") + query
    body = VALID[CHAT.encode()] if method in (b"POST", b"PUT", b"PATCH") else b""
    fields = [(b"Authorization", auth.encode()), (b"Content-Type", b"application/json")]
    request = raw_request(method, target.encode(), fields, body)
    if method == b"HEAD":  # an answer without a body: the status is all there is
        answer = raw_exchange(gateway.port, request)
        assert answer is not None, f"closed without an answer: sent {request!r}"
        assert answer[0] < 500, f"sent {request!r}\ngot {answer!r}"
        return
    send_raw(gateway, request)


@fuzz(150)
@given(
    route=st.sampled_from(ROUTES),
    name=st.binary(min_size=1, max_size=16),
    value=st.binary(max_size=40),
    where=st.sampled_from(["name", "value", "request-line"]),
)
def test_bytes_http_does_not_allow(
    gateway: ServerProcess, route: tuple[bytes, bytes], name: bytes, value: bytes, where: str
) -> None:
    # Control bytes, separators and 8-bit bytes where HTTP forbids them. The request
    # is refused; the answer may only be missing when the request line itself is
    # garbage (there is then nothing to answer in HTTP).
    method, path = route
    clean = bytes(c for c in name if c not in b"\r\n") or b"x"
    value = bytes(c for c in value if c not in b"\r\n")
    if where == "name":
        fields = [(clean + b"\x01", value)]
    elif where == "value":
        fields = [(b"X-Fuzz", value + b"\x00\x7f")]
    else:
        method, fields = clean + b"\x00", [(b"X-Fuzz", value)]
    fields.append((b"Authorization", f"Bearer {KEY}".encode()))
    send_raw(gateway, raw_request(method, path, fields, b""), answered=where != "request-line")


# ---------------------------------------------------------------- afterwards


def test_the_gateway_still_serves_and_logged_no_error(
    gateway: ServerProcess, client: httpx.Client
) -> None:
    response = client.post(CHAT, json=CHAT_BASES[0], headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
    assert gateway.proc.poll() is None
    logs = gateway.logs()
    assert "Traceback" not in logs, logs[-5000:]
    assert " ERROR " not in logs, [line for line in logs.splitlines() if " ERROR " in line][:5]
