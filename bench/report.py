"""bench/RESULTS.md: a full run's figures, the targets' verdicts, the machine and the peer."""

from __future__ import annotations

from common import GATEWAY_CPU, LOAD_CPU, ROOT
from measure import Result, Run
from scenarios import FANOUT_MODELS, FANOUT_PATH, LIMITS, SCENARIOS, TRANSLATED_MODEL
from targets import (
    FANOUT,
    REFERENCE_CEILING_US,
    SINGLE,
    TRANSLATED,
    UNTRANSLATED,
    Target,
    ceiling,
    ratio_vs_peer,
    scale_factor,
)

CEILING_LABEL = "ceiling (FastAPI fixed body)"


def machine_lines(run: Run) -> str:
    m = run.machine
    rows = [
        ("machine", f"{m.get('nproc')} CPUs, {m.get('cpu', '?')}, {m.get('memory', '?')} RAM"),
        ("kernel", m.get("kernel", "?")),
        ("Python", m.get("python", "?")),
        ("gateway", f"{m.get('gateway', '?')} at {m.get('commit', '?')}"),
        ("packages", m.get("packages", "?")),
        ("load", f"{m.get('wrk', 'wrk')}; bench/client.py (asyncio + uvloop)"),
        ("Redis", f"{m.get('redis', '?')} (the bench's own redis-server, on CPU {LOAD_CPU})"),
        ("date", run.started),
        ("machine load", run.quiet or "?"),
        (
            "CPU speed",
            f"a fixed Python workload took {run.calibration_ms:.0f} ms on CPU {GATEWAY_CPU} "
            "at the start (bench/machine.py `calibrate`; lower is faster)"
            if run.calibration_ms
            else "not measured",
        ),
        (
            "wake-up",
            f"a one-byte round trip from CPU {LOAD_CPU} to CPU {GATEWAY_CPU} takes "
            f"{run.wake_us[0]:.0f} µs back to back and {run.wake_us[1]:.0f} µs after 10 ms idle "
            "(bench/machine.py `wake_latency`): what each hop of a lightly loaded request "
            "pays to wake the gateway's CPU"
            if run.wake_us
            else "not measured",
        ),
    ]
    return "\n".join(f"- **{k}**: {v}" for k, v in rows)


def _f(value: float | None, fmt: str = ".2f") -> str:
    return "—" if value is None else f"{value:{fmt}}"


def _added(g: float | None, d: float | None, fmt: str = "+.3f") -> str:
    return "—" if g is None or d is None else f"{g - d:{fmt}}"


def _setup() -> str:
    return (
        "**Setup.** The gateway (`python -m gateway serve`, one uvicorn worker) is pinned to "
        f"CPU {GATEWAY_CPU}; the lean upstream (bench/upstream.py), wrk (1 thread), "
        f"bench/client.py and the bench's own Redis (redis-server on a free port, no "
        f"persistence, started and stopped by the run) share CPU {LOAD_CPU}. Full hot path: "
        f"a key with Redis limits (rpm {LIMITS['rpm']:,}, tpm {LIMITS['tpm']:,}, "
        f"max_parallel {LIMITS['max_parallel']:,}: auth, one Redis admit, validation, one "
        "Redis settle, usage), model `bench` on an `openai` provider pointing at the upstream; "
        f"the translated stream's model `{TRANSLATED_MODEL}` on an `anthropic` provider pointing "
        "at the same upstream, which answers it with Anthropic's Messages events (the "
        "gateway's OpenAI stream then has a chunk more at each end: the role's and the "
        "finish reason's, which carry no word); the fan-out's models "
        f"{', '.join(f'`{m}`' for m in FANOUT_MODELS)}, three deployments like `bench` on "
        f"the same provider, asked for in one request to `{FANOUT_PATH}` (one choice per "
        "model, each checked). "
        "The gateway logs at INFO (one access line per request, as shipped) to a file. Every "
        "answer is checked (status 200, the exact text; streams end with `data: [DONE]`). CPU "
        "is the gateway process's own utime+stime over the scenario, divided by completed "
        "requests, and by requests * chunks for streams (chunks = content chunks; the usage "
        "chunk and [DONE] are not counted, so µs/chunk includes the per-request cost spread "
        "over them). *Added* latency/TTFT = gateway minus direct, same scenario, same run. "
        "CPU % is that of the system under test (of the upstream on direct rows). Redis CPU "
        "µs/req is the bench's Redis server's own CPU time per request. Streams ask for "
        "`include_usage`. The ceiling (bench/ceiling.py) is a FastAPI app whose one route "
        "reads the body and returns a fixed chat.completion, served as the gateway is "
        f"(uvicorn, uvloop + httptools, one worker, no access log) on CPU {GATEWAY_CPU} under "
        "the non-stream load at 16 connections."
    )


