"""LocalLimiter on an injected clock (no sleeping), and the offline token estimates."""

from __future__ import annotations

import json

import pytest

from gateway.config import Limits
from gateway.errors import QuotaExceeded, RateLimited, TooManyInFlight
from gateway.limits.estimate import embedding_tokens, prompt_tokens
from gateway.limits.keys import KeyRecord
from gateway.limits.local import LocalLimiter
from gateway.schemas.openai import ChatCompletionRequest, EmbeddingRequest
from tests.limits.support import admission, event, make_key, requests_left, tokens_left, with_limits

# An arbitrary moment 30.5 s past a whole minute, so nothing lines up with minutes.
T0 = 1_749_999_990_500.0


class Clock:
    def __init__(self, ms: float = T0) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms

    def at(self, seconds: float) -> None:
        """Move to ``seconds`` after T0."""
        self.ms = T0 + seconds * 1000


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def limiter(clock: Clock) -> LocalLimiter:
    return LocalLimiter(clock=clock, lease_ttl_ms=30_000)


def refused_retry(limiter: LocalLimiter, key: KeyRecord, tokens: int = 0) -> float:
    with pytest.raises(RateLimited) as refused:
        limiter.admit(admission(key, tokens=tokens))
    return refused.value.retry_after


# ---------------------------------------------------------------- rpm


def test_rpm_slots_free_sixty_seconds_after_each_admission(
    clock: Clock, limiter: LocalLimiter
) -> None:
    key = make_key(Limits(rpm=3))
    for second in (0, 10, 20):
        clock.at(second)
        limiter.admit(admission(key))

    clock.at(30)
    assert refused_retry(limiter, key) == pytest.approx(30.0)  # the entry of t=0 leaves at 60
    clock.at(59.999)
    assert refused_retry(limiter, key) == 1.0  # 1 ms to go, rounded up to the 1 s floor
    clock.at(60)
    limiter.admit(admission(key))  # exactly 60 s after the first admission

    clock.at(60.001)
    assert refused_retry(limiter, key) == pytest.approx(9.999)  # next: t=10 leaves at 70
    clock.at(69.999)
    refused_retry(limiter, key)
    clock.at(70)
    grant = limiter.admit(admission(key))
    assert requests_left(grant) == 0
    # The window holds t=20, 60, 70: the oldest leaves at 80.
    assert grant.limits.rpm_reset_ms == pytest.approx(10_000)


def test_rpm_retry_after_waits_for_the_entry_that_makes_room(
    clock: Clock, limiter: LocalLimiter
) -> None:
    key = make_key(Limits(rpm=5))
    for second in (0, 1, 2, 3, 4):
        clock.at(second)
        limiter.admit(admission(key))

    # The limit drops to 2 with 5 in the window: the one at t=3 (index 5 - 2) has to
    # leave before a request fits, not merely the oldest.
    lowered = with_limits(key, Limits(rpm=2))
    clock.at(10)
    assert refused_retry(limiter, lowered) == pytest.approx(53.0)
    clock.at(62.999)
    refused_retry(limiter, lowered)
    clock.at(63)
    limiter.admit(admission(lowered))


def test_rpm_retry_after_waits_until_enough_calls_free(clock: Clock, limiter: LocalLimiter) -> None:
    key = make_key(Limits(rpm=5))
    for second in (0, 1, 2, 3):
        clock.at(second)
        limiter.admit(admission(key))

    # One left; an admission of three calls needs the entries of t=0 and t=1 gone: at 61.
    clock.at(10)
    with pytest.raises(RateLimited) as refused:
        limiter.admit(admission(key, calls=3))
    assert refused.value.retry_after == pytest.approx(51.0)
    clock.at(60.999)
    with pytest.raises(RateLimited):
        limiter.admit(admission(key, calls=3))
    clock.at(61)
    grant = limiter.admit(admission(key, calls=3))
    assert requests_left(grant) == 0
    # Its three entries leave the window together, at 121 (those of t=2 and 3 before).
    clock.at(120.999)
    assert limiter.admit(admission(key, calls=2)).limits.rpm_used == 5
    with pytest.raises(RateLimited):
        limiter.admit(admission(key))
    clock.at(121)
    assert requests_left(limiter.admit(admission(key, calls=3))) == 0


