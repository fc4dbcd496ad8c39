"""The Compare view in Chromium: models side by side through the fan-out endpoint."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import UI, shown_numbers
from tests.servers import SLACK


def choose(ui: UI, *models: str) -> None:
    for model in models:
        ui.page.check(f"#cmp-models input[value='{model}']")


def test_two_models_stream_side_by_side_and_a_failure_stays_in_its_pane(ui: UI) -> None:
    ui.open("compare")
    ui.use_app_key()
    page = ui.page
    choose(ui, "ui-chat", "ui-fast", "ui-flaky")
    # Both healthy models paced (about 3 s each); the third's upstream fails at once.
    script = {
        "mock": {
            "chunks": 15,
            "tokens_per_s": 5,
            "models": {"ui-flaky-up": {"status": 500, "message": "scripted failure"}},
        }
    }
    ui.extra_fields("compare", json.dumps(script))
    page.fill("#cmp-user", "Which is faster?")
    page.press("#cmp-user", "Enter")

    panes = page.locator("#cmp-panes .pane")
    expect(panes).to_have_count(3)
    chat, fast, flaky = panes.nth(0), panes.nth(1), panes.nth(2)
    expect(chat.locator("h3")).to_have_text("ui-chat")
    expect(flaky.locator("h3")).to_have_text("ui-flaky")
    # Both answers are streaming at once, and the failure is shown meanwhile.
    expect(chat.locator(".output")).not_to_be_empty(timeout=SLACK * 1000)
    expect(fast.locator(".output")).not_to_be_empty(timeout=SLACK * 1000)
    expect(flaky.locator(".error")).to_contain_text("The model's provider failed to answer.")
    assert page.is_enabled("#cmp-stop"), "the answers had ended before both were seen streaming"
    ui.screenshot("streaming")

    page.wait_for_selector("#cmp-stop:disabled", timeout=(3 + 2 * SLACK) * 1000)
    for pane, price in ((chat, (2.0, 8.0)), (fast, (0.5, 1.5))):
        assert len(pane.locator(".output").inner_text().split()) == 15
        stats = pane.locator(".stats").inner_text()
        assert "first token" in stats, stats
        assert "tok/s" in stats, stats
        prompt, output, cost = shown_numbers(stats)
        assert output == 15, stats
        assert cost == pytest.approx((prompt * price[0] + 15 * price[1]) / 1e6, rel=0.01)
        assert pane.locator(".error").is_hidden()
    assert chat.locator(".stats").inner_text() != fast.locator(".stats").inner_text()
    assert "served by upstream/ui-chat-up" in chat.locator(".stats").inner_text()
    assert flaky.locator(".output").inner_text() == ""
    assert flaky.locator(".stats").inner_text() == "Failed."
    assert page.is_hidden("#cmp-error")
    ui.screenshot("done")


def test_fewer_than_two_models_are_refused_in_words(ui: UI) -> None:
    ui.open("compare")
    ui.use_app_key()
    choose(ui, "ui-chat")
    ui.page.fill("#cmp-user", "hi")
    ui.page.click("#cmp-send")
    expect(ui.page.locator("#cmp-error")).to_have_text("Choose 2 to 4 models (1 chosen).")
    expect(ui.page.locator("#cmp-panes .pane")).to_have_count(0)
