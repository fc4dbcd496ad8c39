"""The admin API as an operator meets it, on both stores (embedded, and Redis under a
prefix of its own): clear 400s, unique key names, strict query parameters, atomic
PATCHes; and the limit on failed master-key logins."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import load_settings
from tests.integration.stores import ADMIN, MASTER, STORES, gateway_on
from tests.servers import ServerProcess

CONFIG_KEY_NAME = "ops-from-config"


def _config() -> dict[str, Any]:
    return {
        "providers": {"demo": {"type": "mock"}},
        "models": {"mock-chat": {"deployments": [{"provider": "demo", "model": "mock-chat"}]}},
        "keys": [{"name": CONFIG_KEY_NAME, "key": "sk-test-admin-config-0001"}],
    }


@pytest.fixture(scope="module", params=STORES)
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp(f"admin-{request.param}")
    with gateway_on(request.param, directory, _config()) as server:
        yield server


def _error(response: httpx.Response) -> dict[str, Any]:
    return response.json()["error"]


def _create(url: str, name: str, **fields: Any) -> httpx.Response:
    return httpx.post(f"{url}/admin/keys", json={"name": name, **fields}, headers=ADMIN, timeout=5)


def _unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------- bodies


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_malformed_json_says_so(gateway: ServerProcess, method: str) -> None:
    path = "/admin/keys"
    if method == "PATCH":
        path += "/" + _create(gateway.url, _unique("json")).json()["id"]
    for body, message in (
        (b'{"name": ', "The request body is not valid JSON: "),
        (b"{'name': 'x'}", "The request body is not valid JSON: "),
        (b"[1, 2]", "The request body must be a JSON object."),
        (b"", "The request body is empty; expected a JSON object."),
    ):
        r = httpx.request(
            method,
            gateway.url + path,
            content=body,
            headers={**ADMIN, "content-type": "application/json"},
            timeout=5,
        )
        assert r.status_code == 400, (body, r.text)
        assert _error(r)["message"].startswith(message), (body, r.text)
        assert _error(r)["type"] == "invalid_request_error"
        assert "[8]" not in r.text


def test_names_and_metadata_are_bounded(gateway: ServerProcess) -> None:
    for name in ("line\nbreak", "bell\x07", "esc\x1b[31mred", "n" * 201):
        r = _create(gateway.url, name)
        assert r.status_code == 400, (name, r.text)
        assert _error(r)["param"] == "name"
    r = _create(gateway.url, _unique("meta"), metadata={"blob": "x" * 17_000})
    assert r.status_code == 400, r.text
    assert _error(r)["param"] == "metadata"
    assert "16384" in _error(r)["message"]
    fits = _create(gateway.url, _unique("meta"), metadata={"blob": "x" * 15_000})
    assert fits.status_code == 201, fits.text
    key_id = fits.json()["id"]
    patched = httpx.patch(
        f"{gateway.url}/admin/keys/{key_id}",
        json={"metadata": {"blob": "y" * 17_000}},
        headers=ADMIN,
        timeout=5,
    )
    assert patched.status_code == 400, patched.text
    assert _error(patched)["param"] == "metadata"
    renamed = httpx.patch(
        f"{gateway.url}/admin/keys/{key_id}", json={"name": "a\rb"}, headers=ADMIN, timeout=5
    )
    assert renamed.status_code == 400, renamed.text
    assert _error(renamed)["param"] == "name"


# ---------------------------------------------------------------- unique names


def test_a_taken_name_is_409(gateway: ServerProcess) -> None:
    url, name = gateway.url, _unique("dup")
    first = _create(url, name)
    assert first.status_code == 201, first.text
    again = _create(url, name)
    assert again.status_code == 409, again.text
    assert _error(again)["code"] == "key_name_taken"
    assert _error(again)["param"] == "name"
    assert first.json()["id"] in _error(again)["message"]
    config = _create(url, CONFIG_KEY_NAME)
    assert config.status_code == 409, config.text

    other = _create(url, _unique("other")).json()
    for taken in (name, CONFIG_KEY_NAME):
        r = httpx.patch(
            f"{url}/admin/keys/{other['id']}", json={"name": taken}, headers=ADMIN, timeout=5
        )
        assert r.status_code == 409, (taken, r.text)
        assert _error(r)["code"] == "key_name_taken"
    unchanged = httpx.get(f"{url}/admin/keys/{other['id']}", headers=ADMIN, timeout=5).json()
    assert unchanged["name"] == other["name"]

    # A rename frees the old name and takes the new one.
    new_name = _unique("renamed")
    r = httpx.patch(
        f"{url}/admin/keys/{other['id']}", json={"name": new_name}, headers=ADMIN, timeout=5
    )
    assert r.status_code == 200, r.text
    assert r.json()["name"] == new_name
    assert _create(url, other["name"]).status_code == 201
    assert _create(url, new_name).status_code == 409
    # Renaming a key to its own name is no change, not a conflict.
    same = httpx.patch(
        f"{url}/admin/keys/{other['id']}", json={"name": new_name}, headers=ADMIN, timeout=5
    )
    assert same.status_code == 200, same.text
    # A revoked key keeps its name (its record stays, listed).
    assert httpx.delete(f"{url}/admin/keys/{other['id']}", headers=ADMIN).status_code == 204
    assert _create(url, new_name).status_code == 409


async def test_concurrent_creates_of_one_name_make_one_key(gateway: ServerProcess) -> None:
    name = _unique("race")
    async with httpx.AsyncClient(base_url=gateway.url, headers=ADMIN, timeout=10) as client:
        answers = await asyncio.gather(
            *(client.post("/admin/keys", json={"name": name}) for _ in range(12))
        )
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [201] + [409] * 11, [a.text for a in answers]
        listed = []
        after = None
        while True:
            params = {"limit": 100, **({"after": after} if after else {})}
            page = (await client.get("/admin/keys", params=params)).json()
            listed += [k for k in page["data"] if k["name"] == name]
            if not page["has_more"]:
                break
            after = page["last_id"]
        assert len(listed) == 1


# ---------------------------------------------------------------- query parameters


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/admin/usage?start=", "start"),
        ("/admin/usage?key_id=abc", "key_id"),
        ("/admin/keys?limit=abc", "limit"),
        ("/admin/keys?limit=0", "limit"),
        ("/admin/keys?limit=101", "limit"),
        ("/admin/keys?after=", "after"),
        ("/admin/keys?lmit=5", "lmit"),
        ("/admin/keys?limit=5&offset=10", "offset"),
        ("/admin/keys/key_x?verbose=1", "verbose"),
    ],
)
def test_unknown_or_malformed_query_parameters_are_400(
    gateway: ServerProcess, path: str, param: str
) -> None:
    r = httpx.get(gateway.url + path, headers=ADMIN, timeout=5)
    assert r.status_code == 400, r.text
    assert _error(r)["param"] == param
    assert _error(r)["type"] == "invalid_request_error"


def test_known_query_parameters_still_work(gateway: ServerProcess) -> None:
    r = httpx.get(f"{gateway.url}/admin/keys?limit=1", headers=ADMIN, timeout=5)
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 1
    assert httpx.get(f"{gateway.url}/admin/usage", headers=ADMIN, timeout=5).status_code == 200


# ---------------------------------------------------------------- PATCH is atomic


async def test_concurrent_patches_of_one_key_lose_nothing(gateway: ServerProcess) -> None:
    key = _create(gateway.url, _unique("patch"), metadata={"keep": True}).json()
    path = f"/admin/keys/{key['id']}"
    async with httpx.AsyncClient(base_url=gateway.url, headers=ADMIN, timeout=10) as client:
        for i in range(1, 31):
            answers = await asyncio.gather(
                client.patch(path, json={"limits": {"rpm": i}}),
                client.patch(path, json={"limits": {"tpm": 1000 + i}}),
                client.patch(path, json={"limits": {"max_parallel": i}}),
                client.patch(path, json={"models": [f"mock-{i}"]}),
            )
            assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
            now = (await client.get(path)).json()
            assert now["limits"]["rpm"] == i, (i, now)
            assert now["limits"]["tpm"] == 1000 + i, (i, now)
            assert now["limits"]["max_parallel"] == i, (i, now)
            assert now["models"] == [f"mock-{i}"], (i, now)
            assert now["metadata"] == {"keep": True}
        # A revoke racing a PATCH: both land.
        answers = await asyncio.gather(
            client.delete(path), client.patch(path, json={"limits": {"rpm": 7}})
        )
        assert [a.status_code for a in answers] == [204, 200]
        now = (await client.get(path)).json()
        assert now["revoked_at"] is not None
        assert now["limits"]["rpm"] == 7


def test_patch_of_an_unknown_key_is_404(gateway: ServerProcess) -> None:
    r = httpx.patch(
        f"{gateway.url}/admin/keys/key_nosuch", json={"limits": {"rpm": 1}}, headers=ADMIN
    )
    assert r.status_code == 404, r.text
    assert _error(r)["code"] == "key_not_found"


def test_a_limit_patch_is_checked_against_the_key_as_stored(gateway: ServerProcess) -> None:
    key = _create(gateway.url, _unique("budget"), limits={"budget_usd": 5}).json()
    path = f"{gateway.url}/admin/keys/{key['id']}"
    # The key has a budget, so a period alone is a valid change...
    r = httpx.patch(path, json={"limits": {"budget_period": "day"}}, headers=ADMIN, timeout=5)
    assert r.status_code == 200, r.text
    assert r.json()["limits"] == {**key["limits"], "budget_usd": 5.0, "budget_period": "day"}
    # ... and removing the budget but not its period is not.
    r = httpx.patch(path, json={"limits": {"budget_usd": None}}, headers=ADMIN, timeout=5)
    assert r.status_code == 400, r.text
    assert _error(r)["message"] == "Invalid value for 'limits': budget_period needs budget_usd."


# ---------------------------------------------------------------- failed logins


def _from(address: str, url: str) -> httpx.Client:
    """A client whose connections come from ``address`` (any of 127.0.0.0/8 on Linux)."""
    return httpx.Client(
        base_url=url, transport=httpx.HTTPTransport(local_address=address), timeout=5
    )


def test_failed_admin_logins_are_limited_per_address(gateway: ServerProcess) -> None:
    wrong = {"authorization": "Bearer sk-guess-0123456789"}
    # Addresses of this test's own: the other tests' 127.0.0.1 is never blocked.
    octet = 2 + uuid.uuid4().int % 200
    with (
        _from(f"127.0.{octet}.7", gateway.url) as guesser,
        _from(f"127.0.{octet}.8", gateway.url) as operator,
    ):
        for _ in range(10):
            assert guesser.get("/admin/keys", headers=wrong).status_code == 401
        refused = guesser.get("/admin/keys", headers=wrong)
        assert refused.status_code == 429, refused.text
        assert _error(refused)["type"] == "rate_limit_error"
        assert _error(refused)["code"] == "too_many_failed_logins"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        # While refused, nothing presented from there is compared: a guess learns nothing.
        assert guesser.get("/admin/keys", headers=ADMIN).status_code == 429
        # Other addresses are not affected, and a success costs nothing.
        for _ in range(30):
            assert operator.get("/admin/keys", headers=ADMIN).status_code == 200
        for _ in range(10):
            assert operator.get("/admin/keys", headers=wrong).status_code == 401
        assert operator.get("/admin/keys", headers=wrong).status_code == 429
        # App keys on the model endpoints are not the admin limiter's business.
        assert guesser.get("/v1/models", headers=wrong).status_code == 401


# ---------------------------------------------------------------- body limits


def _pieces(size: int) -> Iterator[bytes]:
    yield b'{"name": "'
    for _ in range(size // 1000):
        yield b"x" * 1000
    yield b'"}'


@pytest.mark.parametrize(
    ("max_body_bytes", "size"),
    [
        pytest.param(4096, 10_000, id="the-server-limit-when-smaller"),
        pytest.param(None, 100_000, id="the-admin-limit-of-64-KiB"),
    ],
)
def test_a_chunked_admin_body_over_a_limit_is_413(
    tmp_path: Path, max_body_bytes: int | None, size: int
) -> None:
    path = tmp_path / "gateway.yaml"
    server = f"{{data_dir: data, max_body_bytes: {max_body_bytes}}}" if max_body_bytes else "{}"
    path.write_text(
        "providers: {demo: {type: mock}}\n"
        "models: {mock-chat: {deployments: [{provider: demo, model: mock-chat}]}}\n"
        f"server: {server}\n"
    )
    settings = load_settings(path, env={"GATEWAY_MASTER_KEY": MASTER})
    with TestClient(create_app(settings)) as client:
        anonymous = client.post("/admin/keys", content=_pieces(size))
        assert anonymous.status_code == 401, anonymous.text  # the key comes first
        r = client.post(
            "/admin/keys",
            content=_pieces(size),
            headers={**ADMIN, "content-type": "application/json"},
        )
        assert r.request.headers.get("transfer-encoding") == "chunked"
        assert r.status_code == 413, r.text
        assert _error(r)["code"] == "request_too_large"
        assert _error(r)["type"] == "invalid_request_error"