def test_rpm_refusal_takes_nothing(clock: Clock, limiter: LocalLimiter) -> None:
    key = make_key(Limits(rpm=2))
    limiter.admit(admission(key))
    limiter.admit(admission(key))
    for _ in range(10):
        refused_retry(limiter, key)
    clock.at(60)  # both admissions leave; refusals never entered
    limiter.admit(admission(key))
    limiter.admit(admission(key))


# ---------------------------------------------------------------- tpm


def test_tpm_buckets_are_whole_seconds_and_expire_after_sixty(
    clock: Clock, limiter: LocalLimiter
) -> None:
    key = make_key(Limits(tpm=100))
    clock.at(0)  # 500 ms into second S
    limiter.admit(admission(key, tokens=60))
    clock.at(10.2)  # second S + 10
    grant = limiter.admit(admission(key, tokens=40))
    assert tokens_left(grant) == 0

    clock.at(30)
    # The bucket of second S expires at S + 60 s, which is 59.5 s after T0.
    assert refused_retry(limiter, key, tokens=1) == pytest.approx(29.5)
    clock.at(59.499)
    refused_retry(limiter, key, tokens=1)
    clock.at(59.5)
    grant = limiter.admit(admission(key, tokens=60))
    assert tokens_left(grant) == 0

    # 40 tokens fit once the bucket of S + 10 leaves, at S + 70; 50 need S + 60 gone too.
    assert refused_retry(limiter, key, tokens=40) == pytest.approx(10.0)
    assert refused_retry(limiter, key, tokens=50) == pytest.approx(60.0)
    clock.at(69.5)
    with pytest.raises(RateLimited):
        limiter.admit(admission(key, tokens=50))
    limiter.admit(admission(key, tokens=40))


def test_tpm_settle_returns_unused_tokens_to_their_bucket(
    clock: Clock, limiter: LocalLimiter
) -> None:
    key = make_key(Limits(tpm=1000))
    grant = limiter.admit(admission(key, tokens=900))
    refused_retry(limiter, key, tokens=200)
    clock.at(5)
    limiter.settle(grant, [event(input_tokens=50, output_tokens=50)])
    grant = limiter.admit(admission(key, tokens=900))
    assert tokens_left(grant) == 0
    with pytest.raises(QuotaExceeded):
        limiter.admit(admission(key, tokens=1001))


# ---------------------------------------------------------------- leases


def test_leases_expire_after_their_ttl_unless_renewed(clock: Clock, limiter: LocalLimiter) -> None:
    key = make_key(Limits(max_parallel=1))
    grant = limiter.admit(admission(key))
    clock.at(29.999)
    with pytest.raises(TooManyInFlight):
        limiter.admit(admission(key))
    limiter.renew([grant])  # good until 59.999
    clock.at(59.998)
    assert limiter.in_flight(key.id) == 1
    with pytest.raises(TooManyInFlight):
        limiter.admit(admission(key))
    clock.at(59.999)
    assert limiter.in_flight(key.id) == 0
    limiter.admit(admission(key))


# ---------------------------------------------------------------- budget reservations


def test_a_budget_reservation_ends_with_its_lease(clock: Clock, limiter: LocalLimiter) -> None:
    # The reservation of a request nobody settles (its instance died) is held for as long
    # as its lease lives: renewed while in flight, gone once it expires.
    key = make_key(Limits(budget_usd=1.0))
    grant = limiter.admit(admission(key, cost=0.75))
    assert grant.lease
    assert limiter.held(key.id, "total") == 0.75
    clock.at(29.999)
    limiter.renew([grant])  # good until 59.999
    clock.at(59.998)
    limiter.admit(admission(key, cost=0.125))  # 0.75 + 0.125 held
    assert limiter.held(key.id, "total") == 0.875
    clock.at(59.999)
    # The first lease is gone, with its 0.75; the second (until 89.998) still holds 0.125.
    limiter.admit(admission(key, cost=0.5))
    assert limiter.held(key.id, "total") == 0.625
    limiter.settle(grant, [event(cost=0.25)])  # too late to give anything back: counts once
    assert limiter.held(key.id, "total") == 0.625
    clock.at(100)
    limiter.admit(admission(key, cost=0.0))
    assert limiter.held(key.id, "total") == 0.0


