"""gateway/live.py with real generations: what a reload keeps, closes, refuses and says.

Each test builds real ``Resources`` on the embedded store, with one injected
transport under every HTTP provider, and reloads them from a real file through
gateway/reload.py's loader. A request in flight is what the request-context
middleware makes of one: ``live.enter()`` until ``live.leave(...)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.config import Settings, load_settings
from gateway.live import Live, ReloadRefused, changes, restart_needed
from gateway.reload import loader
from gateway.resources import Resources

KEY = "sk-test-live-key-0123456789"
TRANSPORT = httpx.MockTransport(lambda request: httpx.Response(500))  # never reached


def provider(host: str) -> dict[str, Any]:
    return {"type": "openai", "base_url": f"http://{host}.invalid/v1", "api_key": "sk-up"}


def base_config(tmp_path: Path) -> dict[str, Any]:
    return {
        "providers": {"one": provider("one"), "two": provider("two"), "demo": {"type": "mock"}},
        "models": {
            "m-one": {"deployments": [{"provider": "one", "model": "gpt-4o-mini"}]},
            "m-two": {"deployments": [{"provider": "two", "model": "gpt-4o-mini"}]},
            "m-demo": {"deployments": [{"provider": "demo", "model": "mock-chat"}]},
        },
        "keys": [{"name": "tests", "key": KEY}],
        "server": {"data_dir": str(tmp_path / "data")},
    }


class Gateway:
    """A ``Live`` over real resources, reloaded from ``path``."""

    def __init__(self, path: Path, live: Live) -> None:
        self.path, self.live = path, live

    @property
    def current(self) -> Resources:
        assert self.live.current is not None
        return self.live.current

    def write(self, config: dict[str, Any] | str) -> None:
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        self.path.write_text(text)

    async def reload(self) -> Any:
        async def build(settings: Settings, previous: Resources) -> Resources:
            return await Resources.build(settings, TRANSPORT, previous=previous)

        return await self.live.reload(loader(str(self.path)), build)


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    path = tmp_path / "gateway.yaml"
    gw = Gateway(path, Live())
    gw.write(base_config(tmp_path))
    gw.live.start(await Resources.build(load_settings(path, env={}), TRANSPORT))
    yield gw
    await gw.live.aclose()


async def closed(resources: Resources, name: str, within: float = 5.0) -> bool:
    """Whether provider ``name``'s client of ``resources`` closes within ``within`` s."""
    client = resources.upstreams[name].client
    for _ in range(int(within / 0.01)):
        if client.is_closed:
            break
        await asyncio.sleep(0.01)
    return client.is_closed


async def store_works(resources: Resources) -> None:
    """The store answers a real call (the embedded one fails once closed)."""
    records, _ = await resources.gatekeeper.list_keys(10, None)
    assert [r.name for r in records] == ["tests"]
    await resources.gatekeeper.store.usage(records[0].id)


async def test_a_swap_keeps_unchanged_providers_their_pools_and_the_store(
    gateway: Gateway, tmp_path: Path
) -> None:
    old = gateway.current
    config = base_config(tmp_path)
    config["providers"]["two"] = provider("two-moved")
    config["models"]["m-new"] = {"deployments": [{"provider": "one", "model": "gpt-4o"}]}
    gateway.write(config)

    reloaded = await gateway.reload()

    new = gateway.current
    assert new is not old
    assert gateway.live.generation == reloaded.generation == 2
    assert reloaded.changed == ["providers changed: two", "models added: m-new"]
    assert new.providers["one"] is old.providers["one"]
    assert new.upstreams["one"] is old.upstreams["one"]  # the same client, the same pool
    assert new.providers["demo"] is old.providers["demo"]
    assert new.providers["two"] is not old.providers["two"]
    assert new.gatekeeper.store is old.gatekeeper.store
    assert new.routing is old.routing
    assert new.router.names() == ["m-one", "m-two", "m-demo", "m-new"]
    # Nothing was in flight on the old generation: what only it had is closed, the rest not.
    assert await closed(old, "two")
    assert not new.upstreams["one"].client.is_closed
    await store_works(new)


async def test_a_removed_provider_closes_only_after_the_last_request_on_it(
    gateway: Gateway, tmp_path: Path
) -> None:
    old = gateway.live.enter()  # a request in flight, a stream say
    config = base_config(tmp_path)
    del config["providers"]["two"], config["models"]["m-two"]
    gateway.write(config)

    assert (await gateway.reload()).changed == [
        "providers removed: two",
        "models removed: m-two",
    ]

    assert not await closed(old, "two", within=0.3), "closed under a request in flight"
    second = gateway.live.enter()  # a new request runs on the new generation
    assert second is gateway.current is not old
    gateway.live.leave(old)
    assert await closed(old, "two")
    assert not gateway.current.upstreams["one"].client.is_closed
    gateway.live.leave(second)
    await store_works(gateway.current)


