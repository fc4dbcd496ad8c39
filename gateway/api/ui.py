"""``GET /ui``: the browser playground, fan-out view and ops console (docs/operations.md,
"Browser console").

Static files shipped inside the package (gateway/ui/), read once and served from
memory: nothing to build, nothing fetched from elsewhere, so the pages work offline
and under a Content-Security-Policy that allows this origin's scripts and styles
and nothing else (no inline script, no eval, no frames). Only the files listed in
``ASSETS`` are served, so no path a client writes reaches the file system.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import RedirectResponse, Response

from gateway.deps import ResourcesDep

# The pages call this gateway and nothing else. ``style-src 'self'`` forbids style
# attributes too: the scripts set styles through the CSSOM, which CSP allows.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
}
ASSETS = (
    "index.html",
    "app.css",
    "icon.svg",
    "js/main.js",
    "js/dom.js",
    "js/api.js",
    "js/sse.js",
    "js/chat.js",
    "js/playground.js",
    "js/compare.js",
    "js/console.js",
    "js/charts.js",
)
_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    # Revalidated each time (a 304 while unchanged): an upgrade is seen at once.
    "cache-control": "no-cache",
}

router = APIRouter(tags=["ui"])


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


@cache
def assets() -> dict[str, Asset]:
    root = resources.files("gateway") / "ui"
    found = {}
    for name in ASSETS:
        body = (root / name).read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        found[name] = Asset(body, _TYPES[name.rpartition(".")[2]], etag)
    return found


@router.get("/ui", include_in_schema=False)
async def ui_root() -> Response:
    # The pages name their files relative to /ui/, so they work under a path prefix too.
    return RedirectResponse("ui/", status_code=308)


@router.get("/ui/{name:path}", include_in_schema=False)
async def ui_asset(name: str, request: Request, resources: ResourcesDep) -> Response:
    if not resources.settings.server.ui:
        raise HTTPException(status_code=404)
    asset = assets().get(name or "index.html")
    if asset is None:
        raise HTTPException(status_code=404)
    headers = {**_HEADERS, "etag": asset.etag}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)
