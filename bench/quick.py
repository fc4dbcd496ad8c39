"""Quick mode's verdict: the median gateway CPU per request and per chunk against a base.

The base is gateway/ as of an earlier commit (bench/baseline.json's, or --against),
measured in the same run in turns with this tree's (bench/against.py); failing that, the
figures bench/baseline.json recorded on another run. More than REGRESSION worse exits 2
naming the figure. The calibration workload and the ceiling say how fast the machine was.

The translated stream (OpenAI ingress, anthropic upstream) and the fan-out to three
models are judged like the other figures where the base can serve them (a commit before
the anthropic provider, or the fan-out route, cannot: its row then has this tree's
figures only), and their ratios to the untranslated stream's CPU per chunk and to the
single call's CPU per request are shown against their targets (targets.py) in every
run; a miss is said aloud but, a target rather than a regression, does not change the
exit status.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from common import BENCH, GATEWAY_CPU, OUT, loud, say, shown
from measure import Run
from report import machine_lines
from targets import (
    FANOUT,
    REFERENCE_CEILING_US,
    SINGLE,
    TRANSLATED,
    UNTRANSLATED,
    Target,
    ceiling,
    fanout_target,
    scale_factor,
    translated_target,
)

BASELINE = BENCH / "baseline.json"
REGRESSION = 0.10  # a quick-mode median this much worse than the baseline fails

QUICK_FIGURES = {
    "non-stream c16 CPU µs/request": (SINGLE, "cpu_us_req"),
    "fan-out 3 non-stream c16 CPU µs/request": (FANOUT, "cpu_us_req"),
    "stream 20 c16 CPU µs/chunk": (UNTRANSLATED, "cpu_us_chunk"),
    "translated stream 20 c16 CPU µs/chunk": (TRANSLATED, "cpu_us_chunk"),
}

# The targets quick mode shows: each a ratio of two of its scenarios' figures, the
# target's function, and what a base that did not run the first one lacks.
RATIOS = (
    (TRANSLATED, UNTRANSLATED, "cpu_us_chunk", translated_target, "no anthropic provider"),
    (FANOUT, SINGLE, "cpu_us_req", fanout_target, "no fan-out route"),
)


def _speed(run: Run, baseline: dict) -> tuple[list[str], float | None, float | None]:
    """Lines on the machine's speed (calibration, ceiling); the calibration's median and
    how much slower than the baseline's it was."""
    lines: list[str] = []
    calibrations = [r.calibration_ms for r in run.of("gateway") if r.calibration_ms]
    calibration = statistics.median(calibrations) if calibrations else None
    slower = None
    if calibrations:
        text = (
            f"\nCalibration (a fixed Python workload on CPU {GATEWAY_CPU} before each run, "
            f"lower is faster): {', '.join(f'{c:.0f}' for c in calibrations)} ms"
        )
        base = baseline.get("calibration_ms")
        if calibration and base:
            slower = calibration / base - 1
            text += f"; median {calibration:.0f} ms against the baseline's {base:.0f}"
            text += f" ({slower:+.0%})"
        lines.append(text + ".")
    c, factor = ceiling(run), scale_factor(run)
    if c and factor:
        text = (
            f"\nCeiling (bench/ceiling.py, a FastAPI route answering a fixed body, same load, "
            f"CPU {GATEWAY_CPU}): {c.cpu_us_req:.0f} µs/request, {c.rps:,.0f} req/s; the "
            f"reference machine's is {REFERENCE_CEILING_US:.0f} µs, so the scaled figures "
            f"are measured x {factor:.2f}"
        )
        if base := baseline.get("ceiling_us"):
            text += f"; the baseline's ceiling was {base:.0f} µs ({c.cpu_us_req / base - 1:+.0%})"
        lines.append(text + ".")
    return lines, calibration, slower


def baseline_commit() -> str | None:
    """The commit bench/baseline.json was recorded at, when its gateway/ was committed."""
    if not BASELINE.exists():
        return None
    commit = json.loads(BASELINE.read_text()).get("machine", {}).get("commit", "")
    return commit if commit and " " not in commit else None


def _values(run: Run, kind: str, scenario: str, attr: str) -> list[float]:
    return [
        v for r in run.of(kind) if r.scenario == scenario and (v := getattr(r, attr)) is not None
    ]


