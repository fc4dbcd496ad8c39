"""The gateway's benchmark: every scenario against the gateway, the upstream directly, a peer.

    python bench/run.py                     # full: all scenarios, writes bench/RESULTS.md
    python bench/run.py --peer litellm      # ... with LiteLLM's proxy beside it
    python bench/run.py --peer-cmd 'CMD --port {port}' --peer-name NAME [--peer-key KEY]
    python bench/run.py --quick             # the regression check: this tree beside the baseline's commit
    python bench/run.py --quick --against REV
    python bench/run.py --quick --update-baseline

What runs (all on 127.0.0.1, all bounded in time, all stopped at the end): the bench's
own Redis, the lean upstream (bench/upstream.py) and the load generators (wrk with
bench/wrk/chat.lua; bench/client.py for time to first token and held streams) on CPU 1;
on CPU 0, in turn, the ceiling (bench/ceiling.py, the cheapest FastAPI route), the
gateway (`python -m gateway serve`, one uvicorn worker, Redis limits on every request)
and the peer.

This module is the command line and the order of the run; beside it: scenarios.py (the
load shapes), procs.py (starting and stopping), measure.py (one load and its cost),
machine.py (the machine), targets.py (the README's targets), report.py (RESULTS.md),
quick.py (quick mode's verdict).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from against import Source, extract, unchanged_since
from common import BENCH, GATEWAY_CPU, LOAD_CPU, OUT, loud, say, shown
from machine import (
    calibrate,
    ensure_tools,
    machine_info,
    raise_fd_limit,
    wait_quiet,
    wake_latency,
)
from measure import Run, System, cpu_seconds, record, run_load, warm_up
from procs import (
    PEER_SCRIPTS,
    Popen,
    Processes,
    start_ceiling,
    start_gateway,
    start_peer,
    start_redis,
    start_upstream,
)
from quick import baseline_commit, quick_verdict
from report import render
from scenarios import Scenario, lacks, seconds_for, select
from targets import evaluate, scale_factor


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The gateway's benchmark.", formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the regression check (~1 minute)")
    parser.add_argument(
        "--update-baseline", action="store_true", help="with --quick: write bench/baseline.json"
    )
    parser.add_argument("--runs", type=int, default=3, help="--quick: runs per scenario")
    parser.add_argument(
        "--against",
        metavar="REV",
        help="--quick: measure gateway/ as of REV beside this tree's (default: the commit "
        "bench/baseline.json was recorded at; 'none': judge on its recorded figures)",
    )
    parser.add_argument(
        "--base-quiet",
        action="store_true",
        help="--quick: the base gateway runs without metrics and access log; with "
        "--against HEAD, the difference is what they cost",
    )
    parser.add_argument("--out", type=Path, help="default: bench/RESULTS.md, bench/out/quick.md")
    parser.add_argument("--peer", choices=sorted(PEER_SCRIPTS), help="a known peer gateway")
    parser.add_argument("--peer-cmd", help="a peer's start command; {port} {upstream} {key}")
    parser.add_argument("--peer-name", help="the peer's name (with --peer-cmd)")
    parser.add_argument("--peer-key", help="the key the peer accepts (default: a random one)")
    parser.add_argument("--peer-note", help="a note for the peer's rows")
    parser.add_argument("--peer-start-timeout", type=float, default=120.0)
    parser.add_argument(
        "--only",
        help="comma-separated scenario ids ('stream 20 c16') or name prefixes ('paced')",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to this long for an idle machine before starting (default: check once)",
    )
    args = parser.parse_args(argv)
    if args.peer_cmd and not args.peer_name:
        parser.error("--peer-cmd needs --peer-name")
    if args.peer and args.peer_cmd:
        parser.error("--peer and --peer-cmd exclude each other")
    if args.update_baseline:
        args.quick = True
    if args.against and not args.quick:
        parser.error("--against is for --quick")
    if args.base_quiet and not args.quick:
        parser.error("--base-quiet is for --quick")
    if args.quick and (args.peer or args.peer_cmd):
        parser.error("--quick runs the gateway against the direct upstream only")
    if args.update_baseline and args.only:
        parser.error("--update-baseline records every quick figure: no --only")
    return args


@contextlib.contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, stop) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def prune_outputs(keep: int = 4) -> None:
    """bench/out keeps the last few runs (a full run's gateway log is ~40 MB)."""
    if not OUT.is_dir():
        return
    for pattern in ("run-*", "results-*.json"):
        for old in sorted(OUT.glob(pattern), key=lambda p: p.stat().st_mtime)[:-keep]:
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)


def run_phase(
    run: Run,
    systems: list[tuple[System, Popen]],
    scenarios: list[Scenario],
    quick: bool,
    runs: int = 1,
    upstream: System | None = None,
    base_lacks: frozenset[str] = frozenset(),
) -> None:
    """Each scenario against ``upstream`` directly (when given), then ``runs`` times against
    each of ``systems``, interleaved and in turns of alternating order, so that a drift of the
    machine's speed falls on all of them alike (in quick mode each gateway run is preceded by
    the calibration workload); a scenario judged against another (``beside``) takes its turns
    with that one's, for the same reason. The base gateway skips those in ``base_lacks``."""
    for group in _beside(scenarios):
        for scenario in group:
            if upstream is not None and scenario.direct:
                record(run, run_load(scenario, upstream, seconds_for(scenario, quick)))
        for turn in range(runs):
            for scenario in group:
                _turn(run, scenario, systems, quick, turn, base_lacks)


