"""A config that cannot work is refused before start, by ``check-config`` and ``serve`` alike.

Each case runs both commands as a user would (subprocesses): exit status 1, the
file or variable and the field named on stderr, and never a traceback. ``serve``
must refuse before it binds its port (it is never reached here).
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.servers import ROOT, free_port

MODEL = "models: {m: {deployments: [{provider: demo, model: mock-chat}]}}\n"
SERVED = "providers: {demo: {type: mock}}\n" + MODEL

# id -> (the config's text, or None for a path that is not a readable file;
#        extra environment; what stderr must name)
CASES: dict[str, tuple[str | bytes | None, dict[str, str], list[str]]] = {
    "base-url-not-a-url": (
        "providers: {up: {type: openai, base_url: 'not a url'}}\n"
        "models: {m: {deployments: [{provider: up, model: x}]}}\n",
        {},
        ["providers.up.base_url", "'not a url' is not a URL"],
    ),
    "base-url-unparseable": (
        "providers: {up: {type: openai, base_url: 'http://[::1'}}\n"
        "models: {m: {deployments: [{provider: up, model: x}]}}\n",
        {},
        ["providers.up.base_url", "is not a valid URL"],
    ),
    "base-url-relative": (
        "providers: {up: {type: openai, base_url: '/v1'}}\n"
        "models: {m: {deployments: [{provider: up, model: x}]}}\n",
        {},
        ["providers.up.base_url", "absolute http:// or https:// URL"],
    ),
    "base-url-bad-port": (
        "providers: {up: {type: openai, base_url: 'http://127.0.0.1:70000/v1'}}\n"
        "models: {m: {deployments: [{provider: up, model: x}]}}\n",
        {},
        ["providers.up.base_url", "port out of range"],
    ),
    "unknown-provider-type": (
        "providers: {odd: {type: nosuch}}\nmodels: {m: {deployments: [{provider: odd, model: x}]}}\n",
        {},
        ["providers.odd.type", "unknown provider type 'nosuch'"],
    ),
    "wrong-type": (
        "providers: {demo: {type: mock}}\nmodels: {m: {deployments: oops}}\n",
        {},
        ["models.m.deployments"],
    ),
    "wrong-type-in-server": (SERVED + "server: {metrics: [1, 2]}\n", {}, ["server.metrics"]),
    "negative-number": (
        SERVED + "server: {drain_seconds: -1}\n",
        {},
        ["server.drain_seconds", "greater than or equal to 0"],
    ),
    "negative-timeout": (
        "providers: {demo: {type: mock}}\n"
        "models: {m: {deployments: [{provider: demo, model: x, timeout: -3}]}}\n",
        {},
        ["models.m.deployments[0].timeout", "positive number of seconds"],
    ),
    "nested-too-deeply": (
        "providers: " + "[" * 5000 + "]" * 5000 + "\n",
        {},
        ["nested too deeply"],
    ),
    "key-without-sk": (
        SERVED + "keys: [{name: ci, key: pk-0123456789}]\n",
        {},
        ["keys[0].key", "must start with 'sk-'"],
    ),
    "unknown-field": (
        "providers: {demo: {type: mock}}\n"
        "models: {m: {deployments: [{provider: demo, model: x, weigth: 2}]}}\n",
        {},
        ["models.m.deployments[0].weigth", "unknown field"],
    ),
    "unset-variable": (
        SERVED + "keys: [{name: ci, key: '${NO_SUCH_VARIABLE_HERE}'}]\n",
        {},
        ["keys[0].key", "NO_SUCH_VARIABLE_HERE"],
    ),
    "bad-yaml": ("providers:\n  demo: [type: mock}\n", {}, ["not valid YAML", "line 2"]),
    "not-text": (b"\xff\xfe\x00\x01binary", {}, ["not UTF-8 text"]),
    "empty-file": ("", {}, ["the config file is empty"]),
    "no-models": ("providers: {demo: {type: mock}}\n", {}, ["models: no models are configured"]),
    "missing-file": (None, {}, ["cannot read the config file: No such file or directory"]),
    "directory": (None, {}, ["cannot read the config file: Is a directory"]),
    "data-dir-cannot-be-made": (
        SERVED + "server: {data_dir: '{blocker}/data'}\n",
        {},
        ["server.data_dir", "Not a directory"],
    ),
    "short-master-key": (
        SERVED,
        {"GATEWAY_MASTER_KEY": "sk-master-0123"},
        ["GATEWAY_MASTER_KEY", "at least 32"],
    ),
    "bad-redis-url": (
        SERVED,
        {"REDIS_URL": "redis://:hunter2@localhost:redis/0"},
        ["REDIS_URL", "invalid port"],
    ),
}


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("case", list(CASES))
def test_refused_with_the_field_named_and_no_traceback(tmp_path: Path, case: str) -> None:
    text, extra_env, named = CASES[case]
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where a directory would have to be")
    if case == "directory":
        path = tmp_path / "conf.d"
        path.mkdir()
    else:
        path = tmp_path / ("nowhere.yaml" if text is None else "gateway.yaml")
        if isinstance(text, bytes):
            path.write_bytes(text)
        elif text is not None:
            path.write_text(text.replace("{blocker}", str(blocker)))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GATEWAY_", "OPENAI_", "REDIS_URL"))
    }
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")  # never the user's data directory
    env.update(extra_env)
    commands = [
        ["check-config", "--config", str(path)],
        ["serve", "--config", str(path), "--host", "127.0.0.1", "--port", str(free_port())],
    ]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda args: _run(args, env), commands))
    for args, result in zip(commands, results, strict=True):
        output = result.stdout + result.stderr
        assert result.returncode == 1, (args[0], result.returncode, output)
        assert "Traceback" not in output, (args[0], output)
        assert result.stderr.startswith("gateway: invalid config:\n"), (args[0], output)
        for words in named:
            assert words in result.stderr, (args[0], words, output)
        assert "hunter2" not in output
        assert "sk-master-0123" not in output
