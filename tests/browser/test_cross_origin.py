"""A web app of another origin streaming from the gateway with fetch, as CORS allows
(``server.cors_origins``): the browser enforces it, so only a real one shows it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import Browser, expect

from tests.browser.conftest import APP_KEY, MASTER, open_ui, serve, ui_config
from tests.servers import SLACK, ServerProcess

# The app's page: its own script, streaming a chat with fetch and a ReadableStream, each
# chunk's text appended as it comes, what it could read of the answer kept for the test.
APP_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>an app</title></head><body>
<pre id="out"></pre><p id="status">idle</p>
<script>
async function run(gateway, key, path) {
  const out = document.getElementById("out"), status = document.getElementById("status");
  window.result = {chunks: 0, firstAt: null, headers: {}};
  const started = performance.now();
  try {
    const response = await fetch(gateway + path, {
      method: "POST",
      headers: {"authorization": "Bearer " + key, "content-type": "application/json"},
      body: JSON.stringify({model: "ui-chat", stream: true,
        messages: [{role: "user", content: "hello from another origin"}],
        mock: {chunks: 10, tokens_per_s: 5}}),
    });
    for (const name of ["x-gateway-served-by", "x-request-id", "x-ratelimit-limit-requests"]) {
      window.result.headers[name] = response.headers.get(name);
    }
    window.result.status = response.status;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\\n\\n")) >= 0) {
        const data = buffer.slice(0, end).replace(/^data: /, "");
        buffer = buffer.slice(end + 2);
        if (data === "[DONE]") { status.textContent = "done"; continue; }
        const text = JSON.parse(data).choices[0]?.delta?.content;
        if (text) {
          window.result.chunks += 1;
          if (window.result.firstAt === null) window.result.firstAt = performance.now() - started;
          out.textContent += text;
        }
      }
    }
    window.result.endAt = performance.now() - started;
  } catch (error) {
    status.textContent = "blocked: " + error.message;
  }
}
</script></body></html>
"""


class _AppHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = APP_PAGE.encode()
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def app_origins() -> Iterator[tuple[str, str]]:
    """Two web apps' origins on 127.0.0.1: the first allowed by the gateway, the second not."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _AppHandler) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield tuple(f"http://127.0.0.1:{s.server_address[1]}" for s in servers)  # type: ignore[misc]
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def gateway(
    upstream: ServerProcess,
    app_origins: tuple[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    config = ui_config(upstream.url, cors_origins=[app_origins[0]])
    config["keys"][0]["limits"] = {"rpm": 1000}  # rate-limit headers for the page to read
    server = serve(tmp_path_factory.mktemp("cors"), config)
    yield server
    server.stop()


def test_an_allowed_origin_streams_a_chat_with_fetch(
    browser: Browser, gateway: ServerProcess, app_origins: tuple[str, str]
) -> None:
    with open_ui(browser, app_origins[0], "cross-origin-allowed") as ui:
        page = ui.page
        page.goto(app_origins[0] + "/")
        page.evaluate(f"() => {{ run({gateway.url!r}, {APP_KEY!r}, '/v1/chat/completions'); }}")
        # Text arrives while the stream runs: the first chunk well before the last.
        expect(page.locator("#status")).to_have_text("done", timeout=(2 + SLACK) * 1000)
        result = page.evaluate("() => window.result")
        assert result["status"] == 200
        assert result["chunks"] == 10
        assert result["endAt"] - result["firstAt"] > 1000, result  # 10 tokens at 5 a second
        assert len(page.inner_text("#out").split()) == 10
        # The headers the gateway exposes to other origins are readable.
        assert result["headers"]["x-gateway-served-by"] == "upstream/ui-chat-up"
        assert result["headers"]["x-request-id"]
        assert result["headers"]["x-ratelimit-limit-requests"] == "1000"
        ui.screenshot("streamed")


def test_other_origins_and_the_admin_api_stay_closed(
    browser: Browser, gateway: ServerProcess, app_origins: tuple[str, str]
) -> None:
    allowed, other = app_origins
    with open_ui(browser, other, "cross-origin-refused") as ui:
        page = ui.page
        page.goto(other + "/")
        page.evaluate(f"() => {{ run({gateway.url!r}, {APP_KEY!r}, '/v1/chat/completions'); }}")
        expect(page.locator("#status")).to_have_text("blocked: Failed to fetch")
        ui.console.errors.clear()  # Chromium's own report of the refusal
    # An allowed origin still cannot reach the admin API with a master key it got hold of.
    with open_ui(browser, allowed, "cross-origin-admin") as ui:
        page = ui.page
        page.goto(allowed + "/")
        page.evaluate(f"() => {{ run({gateway.url!r}, {MASTER!r}, '/admin/keys'); }}")
        expect(page.locator("#status")).to_have_text("blocked: Failed to fetch")
        ui.console.errors.clear()
