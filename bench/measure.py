"""Measuring: one load (wrk or bench/client.py) against one system, and what it cost.

A system's CPU time is its process tree's own utime+stime (/proc/<pid>/stat) over the
load, so it holds even when requests/s are bounded by something else; RSS is VmRSS
(sampled) and VmHWM (the peak). The CPU's time spent on anything else (another load on
the machine) and the hypervisor's steal are measured beside it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from common import BENCH, GATEWAY_CPU, LOAD_CPU, ROOT, loud, say, venv_python
from scenarios import Scenario

LUA = BENCH / "wrk" / "chat.lua"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# base: the gateway as of an earlier commit, measured beside this tree's (quick mode)
Kind = Literal["gateway", "base", "direct", "ceiling", "peer"]


@dataclass
class System:
    """Something the load goes to: the gateway, the upstream directly, the ceiling, a peer."""

    label: str
    kind: Kind
    url: str  # the chat completions URL
    key: str
    pid: int
    redis_pid: int | None = None  # the Redis it uses: its CPU per request is reported too


@dataclass
class Result:
    scenario: str
    system: str
    kind: str
    seconds: float = 0.0
    requests: int = 0
    ok: int = 0
    non2xx: int = 0
    bad_body: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    sample: str = ""
    rps: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    ttft_p50_ms: float | None = None
    cpu_s: float = 0.0
    cpu_us_req: float | None = None
    cpu_us_chunk: float | None = None
    cpu_pct: float = 0.0
    rss_mb: float = 0.0  # VmRSS at the end
    rss_max_mb: float = 0.0  # the highest VmRSS sampled during the scenario
    hwm_mb: float = 0.0  # VmHWM: the process's peak so far
    rss_samples: list[tuple[float, float]] = field(default_factory=list)
    max_open: int = 0
    max_streaming: int = 0  # streams past their first event at once
    chunks: int = 0
    # CPU time on the system's core used by anything else (another load on the machine),
    # and the hypervisor's steal, in % of the run.
    other_pct: float = 0.0
    steal_pct: float = 0.0
    redis_us_req: float | None = None  # Redis's CPU per completed request (gateway runs)
    calibration_ms: float | None = None  # the CPU's speed just before (quick mode)

    @property
    def errors(self) -> int:
        return self.non2xx + self.bad_body + sum(self.socket_errors.values())


@dataclass
class Run:
    """Everything one run measured, and what the report says about the machine."""

    mode: str
    started: str
    machine: dict[str, str]
    results: list[Result] = field(default_factory=list)
    peer: dict[str, str] = field(default_factory=dict)  # name, note, status, version, cmd
    problems: list[str] = field(default_factory=list)
    gateway_log: str = ""
    command: str = "python bench/run.py"
    quiet: str = ""  # how busy the machine was before the run
    base: str = ""  # quick mode: the commit whose gateway/ ran beside this tree's
    idle_cpu_pct: float | None = None  # the gateway's own CPU use with no load
    calibration_ms: float | None = None  # the calibration workload on the gateway's CPU
    wake_us: tuple[float, float] | None = None  # round trip to the gateway's CPU: busy, idle

    def get(self, scenario: str, kind: str) -> Result | None:
        return next((r for r in self.results if r.scenario == scenario and r.kind == kind), None)

    def of(self, kind: str) -> list[Result]:
        return [r for r in self.results if r.kind == kind]


# ---------------------------------------------------------------- /proc accounting


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, ()))
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process and its descendants (all threads), in seconds."""
    total = 0
    for p in descendants(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLK_TCK


def cpu_busy() -> dict[int, tuple[float, float]]:
    """Per CPU: (busy, steal) seconds since boot, from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *v = line.split()
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, v[:8])
            out[int(name[3:])] = (
                (user + nice + system + irq + softirq) / CLK_TCK,
                steal / CLK_TCK,
            )
    return out


def rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    """VmRSS or VmHWM (peak) of the process tree, in MB."""
    total = 0
    for p in descendants(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field_name + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


# ---------------------------------------------------------------- one load


def _load(scenario: Scenario, system: System, seconds: float) -> tuple[list[str], dict, float]:
    """The load generator's argv and environment, and how long it may take at most."""
    pin = ["taskset", "-c", str(LOAD_CPU)]
    if scenario.driver == "wrk":
        argv = [
            *pin, "wrk", "-t1", f"-c{scenario.connections}", f"-d{max(1, round(seconds))}s",
            "--timeout", "10s", "-s", str(LUA), scenario.url(system.url),
        ]  # fmt: skip
        env = {
            **os.environ,
            "BENCH_BODY": scenario.body(),
            "BENCH_KEY": system.key,
            "BENCH_STREAM": "1" if scenario.stream else "0",
            "BENCH_EXPECT": scenario.expect(),
            "BENCH_CHOICES": str(scenario.choices),
        }
        return argv, env, seconds + 30
    argv = [
        *pin, venv_python(), str(BENCH / "client.py"),
        "--url", scenario.url(system.url), "--key", system.key, "--body", scenario.body(),
        "--expect", scenario.expect(), "--concurrency", str(scenario.connections),
        "--duration", f"{seconds:g}", "--ramp", f"{scenario.ramp:g}",
        "--timeout", f"{scenario.timeout:g}",
    ]  # fmt: skip
    return argv, {**os.environ}, scenario.ramp + seconds + scenario.timeout + 30


def _counts(result: Result, data: dict[str, Any], driver: str) -> None:
    """The load generator's JSON line into ``result``."""
    result.requests = data["requests"]
    result.ok, result.non2xx, result.bad_body = data["ok"], data["non2xx"], data["bad_body"]
    result.sample = data.get("sample") or ""
    if driver == "wrk":
        result.seconds = data["duration_us"] / 1e6
        names = ("connect_errors", "read_errors", "write_errors", "timeouts")
        result.socket_errors = {k: data[k] for k in names if data[k]}
        result.p50_ms, result.p99_ms = data["p50_us"] / 1000, data["p99_us"] / 1000
    else:
        result.seconds = data["elapsed_s"]
        result.socket_errors = {
            k: v for k, v in data["errors"].items() if k not in ("non2xx", "bad_body")
        }
        result.p50_ms, result.p99_ms = data["p50_ms"], data["p99_ms"]
        result.ttft_p50_ms = data["ttft_p50_ms"]
        result.max_open = data["max_open"]
        result.max_streaming = data["max_streaming"]
    result.rps = result.ok / result.seconds if result.seconds else 0.0


def run_load(scenario: Scenario, system: System, seconds: float) -> Result:
    """Drive one scenario against one system; the system's CPU and RSS over it."""
    argv, env, hard = _load(scenario, system, seconds)
    result = Result(scenario.id, system.label, system.kind)
    every = scenario.rss_every
    redis0 = cpu_seconds(system.redis_pid) if system.redis_pid else 0.0
    core = LOAD_CPU if system.kind == "direct" else GATEWAY_CPU
    busy0 = cpu_busy().get(core, (0.0, 0.0))
    cpu0, t0 = cpu_seconds(system.pid), time.monotonic()
    if every:
        result.rss_samples.append((0.0, rss_mb(system.pid)))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    next_sample = t0 + (every or 0.5)
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if now - t0 > hard:
                proc.kill()
                raise RuntimeError(f"{scenario.id} on {system.label}: the load did not stop")
            if now >= next_sample:
                rss = rss_mb(system.pid)
                result.rss_max_mb = max(result.rss_max_mb, rss)
                if every:
                    result.rss_samples.append((round(now - t0, 1), rss))
                next_sample += every or 0.5
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate()
    elapsed = time.monotonic() - t0
    cpu = cpu_seconds(system.pid) - cpu0
    busy1 = cpu_busy().get(core, (0.0, 0.0))
    if system.kind != "direct":
        result.other_pct = max(0.0, 100 * (busy1[0] - busy0[0] - cpu) / elapsed)
        result.steal_pct = 100 * (busy1[1] - busy0[1]) / elapsed
    line = next((x for x in out.decode().splitlines() if x.startswith("{")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(
            f"{scenario.id} on {system.label}: the load generator failed "
            f"(exit {proc.returncode}):\n{out.decode()[-2000:]}\n{err.decode()[-2000:]}"
        )
    _counts(result, json.loads(line), scenario.driver)
    result.rss_mb = rss_mb(system.pid)
    result.rss_max_mb = max(result.rss_max_mb, result.rss_mb)
    result.hwm_mb = rss_mb(system.pid, "VmHWM")
    if every and result.rss_samples[-1][0] < elapsed - 1:
        result.rss_samples.append((round(elapsed, 1), result.rss_mb))
    result.cpu_s = cpu
    result.cpu_pct = 100 * cpu / elapsed if elapsed else 0.0
    if result.ok:
        result.cpu_us_req = cpu / result.ok * 1e6
        if system.redis_pid:
            result.redis_us_req = (cpu_seconds(system.redis_pid) - redis0) / result.ok * 1e6
        if scenario.stream:
            result.chunks = result.ok * scenario.chunks
            result.cpu_us_chunk = cpu / result.chunks * 1e6
    return result


def warm_up(system: System, stream: bool = True) -> None:
    """A couple of seconds of load (non-stream, and streams when it streams) before measuring."""
    shapes = [Scenario("warm-up", 16)]
    if stream:
        shapes.append(Scenario("warm-up", 16, stream=True, chunks=20))
    for scenario in shapes:
        result = run_load(scenario, system, 2)
        if result.errors:
            raise RuntimeError(
                f"{system.label} fails the warm-up: {result.errors} errors ({result.sample})"
            )


def describe(r: Result) -> str:
    parts = [f"{r.rps:9.1f} req/s"]
    if r.p50_ms is not None:
        parts.append(f"p50 {r.p50_ms:7.3f} ms  p99 {r.p99_ms:7.3f} ms")
    if r.ttft_p50_ms is not None:
        parts.append(f"TTFT p50 {r.ttft_p50_ms:.2f} ms  streaming at once {r.max_streaming}")
    if r.kind != "direct":
        if r.cpu_us_req is not None:
            parts.append(f"CPU {r.cpu_us_req:8.1f} µs/req")
        if r.cpu_us_chunk is not None:
            parts.append(f"{r.cpu_us_chunk:6.1f} µs/chunk")
        parts.append(f"RSS {r.rss_mb:.0f} MB (peak {r.hwm_mb:.0f})")
    parts.append(f"errors {r.errors}")
    if r.kind != "direct" and (r.other_pct > 5 or r.steal_pct > 5):
        parts.append(
            f"CPU {GATEWAY_CPU} shared: others {r.other_pct:.0f}%, steal {r.steal_pct:.0f}%"
        )
    return " | ".join(parts)


def record(run: Run, result: Result) -> None:
    """Keep a result, print it, and shout (and note a problem) when it had errors."""
    run.results.append(result)
    say(f"  {result.scenario:<24} {result.system:<10} {describe(result)}")
    if result.errors:
        who = "peer: " if result.kind == "peer" else ""
        msg = (
            f"{who}{result.errors} ERRORS in {result.scenario} on {result.system}: "
            f"non-2xx {result.non2xx}, bad bodies {result.bad_body}, "
            f"socket {result.socket_errors}; first: {result.sample}"
        )
        loud(msg)
        run.problems.append(msg)