def test_reserved_sums_restart_from_zero_when_nothing_is_in_flight(
    clock: Clock, limiter: LocalLimiter
) -> None:
    # Costs that are not binary fractions do not add and subtract back to exactly zero:
    # what is left once every reservation is back must be zero, not a rounding remainder.
    assert 0.1 + 0.2 - 0.1 - 0.2 != 0.0
    key = make_key(Limits(budget_usd=0.5, budget_period="day"))
    grants = [limiter.admit(admission(key, cost=cost)) for cost in (0.1, 0.2)]
    for grant in grants:
        limiter.settle(grant, [event(cost=0.0)])
    period = grants[0].period
    assert limiter.held(key.id, period) == 0.0
    assert limiter.in_flight(key.id) == 0


def test_a_budget_key_without_prices_takes_no_lease(limiter: LocalLimiter) -> None:
    key = make_key(Limits(budget_usd=1.0))
    grant = limiter.admit(admission(key, cost=0.0))  # an unpriced model: nothing to hold
    assert (grant.lease, grant.cost, grant.period) == (False, 0.0, "total")
    assert limiter.in_flight(key.id) == 0


# ---------------------------------------------------------------- estimates

ENGLISH = [
    "Hello! Can you help me write a short email to my landlord about the broken heater?",
    "Summarise the following paragraph in two sentences. The committee met on Tuesday to "
    "discuss the proposed budget for next year, including new spending on road repairs, "
    "library hours and a pilot programme for electric buses in the city centre.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
    "    return a\n\nExplain what this function does and its time complexity.",
    "What's the capital of Australia, and why isn't it Sydney?",
]


def chat(*messages: dict, **extra: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": messages, **extra})


@pytest.mark.parametrize("text", ENGLISH)
def test_prompt_estimate_errs_high_for_english(text: str) -> None:
    # BPE tokenizers average about four characters per English token.
    estimate = prompt_tokens(chat({"role": "user", "content": text}))
    assert estimate > len(text) / 4 * 1.2


def test_prompt_estimate_counts_every_message() -> None:
    one = prompt_tokens(chat({"role": "user", "content": ENGLISH[0]}))
    two = prompt_tokens(
        chat({"role": "system", "content": ENGLISH[3]}, {"role": "user", "content": ENGLISH[0]})
    )
    assert two - one > len(ENGLISH[3]) / 4


def test_prompt_estimate_counts_images() -> None:
    def with_images(n: int) -> ChatCompletionRequest:
        image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
        parts = [{"type": "text", "text": "What is in these pictures?"}] + [image] * n
        return chat({"role": "user", "content": parts})

    none, one, three = (prompt_tokens(with_images(n)) for n in (0, 1, 3))
    # A high-detail 1024x1024 image is 765 tokens at OpenAI; a short URL is not the cost.
    assert one - none >= 765
    assert three - none >= 3 * 765


def test_prompt_estimate_counts_tools_and_tool_calls() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the current weather for a city, in Celsius or Fahrenheit.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string", "description": "The city name"},
                        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    },
                    "required": ["city"],
                },
            },
        }
    ]
    question = {"role": "user", "content": "Weather in Paris?"}
    plain = prompt_tokens(chat(question))
    assert prompt_tokens(chat(question, tools=tools)) - plain > len(json.dumps(tools)) / 4

    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
    assert prompt_tokens(chat(question, call)) - plain > len(json.dumps(call)) / 4


def test_prompt_estimate_errs_high_for_non_latin_text() -> None:
    text = "東京の明日の天気を教えてください。傘は必要ですか。"
    assert prompt_tokens(chat({"role": "user", "content": text})) >= len(text)


def test_embedding_estimate() -> None:
    texts = [ENGLISH[0], ENGLISH[1]]
    assert (
        embedding_tokens(EmbeddingRequest(model="e", input=texts)) > sum(len(t) for t in texts) / 4
    )
    assert embedding_tokens(EmbeddingRequest(model="e", input=[[1, 2, 3], [4, 5]])) == 5
    assert embedding_tokens(EmbeddingRequest(model="e", input="")) == 1