def _beside(scenarios: list[Scenario]) -> list[list[Scenario]]:
    """The scenarios in groups, in order: one ``beside`` an earlier one joins its group."""
    groups: list[list[Scenario]] = []
    by_id: dict[str, list[Scenario]] = {}
    for scenario in scenarios:
        group = by_id.get(scenario.beside or "")
        if group is None:
            group = []
            groups.append(group)
        group.append(scenario)
        by_id[scenario.id] = group
    return groups


def _turn(
    run: Run,
    scenario: Scenario,
    systems: list[tuple[System, Popen]],
    quick: bool,
    turn: int,
    base_lacks: frozenset[str],
) -> None:
    """One run of ``scenario`` against each of ``systems``, in the turn's order."""
    seconds = seconds_for(scenario, quick)
    on = [x for x in systems if x[0].kind != "base" or scenario.id not in base_lacks]
    for system, proc in on if turn % 2 == 0 else on[::-1]:
        gateway = system.kind in ("gateway", "base")
        calibration = calibrate() if quick and gateway else None
        result = run_load(scenario, system, seconds)
        result.calibration_ms = calibration
        record(run, result)
        if proc.poll() is not None:
            raise RuntimeError(f"{system.label} exited with {proc.returncode} during {scenario.id}")


def warm_up_models(system: System, scenarios: list[Scenario]) -> None:
    """A second of each scenario whose models or route the common warm-up (model
    ``bench``) leaves cold (the translated stream's: another provider, its own
    connections; the fan-out's: its route, two more models); its errors stop the run
    before any figure is taken."""
    cold = [s for s in scenarios if s.model != "bench" or s.models]
    for scenario in {(s.model, s.models, s.path): s for s in cold}.values():
        result = run_load(scenario, system, 1)
        if result.errors:
            raise RuntimeError(
                f"{system.label} fails the warm-up of model {scenario.model}: "
                f"{result.errors} errors ({result.sample})"
            )


def base_source(args: argparse.Namespace, log_dir: Path) -> Source | None:
    """The earlier gateway quick mode measures beside this tree's, or None (and why, said)."""
    if not args.quick or args.update_baseline or args.against == "none":
        return None
    rev = args.against
    if rev is None:
        recorded = baseline_commit()
        if recorded is None:
            say("no commit in bench/baseline.json to measure beside this tree")
            return None
        rev = recorded
    source = extract(rev, log_dir)
    if isinstance(source, str):
        loud(f"cannot measure {rev} beside this tree: {source}")
        return None
    same = " (gateway/ is the same in both: the difference is the machine's noise)"
    say(
        f"measuring gateway/ as of {source.commit} beside this tree's"
        + (same if unchanged_since(source.commit) else "")
    )
    return source


def measure_gateway(
    run: Run,
    procs: Processes,
    args: argparse.Namespace,
    scenarios: list[Scenario],
    log_dir: Path,
    base: Source | None,
) -> System:
    """Redis, the upstream and the gateway (and the ``base`` one beside it, idle while the
    other is measured); the gateway's scenarios. Returns the upstream."""
    redis = start_redis(procs, log_dir)
    say(f"Redis on CPU {LOAD_CPU} (pid {redis[1]}): 127.0.0.1:{redis[0]}")
    upstream = start_upstream(procs, log_dir)
    say(f"upstream on CPU {LOAD_CPU}: {upstream.url}")
    systems = [start_gateway(procs, upstream, log_dir, redis)]
    if base is not None:
        try:
            systems.append(
                start_gateway(procs, upstream, log_dir, redis, base, quiet=args.base_quiet)
            )
        except RuntimeError as exc:  # say, an older gateway that rejects today's config
            loud(f"the gateway as of {base.commit} failed to start; going on without it: {exc}")
            run.base = ""
    missing = {s.id: lacks(s, base.root) for s in scenarios} if base is not None else {}
    base_lacks = frozenset(sid for sid, why in missing.items() if why)
    if base_lacks and len(systems) > 1:
        for sid in sorted(base_lacks):
            say(
                f"{systems[1][0].label} has {missing[sid]}: {sid} runs on this tree's gateway "
                "only (no side-by-side figure)"
            )
    for system, _ in systems:
        say(f"{system.label} on CPU {GATEWAY_CPU} (pid {system.pid}): {system.url}")
        warm_up(system)
        skipped = base_lacks if system.kind == "base" else frozenset()
        warm_up_models(system, [s for s in scenarios if s.id not in skipped])
    gateway = systems[0][0]
    run.gateway_log = shown(log_dir / "gateway.log")
    idle0 = cpu_seconds(gateway.pid)
    time.sleep(2.0)
    run.idle_cpu_pct = 100 * (cpu_seconds(gateway.pid) - idle0) / 2.0
    say(f"gateway idle CPU: {run.idle_cpu_pct:.1f}%")
    runs = args.runs if args.quick else 1
    run_phase(run, systems, scenarios, args.quick, runs, upstream, base_lacks)
    for system, proc in systems:
        procs.stop(proc)
        code = proc.returncode
        say(f"{system.label} stopped ({'SIGTERM' if code == -signal.SIGTERM else f'exit {code}'})")
    return upstream


