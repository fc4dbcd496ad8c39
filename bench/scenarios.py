"""The load shapes the bench runs, and the gateway configuration they need.

A scenario is one ``Scenario(...)`` line in ``SCENARIOS``; a feature that needs its own
model adds it in ``gateway_config``. Its figures land in the report's tables by
themselves; a new target is a few lines in ``targets.evaluate``.

The translated scenario's model (``TRANSLATED_MODEL``) is served by an ``anthropic``
provider on the same upstream, which answers Anthropic's Messages API too: the
gateway turns the OpenAI request into a Messages one and the Messages events back into
chat chunks. That provider sends no ``mock`` field, so the upstream takes the knobs
from the model name the deployment asks for (``bench-chunks-20``; bench/upstream.py).

The fan-out scenario sends one request for ``FANOUT_MODELS`` to the fan-out route
(``POST /v1/fanout/chat/completions``), three models on the same upstream: the
answer has one choice per model, each of which the checker (bench/wrk/chat.lua) wants
with the whole text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from common import ROOT

# The bench key's limits: high enough never to refuse, so every request takes the full
# path through Redis (admit and settle) without being turned away.
LIMITS = {"rpm": 100_000_000, "tpm": 100_000_000_000, "max_parallel": 100_000}

# The model an OpenAI client asks for to be served through the anthropic provider; its
# answer has TRANSLATED_CHUNKS words, named in the deployment's model for the upstream.
TRANSLATED_MODEL = "bench-translated"
TRANSLATED_CHUNKS = 20

CHAT_PATH = "/v1/chat/completions"
FANOUT_PATH = "/v1/fanout/chat/completions"
# The models one fan-out request asks for: `bench` and two more deployments like it.
FANOUT_MODELS = ("bench", "bench-b", "bench-c")


@dataclass(frozen=True)
class Scenario:
    """One load shape. ``driver``: wrk (throughput, latency) or client (TTFT, held streams)."""

    name: str
    connections: int
    stream: bool = False
    chunks: int = 16  # words in the answer: one per chunk when streaming
    ttft_ms: int = 0
    interval_ms: int = 0
    driver: Literal["wrk", "client"] = "wrk"
    seconds: float | None = None  # None: the mode's default
    ramp: float = 0.0  # client: connections start spread over this long
    timeout: float = 30.0  # client: per request
    rss_every: float | None = None  # record RSS samples this often (the soak)
    model: str = "bench"
    # A fan-out request's models, sent as "models" instead of "model" (to ``path``); the
    # answer has a choice per model, each with the whole text.
    models: tuple[str, ...] = ()
    path: str = CHAT_PATH
    # What serves it on the measured CPU: the gateway (then also the peer, when asked),
    # or the ceiling (bench/ceiling.py, a FastAPI route answering a fixed body).
    server: Literal["gateway", "ceiling"] = "gateway"
    direct: bool = True  # also run it against the upstream directly
    peer: bool = True  # also run it against the peer
    quick: bool = False  # part of --quick
    # The id of a scenario this one is judged against: their runs take turns (run.py).
    beside: str | None = None

    @property
    def id(self) -> str:
        return f"{self.name} c{self.connections}"

    @property
    def choices(self) -> int:
        return len(self.models) or 1

    def url(self, chat_url: str) -> str:
        """This scenario's URL on a system whose chat completions URL is ``chat_url``."""
        return chat_url.removesuffix(CHAT_PATH) + self.path

    def body(self) -> str:
        body: dict[str, Any] = (
            {"models": list(self.models)} if self.models else {"model": self.model}
        )
        body["messages"] = [{"role": "user", "content": "Say the benchmark's words, please."}]
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        body["mock"] = {
            "chunks": self.chunks,
            "ttft_ms": self.ttft_ms,
            "interval_ms": self.interval_ms,
        }
        return json.dumps(body, separators=(",", ":"))

    def expect(self) -> str:
        return "".join(f" w{i}" for i in range(self.chunks))


def _wrk_set(name: str, quick_at: int | None = None, **kw: Any) -> list[Scenario]:
    """The scenario at 1, 16 and 64 connections (``quick_at``: the one --quick runs)."""
    return [Scenario(name, c, quick=c == quick_at, **kw) for c in (1, 16, 64)]


# 10 ms to the first token, then 20 chunks 5 ms apart, timed by the client.
_PACED_TTFT: dict[str, Any] = {
    "stream": True,
    "chunks": 20,
    "ttft_ms": 10,
    "interval_ms": 5,
    "driver": "client",
}

