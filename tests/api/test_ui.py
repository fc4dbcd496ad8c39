"""/ui as the gateway serves it: its files from the package, under a strict CSP, nothing
from elsewhere; CORS on the model endpoints only; the model cards' prices the pages use.
The pages' behaviour in a real browser is tests/browser/."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from gateway.api.ui import ASSETS, CSP
from gateway.app import create_app
from gateway.config import load_settings
from gateway.observability.metrics import route_of
from tests.servers import write_config

UI_DIR = Path(__file__).resolve().parents[2] / "gateway" / "ui"
ORIGIN = "https://app.example.com"
KEY = "sk-test-ui-0123456789"


def _client(tmp_path: Path, **server: object) -> Iterator[TestClient]:
    config = {
        "providers": {"demo": {"type": "mock"}},
        "models": {
            "priced": {
                "deployments": [
                    {"provider": "demo", "model": "a", "price": {"input": 1, "output": 2}},
                    {
                        "provider": "demo",
                        "model": "b",
                        "price": {"input": 3, "output": 4, "cache_read": 0.5},
                    },
                ]
            },
        },
        "keys": [{"name": "ui", "key": KEY}],
        "server": {"cors_origins": [ORIGIN], **server},
    }
    with TestClient(create_app(load_settings(write_config(tmp_path, config)))) as client:
        yield client


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    yield from _client(tmp_path)


def test_ui_redirects_to_its_index_page(client: TestClient) -> None:
    r = client.get("/ui", follow_redirects=False)
    assert r.status_code == 308
    assert r.headers["location"] == "ui/"  # relative: works under a path prefix too
    page = client.get("/ui/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "<title>LLM gateway</title>" in page.text


@pytest.mark.parametrize("name", ASSETS)
def test_every_file_is_served_with_the_policy(client: TestClient, name: str) -> None:
    r = client.get(f"/ui/{name}")
    assert r.status_code == 200
    assert r.content == (UI_DIR / name).read_bytes()
    assert r.headers["content-security-policy"] == CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    expected = {
        "html": "text/html",
        "js": "text/javascript",
        "css": "text/css",
        "svg": "image/svg+xml",
    }
    assert r.headers["content-type"].startswith(expected[name.rpartition(".")[2]])
    # Revalidated, and unchanged files cost a 304.
    assert r.headers["cache-control"] == "no-cache"
    again = client.get(f"/ui/{name}", headers={"if-none-match": r.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""


def test_the_policy_allows_this_origin_only_and_no_inline_code() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CSP.split(";"))
    assert directives["default-src"] == "'none'"
    for name in ("script-src", "style-src", "connect-src", "img-src"):
        assert directives[name] == "'self'", name
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in CSP


@pytest.mark.parametrize(
    "path", ["/ui/nothing.js", "/ui/../gateway/config.py", "/ui/%2e%2e/pyproject.toml", "/ui/js"]
)
def test_only_the_listed_files_are_served(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404


def test_ui_false_serves_nothing(tmp_path: Path) -> None:
    for client in _client(tmp_path, ui=False):
        assert client.get("/ui/").status_code == 404
        assert client.get("/ui/js/main.js").status_code == 404


def test_the_package_ships_exactly_the_listed_files() -> None:
    shipped = {str(p.relative_to(UI_DIR)) for p in UI_DIR.rglob("*") if p.is_file()}
    assert shipped == set(ASSETS)


def test_the_pages_load_nothing_from_elsewhere() -> None:
    index = (UI_DIR / "index.html").read_text()
    for ref in re.findall(r'(?:src|href)="([^"]+)"', index):
        assert ref.startswith("#") or ref in ASSETS, ref
    for name in ASSETS:
        text = (UI_DIR / name).read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", ""), name
        assert "https://" not in text, name
    assert "<script>" not in index
    assert "style=" not in index


# What would turn text into markup or code: the pages build every element from text.
_UNSAFE = re.compile(
    r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|"
    r"setAttribute\(\s*[\"']on|\.src\s*=|\.href\s*="
)


@pytest.mark.parametrize("name", [n for n in ASSETS if n.endswith(".js")])
def test_the_scripts_never_parse_text_as_markup(name: str) -> None:
    found = _UNSAFE.findall((UI_DIR / name).read_text())
    assert found == [], f"{name}: {found}"


def test_cors_is_for_the_model_endpoints_only(client: TestClient) -> None:
    def preflight(path: str, method: str = "POST") -> dict[str, str]:
        return client.options(
            path,
            headers={
                "origin": ORIGIN,
                "access-control-request-method": method,
                "access-control-request-headers": "authorization, content-type",
            },
        ).headers

    allowed = preflight("/v1/chat/completions")
    assert allowed["access-control-allow-origin"] == ORIGIN
    assert "authorization" in allowed["access-control-allow-headers"].lower()
    assert preflight("/v1/fanout/chat/completions")["access-control-allow-origin"] == ORIGIN
    assert preflight("/v1/models", "GET")["access-control-allow-origin"] == ORIGIN
    for path in ("/admin/keys", "/admin/reload", "/ui/", "/metrics"):
        assert "access-control-allow-origin" not in preflight(path), path
    answer = client.post(
        "/v1/chat/completions",
        json={"model": "priced", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {KEY}", "origin": ORIGIN},
    )
    exposed = answer.headers["access-control-expose-headers"].lower()
    for header in (
        "x-request-id",
        "x-gateway-served-by",
        "retry-after",
        "x-ratelimit-remaining-requests",
    ):
        assert header in exposed
    page = client.get("/ui/", headers={"origin": ORIGIN})
    assert "access-control-allow-origin" not in page.headers


def test_model_cards_price_each_deployment(client: TestClient) -> None:
    auth = {"authorization": f"Bearer {KEY}"}
    card = client.get("/v1/models/priced", headers=auth).json()
    assert card["pricing"] == {
        "demo/a": {"input": 1.0, "output": 2.0, "cache_read": None, "cache_write": None},
        "demo/b": {"input": 3.0, "output": 4.0, "cache_read": 0.5, "cache_write": None},
    }
    listed = client.get("/v1/models", headers=auth).json()["data"]
    assert listed == [card]


def test_ui_requests_have_a_route_label_of_their_own() -> None:
    assert route_of("/ui") == route_of("/ui/js/main.js") == "ui"
    assert route_of("/uix") == "other"
