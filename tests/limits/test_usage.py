"""Usage that knows cached tokens (docs/limits.md, "Usage" and "Budgets").

What a call used, as the canonical ``Usage`` carries it and as it crosses into
limits (``TokenCounts``); what it costs with cache prices; the counters per
key, model and day, including a database made before cache counters existed.
Both stores' counters are checked by the conformance suite (test_conformance.py).
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import openai.types
import openai.types.chat
import pytest
import redis.asyncio as aioredis

from gateway.config import ConfigError, Limits, Price, load_settings
from gateway.limits.base import TokenCounts, UsageEvent, today
from gateway.limits.embedded import EmbeddedStore
from gateway.limits.keys import hash_key
from gateway.limits.redis import RedisStore
from gateway.limits.usage import (
    NO_TOKENS,
    UsageTable,
    cost_of,
    counts_of,
    reservation_cost,
    usage_doc,
    usage_event,
)
from gateway.schemas.openai import ChatCompletion, ChatCompletionChunk, PromptTokensDetails, Usage
from tests.limits.support import LEASE_TTL_MS, REDIS_URL, admission, event, make_key

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "openai"

# An answer's usage with prompt cache reads and writes, as OpenAI's API reference and
# OpenRouter name them (Anthropic's cache_read_input_tokens, cache_creation_input_tokens).
CACHED_USAGE = {
    "prompt_tokens": 2048,
    "completion_tokens": 100,
    "total_tokens": 2148,
    "prompt_tokens_details": {"cached_tokens": 1024, "cache_write_tokens": 512, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 30,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}


# ---------------------------------------------------------------- the canonical Usage


def test_counts_of_an_openai_answer_without_cache_hits() -> None:
    answer = ChatCompletion.model_validate_json((FIXTURES / "chat.json").read_bytes())
    assert answer.usage is not None
    assert counts_of(answer.usage) == TokenCounts(
        answer.usage.prompt_tokens, answer.usage.completion_tokens, 0, 0
    )


def test_counts_of_an_answer_with_cache_reads_and_writes() -> None:
    counts = counts_of(Usage.model_validate(CACHED_USAGE))
    assert counts == TokenCounts(input=2048, output=100, cache_read=1024, cache_write=512)


def test_counts_of_the_last_usage_chunk_of_a_stream() -> None:
    frames = (FIXTURES / "chat_stream.sse").read_text().split("\n\n")
    last = [f for f in frames if f.startswith("data: {")][-1].removeprefix("data: ")
    chunk = ChatCompletionChunk.model_validate_json(last)
    assert counts_of(chunk.usage) == TokenCounts(19, 10, 0, 0)


@pytest.mark.parametrize(
    "usage",
    [
        None,
        Usage(),
        Usage.model_validate({"prompt_tokens": 0, "prompt_tokens_details": None}),
        Usage.model_validate({"prompt_tokens_details": {"cached_tokens": None}}),
    ],
)
def test_no_usage_or_no_details_counts_no_cached_tokens(usage: Usage | None) -> None:
    counts = counts_of(usage)
    assert (counts.cache_read, counts.cache_write) == (0, 0)
    assert counts_of(None) is NO_TOKENS


def test_usage_from_an_upstream_is_passed_on_as_it_came() -> None:
    raw = json.dumps({**CACHED_USAGE, "cost": 0.95, "prompt_tokens_details": {"cached_tokens": 7}})
    usage = Usage.model_validate_json(raw)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 7
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 30
    assert usage.model_dump(mode="json", exclude_unset=True) == json.loads(raw)


def test_usage_built_by_the_gateway_sends_only_what_was_set() -> None:
    plain = Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7)
    assert plain.model_dump(exclude_unset=True) == {
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "total_tokens": 7,
    }
    cached = Usage(
        prompt_tokens=30,
        completion_tokens=4,
        total_tokens=34,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=20),
    )
    assert cached.model_dump(exclude_unset=True)["prompt_tokens_details"] == {"cached_tokens": 20}


def test_the_openai_sdk_reads_cache_reads_and_writes() -> None:
    answer = json.loads((FIXTURES / "chat.json").read_text())
    answer["usage"] = CACHED_USAGE
    ours = ChatCompletion.model_validate(answer).model_dump(mode="json", exclude_unset=True)

    parsed = openai.types.chat.ChatCompletion.model_validate(ours)
    assert parsed.usage is not None
    assert parsed.usage.prompt_tokens == 2048
    assert parsed.usage.prompt_tokens_details is not None
    assert parsed.usage.prompt_tokens_details.cached_tokens == 1024
    assert parsed.usage.completion_tokens_details is not None
    assert parsed.usage.completion_tokens_details.reasoning_tokens == 30
    assert parsed.usage.prompt_tokens_details.cache_write_tokens == 512
    assert isinstance(parsed.usage, openai.types.CompletionUsage)


# ---------------------------------------------------------------- cost


GPT_4O = Price(input=2.5, output=10.0, cache_read=1.25)
CLAUDE = Price(input=3.0, output=15.0, cache_read=0.3, cache_write=3.75)


def test_cost_without_cached_tokens_is_input_and_output_at_their_prices() -> None:
    counts = TokenCounts(1000, 500)
    assert cost_of(GPT_4O, counts) == (1000 * 2.5 + 500 * 10.0) / 1e6


def test_cache_reads_cost_the_cache_read_price() -> None:
    # 2048 prompt tokens, 1024 of them read from the cache: 1024 at 2.50, 1024 at 1.25.
    counts = TokenCounts(2048, 100, cache_read=1024)
    assert cost_of(GPT_4O, counts) == pytest.approx((1024 * 2.5 + 1024 * 1.25 + 100 * 10) / 1e6)


def test_cache_reads_and_writes_each_at_their_price() -> None:
    counts = TokenCounts(10_000, 200, cache_read=6000, cache_write=3000)
    expected = (1000 * 3.0 + 6000 * 0.3 + 3000 * 3.75 + 200 * 15.0) / 1e6
    assert cost_of(CLAUDE, counts) == pytest.approx(expected)


def test_unset_cache_prices_cost_the_input_price() -> None:
    plain = Price(input=2.0, output=8.0)
    counts = TokenCounts(4000, 100, cache_read=1500, cache_write=500)
    assert cost_of(plain, counts) == pytest.approx(cost_of(plain, TokenCounts(4000, 100)))
    # A cache write price alone: reads still cost input.
    writes = Price(input=2.0, output=8.0, cache_write=4.0)
    assert cost_of(writes, counts) == pytest.approx((3500 * 2.0 + 500 * 4.0 + 100 * 8.0) / 1e6)


def test_more_cached_tokens_than_input_tokens_never_costs_less_than_the_cached_ones() -> None:
    # A provider that counted input without its cache reads (the convention broken):
    # no negative share of fresh input tokens.
    counts = TokenCounts(100, 10, cache_read=900)
    assert cost_of(GPT_4O, counts) == pytest.approx((900 * 1.25 + 10 * 10.0) / 1e6)


def test_no_price_costs_nothing() -> None:
    assert cost_of(None, TokenCounts(1000, 1000, 500, 500)) == 0.0
    assert reservation_cost(None, 1000, 1000) == 0.0


def test_the_reservation_prices_the_prompt_at_the_dearer_of_input_and_cache_write() -> None:
    # Every prompt token might be written to the cache, dearer than input at Anthropic.
    assert reservation_cost(CLAUDE, 1000, 500) == pytest.approx((1000 * 3.75 + 500 * 15) / 1e6)
    assert reservation_cost(GPT_4O, 1000, 500) == pytest.approx((1000 * 2.5 + 500 * 10) / 1e6)
    cheap_writes = Price(input=2.0, output=8.0, cache_write=1.0)
    assert reservation_cost(cheap_writes, 1000, 0) == pytest.approx(1000 * 2.0 / 1e6)
    for counts in (
        TokenCounts(1000, 500),
        TokenCounts(1000, 500, 1000),
        TokenCounts(1000, 500, 0, 1000),
    ):
        assert cost_of(CLAUDE, counts) <= reservation_cost(CLAUDE, 1000, 500)


# ---------------------------------------------------------------- prices


def test_the_packaged_prices_have_cache_prices_where_providers_publish_them() -> None:
    prices = load_settings(None, {}).prices
    assert prices["gpt-4o"] == Price(input=2.5, output=10.0, cache_read=1.25)
    assert prices["gpt-4.1-mini"].cache_read == 0.1
    assert prices["claude-sonnet-4-0"] == CLAUDE
    assert prices["claude-3-5-haiku-latest"].cache_write == 1.0
    # OpenAI neither reports nor charges cache writes.
    assert all(prices[m].cache_write is None for m in ("gpt-4o", "gpt-4o-mini", "o4-mini"))
    # Never dearer to read from the cache than to send the input.
    for name, price in prices.items():
        assert price.cache_read is None or price.cache_read <= price.input, name


def test_a_negative_cache_price_is_refused_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "providers: {demo: {type: mock}}\n"
        "models: {m: {deployments: [{provider: demo, model: mock-chat,"
        " price: {input: 1, output: 1, cache_read: -1}}]}}\n"
    )
    with pytest.raises(ConfigError) as refused:
        load_settings(path, {})
    assert "models.m.deployments[0].price.cache_read" in str(refused.value)


# ---------------------------------------------------------------- counters


def test_usage_event_of_counts() -> None:
    recorded = usage_event("m", TokenCounts(50, 5, 40, 2), 0.25, False)
    assert recorded == UsageEvent("m", 50, 5, 0.25, False, today(), 40, 2)
    assert usage_event("m", NO_TOKENS, 0.0, True) == UsageEvent("m", 0, 0, 0.0, True, today())


def test_usage_table_aggregates_cache_counters_and_merges_them() -> None:
    table = UsageTable()
    table.add("k", event("m", 100, 10, 0.5, day="2025-03-01", cache_read=60))
    table.add("k", event("m", 10, 1, 0.25, day="2025-03-01", cache_write=4, error=True))
    table.add("k", event("m", 1, 1, 0.0, day="2025-03-01"))
    assert table.rows() == [("k", "2025-03-01", "m", 3, 111, 12, 0.75, 1, 60, 4)]

    later = UsageTable()
    later.add("k", event("m", 5, 5, 0.0, day="2025-03-01", cache_read=5, cache_write=1))
    table.merge_into(later)
    assert later.rows() == [("k", "2025-03-01", "m", 4, 116, 17, 0.75, 1, 65, 5)]

    doc = usage_doc("k", [row[1:] for row in later.rows()])
    assert (doc.cache_read_tokens, doc.cache_write_tokens) == (65, 5)
    assert (doc.by_model[0].cache_read_tokens, doc.by_day[0].cache_write_tokens) == (65, 5)


# The usage table as gateways before cache counters made it.
_OLD_SCHEMA = """
CREATE TABLE keys (
    id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL, record TEXT NOT NULL
);
CREATE TABLE usage (
    key_id TEXT NOT NULL,
    day TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, day, model)
);
CREATE TABLE last_used (key_id TEXT PRIMARY KEY, at TEXT NOT NULL);
"""


async def test_an_embedded_database_of_an_earlier_version_gains_the_cache_counters(
    tmp_path: Path,
) -> None:
    key = make_key()
    old = sqlite3.connect(tmp_path / "gateway.db")
    old.executescript(_OLD_SCHEMA)
    old.execute(
        "INSERT INTO keys (id, hash, created_at, record) VALUES (?, ?, ?, ?)",
        (key.id, hash_key("sk-old"), key.created_at.isoformat(), key.model_dump_json()),
    )
    old.execute(
        "INSERT INTO usage VALUES (?, '2025-03-01', 'model-a', 2, 300, 40, 0.5, 1)", (key.id,)
    )
    old.commit()
    old.close()

    for _ in range(2):  # opened twice: the second finds the columns there already
        store = EmbeddedStore(tmp_path, lease_ttl_ms=LEASE_TTL_MS)
        await store.start()
        try:
            found = await store.key_by_hash(hash_key("sk-old"))
            assert found is not None
            assert found.id == key.id
            grant = await store.admit(admission(key))
            await store.settle(
                grant, [event("model-a", 100, 5, 0.25, day="2025-03-01", cache_read=64)]
            )
        finally:
            await store.aclose()

    store = EmbeddedStore(tmp_path, lease_ttl_ms=LEASE_TTL_MS)
    await store.start()
    try:
        doc = await store.usage(key.id)
    finally:
        await store.aclose()
    assert (doc.requests, doc.input_tokens, doc.output_tokens, doc.errors) == (4, 500, 50, 1)
    assert (doc.cache_read_tokens, doc.cache_write_tokens) == (128, 0)
    assert doc.cost_usd == pytest.approx(1.0)


# ---------------------------------------------------------------- Redis only


@pytest.fixture
async def redis_store() -> AsyncIterator[RedisStore]:
    """A Redis store on the shared Redis, under a prefix of its own deleted afterwards."""
    prefix = f"gwtest-{uuid.uuid4().hex}:"
    admin = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    await admin.ping()  # no Redis: an error here, not a store quietly degraded
    store = RedisStore(REDIS_URL, prefix=prefix, lease_ttl_ms=LEASE_TTL_MS)
    await store.start()
    try:
        yield store
    finally:
        await store.aclose()
        names = [name async for name in admin.scan_iter(match=f"{prefix}*", count=500)]
        if names:
            await admin.delete(*names)
        await admin.aclose()


async def test_redis_writes_cache_counters_only_when_there_are_cached_tokens(
    redis_store: RedisStore,
) -> None:
    key = make_key(Limits(rpm=10))
    admin = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    usage_hash = redis_store.keys.tagged(key.id, "usage")
    try:
        await redis_store.settle(await redis_store.admit(admission(key)), [event("a", 10, 1)])
        fields = {f.decode() for f in await admin.hkeys(usage_hash)}
        assert not any("cache" in f for f in fields), fields

        await redis_store.settle(
            await redis_store.admit(admission(key)), [event("a", 10, 1, cache_read=8)]
        )
        fields = {f.decode() for f in await admin.hkeys(usage_hash)}
        assert f"{today()}|a|cache_read_tokens" in fields
        assert not any("cache_write" in f for f in fields), fields

        # A counter a later version writes is left out of this version's documents.
        await admin.hset(usage_hash, f"{today()}|a|cache_write_1h_tokens", 99)
        doc = await redis_store.usage(key.id)
    finally:
        await admin.aclose()
    assert (doc.requests, doc.input_tokens, doc.cache_read_tokens, doc.cache_write_tokens) == (
        2,
        20,
        8,
        0,
    )