SCENARIOS: list[Scenario] = [
    # The machine's ceiling: what the cheapest FastAPI route costs under the non-stream
    # load at 16 connections (its answer is fixed: the default 16 words, non-stream).
    Scenario("ceiling", 16, server="ceiling", direct=False, peer=False, quick=True),
    *_wrk_set("non-stream", quick_at=16),
    # The non-stream request for three models at once through the fan-out route, in turns
    # with the single call it is judged against. Neither direct (the upstream has no
    # fan-out route) nor on the peer.
    Scenario(
        "fan-out 3 non-stream",
        16,
        models=FANOUT_MODELS,
        path=FANOUT_PATH,
        beside="non-stream c16",
        direct=False,
        peer=False,
        quick=True,
    ),
    *_wrk_set("stream 20", stream=True, chunks=20, quick_at=16),
    *_wrk_set("stream 200", stream=True, chunks=200),
    # The 20-chunk stream at 16 connections, served by the anthropic provider: the same
    # OpenAI request and checks, the upstream answering Anthropic's Messages events. Not
    # direct (the upstream's OpenAI answer is the untranslated scenario's) nor on the peer.
    Scenario(
        "translated stream 20",
        16,
        stream=True,
        chunks=TRANSLATED_CHUNKS,
        model=TRANSLATED_MODEL,
        beside="stream 20 c16",
        direct=False,
        peer=False,
        quick=True,
    ),
    # Time to first token on a lightly loaded gateway: 10 ms to the first token, 20 chunks
    # 5 ms apart. The 4 connections start spread over one stream's length (105 ms) and
    # stay so, as independent clients would: started together, every stream lasts as
    # long, so they stay in lockstep and each first token is measured behind the three
    # requests that arrived with it (the burst below, reported beside it).
    Scenario("paced TTFT", 4, ramp=0.105, **_PACED_TTFT),
    Scenario("TTFT burst of 4", 4, **_PACED_TTFT),
    # The same first token with the gateway kept busy: one connection, streams back to back
    # (the chunks in one burst), as the non-stream latency at 1 connection is measured.
    Scenario("TTFT back to back", 1, stream=True, chunks=20, ttft_ms=10, driver="client"),
    # Chunks arriving one at a time (each stream's 10 ms apart, as a model emits them) at the
    # target rate: 200 streams * 100 chunks/s = 20,000 chunks/s offered. The streams start
    # spread over one stream's length (1.01 s), as for the paced TTFT: started together,
    # their chunks came in bursts of 200 every 10 ms, which the gateway reads in batches
    # (measured side by side: ~50 against ~59 µs/chunk spread).
    Scenario(
        "paced stream 100",
        200,
        stream=True,
        chunks=100,
        ttft_ms=10,
        interval_ms=10,
        driver="client",
        ramp=1.01,
    ),
    Scenario("soak non-stream", 16, seconds=60, rss_every=5, direct=False, peer=False),
    # 2,000 streams open at once: 2 s to the first token, then 10 chunks 500 ms apart.
    Scenario(
        "2,000 held streams",
        2000,
        stream=True,
        chunks=10,
        ttft_ms=2000,
        interval_ms=500,
        driver="client",
        seconds=2,
        ramp=2,
    ),
]


def select(quick: bool, only: str | None) -> list[Scenario]:
    """The scenarios of a run: --quick's, or all; narrowed by --only (ids or name prefixes)."""
    chosen = [s for s in SCENARIOS if s.quick or not quick]
    if only:
        wanted = [w.strip() for w in only.split(",")]
        chosen = [s for s in chosen if any(s.id == w or s.name.startswith(w) for w in wanted)]
    return chosen


def seconds_for(scenario: Scenario, quick: bool) -> float:
    if scenario.seconds is not None:
        return scenario.seconds
    return 5.0 if quick else 8.0


def translates(root: Path = ROOT) -> bool:
    """Whether the gateway/ under ``root`` has the anthropic provider (an earlier commit
    quick mode measures beside this tree may not)."""
    return (root / "gateway" / "providers" / "anthropic").is_dir()


def fans_out(root: Path = ROOT) -> bool:
    """Whether the gateway/ under ``root`` has the fan-out route."""
    return (root / "gateway" / "api" / "fanout.py").is_file()


def lacks(scenario: Scenario, root: Path = ROOT) -> str | None:
    """What the gateway/ under ``root`` lacks to serve ``scenario``, or None."""
    if scenario.model == TRANSLATED_MODEL and not translates(root):
        return "no anthropic provider"
    if scenario.path == FANOUT_PATH and not fans_out(root):
        return "no fan-out route"
    return None


def gateway_config(upstream: str, key: str, data_dir: Path, root: Path = ROOT) -> dict[str, Any]:
    """The gateway's config: models `bench`, `bench-b` and `bench-c` (the fan-out's) on the
    upstream (``.../v1``), and `bench-translated` on it through the anthropic provider
    when the gateway/ under ``root`` has one; one key with Redis limits."""
    price = {"input": 0.15, "output": 0.6}
    providers: dict[str, Any] = {
        # Room for the 2,000 held streams (the default pool is 256 connections).
        "bench-upstream": {"type": "openai", "base_url": upstream, "max_connections": 4096}
    }
    # Every gateway gets the fan-out's models, a base that cannot fan out too: the same
    # config on both sides of quick mode's comparison.
    models: dict[str, Any] = {
        name: {
            "deployments": [
                {"provider": "bench-upstream", "model": "bench-upstream-model", "price": price}
            ]
        }
        for name in FANOUT_MODELS
    }
    if translates(root):
        # The anthropic provider's base_url is the bare origin: it calls {base_url}/v1/messages.
        origin = upstream.removesuffix("/v1")
        providers["bench-anthropic"] = {"type": "anthropic", "base_url": origin, "api_key": "bench"}
        deployment = f"bench-chunks-{TRANSLATED_CHUNKS}"
        models[TRANSLATED_MODEL] = {
            "deployments": [{"provider": "bench-anthropic", "model": deployment, "price": price}]
        }
    return {
        "providers": providers,
        "models": models,
        "keys": [{"name": "bench", "key": key, "models": list(models), "limits": LIMITS}],
        "server": {"redis_prefix": "bench:", "drain_seconds": 1, "data_dir": str(data_dir)},
    }