def measure_ceiling(
    run: Run, procs: Processes, scenarios: list[Scenario], quick: bool, log_dir: Path
) -> None:
    """The ceiling's scenario, once: what the cheapest FastAPI route costs on this CPU.
    A failure is reported and the run goes on (only the scaled figures are missing)."""
    proc: Popen | None = None
    try:
        ceiling, proc = start_ceiling(procs, log_dir)
        say(f"ceiling on CPU {GATEWAY_CPU} (pid {ceiling.pid}): {ceiling.url}")
        warm_up(ceiling, stream=False)
        run_phase(run, [(ceiling, proc)], scenarios, quick)
    except RuntimeError as exc:
        loud(f"the ceiling failed; the run goes on without it: {exc}")
        run.problems.append(f"ceiling: {str(exc).splitlines()[0]}")
    finally:
        if proc is not None:
            procs.stop(proc)
    factor = scale_factor(run)
    if factor:
        say(f"scaled to the reference machine: measured x {factor:.2f}")


def measure_peer(
    run: Run,
    procs: Processes,
    args: argparse.Namespace,
    scenarios: list[Scenario],
    upstream: System,
) -> None:
    started = start_peer(procs, args, upstream, run)
    if started is None:
        return
    peer, proc = started
    say(f"peer on CPU {GATEWAY_CPU} (pid {peer.pid}): {peer.url}")
    try:
        warm_up(peer)
        run_phase(run, [(peer, proc)], scenarios, False)
    except RuntimeError as exc:
        run.peer["status"] = f"failed during the run: {exc}"
        loud(f"the peer failed during the run: {exc}")
        run.problems.append(f"peer: {str(exc).splitlines()[0]}")
    procs.stop(proc)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_tools()
    raise_fd_limit()
    prune_outputs()
    quiet = wait_quiet(args.wait_quiet)
    say(quiet)
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC)
    run = Run(
        mode="quick" if args.quick else "full",
        started=stamp.strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine_info(),
        quiet=quiet,
        calibration_ms=calibrate(),
        wake_us=wake_latency(),
        command=shlex.join(["python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)]),
    )
    if args.update_baseline and " " in run.machine.get("commit", " "):
        # The baseline names the commit quick mode measures beside later trees.
        loud("--update-baseline records a commit: commit gateway/ first")
        return 1
    log_dir = OUT / f"run-{stamp:%Y%m%d-%H%M%S}"
    scenarios = select(args.quick, args.only)
    on_gateway = [s for s in scenarios if s.server == "gateway"]
    on_ceiling = [s for s in scenarios if s.server == "ceiling"]
    procs = Processes()
    began = time.monotonic()
    failed: str | None = None
    try:
        with interrupts_as_exceptions():
            # The ceiling first: the machine's speed drifts over minutes, and the figures
            # it scales most (non-stream, then 20-chunk streams) come right after it.
            if on_ceiling:
                measure_ceiling(run, procs, on_ceiling, args.quick, log_dir)
            base = base_source(args, log_dir)
            run.base = base.commit if base else ""
            upstream = measure_gateway(run, procs, args, on_gateway, log_dir, base)
            if args.peer or args.peer_cmd:
                on_peer = [s for s in on_gateway if s.peer]
                measure_peer(run, procs, args, on_peer, upstream)
    except KeyboardInterrupt:
        failed = "interrupted"
        loud("interrupted: stopping everything the bench started")
    except RuntimeError as exc:
        failed = str(exc)
        loud(f"the bench failed: {exc}")
        run.problems.append(f"bench failed: {str(exc).splitlines()[0]}")
    finally:
        procs.stop_all()
    took = time.monotonic() - began
    say(f"took {took:.0f} s")
    if failed == "interrupted":
        return 130

    raw = OUT / f"results-{run.mode}-{stamp:%Y%m%d-%H%M%S}.json"
    raw.write_text(json.dumps(asdict(run), indent=2, default=str) + "\n")
    if args.quick:
        selected = frozenset(s.id for s in scenarios) if args.only else None
        return quick_verdict(run, args.out, args.update_baseline, took, failed, selected)
    targets = evaluate(run)
    out = args.out or BENCH / "RESULTS.md"
    out.write_text(render(run, targets, took, failed))
    say(f"wrote {shown(out)}")
    factor = scale_factor(run)
    for t in targets:
        scaled = (
            f" (scaled to the reference: {t.scaled(factor)})"
            if factor and t.value is not None
            else ""
        )
        say(f"  {t.verdict:<4} {t.name}: {t.measured}{scaled}")
    if failed or any(not p.startswith("peer") for p in run.problems):
        return 1
    if args.strict and any(t.verdict == "FAIL" for t in targets):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
