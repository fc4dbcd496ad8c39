"""The ops console in Chromium: a key's whole life, checked from the outside with the
openai SDK, and the master key kept for the tab only."""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest
from playwright.sync_api import Browser, expect

from tests.browser.conftest import APP_KEY, MASTER, UI, open_ui
from tests.servers import ServerProcess, wait_for

XSS = "<img src=x onerror=alert(1)>"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def ui(browser: Browser, gateway: ServerProcess, request: pytest.FixtureRequest):
    # Copy needs the clipboard, which a page may use once the browser grants it.
    with open_ui(
        browser, gateway.url, request.node.name, permissions=["clipboard-read", "clipboard-write"]
    ) as opened:
        yield opened


def sdk(gateway: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def log_in(ui: UI) -> None:
    ui.open("console")
    ui.page.fill("#master-key", MASTER)
    ui.page.click("#master-key-use")
    expect(ui.page.locator("#con-main")).to_be_visible()
    expect(ui.page.locator("#con-keys tbody tr").first).to_be_visible()


def test_a_key_created_limited_and_revoked_in_the_console(ui: UI, gateway: ServerProcess) -> None:
    page = ui.page
    ui.open("console")
    ui.screenshot("login")
    # An app key is not the master key: refused, in words, and the form stays.
    ui.console.expect_status(401)
    page.fill("#master-key", APP_KEY)
    page.press("#master-key", "Enter")
    expect(page.locator("#con-login-error")).to_contain_text("The master key was refused")
    assert page.is_hidden("#con-main")

    log_in(ui)
    assert MASTER not in page.url
    assert page.evaluate("() => sessionStorage.getItem('gateway.master_key')") == MASTER
    assert page.evaluate("() => localStorage.length") == 0

    # Create: the plaintext is shown once, with a copy button.
    name = f"{XSS} ops-{uuid.uuid4().hex[:6]}"
    page.click("#con-new")
    page.fill("#f-name", name)
    page.click("#f-save")
    expect(page.locator("#con-created")).to_be_visible()
    secret = page.inner_text("#con-created-key")
    assert secret.startswith("sk-")
    assert page.inner_text("#con-created-name") == name  # the name as text, no image made
    page.click("#con-created-copy")
    expect(page.locator("#con-created-copy")).to_have_text("Copied")
    assert page.evaluate("() => navigator.clipboard.readText()") == secret
    ui.screenshot("created")
    page.click("#con-created-hide")
    assert page.is_hidden("#con-created")
    assert secret not in page.content()  # gone from the page once dismissed

    row = page.locator("#con-keys tbody tr", has_text=name)
    expect(row).to_have_count(1)
    expect(row.locator("td").first).to_have_text(name)
    assert page.locator("#con-keys img").count() == 0

    # The key works for an app.
    client = sdk(gateway, secret)
    first = client.chat.completions.create(model="ui-chat", messages=HI)
    assert first.choices[0].message.content

    # Edit: rpm 2 (counted from now: a key without an rpm has no window): two pass, the
    # third is refused.
    row.locator("button[data-action=edit]").click()
    expect(page.locator("#f-name")).to_have_value(name)
    page.fill("#f-rpm", "2")
    page.click("#f-save")
    expect(row.locator("td").nth(3)).to_have_text("2 req/min")
    for _ in range(2):
        client.chat.completions.create(model="ui-chat", messages=HI)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="ui-chat", messages=HI)
    assert refused.value.status_code == 429

    # Its live limits and its use.
    row.locator("button[data-action=details]").click()
    quota = page.locator("#con-quota .meter").first
    expect(quota).to_contain_text("0 of 2 requests left")
    expect(quota).to_contain_text("resets in")
    expect(page.locator("#con-chart-models svg")).to_contain_text("ui-chat")
    expect(page.locator("#con-chart-models svg")).to_contain_text("3 req")
    page.click("#con-refresh")
    expect(row.locator("td").nth(4)).to_contain_text("3 req")
    ui.screenshot("details")

    # Revoke, in two clicks; the app is refused from then on.
    revoke = row.locator("button[data-action=revoke]")
    revoke.click()
    expect(revoke).to_have_text("Confirm revoke")
    revoke.click()
    expect(row.locator("td").nth(5)).to_have_text("revoked")
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="ui-chat", messages=HI)
    ui.screenshot("revoked")


