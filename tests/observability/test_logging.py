"""gateway/observability/logging.py: one request, one line, one value per field."""

from __future__ import annotations

import io
import logging
import re

import pytest

from gateway.observability.access import AccessLog, AccessRecord
from gateway.observability.logging import SafeFormatter, escape

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