def _runs(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def _ratios(run: Run, side_by_side: bool) -> tuple[list[str], list[str]]:
    """Each ratio target (``RATIOS``) on the medians, as the target judges it, the base's
    beside it when it ran both scenarios; and this tree's misses."""
    lines, missed = [], []
    for scenario, against, attr, judge, lacking in RATIOS:
        for kind, who in (("gateway", "this tree"), ("base", run.base)):
            if kind == "base" and not side_by_side:
                break
            values = _values(run, kind, scenario, attr)
            others = _values(run, kind, against, attr)
            if not values and not others:  # neither run (--only)
                break
            if kind == "base" and not values:
                if others:  # it ran the other one: it could not run this one
                    lines.append(
                        f"\n{scenario}: not run on {run.base} (its gateway/ has {lacking})."
                    )
                continue
            target: Target = judge(
                statistics.median(values) if values else None,
                statistics.median(others) if others else None,
            )
            lines.append(
                f"\n{target.name}, {who} (medians): {target.measured}: **{target.verdict}**"
            )
            if kind == "gateway" and target.verdict == "FAIL":
                missed.append(f"{target.name}: {target.measured}")
    return lines, missed


def quick_verdict(
    run: Run,
    out: Path | None,
    update_baseline: bool,
    took: float,
    failed: str | None,
    selected: frozenset[str] | None = None,
) -> int:
    """Write and print quick mode's report; the exit status (2: a regression). ``selected``:
    the scenario ids run (--only), when not all of quick mode's."""
    baseline = json.loads(BASELINE.read_text()) if BASELINE.exists() else None
    recorded = (baseline or {}).get("figures", {})
    factor = scale_factor(run)
    side_by_side = bool(run.base and run.of("base"))
    against = run.base if side_by_side else "the baseline"
    medians: dict[str, float] = {}
    lines = [f"# Quick bench, {run.started}", "", machine_lines(run), ""]
    if side_by_side:
        lines += [
            f"This tree's gateway/ and {run.base}'s, measured in turns in this run "
            "(the verdict); the baseline's recorded figure, from another run, for reference.",
            "",
            f"| figure | this tree | median | {run.base} | median | change "
            "| recorded baseline | scaled to the reference |",
            "|---|---|---:|---|---:|---:|---:|---:|",
        ]
    else:
        lines += [
            "| figure | runs | median | baseline | change | scaled to the reference |",
            "|---|---|---:|---:|---:|---:|",
        ]
    regressions = []
    for name, (scenario, attr) in QUICK_FIGURES.items():
        values = _values(run, "gateway", scenario, attr)
        if not values:
            continue
        median = statistics.median(values)
        medians[name] = round(median, 1)
        scaled = f"{median * factor:.1f}" if factor else "—"
        base_values = _values(run, "base", scenario, attr) if side_by_side else []
        if side_by_side:  # judged on the side-by-side figures only, never on a mix
            base = statistics.median(base_values) if base_values else None
        else:
            base = recorded.get(name)
        change = ""
        if base:
            delta = median / base - 1
            change = f"{delta:+.1%}"
            if delta > REGRESSION:
                regressions.append(
                    f"{name}: median {median:.1f} vs {against} {base:.1f} ({change})"
                )
        if side_by_side:
            lines.append(
                f"| {name} | {_runs(values)} | {median:.1f} | {_runs(base_values)} "
                f"| {f'{base:.1f}' if base else '—'} | {change} | {recorded.get(name, '—')} "
                f"| {scaled} |"
            )
        else:
            lines.append(
                f"| {name} | {_runs(values)} | {median:.1f} | {base or '—'} | {change} | {scaled} |"
            )
    ratios, missed = _ratios(run, side_by_side)
    lines += ratios
    speed, calibration, slower = _speed(run, baseline or {})
    lines += speed
    busy = [r.other_pct for r in run.of("gateway")]
    if busy and statistics.median(busy) > 10:
        noisy = (
            f"CPU {GATEWAY_CPU} was shared with other processes during the runs "
            f"(median {statistics.median(busy):.0f}% of it): the figures are noisy"
        )
        loud(noisy)
        lines.append(f"\n**Warning:** {noisy}.")
    for scenario in dict.fromkeys(f[0] for f in QUICK_FIGURES.values()):
        direct = run.get(scenario, "direct")
        gw = [r for r in run.of("gateway") if r.scenario == scenario]
        if direct and gw:
            rps = statistics.median(r.rps for r in gw)
            lines.append(
                f"\n{scenario}: gateway {rps:,.0f} req/s, direct {direct.rps:,.0f} req/s "
                f"({rps / direct.rps:.2f}x)"
            )
    lines += ["", f"Took {took:.0f} s."]
    if run.problems:
        lines += ["", "## Errors", "", *[f"- {e}" for e in run.problems]]
    text = "\n".join(lines) + "\n"
    (out or OUT / "quick.md").write_text(text)
    print(text)
    for miss in missed:
        loud(f"TARGET MISSED: {miss}")
    if failed or run.problems:
        loud("the quick bench had errors (see above)")
        return 1
    expected = [n for n, (sid, _) in QUICK_FIGURES.items() if selected is None or sid in selected]
    if any(n not in medians for n in expected):
        loud("the quick bench is missing figures")
        return 1
    if update_baseline:
        c = ceiling(run)
        data = {
            "date": run.started,
            "machine": run.machine,
            "calibration_ms": calibration,
            "ceiling_us": round(c.cpu_us_req, 1) if c and c.cpu_us_req else None,
            "figures": medians,
        }
        BASELINE.write_text(json.dumps(data, indent=2) + "\n")
        say(f"wrote {shown(BASELINE)}")
        return 0
    if baseline is None and not side_by_side:
        say("no bench/baseline.json yet: `python bench/run.py --update-baseline` writes one")
        return 0
    other_cpu = (baseline or {}).get("machine", {}).get("cpu") != run.machine.get("cpu")
    if other_cpu and not side_by_side:
        say("note: the baseline was measured on another CPU model; compare with care")
    if regressions:
        for r in regressions:
            loud(f"REGRESSION (> {REGRESSION:.0%} worse than {against}): {r}")
        if not side_by_side and slower is not None and slower > REGRESSION:
            say(
                f"note: the calibration ran {slower:.0%} slower than the baseline's: the machine "
                "itself was slower; run again on a quiet machine before believing it"
            )
        return 2
    say(f"no regression (every median within {REGRESSION:.0%} of {against})")
    return 0
