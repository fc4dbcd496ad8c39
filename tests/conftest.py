"""Suite-wide guards."""

from __future__ import annotations

import os
import tempfile

import pytest

from gateway import fastpath
from gateway.config import ServerConfig
from tests import secrets_scan

# No test may write into the user's data directory: the embedded store's
# default location follows XDG_DATA_HOME. Set before anything builds an app.
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="gateway-tests-xdg-")

# GATEWAY_FRAMEWORK_BYPASSES=0 runs the suite with the framework bypasses off
# (gateway/fastpath.py): every app, server and gateway process a test makes reads
# it; the process-wide ones (the serializers) follow it from the start, before any
# app is made.
fastpath.select(fastpath.enabled(ServerConfig()))


# No secret in any log or /metrics of the whole run (tests/secrets_scan.py): searched
# once every test is done, failing the run that leaked one.
_SECRETS_REPORT = pytest.StashKey[secrets_scan.Report]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    report = secrets_scan.scan()
    session.config.stash[_SECRETS_REPORT] = report
    if report.failed and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    report = terminalreporter.config.stash.get(_SECRETS_REPORT, None)
    if report is None:
        return
    if report.failed:
        terminalreporter.section("secrets scan", red=True)
        for line in report.leaks + report.problems:
            terminalreporter.write_line(line, red=True)
    terminalreporter.write_line(report.summary(), red=report.failed)
