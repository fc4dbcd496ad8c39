"""gateway/errors.py: the upstream status table (docs/wire-formats.md) and response headers."""

from __future__ import annotations

import pytest

from gateway.errors import (
    MAX_RETRY_AFTER,
    GatewayError,
    InvalidRequest,
    QuotaExceeded,
    RateLimited,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    clamp_retry_after,
    format_loc,
    upstream_status_error,
)


@pytest.mark.parametrize(("upstream", "status"), [(400, 400), (404, 404), (413, 413), (422, 400)])
def test_rejections_pass_through_with_the_upstream_message(upstream: int, status: int) -> None:
    error = upstream_status_error(
        upstream,
        "This model's maximum context length is 128000 tokens.",
        error_type="invalid_request_error",
        code="context_length_exceeded",
        param="messages",
    )
    assert type(error) is UpstreamRejected
    assert error.status == status
    assert error.to_dict() == {
        "message": "This model's maximum context length is 128000 tokens.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
    assert not error.retryable


def test_rejection_without_type_is_an_invalid_request_error() -> None:
    error = upstream_status_error(404, "The model `gpt-5o` does not exist")
    assert error.status == 404
    assert error.to_dict() == {
        "message": "The model `gpt-5o` does not exist",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


@pytest.mark.parametrize("upstream", [401, 403])
def test_upstream_auth_failure_is_502_and_hides_the_upstream_text(upstream: int) -> None:
    text = "Incorrect API key provided: sk-proj-abcd****wxyz. Find your key at ..."
    error = upstream_status_error(upstream, text, error_type="invalid_request_error")
    assert type(error) is UpstreamAuthFailed
    assert error.status == 502
    assert error.type == "api_error"
    assert error.code == "upstream_auth_failed"
    assert error.message == f"the upstream refused the gateway's credentials ({upstream})"
    assert "sk-proj" not in str(error.to_dict())
    assert not error.retryable


def test_upstream_429_keeps_retry_after() -> None:
    error = upstream_status_error(429, "Rate limit reached for gpt-4o", retry_after=2.5)
    assert type(error) is UpstreamRateLimited
    assert error.status == 429
    assert (error.type, error.code) == ("rate_limit_error", "upstream_rate_limited")
    assert error.retry_after == 2.5
    # The gateway's own words: what an upstream says of its limits is not relayed.
    assert error.message == "the upstream is rate limiting the gateway (429)"
    assert error.response_headers() == {"retry-after": "3"}
    assert error.retryable
    assert (error.reason, error.upstream_status) == ("upstream_status", 429)


@pytest.mark.parametrize("upstream", [500, 502, 503, 504, 529])
def test_upstream_5xx_is_502_upstream_error(upstream: int) -> None:
    error = upstream_status_error(upstream, "The server had an error")
    assert type(error) is UpstreamUnavailable
    assert error.status == 502
    assert error.to_dict() == {
        "message": f"the upstream failed with status {upstream}",
        "type": "api_error",
        "param": None,
        "code": "upstream_error",
    }
    assert error.retryable
    assert (error.reason, error.upstream_status) == ("upstream_status", upstream)


@pytest.mark.parametrize("upstream", [402, 405, 409, 410, 451])
def test_other_upstream_statuses_keep_their_text_to_themselves(upstream: int) -> None:
    error = upstream_status_error(upstream, "echo: Authorization: Bearer sk-secret")
    assert type(error) is UpstreamUnavailable
    assert error.message == f"the upstream failed with status {upstream}"


def test_upstream_408_is_a_timeout() -> None:
    error = upstream_status_error(408, "Request Timeout")
    assert type(error) is UpstreamTimeout
    assert error.status == 504
    assert (error.type, error.code) == ("api_error", "upstream_timeout")
    assert error.retryable


def test_every_mapping_is_an_upstream_error() -> None:
    for status in (400, 401, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503):
        assert isinstance(upstream_status_error(status, "x"), UpstreamError)


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2"), (2.5, "3"), (59.9, "60"), (60, "60")],
)
def test_retry_after_is_whole_seconds_rounded_up(retry_after: float, header: str) -> None:
    error = RateLimited("Rate limit reached", retry_after=retry_after)
    assert error.response_headers() == {"retry-after": header}


@pytest.mark.parametrize(
    ("given", "seconds", "header"),
    [
        (float("inf"), MAX_RETRY_AFTER, "3600"),
        (1e300, MAX_RETRY_AFTER, "3600"),
        (10**400, None, None),  # not a float at all: no header rather than a 500
        (float("-inf"), 0.0, "1"),
        (-5, 0.0, "1"),
        (float("nan"), None, None),
        (7, 7.0, "7"),
    ],
)
def test_retry_after_is_clamped_never_a_crash(
    given: float, seconds: float | None, header: str | None
) -> None:
    assert clamp_retry_after(given) == seconds
    error = RateLimited("Rate limit reached", retry_after=given)
    assert error.retry_after == seconds
    expected = {"retry-after": header} if header else {}
    assert error.response_headers() == expected


def test_reason_is_set_where_the_error_is_made() -> None:
    assert GatewayError("boom").reason is None
    error = UpstreamUnavailable("the upstream closed the connection", reason="stream_cut")
    assert error.reason == "stream_cut"
    assert error.upstream_status is None
    assert "stream_cut" not in str(error.to_dict())  # for the log, not the client


def test_no_retry_after_no_header() -> None:
    assert RateLimited("Rate limit reached").response_headers() == {}
    assert InvalidRequest("bad").response_headers() == {}


def test_extra_headers_are_kept_and_copied() -> None:
    given = {"x-ratelimit-remaining-requests": "0"}
    error = RateLimited("Rate limit reached", retry_after=0.5, headers=given)
    given["x-ratelimit-remaining-requests"] = "changed"
    assert error.response_headers() == {"x-ratelimit-remaining-requests": "0", "retry-after": "1"}


def test_quota_exceeded_says_do_not_retry() -> None:
    error = QuotaExceeded("You exceeded your budget.")
    assert error.status == 429
    assert (error.type, error.code) == ("insufficient_quota", "insufficient_quota")
    assert error.response_headers() == {"x-should-retry": "false"}
    with_wait = QuotaExceeded("Larger than the whole tpm limit.", retry_after=3.2)
    assert with_wait.response_headers() == {"retry-after": "4", "x-should-retry": "false"}


def test_to_dict_is_the_openai_error_object() -> None:
    error = InvalidRequest("Invalid value for 'messages[0].role'.", param="messages[0].role")
    assert error.to_dict() == {
        "message": "Invalid value for 'messages[0].role'.",
        "type": "invalid_request_error",
        "param": "messages[0].role",
        "code": "invalid_value",
    }
    assert GatewayError("boom").to_dict()["code"] == "internal_error"
    assert GatewayError("boom").status == 500


@pytest.mark.parametrize(
    ("loc", "skip", "path"),
    [
        (
            ("models", "gpt-4o", "deployments", 0, "weigth"),
            (),
            "models.gpt-4o.deployments[0].weigth",
        ),
        (("body", "messages", 0, "role"), ("body",), "messages[0].role"),
        (("keys", 1), (), "keys[1]"),
        ((), (), ""),
    ],
)
def test_format_loc(loc: tuple[int | str, ...], skip: tuple[str, ...], path: str) -> None:
    assert format_loc(loc, skip=skip) == path