def _targets(run: Run, targets: list[Target]) -> list[str]:
    factor = scale_factor(run)
    L = [
        "## Targets (README.md, Performance)",
        "",
        "| target | measured | scaled to the reference | |",
        "|---|---|---|---|",
    ]
    L += [f"| {t.name} | {t.measured} | {t.scaled(factor)} | **{t.verdict}** |" for t in targets]
    c = ceiling(run)
    L.append("")
    if factor is None or c is None:
        L.append("*Scaled to the reference*: not computed (no ceiling in this run).")
    else:
        L.append(
            f"*Scaled to the reference* = measured x ({REFERENCE_CEILING_US:.0f} / "
            f"{c.cpu_us_req:.0f}) = measured x {factor:.2f}: the ceiling (the cheapest FastAPI "
            f"route, same load, same CPU, measured once at the start of the run) costs {c.cpu_us_req:.0f} µs/request on this machine "
            f"against {REFERENCE_CEILING_US:.0f} µs on the reference machine. Time "
            "figures only; verdicts are on the measured figures."
        )
    return L


def _throughput(run: Run, label: dict[str, str]) -> list[str]:
    L = [
        "## Throughput and latency (wrk, every response checked)",
        "",
        "| scenario | system | req/s | vs direct | p50 ms | p99 ms | added p50 ms "
        "| added p99 ms | CPU µs/req | CPU µs/chunk | CPU % | Redis CPU µs/req | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in SCENARIOS:
        if s.driver != "wrk" or s.rss_every:
            continue
        d = run.get(s.id, "direct")
        for kind in ("direct", "ceiling", "gateway", "peer"):
            r = run.get(s.id, kind)
            if r is None:
                continue
            direct = kind == "direct"
            vs = "1" if direct else (f"{r.rps / d.rps:.3f}" if d and d.rps else "—")
            L.append(
                f"| {s.id} | {label[kind]} | {r.rps:,.0f} | {vs} | {_f(r.p50_ms, '.3f')} "
                f"| {_f(r.p99_ms, '.2f')} "
                f"| {'' if direct or not d else _added(r.p50_ms, d.p50_ms)} "
                f"| {'' if direct or not d else _added(r.p99_ms, d.p99_ms, '+.2f')} "
                f"| {'' if direct else _f(r.cpu_us_req, '.0f')} "
                f"| {'' if direct or not s.stream else _f(r.cpu_us_chunk, '.1f')} "
                f"| {r.cpu_pct:.0f} | {_f(r.redis_us_req, '.0f') if kind == 'gateway' else ''} "
                f"| {r.errors} |"
            )
    pairs = [
        (s.id, d.rps / g.rps)
        for s in SCENARIOS
        if s.driver == "wrk"
        and (d := run.get(s.id, "direct"))
        and (g := run.get(s.id, "gateway"))
        and g.rps
    ]
    bottleneck = [f"{sid} (direct only {x:.1f}x the gateway)" for sid, x in pairs if x < 3]
    L.append("")
    t, u = run.get(TRANSLATED, "gateway"), run.get(UNTRANSLATED, "gateway")
    if t and u and t.cpu_us_chunk and u.cpu_us_chunk:
        L.append(
            f"{TRANSLATED} (OpenAI ingress, anthropic upstream: every event translated): "
            f"{t.cpu_us_chunk:.1f} µs/chunk, {t.cpu_us_chunk / u.cpu_us_chunk:.2f}x the "
            f"{u.cpu_us_chunk:.1f} of {UNTRANSLATED} (the same stream relayed untranslated). "
            "It is not run directly: the upstream's direct answer would be the other's."
        )
        L.append("")
    f, one = run.get(FANOUT, "gateway"), run.get(SINGLE, "gateway")
    if f and one and f.cpu_us_req and one.cpu_us_req:
        L.append(
            f"{FANOUT} (one request to {len(FANOUT_MODELS)} models, an upstream call each, "
            f"one answer with a choice per model): {f.cpu_us_req:.0f} µs/request, "
            f"{f.cpu_us_req / one.cpu_us_req:.2f}x the {one.cpu_us_req:.0f} of {SINGLE} "
            "(a single call). It is not run directly: the upstream has no fan-out route."
        )
        L.append("")
    if bottleneck:
        L.append(
            "**Warning:** the direct figure is less than 3x the gateway's in "
            + ", ".join(bottleneck)
            + ": the upstream or wrk may bound those figures."
        )
    elif pairs:
        ratios = [x for _, x in pairs]
        L.append(
            f"The direct upstream (same load generator, same CPU) is {min(ratios):.1f}x to "
            f"{max(ratios):.1f}x the gateway's req/s: the upstream is not the bottleneck."
        )
    return L


def _client(run: Run, label: dict[str, str]) -> list[str]:
    L = [
        "## Time to first token and held streams (bench/client.py)",
        "",
        "| scenario | system | completed | streams/s | TTFT p50 ms | added TTFT p50 ms "
        "| latency p50 ms | streaming at once | CPU µs/req | CPU µs/chunk | CPU % | peak RSS MB | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    shapes = [s for s in SCENARIOS if s.driver == "client"]
    for s in shapes:
        d = run.get(s.id, "direct")
        for kind in ("direct", "gateway", "peer"):
            r = run.get(s.id, kind)
            if r is None:
                continue
            other = kind != "direct"
            L.append(
                f"| {s.id} | {label[kind]} | {r.ok:,} | {r.rps:,.1f} | {_f(r.ttft_p50_ms, '.2f')} "
                f"| {_added(r.ttft_p50_ms, d and d.ttft_p50_ms) if other else ''} "
                f"| {_f(r.p50_ms, '.1f')} | {r.max_streaming:,} "
                f"| {_f(r.cpu_us_req, '.0f') if other else ''} "
                f"| {_f(r.cpu_us_chunk, '.1f') if other else ''} | {r.cpu_pct:.0f} "
                f"| {f'{r.rss_max_mb:.0f} (VmHWM {r.hwm_mb:.0f})' if other else ''} | {r.errors} |"
            )
    for s in shapes:
        L.append(
            f"\n{s.id}: {s.connections:,} connections started over {s.ramp:g} s, "
            f"first token after {s.ttft_ms} ms, {s.chunks} chunks {s.interval_ms} ms apart."
        )
    return L


def _soak(run: Run) -> list[str]:
    soak = run.get("soak non-stream c16", "gateway")
    if soak is None:
        return []
    L = [
        "",
        "## Soak (non-stream, 16 connections, 60 s)",
        "",
        f"{soak.rps:,.0f} req/s, CPU {_f(soak.cpu_us_req, '.0f')} µs/request, "
        f"p99 {_f(soak.p99_ms)} ms, {soak.errors} errors. Gateway RSS (MB) every 5 s "
        "(the first sample is taken before the load; drift is last vs the 5 s sample):",
        "",
        "| t (s) | " + " | ".join(f"{t:g}" for t, _ in soak.rss_samples) + " |",
        "|---|" + "---:|" * len(soak.rss_samples),
        "| RSS MB | " + " | ".join(f"{v:.1f}" for _, v in soak.rss_samples) + " |",
    ]
    L.append(
        f"\nThe gateway's peak RSS (VmHWM) over the whole run: {run.of('gateway')[-1].hwm_mb:.0f} MB."
    )
    return L


def _peer(run: Run) -> list[str]:
    peer = run.peer
    L = ["", "## Peer", ""]
    if not peer:
        L.append("No peer in this run (`python bench/run.py --peer litellm` adds LiteLLM's proxy).")
        return L
    status = peer.get("status", "")
    first, _, rest = status.partition("\n")
    L.append(f"- **{peer.get('name')}** {peer.get('version', '')}: {first}")
    if rest.strip():
        L += ["", "```", rest.strip()[-3000:], "```", ""]
    if peer.get("cmd"):
        L.append(f"- started as `{peer['cmd']}`, pinned to CPU {GATEWAY_CPU}")
    if peer.get("note"):
        L.append(f"- {peer['note']}; it runs with its master key only")
    if status == "ran":
        L.append("- the soak is not run against the peer")
    peak = [r.hwm_mb for r in run.of("peer")]
    if peak:
        L.append(f"- its peak RSS (VmHWM) over the run: {max(peak):.0f} MB")
    ratios = [(s.id, x) for s in SCENARIOS if (x := ratio_vs_peer(run, s.id)) is not None]
    if ratios:
        L.append("- gateway ÷ peer req/s: " + ", ".join(f"{sid} {x:.1f}x" for sid, x in ratios))
    return L


def _contention(results: list[Result]) -> str:
    shared = [
        f"{r.scenario} on {r.system} ({r.other_pct:.0f}%)"
        for r in results
        if r.kind != "direct" and r.other_pct > 5
    ]
    if not shared:
        return (
            f"- CPU {GATEWAY_CPU} was not shared: other processes used under 5% of it in "
            "every scenario."
        )
    return (
        f"- **CPU {GATEWAY_CPU} was shared** with other processes (another load on the "
        "machine) during: "
        + ", ".join(shared)
        + ". Requests/s and latency there are lower bounds; CPU µs per request counts only "
        "the measured process and holds better."
    )


def render(run: Run, targets: list[Target], took: float, failed: str | None) -> str:
    peer_label = run.peer.get("name", "")
    if run.peer.get("note"):
        peer_label += f" ({run.peer['note']})"
    label = {
        "direct": "direct",
        "gateway": "**gateway**",
        "ceiling": CEILING_LABEL,
        "peer": peer_label,
    }
    L = [
        "# Benchmark results",
        "",
        f"Written by `{run.command}` (bench/run.py); do not edit by hand.",
        "",
        machine_lines(run),
        "",
        _setup(),
        "",
        *_targets(run, targets),
    ]
    if failed:
        L += ["", f"**The run did not complete:** {failed.splitlines()[0]}"]
    own = [p for p in run.problems if not p.startswith("peer")]
    L += ["", "## Errors", ""]
    L += (
        [f"- **{p}**" for p in own]
        if own
        else ["None on the gateway, the ceiling or the direct upstream: every answer was checked."]
    )
    L += [f"- {p}" for p in run.problems if p.startswith("peer")]
    L += ["", *_throughput(run, label), "", *_client(run, label), *_soak(run), *_peer(run)]
    L += [
        "",
        "## Notes",
        "",
        f"- The gateway's log of this run: `{run.gateway_log}` (git-ignored, as all of "
        "bench/out/). Raw figures: bench/out/results-*.json.",
        "- The gateway's own CPU use with no load (after the warm-up, over 2 s): "
        + (f"{run.idle_cpu_pct:.1f}%." if run.idle_cpu_pct is not None else "not measured."),
        _contention(run.results),
        "- The provider has `max_connections: 4096` so that 2,000 streams fit in its pool "
        "(the default is 256).",
        f"- The whole run took {took:.0f} s.",
        "",
    ]
    return "\n".join(L).replace(str(ROOT) + "/", "")