def test_the_master_key_stays_in_its_tab(ui: UI, browser: Browser) -> None:
    log_in(ui)
    # Another tab of the same browser starts logged out ...
    other = ui.page.context.new_page()
    other.goto(f"{ui.base}/ui/#console")
    expect(other.locator("#con-login")).to_be_visible()
    assert other.evaluate("() => sessionStorage.length") == 0
    other.close()
    # ... and this one forgets it on request.
    ui.page.click("#con-logout")
    expect(ui.page.locator("#con-login")).to_be_visible()
    assert ui.page.evaluate("() => sessionStorage.getItem('gateway.master_key')") is None
    wait_for("nothing stored", lambda: ui.page.evaluate("() => sessionStorage.length") == 0)


def test_every_field_of_a_key_is_edited_as_the_form_says(ui: UI, gateway: ServerProcess) -> None:
    page = ui.page
    log_in(ui)
    name = f"edit-{uuid.uuid4().hex[:6]}"
    page.click("#con-new")
    page.fill("#f-name", name)
    page.fill("#f-rpm", "30")
    page.fill("#f-budget", "5")
    page.click("#f-save")
    expect(page.locator("#con-created")).to_be_visible()
    page.click("#con-created-hide")
    row = page.locator("#con-keys tbody tr", has_text=name)
    key_id = row.get_attribute("data-key-id")

    row.locator("button[data-action=edit]").click()
    page.fill("#f-name", name + "-renamed")
    page.fill("#f-models", "ui-chat, ui-fast")
    page.fill("#f-rpm", "")  # removed
    page.fill("#f-tpm", "12000")
    page.fill("#f-parallel", "4")
    page.fill("#f-budget", "7.5")
    page.select_option("#f-period", "month")
    page.fill("#f-expires", "2031-05-06T07:08")
    page.click("#f-save")
    expect(page.locator("#con-form")).to_be_hidden()

    stored = httpx.get(
        f"{gateway.url}/admin/keys/{key_id}",
        headers={"authorization": f"Bearer {MASTER}"},
        timeout=5,
    ).json()
    assert stored["name"] == name + "-renamed"
    assert stored["models"] == ["ui-chat", "ui-fast"]
    assert stored["limits"] == {
        "rpm": None,
        "tpm": 12000,
        "max_parallel": 4,
        "budget_usd": 7.5,
        "budget_period": "month",
    }
    assert stored["expires_at"] == "2031-05-06T07:08:00Z"
    row = page.locator(f"#con-keys tbody tr[data-key-id='{key_id}']")
    expect(row.locator("td").nth(3)).to_have_text("12,000 tok/min, 4 in flight, $7.50 a month")

    # A value the admin API would refuse is caught in the form, in words.
    row.locator("button[data-action=edit]").click()
    page.fill("#f-parallel", "1.5")
    page.click("#f-save")
    expect(page.locator("#f-error")).to_have_text(
        "Requests in flight must be a positive whole number, or empty for none."
    )


def test_live_limits_keep_refreshing_after_another_view(ui: UI, gateway: ServerProcess) -> None:
    page = ui.page
    created = httpx.post(
        f"{gateway.url}/admin/keys",
        json={"name": f"live-{uuid.uuid4().hex[:6]}", "limits": {"rpm": 5}},
        headers={"authorization": f"Bearer {MASTER}"},
        timeout=5,
    ).json()
    log_in(ui)
    page.locator(f"#con-keys tr[data-key-id='{created['id']}'] button[data-action=details]").click()
    requests = page.locator("#con-quota .meter").first
    expect(requests).to_contain_text("5 of 5 requests left")
    page.click("#tab-playground")
    page.click("#tab-console")
    sdk(gateway, created["key"]).chat.completions.create(model="ui-chat", messages=HI)
    expect(requests).to_contain_text("4 of 5 requests left")  # within the 2 s refresh
