"""gateway/config.py: YAML + ${VAR} loading, and errors that name the file and the field."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import ConfigError, Timeouts, load_settings, warn_about
from gateway.providers.registry import check_types

MOCK = "providers: {demo: {type: mock}}\n"
# A config needs a model to be valid: this one, where a test is about something else.
SERVED = MOCK + "models: {m: {deployments: [{provider: demo, model: m}]}}\n"


def write(tmp_path: Path, text: str, name: str = "gateway.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def config_error(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path, env=env or {})
    return str(info.value).splitlines()


# Each case: the YAML text, the environment, and the exact lines of the error,
# with {file} standing for the config file's path as given.
BROKEN = [
    pytest.param(
        MOCK + "models:\n  gpt-4o:\n    deployments: [{provider: demo, model: m, weigth: 2}]\n",
        {},
        ["{file}: models.gpt-4o.deployments[0].weigth: unknown field"],
        id="misspelt-deployment-field",
    ),
    pytest.param(
        MOCK + "models:\n  m: {deployments: [{provider: demo, model: x, timeout: {conect: 3}}]}\n",
        {},
        ["{file}: models.m.deployments[0].timeout.conect: unknown field"],
        id="misspelt-timeout-phase",
    ),
    pytest.param(
        MOCK + "modles: {}\n",
        {},
        ["{file}: modles: unknown field"],
        id="misspelt-top-level-section",
    ),
    pytest.param(
        MOCK + "models:\n  gpt-4o:\n    deployments: [{provider: demo}]\n",
        {},
        ["{file}: models.gpt-4o.deployments[0].model: field required"],
        id="missing-deployment-model",
    ),
    pytest.param(
        "providers: {demo: {base_url: 'http://127.0.0.1:8000/v1'}}\n",
        {},
        ["{file}: providers.demo.type: field required"],
        id="missing-provider-type",
    ),
    pytest.param(
        MOCK + "models:\n  m: {routing: {strategy: weighted}}\n",
        {},
        ["{file}: models.m.deployments: field required"],
        id="missing-deployments",
    ),
    pytest.param(
        MOCK + "keys:\n  - {name: ci, key: '${CI_KEY}'}\n",
        {},
        ["{file}: keys[0].key: environment variable CI_KEY is not set"],
        id="unset-variable",
    ),
    pytest.param(
        "providers:\n  up: {type: openai, base_url: 'http://${UP_HOST}:8000/v1'}\n",
        {"UP_PORT": "8000"},
        ["{file}: providers.up.base_url: environment variable UP_HOST is not set"],
        id="unset-variable-inside-a-string",
    ),
    pytest.param(
        MOCK + "models:\n  m: {deployments: [{provider: nope, model: x}]}\n",
        {},
        ["{file}: models.m.deployments[0].provider: unknown provider 'nope'"],
        id="unknown-provider",
    ),
    pytest.param(
        MOCK + "models:\n  m: {deployments: [{provider: demo, model: x}], fallbacks: [ghost]}\n",
        {},
        ["{file}: models.m.fallbacks[0]: unknown model 'ghost'"],
        id="unknown-fallback",
    ),
    pytest.param(
        MOCK + "models:\n  m: {deployments: [{provider: ghost, model: x}], fallbacks: [nope]}\n",
        {},
        [
            "{file}: models.m.deployments[0].provider: unknown provider 'ghost'",
            "{file}: models.m.fallbacks[0]: unknown model 'nope'",
        ],
        id="two-problems-two-lines",
    ),
    pytest.param(
        "keys:\n  - {name: ci, key: sk-abcdefgh, limits: {rpm: 0}}\n",
        {},
        ["{file}: keys[0].limits.rpm: Input should be greater than 0"],
        id="limit-zero",
    ),
    pytest.param(
        "keys:\n  - {name: ci, key: sk-abcdefgh, limits: {tpm: lots}}\n",
        {},
        [
            "{file}: keys[0].limits.tpm: Input should be a valid integer, "
            "unable to parse string as an integer"
        ],
        id="limit-not-a-number",
    ),
    pytest.param(
        "keys:\n  - {name: ci, key: sk-abcdefgh, limits: {rpm: '${RPM}'}}\n",
        {"RPM": "many"},
        [
            "{file}: keys[0].limits.rpm: Input should be a valid integer, "
            "unable to parse string as an integer"
        ],
        id="limit-from-env-not-a-number",
    ),
    pytest.param(
        "keys:\n  - {name: ci, key: sk-abcdefgh, limits: {budget_period: day}}\n",
        {},
        ["{file}: keys[0].limits: budget_period needs budget_usd"],
        id="budget-period-without-budget",
    ),
    pytest.param(
        "keys:\n  - {name: ci, key: pk-abcdefgh}\n",
        {},
        ["{file}: keys[0].key: a key must start with 'sk-' and be at least 8 characters"],
        id="key-without-sk-prefix",
    ),
    pytest.param(
        SERVED + "keys:\n  - {name: ci, key: sk-abcdefgh}\n  - {name: ci, key: sk-abcdefgi}\n",
        {},
        ["{file}: keys[1].name: duplicate key name 'ci'"],
        id="duplicate-key-name",
    ),
    pytest.param(
        "providers:\n  up: {type: openai, headers: {'x team': a}}\n",
        {},
        ["{file}: providers.up.headers: 'x team' is not a valid HTTP header name"],
        id="header-name-with-a-space",
    ),
    pytest.param(
        "providers:\n  up: {type: openai, headers: {x-team: '${TEAM}'}}\n",
        {"TEAM": "a\r\nx-injected: 1"},
        ["{file}: providers.up.headers: the value of header 'x-team' must be ASCII on one line"],
        id="header-value-with-a-line-break",
    ),
    pytest.param(
        "providers:\n  up: {type: openai, base_url: 'not a url'}\n",
        {},
        ["{file}: providers.up.base_url: 'not a url' is not a URL (it is empty or has spaces)"],
        id="base-url-not-a-url",
    ),
    pytest.param(
        "providers:\n  up: {type: openai, base_url: 'api.openai.com/v1'}\n",
        {},
        [
            "{file}: providers.up.base_url: 'api.openai.com/v1' is not an absolute http:// "
            "or https:// URL"
        ],
        id="base-url-without-scheme",
    ),
    pytest.param(
        "providers:\n  up: {type: openai, base_url: 'http://[::1'}\n",
        {},
        ["{file}: providers.up.base_url: 'http://[::1' is not a valid URL: Invalid port: ':1'"],
        id="base-url-httpx-cannot-parse",
    ),
    pytest.param(
        "providers:\n  up: {type: openai, base_url: 'ftp://files.example.com/v1'}\n",
        {},
        [
            "{file}: providers.up.base_url: 'ftp://files.example.com/v1' is not an absolute "
            "http:// or https:// URL (scheme 'ftp')"
        ],
        id="base-url-other-scheme",
    ),
    pytest.param(
        "providers:\n  up: {type: openai, base_url: 'http:///v1'}\n",
        {},
        ["{file}: providers.up.base_url: 'http:///v1' has no valid host"],
        id="base-url-without-host",
    ),
    pytest.param(
        "providers:\n  up: {type: openai, base_url: 'http://127.0.0.1:99999/v1'}\n",
        {},
        ["{file}: providers.up.base_url: 'http://127.0.0.1:99999/v1' has a port out of range"],
        id="base-url-port-out-of-range",
    ),
    pytest.param(
        "providers:\n  up: {type: openai, base_url: 'https://bob:hunter2@[::1/v1'}\n",
        {},
        [
            "{file}: providers.up.base_url: 'https://****@[::1/v1' is not a valid URL: Invalid port: ':1'"
        ],
        id="base-url-error-masks-the-password",
    ),
    pytest.param(
        MOCK,
        {},
        ["{file}: models: no models are configured, so there is nothing to serve"],
        id="no-models",
    ),
    pytest.param(
        "providers: {openai: {type: openai, api_key: '${OPENAI_API_KEY:-}'}}\n"
        "models: {gpt-4o: {deployments: [{provider: openai, model: gpt-4o}]}}\n",
        {},
        [
            "{file}: models: no model has an enabled provider (every provider they use has an "
            "empty api_key), so there is nothing to serve"
        ],
        id="no-model-with-an-enabled-provider",
    ),
    pytest.param(
        SERVED + 'keys:\n  - {name: "ci\\u001b[31m", key: sk-abcdefgh}\n',
        {},
        ["{file}: keys[0].name: a key name must be printable text, without control characters"],
        id="key-name-with-an-escape",
    ),
    pytest.param(
        SERVED + f"keys:\n  - {{name: {'n' * 201}, key: sk-abcdefgh}}\n",
        {},
        ["{file}: keys[0].name: String should have at most 200 characters"],
        id="key-name-too-long",
    ),
    pytest.param(
        SERVED + f"keys:\n  - {{name: ci, key: sk-abcdefgh, metadata: {{x: {'y' * 17000}}}}}\n",
        {},
        ["{file}: keys[0].metadata: metadata is 17008 bytes as JSON, more than 16384"],
        id="metadata-too-large",
    ),
    pytest.param(
        SERVED + "server: {max_body_bytes: -5}\n",
        {},
        ["{file}: server.max_body_bytes: Input should be greater than 0"],
        id="negative-number",
    ),
    pytest.param(
        SERVED + "server: {docs: maybe}\n",
        {},
        ["{file}: server.docs: Input should be a valid boolean, unable to interpret input"],
        id="docs-not-a-boolean",
    ),
    pytest.param(
        "- providers\n- models\n",
        {},
        ["{file}: the top level must be a mapping"],
        id="top-level-list",
    ),
    pytest.param(
        "just a sentence\n",
        {},
        ["{file}: the top level must be a mapping"],
        id="top-level-scalar",
    ),
]


@pytest.mark.parametrize(("text", "env", "expected"), BROKEN)
def test_broken_config_names_file_and_field(
    tmp_path: Path, text: str, env: dict[str, str], expected: list[str]
) -> None:
    path = write(tmp_path, text)
    assert config_error(path, env) == [line.format(file=path) for line in expected]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param(
            {"GATEWAY_MASTER_KEY": "sk-master-short"},
            "GATEWAY_MASTER_KEY: too short (15 characters); the master key must have at least 32.",
            id="short-master-key",
        ),
        pytest.param(
            {"REDIS_URL": "http://user:pw@127.0.0.1:6379/0"},
            "REDIS_URL: 'http://****@127.0.0.1:6379/0' must start with redis://, rediss://,",
            id="redis-url-scheme",
        ),
        pytest.param(
            {"REDIS_URL": "redis://:pw@127.0.0.1:port/0"},
            "REDIS_URL: 'redis://****@127.0.0.1:port/0' has an invalid port",
            id="redis-url-port",
        ),
        pytest.param(
            {"REDIS_URL": "redis://127.0.0.1:6379/zero"},
            "REDIS_URL: 'redis://127.0.0.1:6379/zero': the path must be a database number, "
            "not 'zero'",
            id="redis-url-database",
        ),
    ],
)
def test_environment_that_cannot_work_is_named_without_its_secret(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    (line,) = config_error(write(tmp_path, SERVED), env)
    assert line.startswith(expected)
    assert "sk-master-short" not in line
    assert ":pw@" not in line


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    for text in ("", "# only a comment\n"):
        path = write(tmp_path, text)
        assert config_error(path) == [
            f"{path}: the config file is empty; it needs at least one model"
        ]


def test_file_that_is_not_text_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_bytes(b"\xff\xfe\x00binary")
    assert config_error(path) == [f"{path}: cannot read the config file: not UTF-8 text"]


def test_invalid_yaml_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "providers:\n  demo: [type: mock}\n")
    lines = config_error(path)
    assert lines[0].startswith(f"{path}: not valid YAML: ")
    assert any("line 2" in line for line in lines)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    assert config_error(path) == [f"{path}: cannot read the config file: No such file or directory"]


def test_directory_is_a_config_error(tmp_path: Path) -> None:
    assert config_error(tmp_path) == [f"{tmp_path}: cannot read the config file: Is a directory"]


def test_relative_path_is_named_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "keys:\n  - {name: ci, key: short}\n", name="configs/gateway.yaml")
    monkeypatch.chdir(tmp_path)
    assert config_error(Path("configs/gateway.yaml")) == [
        "configs/gateway.yaml: keys[0].key: a key must start with 'sk-' and be at least 8 characters"
    ]


def test_unknown_provider_type_via_registry(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "providers:\n  demo: {type: mock}\n  odd: {type: nosuch}\n"
        "models: {m: {deployments: [{provider: odd, model: x}]}}\n",
    )
    settings = load_settings(path, env={})  # the type is checked by the registry, not pydantic
    with pytest.raises(ConfigError) as info:
        check_types(settings)
    (line,) = str(info.value).splitlines()
    prefix = f"{path}: providers.odd.type: unknown provider type 'nosuch' (known: "
    assert line.startswith(prefix)
    assert "mock" in line[len(prefix) :]
    assert "openai" in line[len(prefix) :]


def test_known_provider_types_pass_the_registry(tmp_path: Path) -> None:
    path = write(tmp_path, "providers:\n  demo: {type: mock}\n  up: {type: openai}\n")
    path.write_text(path.read_text() + "models: {m: {deployments: [{provider: up, model: x}]}}\n")
    check_types(load_settings(path, env={}))


# ---------------------------------------------------------------- what loads


def test_default_substitution(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "providers:\n"
        "  up: {type: openai, base_url: '${UP_URL:-http://127.0.0.1:8000/v1}'}\n"
        "  mid: {type: openai, base_url: 'http://${HOST:-localhost}:${PORT:-9000}/v1'}\n"
        "models: {m: {deployments: [{provider: up, model: x}]}}\n",
    )
    settings = load_settings(path, env={})
    assert settings.providers["up"].base_url == "http://127.0.0.1:8000/v1"
    assert settings.providers["mid"].base_url == "http://localhost:9000/v1"

    settings = load_settings(path, env={"UP_URL": "https://api.example.com/v1", "PORT": "81"})
    assert settings.providers["up"].base_url == "https://api.example.com/v1"
    assert settings.providers["mid"].base_url == "http://localhost:81/v1"


def test_whole_value_variable_keeps_yaml_type(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        SERVED + "keys:\n"
        "  - name: ci\n"
        "    key: '${CI_KEY}'\n"
        "    limits: {rpm: '${RPM:-60}', tpm: '${TPM}', budget_usd: '${BUDGET:-2.5}'}\n"
        "    metadata: {team: '${TEAM:-42}', label: 'rpm=${RPM:-60}'}\n",
    )
    settings = load_settings(path, env={"CI_KEY": "sk-ci-0123456789", "TPM": "200000"})
    (key,) = settings.keys
    assert key.key.get_secret_value() == "sk-ci-0123456789"
    assert key.limits.rpm == 60
    assert key.limits.tpm == 200000
    assert key.limits.budget_usd == 2.5
    # Typed even where the schema takes anything; a variable inside text stays text.
    assert key.metadata == {"team": 42, "label": "rpm=60"}

    settings = load_settings(path, env={"CI_KEY": "sk-ci-0123456789", "TPM": "1", "RPM": "120"})
    assert settings.keys[0].limits.rpm == 120


@pytest.mark.parametrize(
    ("env", "models", "secret"),
    [
        pytest.param({}, ["*"], "sk-local-0123456789", id="glob-default"),
        pytest.param(
            {"ALLOWED": "gpt-*", "LOCAL_KEY": "@tok: en: 42"},
            ["gpt-*"],
            "@tok: en: 42",
            id="secret-with-yaml-syntax",
        ),
    ],
)
def test_whole_value_variable_that_is_not_yaml_stays_text(
    tmp_path: Path, env: dict[str, str], models: list[str], secret: str
) -> None:
    # ``*`` (a YAML alias), ``@`` and ``: `` are fine in a value and must not
    # make the loader crash with a raw yaml error.
    path = write(
        tmp_path,
        "providers:\n"
        "  local: {type: openai, api_key: '${LOCAL_KEY:-sk-local-0123456789}'}\n"
        "models: {m: {deployments: [{provider: local, model: x}]}}\n"
        "keys:\n"
        "  - {name: ci, key: sk-ci-0123456789, models: ['${ALLOWED:-*}']}\n",
    )
    settings = load_settings(path, env=env)
    assert settings.keys[0].models == models
    assert settings.providers["local"].api_key is not None
    assert settings.providers["local"].api_key.get_secret_value() == secret


def test_timeout_number_bounds_every_phase(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MOCK + "models:\n"
        "  m:\n"
        "    deployments:\n"
        "      - {provider: demo, model: a, timeout: 30}\n"
        "      - {provider: demo, model: b, timeout: 2}\n"
        "      - {provider: demo, model: c, timeout: {first_token: 10}}\n"
        "      - {provider: demo, model: d}\n",
    )
    a, b, c, d = load_settings(path, env={}).models["m"].deployments
    assert a.timeout == Timeouts(connect=5, first_token=30, idle=30, total=30)
    assert b.timeout == Timeouts(connect=2, first_token=2, idle=2, total=2)
    assert c.timeout == Timeouts(connect=5, first_token=10, idle=60, total=600)
    assert d.timeout == Timeouts(connect=5, first_token=60, idle=60, total=600)


def test_empty_api_key_disables_provider_and_hides_its_models(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "providers:\n"
        "  demo: {type: mock}\n"
        "  openai: {type: openai, api_key: '${OPENAI_API_KEY:-}'}\n"
        "  local: {type: openai, base_url: 'http://127.0.0.1:8000/v1'}\n"
        "models:\n"
        "  gpt-4o: {deployments: [{provider: openai, model: gpt-4o}]}\n"
        "  mixed:\n"
        "    deployments: [{provider: openai, model: gpt-4o}, {provider: local, model: qwen}]\n"
        "  mock-chat: {deployments: [{provider: demo, model: mock-chat}]}\n",
    )
    settings = load_settings(path, env={})
    assert not settings.providers["openai"].enabled
    assert settings.providers["local"].enabled  # no api_key at all: needs none
    assert list(settings.enabled_models()) == ["mixed", "mock-chat"]
    assert "provider 'openai' is disabled: its api_key is empty" in warn_about(settings)

    settings = load_settings(path, env={"OPENAI_API_KEY": "sk-real-0123456789"})
    assert settings.providers["openai"].enabled
    assert list(settings.enabled_models()) == ["gpt-4o", "mixed", "mock-chat"]


def test_embedded_default_without_env_serves_mock_models_only() -> None:
    settings = load_settings(None, env={})
    assert settings.source == "<embedded gateway.yaml>"
    assert set(settings.enabled_models()) == {"mock-chat", "mock-chat-2", "mock-embedding"}
    (demo,) = settings.keys
    assert demo.key.get_secret_value() == "sk-gateway-demo"
    assert demo.models == ["mock-*"]
    assert settings.server.docs is True
    assert settings.master_key is None
    assert settings.redis_url is None


def test_embedded_default_lists_openai_models_with_a_key() -> None:
    settings = load_settings(
        None, env={"OPENAI_API_KEY": "sk-openai-0123456789", "GATEWAY_DEMO_KEY": "sk-mine-0123"}
    )
    enabled = set(settings.enabled_models())
    assert {"mock-chat", "mock-embedding", "gpt-4o-mini", "gpt-4o"} <= enabled
    assert settings.providers["openai"].base_url == "https://api.openai.com/v1"
    assert settings.keys[0].key.get_secret_value() == "sk-mine-0123"
    # The demo key stays on the mock models, whatever the environment enables.
    assert settings.keys[0].models == ["mock-*"]
    assert load_settings(None, env={"GATEWAY_DOCS": "false"}).server.docs is False


def test_environment_adds_master_key_and_redis(tmp_path: Path) -> None:
    path = write(tmp_path, SERVED)
    master = "sk-master-" + "0123456789" * 3
    settings = load_settings(
        path, env={"GATEWAY_MASTER_KEY": master, "REDIS_URL": "redis://h:6379/0"}
    )
    assert settings.master_key is not None
    assert settings.master_key.get_secret_value() == master
    assert settings.redis_url is not None
    assert settings.redis_url.get_secret_value() == "redis://h:6379/0"


def test_relative_data_dir_resolves_against_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, SERVED + "server: {data_dir: state/gw}\n", name="conf/gateway.yaml")
    monkeypatch.chdir(tmp_path)  # not the cwd: the directory of the file
    settings = load_settings(Path("conf/gateway.yaml"), env={})
    assert settings.server.data_dir == tmp_path.resolve() / "conf" / "state" / "gw"


def test_absolute_data_dir_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    path = write(tmp_path, SERVED + f"server: {{data_dir: '{target}'}}\n", name="conf/gateway.yaml")
    assert load_settings(path, env={}).server.data_dir == target


def test_data_dir_defaults_to_none(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, SERVED), env={}).server.data_dir is None


# ---------------------------------------------------------------- gateway check-config


@pytest.fixture
def restore_gateway_logger() -> Iterator[None]:
    """``main()`` configures the ``gateway`` logger; put it back for later tests."""
    logger = logging.getLogger("gateway")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.mark.usefixtures("restore_gateway_logger")
def test_check_config_prints_config_with_secrets_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    provider_secret = "sk-upstream-secret-9876"
    key_secret = "sk-ci-secret-1234"
    monkeypatch.setenv("UP_KEY", provider_secret)
    monkeypatch.setenv("GATEWAY_MASTER_KEY", "sk-master-secret-5555-0123456789abcdef")
    path = write(
        tmp_path,
        "providers:\n"
        "  up: {type: openai, base_url: 'http://127.0.0.1:9/v1', api_key: '${UP_KEY}'}\n"
        "models:\n"
        "  m: {deployments: [{provider: up, model: x, timeout: 30}]}\n"
        f"keys:\n  - {{name: ci, key: {key_secret}, limits: {{rpm: '${{RPM:-60}}'}}}}\n",
    )
    assert main(["check-config", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"# {path}: valid\n")
    assert provider_secret not in out + err
    assert key_secret not in out + err
    assert "sk-master-secret-5555" not in out + err
    assert "api_key: '**********'" in out
    assert "key: '**********'" in out
    assert "rpm: 60" in out
    assert "first_token: 30.0" in out


@pytest.mark.usefixtures("restore_gateway_logger")
def test_check_config_masks_the_user_info_of_urls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://default:s3cret-redis@redis.example.com:6380/1")
    path = write(
        tmp_path,
        "providers:\n"
        "  up: {type: openai, base_url: 'https://bob:hunter2@proxy.example.com/v1'}\n"
        "models: {m: {deployments: [{provider: up, model: x}]}}\n",
    )
    assert main(["check-config", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "base_url: https://****@proxy.example.com/v1" in out
    assert "# store: redis at redis://****@redis.example.com:6380/1" in out
    for secret in ("hunter2", "bob", "s3cret-redis", "default:"):
        assert secret not in out + err


@pytest.mark.usefixtures("restore_gateway_logger")
def test_check_config_names_a_data_dir_that_cannot_be_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    path = write(tmp_path, SERVED + f"server: {{data_dir: '{blocker}/data'}}\n")
    assert main(["check-config", "--config", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "gateway: invalid config:\n"
        f"{path}: server.data_dir: the embedded store cannot use {blocker}/data: "
        f"Not a directory ({blocker})\n"
    )
    assert not (blocker.parent / "data").exists()


@pytest.mark.usefixtures("restore_gateway_logger")
def test_check_config_fails_with_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "models:\n  m: {deployments: [{provider: ghost, model: x}]}\n")
    assert main(["check-config", "--config", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "gateway: invalid config:\n"
        f"{path}: models.m.deployments[0].provider: unknown provider 'ghost'\n"
    )


@pytest.mark.usefixtures("restore_gateway_logger")
def test_check_config_fails_on_unknown_provider_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        "providers: {odd: {type: nosuch}}\nmodels: {m: {deployments: [{provider: odd, model: x}]}}\n",
    )
    assert main(["check-config", "--config", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(
        f"gateway: invalid config:\n{path}: providers.odd.type: unknown provider type 'nosuch'"
    )


def test_routing_settings_are_served_without_warnings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MOCK
        + "models:\n"
        + "  plain: {deployments: [{provider: demo, model: m}]}\n"
        + "  big: {deployments: [{provider: demo, model: big}]}\n"
        + "  fancy:\n"
        + "    deployments: [{provider: demo, model: m, max_parallel: 4}]\n"
        + "    routing:\n"
        + "      strategy: hedge\n"
        + "      hedge_after_ms: 400\n"
        + "      retries: {attempts: 2, backoff_ms: 50, max_backoff_ms: 500, deadline_seconds: 9}\n"
        + "      cooldown: {failures: 2, seconds: 10}\n"
        + "    fallbacks: [plain]\n"
        + "    context_fallbacks: [big]\n",
    )
    settings = load_settings(path, env={})
    assert warn_about(settings) == []
    routing = settings.models["fancy"].routing
    assert (routing.retries.attempts, routing.cooldown.seconds) == (2, 10.0)


@pytest.mark.parametrize(
    ("model", "problem"),
    [
        (
            "{deployments: [{provider: demo, model: m}], routing: {strategy: hedge}}",
            "models.x.routing: strategy hedge needs hedge_after_ms",
        ),
        (
            "{deployments: [{provider: demo, model: m}], context_fallbacks: [nope]}",
            "models.x.context_fallbacks[0]: unknown model 'nope'",
        ),
        (
            "{deployments: [{provider: demo, model: m}], fallbacks: [x]}",
            "models.x.fallbacks[0]: a model cannot fall back to itself",
        ),
        (
            "{deployments: [{provider: demo, model: m}], routing: {retries: {attempts: 0}}}",
            "models.x.routing.retries.attempts",
        ),
    ],
)
def test_routing_settings_that_cannot_work_are_refused(
    tmp_path: Path, model: str, problem: str
) -> None:
    path = write(tmp_path, MOCK + f"models:\n  x: {model}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert problem in str(info.value)
