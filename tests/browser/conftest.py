"""Real headless Chromium (Debian's package) driven by Playwright against a real gateway
serving /ui, in front of the real mock upstream over HTTP.

Every page a test opens fails the test on a script error or a console error it did not
expect, and leaves a screenshot of each screen in test-artifacts/screenshots/ (or under
$GATEWAY_TEST_ARTIFACTS). Nothing here skips: no Chromium is a failure that says how
to install it.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.servers import ROOT, ServerProcess, start_gateway, start_mock_upstream, write_config

APP_KEY = "sk-test-browser-app-key"
MASTER = "sk-test-browser-master-0123456789abcdef"
# The flags a root process on a machine without a network needs: no sandbox (root),
# and none of Chromium's own calls home, which would be refused and logged.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
ARTIFACTS = Path(os.environ.get("GATEWAY_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "screenshots"


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(
            "Chromium is not installed: run scripts/test-setup.sh (apt-get install chromium)"
        )
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Per module: Playwright's sync API runs an event loop of its own, kept away from
    # the asyncio tests of other modules.
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerProcess]:
    server = start_mock_upstream()
    yield server
    server.stop()


def ui_config(upstream_url: str, cors_origins: list[str] = ()) -> dict:
    """Models on the mock upstream, each on an upstream model of its own so the
    upstream's per-model counters tell the tests' calls apart."""

    def model(upstream_model: str, **deployment: object) -> dict:
        return {"deployments": [{"provider": "upstream", "model": upstream_model, **deployment}]}

    return {
        "providers": {
            "upstream": {
                "type": "openai",
                "base_url": f"{upstream_url}/v1",
                "api_key": "sk-upstream-browser-secret",
            }
        },
        "models": {
            "ui-chat": model("ui-chat-up", price={"input": 2.0, "output": 8.0}),
            "ui-fast": model("ui-fast-up", price={"input": 0.5, "output": 1.5}),
            "ui-flaky": model("ui-flaky-up"),
            "ui-stop": model("ui-stop-up"),
        },
        "keys": [{"name": "browser", "key": APP_KEY, "models": ["ui-*"]}],
        "server": {"cors_origins": list(cors_origins)},
    }


def serve(tmp: Path, config: dict) -> ServerProcess:
    return start_gateway(write_config(tmp, config), env={"GATEWAY_MASTER_KEY": MASTER})


@pytest.fixture(scope="module")
def gateway(
    upstream: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    server = serve(tmp_path_factory.mktemp("ui"), ui_config(upstream.url))
    yield server
    server.stop()


# Chromium's own line for a fetch answered with an error status: expected where a test
# provokes that status, an error anywhere else.
_FAILED_LOAD = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")


@dataclass
class Console:
    """What the page said on its console, and the error statuses the test expects."""

    errors: list[str] = field(default_factory=list)
    expected_statuses: set[int] = field(default_factory=set)

    def expect_status(self, status: int) -> None:
        self.expected_statuses.add(status)

    def unexpected(self) -> list[str]:
        left = []
        for line in self.errors:
            status = _FAILED_LOAD.search(line)
            if status and int(status.group(1)) in self.expected_statuses:
                continue
            left.append(line)
        return left


@dataclass
class UI:
    page: Page
    console: Console
    base: str
    name: str

    def open(self, view: str = "playground") -> None:
        self.page.goto(f"{self.base}/ui/#{view}")

    def screenshot(self, screen: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{self.name}-{screen}.png"
        self.page.screenshot(path=path, full_page=True)
        return path

    def use_app_key(self, key: str = APP_KEY) -> None:
        self.page.fill("#app-key", key)
        self.page.press("#app-key", "Enter")
        self.page.wait_for_selector("#pg-model option[value='ui-chat']", state="attached")

    def extra_fields(self, view: str, text: str) -> None:
        self.page.click(f"#view-{view} details summary")
        self.page.fill(f"#{'pg' if view == 'playground' else 'cmp'}-extra", text)


@pytest.fixture
def ui(browser: Browser, gateway: ServerProcess, request: pytest.FixtureRequest) -> Iterator[UI]:
    with open_ui(browser, gateway.url, request.node.name) as opened:
        yield opened


@contextmanager
def open_ui(browser: Browser, base: str, name: str, **context: Any) -> Iterator[UI]:
    """A fresh browser context (its own storage) with one page, watched for errors."""
    ctx = browser.new_context(**context)
    page = ctx.new_page()
    console = Console()
    page.on("console", lambda m: console.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console.errors.append(f"uncaught: {e}"))
    # A dialog would mean a script ran that should not have (alert from an injected tag).
    page.on("dialog", lambda d: (console.errors.append(f"dialog: {d.message}"), d.dismiss()))
    try:
        yield UI(page, console, base, re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-"))
        assert console.unexpected() == [], "the page logged errors"
    finally:
        ctx.close()


def shown_numbers(stats: str) -> tuple[int, int, float]:
    """Input tokens, output tokens and cost as a stats line shows them
    ("... 7 in / 15 out tokens · cost $0.0000260 ...")."""
    found = re.search(r"(\d+) in / (\d+) out tokens · cost \$([0-9.e+-]+)", stats)
    assert found, stats
    return int(found.group(1)), int(found.group(2)), float(found.group(3))
