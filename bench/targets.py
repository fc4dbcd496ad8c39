"""The performance targets (README.md, "Performance"), judged on a run's figures, and
the machine's scale factor.

Verdicts are on the measured figures. Beside them, time figures are also shown scaled to
the reference machine the targets were set on: measured x (73 µs / this machine's ceiling), the
ceiling being the cheapest FastAPI route (bench/ceiling.py) under the same load on the
same CPU; so a reader sees how much of a miss is the machine.
"""

from __future__ import annotations

from dataclasses import dataclass

from measure import Result, Run
from scenarios import SCENARIOS

REFERENCE_CEILING_US = 73.0  # the reference machine's FastAPI route answering itself, µs/request

# A stream translated from Anthropic's events costs at most this many times the CPU per
# chunk of the same stream relayed from an OpenAI upstream.
TRANSLATED, UNTRANSLATED = "translated stream 20 c16", "stream 20 c16"
TRANSLATED_RATIO = 1.5

# One request fanned out to three models costs at most this many times the CPU per
# request of a single call (non-stream, 16 connections).
FANOUT, SINGLE = "fan-out 3 non-stream c16", "non-stream c16"
FANOUT_RATIO = 2.5


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    verdict: str  # PASS, FAIL or n/a
    value: float | None = None  # a time figure, which scales with the machine's speed
    fmt: str = ""
    unit: str = ""

    def scaled(self, factor: float | None) -> str:
        if factor is None or self.value is None:
            return "—"
        return f"{self.value * factor:{self.fmt}}{self.unit}"


def ceiling(run: Run) -> Result | None:
    return next((r for r in run.of("ceiling") if r.cpu_us_req), None)


def scale_factor(run: Run) -> float | None:
    """Reference ceiling ÷ this machine's: figures x this = the reference machine's."""
    c = ceiling(run)
    return REFERENCE_CEILING_US / c.cpu_us_req if c and c.cpu_us_req else None


def ratio_vs_peer(run: Run, scenario: str) -> float | None:
    g, p = run.get(scenario, "gateway"), run.get(scenario, "peer")
    if g is None or p is None or not g.rps:
        return None
    if not p.rps:
        return float("inf")
    return g.rps / p.rps


def translated_target(translated: float | None, untranslated: float | None) -> Target:
    """The translated stream's CPU per chunk against the untranslated one's (µs/chunk
    each, measured in the same run), judged on their ratio, which no machine scales."""
    name = (
        f"translated stream: CPU/chunk ≤ {TRANSLATED_RATIO:g}x the untranslated "
        "(OpenAI ingress, anthropic upstream, 20-chunk streams, 16 conns)"
    )
    if translated is None or not untranslated:
        return Target(name, "not measured", "n/a")
    ratio = translated / untranslated
    measured = f"{ratio:.2f}x ({translated:.1f} against {untranslated:.1f} µs/chunk)"
    return Target(name, measured, "PASS" if ratio <= TRANSLATED_RATIO else "FAIL")


def fanout_target(fanout: float | None, single: float | None) -> Target:
    """The fan-out to three models' CPU per request against a single call's (µs/request
    each, measured in the same run), judged on their ratio, which no machine scales."""
    name = f"fan-out to 3: CPU/request ≤ {FANOUT_RATIO:g}x a single call (non-stream, 16 conns)"
    if fanout is None or not single:
        return Target(name, "not measured", "n/a")
    ratio = fanout / single
    measured = f"{ratio:.2f}x ({fanout:.0f} against {single:.0f} µs/request)"
    return Target(name, measured, "PASS" if ratio <= FANOUT_RATIO else "FAIL")


