"""The playground in Chromium: tokens as they arrive, stop, errors in words, text only."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import MASTER, UI, shown_numbers
from tests.nginx import NginxProcess, nginx_in_front
from tests.servers import SLACK, ServerProcess, wait_for

# 20 tokens at 5 a second: about 4 s of stream, the first token at once.
PACED = {"mock": {"chunks": 20, "tokens_per_s": 5}}
XSS = "<img src=x onerror=alert(1)>"


def upstream_stats(upstream: ServerProcess) -> dict[str, Any]:
    return httpx.get(f"{upstream.url}/mock/stats", timeout=10).json()


def model_stats(upstream: ServerProcess, model: str) -> dict[str, int]:
    return upstream_stats(upstream)["models"].get(model, {"requests": 0, "disconnects": 0})


@pytest.fixture(scope="module")
def nginx(
    gateway: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NginxProcess]:
    with nginx_in_front(tmp_path_factory.mktemp("nginx"), gateway.port) as server:
        yield server


def send(ui: UI, text: str, model: str = "ui-chat", extra: dict | None = None) -> None:
    page = ui.page
    page.select_option("#pg-model", model)
    if extra is not None:
        ui.extra_fields("playground", json.dumps(extra))
    page.fill("#pg-user", text)
    page.press("#pg-user", "Enter")  # Enter sends


@pytest.mark.parametrize("through", ["direct", "nginx"])
def test_tokens_appear_before_the_stream_ends(
    ui: UI, through: str, request: pytest.FixtureRequest
) -> None:
    if through == "nginx":  # the shipped deploy/nginx.conf in front, /ui and SSE through it
        ui.base = request.getfixturevalue("nginx").url
    ui.open()
    ui.use_app_key()
    page = ui.page
    send(ui, "Tell me about gateways", extra=PACED)

    # Some text is on the page while the stream still runs (Stop still enabled) ...
    expect(page.locator("#pg-output")).not_to_be_empty(timeout=SLACK * 1000)
    early = page.inner_text("#pg-output")
    assert page.is_enabled("#pg-stop"), "the stream had ended before any text was shown"
    assert len(early.split()) < 20, early
    ui.screenshot("streaming")

    # ... and the rest follows, then the numbers.
    page.wait_for_selector("#pg-stop:disabled", timeout=(4 + SLACK) * 1000)
    final = page.inner_text("#pg-output")
    assert final.startswith(early.strip()[:10])
    assert len(final.split()) == 20, final
    stats = page.inner_text("#pg-stats")
    assert "first token" in stats, stats
    assert "tok/s" in stats, stats
    # 20 output tokens at $8 per million, plus the prompt at $2 per million.
    prompt, output, cost = shown_numbers(stats)
    assert output == 20, stats
    assert cost == pytest.approx((prompt * 2.0 + 20 * 8.0) / 1e6, rel=0.01)
    assert "served by upstream/ui-chat-up" in stats, stats
    assert "finish: stop" in stats, stats
    ui.screenshot("done")


@pytest.mark.parametrize("how", ["stop-button", "escape", "closing-the-tab"])
def test_stopping_aborts_the_stream_and_the_upstream_call(
    ui: UI, upstream: ServerProcess, how: str
) -> None:
    ui.open()
    ui.use_app_key()
    page = ui.page
    before = model_stats(upstream, "ui-stop-up")
    # 200 tokens at 4 a second: nearly a minute, unless stopped.
    send(
        ui,
        "A long answer please",
        model="ui-stop",
        extra={"mock": {"chunks": 200, "tokens_per_s": 4}},
    )
    expect(page.locator("#pg-output")).not_to_be_empty(timeout=SLACK * 1000)
    left_at = time.time()
    if how == "stop-button":
        page.click("#pg-stop")
    elif how == "escape":
        page.keyboard.press("Escape")
    else:
        page.close()

    after = wait_for(
        "the upstream sees its client leave",
        lambda: (
            (s := model_stats(upstream, "ui-stop-up"))["disconnects"] > before["disconnects"] and s
        ),
    )
    assert after["requests"] == before["requests"] + 1
    stats = upstream_stats(upstream)
    assert stats["last_disconnect_at"] - left_at < SLACK
    if how != "closing-the-tab":
        page.wait_for_selector("#pg-send:enabled")
        assert page.inner_text("#pg-stats").startswith("Stopped after")
        assert page.is_hidden("#pg-error")
        words = len(page.inner_text("#pg-output").split())
        assert 0 < words < 200
        ui.screenshot("stopped")


def test_model_output_is_shown_as_text(ui: UI) -> None:
    ui.open()
    ui.use_app_key()
    page = ui.page
    reply = f"Here: {XSS} and <script>alert(2)</script> done"
    send(ui, "Say something nasty", extra={"mock": {"reply": reply}})
    page.wait_for_selector("#pg-stop:disabled")
    expect(page.locator("#pg-stats")).to_contain_text("finish")
    assert page.inner_text("#pg-output") == reply
    assert page.locator("#pg-output *").count() == 0  # text nodes only, no element made
    assert page.locator("img[src=x], body script:not([src])").count() == 0
    ui.screenshot("text-only")  # the console check (no dialog, no error) runs at teardown


def test_errors_are_said_in_words(ui: UI, gateway: ServerProcess) -> None:
    admin = {"authorization": f"Bearer {MASTER}"}
    created = httpx.post(
        f"{gateway.url}/admin/keys",
        json={"name": f"rpm1-{time.monotonic_ns()}", "limits": {"rpm": 1}},
        headers=admin,
        timeout=10,
    )
    assert created.status_code == 201, created.text
    ui.open()
    page = ui.page

    # A key the gateway does not know: the models cannot even be listed.
    ui.console.expect_status(401)
    page.fill("#app-key", "sk-not-a-key-of-this-gateway")
    page.press("#app-key", "Enter")
    expect(page.locator("#app-key-note")).to_contain_text("refused")
    assert "missing, wrong, revoked or expired" in page.inner_text("#app-key-note")

    # rpm 1: the second request is refused with the wait in seconds.
    ui.use_app_key(created.json()["key"])
    send(ui, "one")
    page.wait_for_selector("#pg-stop:disabled")
    expect(page.locator("#pg-stats")).to_contain_text("finish")
    ui.console.expect_status(429)
    page.click("#pg-send")
    error = page.locator("#pg-error")
    error.wait_for(state="visible")
    text = error.inner_text()
    assert "This key has reached its rate limit. Try again in " in text, text
    seconds = int(text.split("Try again in ")[1].split(" ")[0])
    assert 1 <= seconds <= 60
    ui.screenshot("rate-limited")

    # An upstream that fails: said as the provider's failure, not as a code.
    page.fill("#app-key", "")
    ui.use_app_key()
    page.click("#view-playground details summary")
    page.fill("#pg-extra", json.dumps({"mock": {"status": 503}}))
    ui.console.expect_status(502)
    page.click("#pg-send")
    expect(page.locator("#pg-error")).to_contain_text(
        "failed to answer", timeout=(10 + SLACK) * 1000
    )
    ui.screenshot("upstream-failed")
