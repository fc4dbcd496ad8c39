"""gateway/observability/logging.py and access.py: one record, one line, one value per field,
in text and in JSON; the request id on every line written for a request."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterator

import pytest

from gateway.api.middleware import RequestContextMiddleware
from gateway.observability.access import AccessLog, AccessRecord
from gateway.observability.logging import (
    REQUEST_ID,
    SafeFormatter,
    configure_logging,
    escape,
    formatter_for,
    log_prompt,
)
from tests.stubs import stub_live

# A record's line: its fields are name=value, separated by single spaces.
FIELD = re.compile(r"[a-z_]+=\S*")


def fields(line: str) -> dict[str, str]:
    parts = line.split(" ")
    assert all(FIELD.fullmatch(part) for part in parts), line
    return dict(part.split("=", 1) for part in parts)


@pytest.mark.parametrize(
    "value",
    ["/v1/chat/completions", "sk-...abcd", "req-0123_ABC:9.x", "upstream/gpt-4o-mini", "a-b~c"],
)
def test_plain_values_are_kept_as_they_are(value: str) -> None:
    assert escape(value) is value  # the fast path: no copy


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("/nope\nforged line", r"/nope\x0aforged\x20line"),
        ("a\r\nb", r"a\x0d\x0ab"),
        ("\x1b[31mred\x1b[0m", r"\x1b[31mred\x1b[0m"),
        ("x=1", r"x\x3d1"),
        ("back\\slash", r"back\x5cslash"),
        ("nul\x00del\x7f", r"nul\x00del\x7f"),
        ("c1\x85\x9b", r"c1\x85\x9b"),
        ("line\u2028sep", r"line\u2028sep"),
        ("bidi\u202eevil", r"bidi\u202eevil"),
        ("tab\there", r"tab\x09here"),
        ("ünï-名前", "ünï-名前"),  # printable in any script stays readable
    ],
)
def test_unsafe_characters_are_escaped(value: str, escaped: str) -> None:
    assert escape(value) == escaped


def test_escaping_is_unambiguous() -> None:
    # A literal backslash-x sequence cannot pass for an escaped character.
    assert escape("\\x0a") != escape("\n")


def test_an_access_line_is_one_line_with_one_value_per_field() -> None:
    record = AccessRecord("req-1", "GET", "/nope\nforged=1 status=200\x1b[2J")
    record.status = 404
    record.key = "evil\n2099-01-01 00:00:00,000 INFO gateway.access request_id=fake"
    record.model = "m\u2028x"
    line = record.line(1.25)
    assert "\n" not in line
    assert "\x1b" not in line
    assert "\u2028" not in line
    got = fields(line)
    assert got["path"] == r"/nope\x0aforged\x3d1\x20status\x3d200\x1b[2J"
    assert got["status"] == "404"
    assert got["request_id"] == "req-1"
    assert got["key"].startswith(r"evil\x0a2099-01-01\x2000:00:00,000")
    assert "forged" not in got


def test_the_failure_reason_is_on_the_line() -> None:
    record = AccessRecord("req-2", "POST", "/v1/chat/completions")
    record.status = 502
    record.reason, record.upstream_status = "upstream_status", 503
    got = fields(record.line(3.0))
    assert (got["reason"], got["upstream_status"]) == ("upstream_status", "503")
    plain = AccessRecord("req-3", "POST", "/v1/chat/completions")
    plain.status = 200
    assert "reason" not in fields(plain.line(1.0))


def test_the_access_log_writes_the_escaped_line() -> None:
    stream = io.StringIO()
    log = AccessLog(stream)
    log.enabled = True
    log.write(AccessRecord("req-4", "GET", "/a\nb").line(0.5))
    log.flush()
    text = stream.getvalue()
    assert text.count("\n") == 1
    assert r"path=/a\x0ab" in text


def _formatted(message: str, *args: object, exc: BaseException | None = None) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SafeFormatter("%(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("gateway.test-safe-formatter")
    logger.handlers[:] = [handler]
    logger.propagate = False
    try:
        if exc is not None:
            try:
                raise exc
            except BaseException:
                logger.exception(message, *args)
        else:
            logger.warning(message, *args)
    finally:
        logger.handlers.clear()
    return stream.getvalue()


def test_a_log_record_with_client_text_stays_one_line() -> None:
    text = _formatted("unknown key %s", "evil\nERROR gateway.errors forged\x1b[31m")
    assert text.count("\n") == 1
    assert r"evil\x0aERROR gateway.errors forged\x1b[31m" in text


def test_a_traceback_is_indented_so_no_line_passes_for_a_record() -> None:
    text = _formatted(
        "unhandled error request_id=%s", "r1", exc=ValueError("bad\nERROR gateway forged\x1b[0m")
    )
    first, *rest = text.rstrip("\n").split("\n")
    assert first == "ERROR gateway.test-safe-formatter unhandled error request_id=r1"
    assert rest, text
    assert all(line.startswith("  ") for line in rest), rest
    assert "\x1b" not in text
    assert any("ERROR gateway forged" in line for line in rest)  # kept, but indented


def test_plain_records_are_untouched() -> None:
    assert _formatted("redis is back after %.1fs", 2.0) == (
        "WARNING gateway.test-safe-formatter redis is back after 2.0s\n"
    )


def test_cost_and_the_refusing_limit_are_on_the_line() -> None:
    record = AccessRecord("req-5", "POST", "/v1/chat/completions")
    record.status, record.cost_usd = 200, 0.000123456789
    assert fields(record.line(1.0))["cost_usd"] == "0.000123"
    refused = AccessRecord("req-6", "POST", "/v1/chat/completions")
    refused.status, refused.limit = 429, "rpm"
    got = fields(refused.line(1.0))
    assert got["limit"] == "rpm"
    assert "cost_usd" not in got


# ------------------------------------------------------------------ the JSON format


def _full_record() -> AccessRecord:
    record = AccessRecord("req-7", "POST", "/v1/chat/completions")
    record.status, record.key, record.model = 502, "team-a", "gpt-4o-mini"
    record.served_by, record.outcome = "openai/gpt-4o-mini", "error"
    record.reason, record.upstream_status, record.attempts = "upstream_status", 503, 3
    record.input_tokens, record.output_tokens, record.ttft_ms = 21, 0, 180.25
    record.cost_usd, record.limit = 0.0000123, "tpm"
    return record


def test_the_json_access_line_has_opentelemetry_names() -> None:
    line = _full_record().json_line(12.345, "2025-01-01T12:00:00.123Z", 4242)
    assert json.loads(line) == {
        "timestamp": "2025-01-01T12:00:00.123Z",
        "severity_text": "INFO",
        "severity_number": 9,
        "logger": "gateway.access",
        "body": "POST /v1/chat/completions 502",
        "process.pid": 4242,
        "request_id": "req-7",
        "http.request.method": "POST",
        "url.path": "/v1/chat/completions",
        "http.response.status_code": 502,
        "gateway.latency_ms": 12.3,
        "gateway.key": "team-a",
        "gen_ai.request.model": "gpt-4o-mini",
        "gateway.served_by": "openai/gpt-4o-mini",
        "gen_ai.provider.name": "openai",
        "gateway.outcome": "error",
        "error.type": "upstream_status",
        "gateway.upstream_status": 503,
        "gen_ai.usage.input_tokens": 21,
        "gen_ai.usage.output_tokens": 0,
        "gateway.cost_usd": 0.000012,
        "gateway.ttft_ms": 180.2,
        "gateway.attempts": 3,
        "gateway.limit": "tpm",
    }
    plain = AccessRecord("req-8", "GET", "/health")
    plain.status = 200
    assert set(json.loads(plain.json_line(0.1, "t", 1))) == {
        "timestamp",
        "severity_text",
        "severity_number",
        "logger",
        "body",
        "process.pid",
        "request_id",
        "http.request.method",
        "url.path",
        "http.response.status_code",
        "gateway.latency_ms",
    }


def test_the_json_access_line_cannot_be_forged() -> None:
    record = _full_record()
    record.path = '/x"\n{"forged": 1}\x1b[2J\u2028\u202e'
    record.key = 'k","gateway.key":"admin'
    record.model = 'm\\"\r'
    record.served_by = "p\x00/名前"
    line = record.json_line(1.0, "t", 1)
    assert line.isascii(), line  # nothing for a terminal to act on
    assert line.isprintable(), line  # one line
    got = json.loads(line)
    assert (got["url.path"], got["gateway.key"]) == (record.path, record.key)
    assert (got["gen_ai.request.model"], got["gateway.served_by"]) == (
        record.model,
        record.served_by,
    )
    assert got["gen_ai.provider.name"] == "p\x00"
    assert "forged" not in got


def test_the_access_log_writes_one_json_object_a_line() -> None:
    stream = io.StringIO()
    log = AccessLog(stream, log_format="json")
    log.enabled = True
    for i in range(3):
        record = AccessRecord(f"req-{i}", "GET", "/a\nb")
        record.status = 200
        log.request_finished(record, 0.0125)
    log.flush()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        got = json.loads(line)
        assert RFC3339_UTC.fullmatch(got["timestamp"]), got["timestamp"]
        assert (got["request_id"], got["url.path"]) == (f"req-{i}", "/a\nb")
        assert (got["process.pid"], got["gateway.latency_ms"]) == (os.getpid(), 12.5)


RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def gateway_lines() -> Iterator[Callable[[str], io.StringIO]]:
    """Attach a handler of a given format to the ``gateway`` logger; its output."""
    logger = logging.getLogger("gateway")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    logger.handlers[:] = []
    logger.setLevel(logging.INFO)

    def attach(log_format: str) -> io.StringIO:
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter_for(log_format))
        logger.addHandler(handler)
        return stream

    yield attach
    logger.handlers[:], logger.level, logger.propagate = saved


def test_a_record_written_for_a_request_carries_its_id(gateway_lines) -> None:
    text, js = gateway_lines("text"), gateway_lines("json")
    logger = logging.getLogger("gateway.test-request-id")
    logger.warning("outside any request")
    token = REQUEST_ID.set("req-9")
    try:
        logger.warning("upstream went away: %s", "boom")
        logger.error("unhandled error request_id=%s", "req-9")  # names it already
    finally:
        REQUEST_ID.reset(token)
    first, second, third = text.getvalue().splitlines()
    assert "request_id" not in first
    assert second.endswith(
        "WARNING gateway.test-request-id upstream went away: boom request_id=req-9"
    )
    assert third.endswith("unhandled error request_id=req-9")  # not twice
    objects = [json.loads(line) for line in js.getvalue().splitlines()]
    assert "request_id" not in objects[0]
    assert [o.get("request_id") for o in objects[1:]] == ["req-9", "req-9"]
    assert objects[1]["body"] == "upstream went away: boom"
    assert (objects[1]["severity_text"], objects[1]["severity_number"]) == ("WARNING", 13)


def test_a_json_record_is_one_line_with_its_exception(gateway_lines) -> None:
    js = gateway_lines("json")
    try:
        raise ValueError("bad\nERROR gateway forged")
    except ValueError:
        logging.getLogger("gateway.test-json").exception("failed for %s", 'evil"\n{"x": 1}')
    (line,) = js.getvalue().splitlines()
    got = json.loads(line)
    assert got["body"] == 'failed for evil"\n{"x": 1}'
    assert (got["logger"], got["severity_text"]) == ("gateway.test-json", "ERROR")
    assert got["exception.type"] == "builtins.ValueError"
    assert got["exception.message"] == "bad\nERROR gateway forged"
    assert "Traceback" in got["exception.stacktrace"]
    assert got["process.pid"] == os.getpid()
    assert RFC3339_UTC.fullmatch(got["timestamp"])


async def test_the_request_id_flows_from_header_to_error_log_to_response(gateway_lines) -> None:
    text, js = gateway_lines("text"), gateway_lines("json")

    async def failing(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        logging.getLogger("gateway.routing").warning("upstream refused the call")
        raise RuntimeError("a bug")

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"x-request-id", b"req-from-client-1")],
    }
    middleware = RequestContextMiddleware(
        failing, live=stub_live(1000), observer=AccessLog(io.StringIO())
    )
    await middleware(scope, receive, send)
    start = sent[0]
    assert start["status"] == 500
    assert (b"x-request-id", b"req-from-client-1") in start["headers"]
    warning, error = text.getvalue().split("\n")[:2]
    assert warning.endswith("upstream refused the call request_id=req-from-client-1")
    assert "ERROR gateway.errors" in error
    assert "request_id=req-from-client-1" in error
    objects = [json.loads(line) for line in js.getvalue().splitlines()]
    assert [o["severity_text"] for o in objects] == ["WARNING", "ERROR"]
    assert {o["request_id"] for o in objects} == {"req-from-client-1"}
    assert objects[1]["exception.message"] == "a bug"


def test_prompts_are_one_line_on_their_own_logger(gateway_lines) -> None:
    text, js = gateway_lines("text"), gateway_lines("json")
    messages = [{"role": "user", "content": 'tell me\nabout "zebras" x=1'}]
    log_prompt("req-10", "team a", "up-chat", "messages", messages)
    log_prompt("req-11", "team-b", "up-embed", "input", ["one", "two"])
    chat, embed = text.getvalue().splitlines()
    assert chat.endswith(
        "INFO gateway.prompts prompt request_id=req-10 key=team\\x20a model=up-chat "
        'messages=[{"role":"user","content":"tell me\\nabout \\"zebras\\" x=1"}]'
    )
    assert embed.endswith('request_id=req-11 key=team-b model=up-embed input=["one","two"]')
    first, second = (json.loads(line) for line in js.getvalue().splitlines())
    assert first["gen_ai.input.messages"] == messages
    assert (first["body"], first["logger"], first["request_id"]) == (
        "prompt",
        "gateway.prompts",
        "req-10",
    )
    assert (first["gateway.key"], first["gen_ai.request.model"]) == ("team a", "up-chat")
    assert second["gateway.input"] == ["one", "two"]


@pytest.fixture
def loggers_restored() -> Iterator[None]:
    names = ("gateway", "uvicorn", "")
    saved = [
        (logging.getLogger(n), logging.getLogger(n).handlers[:], logging.getLogger(n).level)
        for n in names
    ]
    propagate = [logger.propagate for logger, _, _ in saved]
    yield
    for (logger, handlers, level), flag in zip(saved, propagate, strict=True):
        logger.handlers[:], logger.propagate = handlers, flag
        logger.setLevel(level)


@pytest.mark.usefixtures("loggers_restored")
def test_json_logging_covers_uvicorn_and_the_libraries(capsys: pytest.CaptureFixture) -> None:
    configure_logging("INFO", "json")
    logging.getLogger("gateway.test").info("one")
    logging.getLogger("uvicorn.error").warning("Started server process [%d]", 1)
    logging.getLogger("some.library").warning("something odd")
    bodies = [json.loads(line)["body"] for line in capsys.readouterr().err.splitlines()]
    assert bodies == ["one", "Started server process [1]", "something odd"]
    configure_logging("INFO", "text")  # and back: uvicorn and the root are left alone
    assert not [h for h in logging.getLogger("uvicorn").handlers if hasattr(h, "_gateway_handler")]
    assert not [h for h in logging.getLogger().handlers if hasattr(h, "_gateway_handler")]


@pytest.mark.usefixtures("loggers_restored")
def test_what_is_logged_before_the_format_is_known_is_written_in_it(
    capsys: pytest.CaptureFixture,
) -> None:
    configure_logging("INFO", hold=True)
    logging.getLogger("gateway.config").warning("key %r is disabled", "off")
    assert capsys.readouterr().err == ""
    configure_logging("INFO", "json")
    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["body"] == "key 'off' is disabled"
