"""The machine: what it is (for the report), how busy and how fast, what the bench needs of it."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import resource
import shutil
import subprocess
import time
from pathlib import Path

from common import BENCH, GATEWAY_CPU, LOAD_CPU, ROOT, loud, say, venv_python
from measure import cpu_busy

TOOLS = ("wrk", "taskset", "redis-server")

# A fixed pure-Python workload (JSON and small objects), timed on the gateway's CPU: a
# diagnostic of the machine's speed, printed beside the baseline's so that a slower
# machine can be told from a slower gateway (the verdict itself uses the raw figures).
_CALIBRATE = """
import json, time
def work():
    t0 = time.process_time()
    d = {"model": "bench", "messages": [{"role": "user", "content": "x" * 40}], "n": 1}
    s = 0
    for i in range(30_000):
        o = json.loads(json.dumps(d))
        s += len(o["messages"][0]["content"]) + len(str(i)) + sum([j * 2 for j in range(20)])
    return (time.process_time() - t0) * 1000
print(min(work() for _ in range(3)))
"""

# How long the gateway's CPU takes to answer the other CPU, busy and after idling: the
# round trip of one byte over a socket pair between a process on each CPU, back to back and
# with 10 ms of sleep before each. A VM that halts an idle virtual CPU (no halt polling)
# pays for the wake-up on every hop of a request across the two CPUs, and runs the first
# code after it from cold caches; this says how much, so time-to-first-token figures of
# lightly loaded scenarios can be read (bench/RESULTS.md "machine").
_WAKE = """
import os, socket, statistics, sys, time
a, b = socket.socketpair()
pid = os.fork()
if pid == 0:
    a.close(); os.sched_setaffinity(0, {%(gateway)d})
    while (d := b.recv(1)):
        b.send(d)
    os._exit(0)
b.close(); os.sched_setaffinity(0, {%(load)d})
def rtt(gap):
    out = []
    for _ in range(60 if gap else 400):
        if gap: time.sleep(gap)
        t = time.perf_counter(); a.send(b"x"); a.recv(1); out.append(time.perf_counter() - t)
    return statistics.median(out) * 1e6
print(f"{rtt(0):.0f} {rtt(0.01):.0f}")
a.close(); os.waitpid(pid, 0)
"""

# The versions the report names, read in the project's venv.
_PROBE = """
import importlib.metadata as m, platform, gateway
names = ['fastapi','starlette','uvicorn','pydantic','pydantic-core','httpx','aiohttp',
         'redis','hiredis','uvloop','httptools']
v = {}
for n in names:
    try: v[n] = m.version(n)
    except m.PackageNotFoundError: pass
print(platform.python_version()); print(gateway.__version__)
print(' '.join(f'{k} {x}' for k, x in v.items()))
"""


def _output(argv: list[str], timeout: float = 5) -> str:
    """A command's standard output ("" when it cannot run)."""
    try:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout


def calibrate() -> float | None:
    """Milliseconds the calibration workload takes on the gateway's CPU (best of 3)."""
    out = _output(["taskset", "-c", str(GATEWAY_CPU), venv_python(), "-c", _CALIBRATE], 60)
    try:
        return round(float(out.strip()), 1)
    except ValueError:
        return None


def wake_latency() -> tuple[float, float] | None:
    """Median µs of a round trip to the gateway's CPU: back to back, and after 10 ms idle."""
    code = _WAKE % {"gateway": GATEWAY_CPU, "load": LOAD_CPU}
    out = _output([venv_python(), "-c", code], 30).split()
    try:
        return float(out[0]), float(out[1])
    except (IndexError, ValueError):
        return None


def machine_info() -> dict[str, str]:
    info: dict[str, str] = {"nproc": str(os.cpu_count())}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    info["kernel"] = f"{platform.system()} {platform.release()}"
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory"] = f"{int(mem) / 1024 / 1024:.1f} GB"
    versions = _output([venv_python(), "-c", _PROBE], 30).splitlines()
    if len(versions) >= 3:
        info["python"], info["gateway"], info["packages"] = versions[:3]
    if wrk := _output(["wrk", "-v"]):
        info["wrk"] = wrk.split("Copyright")[0].strip()
    if match := re.search(r"v=(\S+)", _output(["redis-server", "--version"])):
        info["redis"] = match.group(1)
    if commit := _output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]).strip():
        dirty = _output(["git", "-C", str(ROOT), "status", "--porcelain", "--", "gateway"])
        info["commit"] = commit + (" + uncommitted changes in gateway/" if dirty.strip() else "")
    return info


def busy_pct(seconds: float) -> dict[int, float]:
    """How busy each CPU is over ``seconds``, in %."""
    before = cpu_busy()
    time.sleep(seconds)
    after = cpu_busy()
    return {c: 100 * (after[c][0] - before[c][0]) / seconds for c in after if c in before}


def wait_quiet(limit: float, threshold: float = 15.0) -> str:
    """Wait up to ``limit`` s for every CPU to be under ``threshold``% busy; say how it was."""
    deadline = time.monotonic() + limit
    while True:
        busy = busy_pct(2.0)
        shown = ", ".join(f"CPU {c} {v:.0f}%" for c, v in sorted(busy.items()))
        if all(v < threshold for v in busy.values()):
            return f"quiet before the run ({shown} busy)"
        if time.monotonic() >= deadline:
            loud(f"the machine is busy: {shown}; figures will be noisy")
            return f"NOT quiet before the run ({shown} busy with other processes)"
        say(f"waiting for a quiet machine ({shown} busy)")
        time.sleep(3)


def ensure_tools() -> None:
    """wrk, taskset and redis-server: bench/setup.sh installs what is missing."""
    if all(shutil.which(t) for t in TOOLS):
        return
    say("wrk, taskset or redis-server is missing: running bench/setup.sh")
    subprocess.run(["bash", str(BENCH / "setup.sh")], cwd=ROOT, check=True)
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        raise SystemExit(f"bench: still missing after bench/setup.sh: {', '.join(missing)}")


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 20_000 if hard == resource.RLIM_INFINITY else min(hard, 20_000)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < 8_000:
        say(f"warning: the open-files limit is {want}; 2,000 held streams need about 8,000")
