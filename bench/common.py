"""What every module of the bench shares: its paths, the CPU layout, the console.

The bench's modules import each other by their plain names (``from measure import
run_load``): ``python bench/run.py`` puts bench/ first on ``sys.path``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"  # logs and raw figures, git-ignored

# The system under test (the gateway, the ceiling or the peer) on one CPU; the upstream,
# Redis and the load generators on the other.
GATEWAY_CPU, LOAD_CPU = (0, 1) if (os.cpu_count() or 1) >= 2 else (0, 0)


def venv_python() -> str:
    candidate = ROOT / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def say(msg: str) -> None:
    print(f"bench: {msg}", flush=True)


def loud(msg: str) -> None:
    bar = "!" * 78
    print(f"{bar}\n!! {msg}\n{bar}", flush=True)


def shown(path: Path) -> str:
    """A path as the bench prints it: relative to the repository when inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
