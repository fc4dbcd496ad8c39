"""tests/secrets_scan.py: the session's search for leaked secrets finds them, from the
secrets a config or an environment holds to the line of the log that holds one, and
fails the run; it never prints the secret it found."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway.limits.keys import key_hint, new_secret
from tests import conftest, secrets_scan
from tests.secrets_scan import Registry, find, scan
from tests.servers import TEST_KEY, standard_config

PLANTED = "sk-planted-secret-0a1b2c3d4e5f"


def registry_with_log(tmp_path: Path, text: str, *secrets: str) -> Registry:
    log = tmp_path / "gateway.log"
    log.write_text(text)
    return Registry(secrets=set(secrets), logs=[log], gateways=1, configured=1)


def test_a_secret_in_a_log_fails_the_scan_naming_where_but_not_the_secret(
    tmp_path: Path,
) -> None:
    text = f"INFO gateway start\nINFO gateway.access key=team status=200 x={PLANTED}\n"
    report = scan(registry_with_log(tmp_path, text, PLANTED))
    assert report.failed
    [leak] = report.leaks
    assert leak == f"{tmp_path / 'gateway.log'}:2: sk-...4e5f (30 chars)"
    assert PLANTED not in leak + report.summary()
    assert "LEAKED" in report.summary()


def test_a_clean_log_passes(tmp_path: Path) -> None:
    # A key's hint, and a key cut short, are not the key.
    text = f"INFO gateway.audit actor={key_hint(PLANTED)} other={PLANTED[:-1]}\n"
    report = scan(registry_with_log(tmp_path, text, PLANTED))
    assert not report.failed, report.leaks + report.problems
    assert "clean" in report.summary()


def test_a_secret_in_a_metrics_scrape_fails_the_scan(tmp_path: Path) -> None:
    registry = registry_with_log(tmp_path, "INFO gateway start\n", PLANTED)
    registry.scrapes.append(("/metrics of one", f'gateway_requests_total{{key="{PLANTED}"}} 1\n'))
    assert scan(registry).leaks == ["/metrics of one:1: sk-...4e5f (30 chars)"]


def test_a_key_the_gateway_made_is_found_unregistered() -> None:
    made = new_secret()
    assert find(f"a line\nkey {made}.\n", set()) == [(2, secrets_scan.hint(made))]
    assert find(f"hint {key_hint(made)}", set()) == []
    assert find(f"{made}x", set()) == []  # longer than a made key: not one


def test_what_is_not_a_secret_is_not_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secrets_scan, "REGISTRY", Registry())
    for value in ("sk-gateway-demo", "short", "", None):
        secrets_scan.register_secret(value)
    assert secrets_scan.REGISTRY.secrets == set()


def test_the_secrets_of_a_config_are_found_wherever_they_are() -> None:
    config = standard_config("http://127.0.0.1:9")
    config["providers"]["azure"] = {
        "type": "azure",
        "api_key": "azure-provider-secret",
        "headers": {"Authorization": "Bearer sk-header-secret-1"},
    }
    config["server"]["redis_url"] = "redis://:redis-pass-word@127.0.0.1:6379/0"
    found = secrets_scan.secrets_of_config(config)
    assert found == {
        TEST_KEY,
        "sk-test-expired-key",
        "sk-upstream-secret",
        "azure-provider-secret",
        "sk-header-secret-1",
        "redis-pass-word",
    }


def test_the_secrets_a_server_is_given_are_registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(secrets_scan, "REGISTRY", Registry())
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "providers:\n  up:\n    type: openai\n    api_key: ${UPSTREAM_KEY}\n"
        "keys:\n  - name: a\n    key: sk-config-key-1234\n"
    )
    given = {
        "GATEWAY_MASTER_KEY": "sk-master-from-env",
        "REDIS_URL": "redis://user:env-redis-pass@127.0.0.1:6379/0",
        "OPENAI_API_KEY": "sk-openai-from-env",
        "XDG_DATA_HOME": str(tmp_path),
    }
    env = {**given, "UPSTREAM_KEY": "sk-upstream-from-var"}
    secrets_scan.register_server(["serve", "--config", str(path)], env, given)
    assert secrets_scan.REGISTRY.secrets == {
        "sk-master-from-env",
        "env-redis-pass",
        "sk-openai-from-env",
        "sk-upstream-from-var",
        "sk-config-key-1234",
    }
    assert (secrets_scan.REGISTRY.gateways, secrets_scan.REGISTRY.configured) == (1, 1)
    # The built-in config (no file) and the mock upstream bring none.
    secrets_scan.register_server(["serve"], {}, {})
    secrets_scan.register_server(["mock-upstream"], {}, {})
    assert (secrets_scan.REGISTRY.gateways, secrets_scan.REGISTRY.configured) == (2, 1)


def test_a_scan_that_could_not_look_is_not_a_pass(tmp_path: Path) -> None:
    missing = Registry(secrets={PLANTED}, logs=[tmp_path / "gone.log"])
    assert scan(missing).problems == [
        f"{tmp_path / 'gone.log'}: cannot be read (No such file or directory)"
    ]
    # Gateways ran from configs, yet no secret is known: the registration is broken.
    blind = registry_with_log(tmp_path, "INFO gateway start\n")
    assert scan(blind).failed
    assert "unsure" in scan(blind).summary()


def test_the_end_of_the_session_fails_the_run_on_a_leak(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hook this suite's conftest.py runs, on a session that passed so far.
    session = SimpleNamespace(config=SimpleNamespace(stash=pytest.Stash()), exitstatus=0)
    monkeypatch.setattr(secrets_scan, "REGISTRY", registry_with_log(tmp_path, "clean\n", PLANTED))
    conftest.pytest_sessionfinish(session, pytest.ExitCode.OK)  # type: ignore[arg-type]
    assert session.exitstatus == pytest.ExitCode.OK
    monkeypatch.setattr(secrets_scan, "REGISTRY", registry_with_log(tmp_path, PLANTED, PLANTED))
    conftest.pytest_sessionfinish(session, pytest.ExitCode.OK)  # type: ignore[arg-type]
    assert session.exitstatus == pytest.ExitCode.TESTS_FAILED


def test_this_session_is_scanned(request: pytest.FixtureRequest) -> None:
    # The hook is the one pytest runs for this session, not a copy nobody calls.
    hooks = request.config.pluginmanager.hook.pytest_sessionfinish.get_hookimpls()
    assert conftest.pytest_sessionfinish in [impl.function for impl in hooks]


def test_a_leak_a_parallel_worker_found_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker (pytest-xdist) scans what its tests served and hands the report on ...
    worker = SimpleNamespace(
        config=SimpleNamespace(stash=pytest.Stash(), workeroutput={}), exitstatus=0
    )
    monkeypatch.setattr(secrets_scan, "REGISTRY", registry_with_log(tmp_path, PLANTED, PLANTED))
    conftest.pytest_sessionfinish(worker, pytest.ExitCode.OK)  # type: ignore[arg-type]
    assert PLANTED not in str(worker.config.workeroutput)
    # ... to the controller, whose own processes served nothing and leaked nothing.
    controller = SimpleNamespace(config=SimpleNamespace(stash=pytest.Stash()), exitstatus=0)
    node = SimpleNamespace(config=controller.config, workeroutput=worker.config.workeroutput)
    conftest.pytest_testnodedown(node, None)
    monkeypatch.setattr(secrets_scan, "REGISTRY", Registry())
    conftest.pytest_sessionfinish(controller, pytest.ExitCode.OK)  # type: ignore[arg-type]
    assert controller.exitstatus == pytest.ExitCode.TESTS_FAILED