def evaluate(run: Run) -> list[Target]:
    """Each performance target (README.md), with what this run measured for it."""
    out: list[Target] = []

    def add(name: str, value: float | None, limit: float, fmt: str, unit: str) -> None:
        if value is None:
            out.append(Target(name, "not measured", "n/a"))
        else:
            verdict = "PASS" if value <= limit else "FAIL"
            out.append(Target(name, f"{value:{fmt}}{unit}", verdict, value, fmt, unit))

    def gw(scenario: str, attr: str) -> float | None:
        r = run.get(scenario, "gateway")
        return None if r is None else getattr(r, attr)

    def added(scenario: str, attr: str) -> float | None:
        g, d = gw(scenario, attr), run.get(scenario, "direct")
        return None if g is None or d is None or getattr(d, attr) is None else g - getattr(d, attr)

    add(
        "non-stream: gateway CPU ≤ 400 µs/request at 16 conns",
        gw("non-stream c16", "cpu_us_req"),
        400,
        ".0f",
        " µs",
    )
    add("non-stream: added p50 ≤ 1 ms at 1 conn", added("non-stream c1", "p50_ms"), 1, ".3f", " ms")
    add(
        "non-stream: added p99 ≤ 15 ms at 16 conns",
        added("non-stream c16", "p99_ms"),
        15,
        ".2f",
        " ms",
    )
    if out[-1].value is not None:
        t = out[-1]
        gateway_p99 = f" (gateway p99 {gw('non-stream c16', 'p99_ms'):.2f} ms)"
        out[-1] = Target(t.name, t.measured + gateway_p99, t.verdict, t.value, t.fmt, t.unit)
    add(
        "stream: gateway CPU ≤ 50 µs/chunk (200-chunk streams, 16 conns, back to back)",
        gw("stream 200 c16", "cpu_us_chunk"),
        50,
        ".1f",
        " µs",
    )
    add(
        "stream: gateway CPU ≤ 50 µs/chunk (one at a time: 200 streams, 10 ms apart)",
        gw("paced stream 100 c200", "cpu_us_chunk"),
        50,
        ".1f",
        " µs",
    )
    out.append(translated_target(gw(TRANSLATED, "cpu_us_chunk"), gw(UNTRANSLATED, "cpu_us_chunk")))
    out.append(fanout_target(gw(FANOUT, "cpu_us_req"), gw(SINGLE, "cpu_us_req")))
    add(
        "stream: added TTFT p50 ≤ 1 ms (paced, 4 streams)",
        added("paced TTFT c4", "ttft_p50_ms"),
        1,
        ".3f",
        " ms",
    )
    back_to_back = added("TTFT back to back c1", "ttft_p50_ms")
    burst = added("TTFT burst of 4 c4", "ttft_p50_ms")
    if out[-1].value is not None and back_to_back is not None:
        t = out[-1]
        note = f" (back to back at 1 conn: {back_to_back:+.3f} ms"
        note += f"; 4 arriving at once: {burst:+.3f} ms)" if burst is not None else ")"
        out[-1] = Target(t.name, t.measured + note, t.verdict, t.value, t.fmt, t.unit)
    name = "2,000 concurrent streams: zero errors, < 500 MB RSS"
    r = run.get("2,000 held streams c2000", "gateway")
    if r is None:
        out.append(Target(name, "not measured", "n/a"))
    else:
        good = r.errors == 0 and r.max_streaming >= 2000 and r.hwm_mb < 500
        measured = (
            f"{r.ok} completed, {r.errors} errors, {r.max_streaming} streaming at once, "
            f"peak RSS {r.hwm_mb:.0f} MB"
        )
        out.append(Target(name, measured, "PASS" if good else "FAIL"))
    name = "soak: RSS drift < 10% over 60 s"
    r = run.get("soak non-stream c16", "gateway")
    if r is None or len(r.rss_samples) < 3:
        out.append(Target(name, "not measured", "n/a"))
    else:
        first, last = r.rss_samples[1][1], r.rss_samples[-1][1]  # [0] is before the load
        drift = last / first - 1
        measured = f"{drift:+.1%} ({first:.1f} → {last:.1f} MB)"
        out.append(Target(name, measured, "PASS" if drift < 0.10 else "FAIL"))
    out += _versus_peer(run)
    return out


def _versus_peer(run: Run) -> list[Target]:
    if not run.peer:
        return [Target("≥ 30x the peer's req/s", "no peer in this run", "n/a")]
    if run.peer.get("status") != "ran":
        status = run.peer["status"].splitlines()[0]
        return [Target("≥ 30x the peer's req/s", f"the peer {status}", "n/a")]
    out = []
    name = "≥ 30x the peer's req/s (non-stream, 16 conns)"
    ratio = ratio_vs_peer(run, "non-stream c16")
    if ratio is None:
        out.append(Target(name, "not measured", "n/a"))
    else:
        out.append(Target(name, f"{ratio:.1f}x", "PASS" if ratio >= 30 else "FAIL"))
    ratios = {s.id: ratio_vs_peer(run, s.id) for s in SCENARIOS}
    measured = {sid: x for sid, x in ratios.items() if x is not None}
    slower = [f"{sid} ({x:.2f}x)" for sid, x in measured.items() if x < 1]
    name = "no scenario slower than the peer"
    if slower:
        out.append(Target(name, "slower in " + ", ".join(slower), "FAIL"))
    elif measured:
        out.append(Target(name, f"lowest ratio {min(measured.values()):.1f}x", "PASS"))
    else:
        out.append(Target(name, "not measured", "n/a"))
    return out
