"""Every screen on a laptop and on a phone: nothing wider than the screen, every control
reachable from the keyboard, a screenshot of each."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, expect

from tests.browser.conftest import MASTER, UI, open_ui
from tests.servers import ServerProcess

SCREENS = {"laptop": {"width": 1366, "height": 820}, "phone": {"width": 390, "height": 844}}


@pytest.mark.parametrize("screen", SCREENS)
def test_every_view_fits_the_screen(browser: Browser, gateway: ServerProcess, screen: str) -> None:
    options = {"viewport": SCREENS[screen]}
    if screen == "phone":
        options |= {"is_mobile": True, "has_touch": True, "device_scale_factor": 2}
    with open_ui(browser, gateway.url, f"layout-{screen}", **options) as ui:
        page = ui.page
        ui.open("playground")
        ui.use_app_key()
        check_fits(ui, "playground")
        page.click("#tab-compare")
        expect(page.locator("#view-compare")).to_be_visible()
        expect(page.locator("#cmp-models input")).to_have_count(4)
        check_fits(ui, "compare")
        page.click("#tab-console")
        check_fits(ui, "console-login")
        page.fill("#master-key", MASTER)
        page.press("#master-key", "Enter")
        expect(page.locator("#con-keys tbody tr").first).to_be_visible()
        page.locator("#con-keys button[data-action=details]").first.click()
        expect(page.locator("#con-quota .meter")).to_have_count(4)
        check_fits(ui, "console")


def check_fits(ui: UI, view: str) -> None:
    overflow = ui.page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    ui.screenshot(view)
    assert overflow <= 0, f"{view} is {overflow}px wider than the screen"


def test_the_playground_works_from_the_keyboard(ui: UI) -> None:
    page = ui.page
    ui.open()
    page.locator("#app-key").focus()
    page.keyboard.type("sk-test-browser-app-key")
    page.keyboard.press("Enter")
    expect(page.locator("#pg-model option[value='ui-chat']")).to_be_attached()
    # Tab through to the message: model, system message, message.
    page.keyboard.press("Tab")  # the "Use key" button
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "pg-model"
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "pg-user"
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")  # a new line, not a send
    page.keyboard.type("second line")
    assert page.input_value("#pg-user") == "first line\nsecond line"
    assert page.locator("#pg-output").inner_text() == ""
    page.keyboard.press("Enter")
    expect(page.locator("#pg-stats")).to_contain_text("finish: stop")