async def test_a_provider_shared_with_an_older_generation_waits_for_its_requests(
    gateway: Gateway, tmp_path: Path
) -> None:
    """Generation 2 takes ``one`` over from 1; 3 drops it. 2 drains first, but ``one`` is
    closed only once generation 1's last request, which may be using it, has left."""
    first = gateway.live.enter()
    config = base_config(tmp_path)
    config["models"]["m-extra"] = {"deployments": [{"provider": "demo", "model": "x"}]}
    gateway.write(config)
    await gateway.reload()
    second = gateway.current
    assert second.upstreams["one"] is first.upstreams["one"]
    del config["providers"]["one"], config["models"]["m-one"]
    gateway.write(config)
    await gateway.reload()
    assert second.in_flight == 0

    assert not await closed(second, "one", within=0.3), "closed under generation 1's request"
    gateway.live.leave(first)
    assert await closed(second, "one")
    assert not gateway.current.upstreams["two"].client.is_closed
    await store_works(gateway.current)


def _misspelt_field(config: dict[str, Any]) -> None:
    config["models"]["m-one"]["deployments"][0]["weigth"] = 3


def _unset_variable(config: dict[str, Any]) -> None:
    config["providers"]["one"]["api_key"] = "${GW_TEST_LIVE_NEVER_SET}"


def _unknown_type(config: dict[str, Any]) -> None:
    config["providers"]["demo"]["type"] = "bogus"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ("models: [unclosed\n", "not valid YAML"),
        (_misspelt_field, "models.m-one.deployments[0].weigth: unknown field"),
        (_unset_variable, "GW_TEST_LIVE_NEVER_SET"),
        (_unknown_type, "providers.demo.type: unknown provider type 'bogus'"),
    ],
    ids=["yaml", "unknown-field", "unset-env-var", "provider-type"],
)
async def test_a_refused_config_raises_its_error_and_keeps_the_old_generation(
    gateway: Gateway, tmp_path: Path, edit: Any, expected: str
) -> None:
    old = gateway.current
    config = base_config(tmp_path)
    if isinstance(edit, str):
        gateway.write(yaml.safe_dump(config, sort_keys=False) + edit)
    else:
        edit(config)
        gateway.write(config)

    with pytest.raises(ReloadRefused) as refused:
        await gateway.reload()

    message = str(refused.value)
    assert message.startswith(str(gateway.path)), message
    assert expected in message, message
    assert "sk-up" not in message
    assert gateway.current is old
    assert gateway.live.generation == 1
    assert not old.upstreams["one"].client.is_closed
    await store_works(old)


async def test_an_unchanged_file_makes_no_new_generation(gateway: Gateway) -> None:
    old = gateway.current
    reloaded = await gateway.reload()
    assert (reloaded.changed, reloaded.restart_needed) == ([], [])
    assert gateway.current is old
    assert reloaded.generation == gateway.live.generation == 1


async def test_settings_only_a_restart_applies_keep_their_running_values(
    gateway: Gateway, tmp_path: Path
) -> None:
    old = gateway.current
    config = base_config(tmp_path)
    config["server"].update(fail_mode="closed", max_connections=10)
    gateway.write(config)

    reloaded = await gateway.reload()
    assert reloaded.changed == []
    assert gateway.current is old
    assert reloaded.restart_needed == ["server.fail_mode", "server.max_connections"]

    config["server"]["max_body_bytes"] = 1000
    gateway.write(config)
    reloaded = await gateway.reload()
    assert reloaded.changed == ["server changed: max_body_bytes"]
    assert reloaded.restart_needed == ["server.fail_mode", "server.max_connections"]
    server = gateway.current.settings.server
    assert (server.max_body_bytes, server.fail_mode, server.max_connections) == (
        1000,
        "open",
        2048,
    )
    assert gateway.current.gatekeeper.fail_open  # as the store it took over


def test_changes_name_each_kind_of_change(tmp_path: Path) -> None:
    def settings(edit: Any) -> Settings:
        config = base_config(tmp_path)
        edit(config)
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(config))
        return load_settings(path, env={})

    def edit(config: dict[str, Any]) -> None:
        del config["providers"]["two"], config["models"]["m-two"]
        config["providers"]["three"] = provider("three")
        config["models"]["m-one"]["routing"] = {"strategy": "least-busy"}
        config["keys"] = [
            {"name": "tests", "key": KEY, "limits": {"rpm": 5}},
            {"name": "more", "key": KEY + "x"},
        ]
        config["prices"] = {"gpt-4o-mini": {"input": 1, "output": 2}}
        config["server"].update(max_body_bytes=1000, keepalive_seconds=3, docs=False)

    before, after = settings(lambda c: None), settings(edit)
    assert changes(before, after) == [
        "providers added: three",
        "providers removed: two",
        "models removed: m-two",
        "models changed: m-one",
        "keys added: more",
        "keys changed: tests",
        "prices changed",
        "server changed: keepalive_seconds, max_body_bytes",
    ]
    assert restart_needed(before, after) == ["server.docs"]
    assert changes(before, before) == restart_needed(before, before) == []
