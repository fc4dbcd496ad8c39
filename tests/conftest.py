"""Suite-wide guards, and the real Redis topologies any test can ask for."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from gateway import fastpath
from gateway.config import ServerConfig
from tests import secrets_scan
from tests.redis_topologies import RedisCluster, RedisSecured, RedisSentinel

# No test may write into the user's data directory: the embedded store's
# default location follows XDG_DATA_HOME. Set before anything builds an app.
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="gateway-tests-xdg-")

# GATEWAY_FRAMEWORK_BYPASSES=0 runs the suite with the framework bypasses off
# (gateway/fastpath.py): every app, server and gateway process a test makes reads
# it; the process-wide ones (the serializers) follow it from the start, before any
# app is made.
fastpath.select(fastpath.enabled(ServerConfig()))


# No secret in any log or /metrics of the whole run (tests/secrets_scan.py): searched
# once every test is done, failing the run that leaked one. Run in parallel
# (pytest-xdist), each worker searches what its own tests served and hands its report
# to the controller, which fails the run for any of them.
_SECRETS_REPORT = pytest.StashKey[secrets_scan.Report]()
_WORKER_REPORTS = pytest.StashKey[list[secrets_scan.Report]]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    report = secrets_scan.scan()
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller decides
        workeroutput["secrets_scan"] = report.as_dict()
        return
    for other in session.config.stash.get(_WORKER_REPORTS, []):
        report.add(other)
    session.config.stash[_SECRETS_REPORT] = report
    if report.failed and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """An xdist worker is done: keep its secrets report (none if it crashed, which
    fails the run anyway)."""
    found = getattr(node, "workeroutput", {}).get("secrets_scan")
    if found is not None:
        node.config.stash.setdefault(_WORKER_REPORTS, []).append(
            secrets_scan.Report.from_dict(found)
        )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    report = terminalreporter.config.stash.get(_SECRETS_REPORT, None)
    if report is None:
        return
    if report.failed:
        terminalreporter.section("secrets scan", red=True)
        for line in report.leaks + report.problems:
            terminalreporter.write_line(line, red=True)
    terminalreporter.write_line(report.summary(), red=report.failed)


# Real Redis topologies (tests/redis_topologies.py), each started once per session, when
# a test first asks for it: a cluster takes seconds to form. Tests share them, so each
# keeps its data under a prefix of its own, and gets the cluster and the Sentinel setup
# healthy: whatever the test before it killed or paused is running again. A fixture of
# a wider scope (a gateway serving on one) takes the ``_session`` one.


@pytest.fixture(scope="session")
def redis_cluster_session() -> Iterator[RedisCluster]:
    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture
def redis_cluster(redis_cluster_session: RedisCluster) -> Iterator[RedisCluster]:
    """A Redis Cluster of 3 primaries with a replica each, healthy; healed afterwards."""
    redis_cluster_session.heal()
    yield redis_cluster_session
    redis_cluster_session.heal()


@pytest.fixture(scope="session")
def redis_sentinel_session() -> Iterator[RedisSentinel]:
    with RedisSentinel() as setup:
        yield setup


@pytest.fixture
def redis_sentinel(redis_sentinel_session: RedisSentinel) -> Iterator[RedisSentinel]:
    """A master, its replica and 3 sentinels watching them, healthy; healed afterwards."""
    redis_sentinel_session.heal()
    yield redis_sentinel_session
    redis_sentinel_session.heal()


@pytest.fixture(scope="session")
def redis_acl() -> Iterator[RedisSecured]:
    """A Redis letting in only its ACL user, with the password."""
    with RedisSecured() as server:
        yield server


@pytest.fixture(scope="session")
def redis_tls() -> Iterator[RedisSecured]:
    """A Redis over TLS only, with a CA made for the run, requiring a client certificate
    and letting in only its ACL user."""
    with RedisSecured(tls=True) as server:
        yield server
