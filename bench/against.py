"""The gateway as of an earlier commit, for quick mode to measure side by side with this tree.

Figures recorded on another day are on another host moment, often another CPU model:
the same code has measured 1.6x apart. Measured in the same run, runs interleaved, the
two gateways see the same machine, so a change of 10% is the code's. The earlier
gateway/ is extracted with ``git archive`` and run from its own directory (``python -m
gateway`` imports the package from the working directory) with this tree's virtualenv:
it compares code, not dependencies.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from common import ROOT


@dataclass(frozen=True)
class Source:
    """A commit's gateway/ on disk."""

    commit: str  # short hash
    root: Path  # the directory holding its gateway/


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, timeout=60)


def extract(rev: str, dest: Path) -> Source | str:
    """``rev``'s gateway/ under ``dest``, or why it cannot be had."""
    found = _git("rev-parse", "--verify", "--short", f"{rev}^{{commit}}")
    if found.returncode != 0:
        return f"git does not know {rev!r} (a shallow clone?)"
    commit = found.stdout.decode().strip()
    archive = _git("archive", "--format=tar", commit, "gateway")
    if archive.returncode != 0:
        return f"git archive {commit} failed: {archive.stderr.decode(errors='replace').strip()}"
    root = dest / f"base-{commit}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(root, filter="data")
    return Source(commit, root)


def unchanged_since(commit: str) -> bool:
    """Whether this tree's gateway/ (committed or not) is the same as ``commit``'s."""
    return _git("diff", "--quiet", commit, "--", "gateway").returncode == 0
