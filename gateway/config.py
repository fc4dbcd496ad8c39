"""Settings: the YAML config file, ``${VAR}`` substitution, validation.

Every mistake becomes one ``ConfigError`` whose lines name the file and the
field's path (``configs/gateway.yaml: models.gpt-4o.deployments[0].weigth:
unknown field``), so ``gateway serve`` can refuse to start before binding a
port and ``gateway check-config`` can print exactly what to fix.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.errors import format_loc
from gateway.validation import (
    KEY_NAME_MAX_CHARS,
    MIN_MASTER_KEY_CHARS,
    check_http_url,
    check_key_name,
    check_metadata,
    check_redis_url,
)

log = logging.getLogger("gateway.config")

DEFAULT_CONFIG = "gateway.yaml"
DEFAULT_PRICES = "prices.yaml"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A config that cannot be used; ``str()`` is the message for the operator."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Strict):
    connect: PositiveFloat = 5.0
    first_token: PositiveFloat = 60.0
    idle: PositiveFloat = 60.0
    total: PositiveFloat = 600.0


class Price(_Strict):
    """USD per one million tokens.

    ``cache_read`` prices the prompt tokens served from the provider's prompt
    cache, ``cache_write`` those written to it; unset, they cost ``input``
    (docs/limits.md, "Budgets").
    """

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: float | None = Field(default=None, ge=0)
    cache_write: float | None = Field(default=None, ge=0)


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# What a provider type cannot do without: its adapter has no default for it.
REQUIRED_BY_TYPE: dict[str, tuple[str, ...]] = {"azure": ("base_url", "api_version")}


class ProviderConfig(_Strict):
    type: str
    base_url: str | None = None
    # None: the upstream needs no key (a local vLLM); "" after substitution:
    # the provider is disabled, e.g. ``${OPENAI_API_KEY:-}`` with the var unset.
    api_key: SecretStr | None = None
    api_version: str | None = None
    headers: dict[str, str] = {}
    max_connections: PositiveInt = 256
    # The HTTP client under httpx: "lean" (ours, measured fastest) or "aiohttp".
    transport: Literal["lean", "aiohttp"] = "lean"

    @field_validator("base_url")
    @classmethod
    def _valid_base_url(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value)

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid HTTP header name")
            if "\r" in value or "\n" in value or not value.isascii():
                raise ValueError(f"the value of header {name!r} must be ASCII on one line")
        return headers

    @property
    def enabled(self) -> bool:
        return self.api_key is None or bool(self.api_key.get_secret_value())


class Deployment(_Strict):
    provider: str
    model: str
    weight: PositiveFloat = 1.0
    timeout: Timeouts = Timeouts()
    max_parallel: PositiveInt | None = None
    price: Price | None = None

    @field_validator("timeout", mode="before")
    @classmethod
    def _total_as_number(cls, value: Any) -> Any:
        # ``timeout: 30`` bounds the whole call, and every phase within it.
        if isinstance(value, int | float) and not isinstance(value, bool):
            v = float(value)
            if not v > 0:  # one message, not one per phase it would have become
                raise ValueError("a timeout must be a positive number of seconds")
            return {"connect": min(5.0, v), "first_token": v, "idle": v, "total": v}
        return value


class Retries(_Strict):
    """How a model's failed calls are retried (docs/configuration.md, "Routing")."""

    attempts: PositiveInt = Field(default=3, le=10)  # calls in all, the first included
    backoff_ms: PositiveFloat = 200.0  # before the second call to the same deployment
    max_backoff_ms: PositiveFloat = 5000.0  # the doubling stops here
    deadline_seconds: PositiveFloat = 60.0  # no attempt starts later in a request


class Cooldown(_Strict):
    """When a deployment is skipped for a while."""

    failures: PositiveInt = 3  # in a row; a 429 cools it at once
    seconds: PositiveFloat = 30.0


class Routing(_Strict):
    strategy: Literal["weighted", "least-busy", "latency", "hedge"] = "weighted"
    hedge_after_ms: PositiveInt | None = None
    retries: Retries = Retries()
    cooldown: Cooldown = Cooldown()

    @model_validator(mode="after")
    def _hedge_has_its_delay(self) -> Routing:
        if self.strategy == "hedge" and self.hedge_after_ms is None:
            raise ValueError("strategy hedge needs hedge_after_ms")
        return self


class ModelConfig(_Strict):
    deployments: list[Deployment] = Field(min_length=1)
    routing: Routing = Routing()
    fallbacks: list[str] = []
    # Tried instead when the upstream says the prompt is too long for the model.
    context_fallbacks: list[str] = []
    max_output_tokens: PositiveInt | None = None


class Limits(_Strict):
    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None
    max_parallel: PositiveInt | None = None
    budget_usd: float | None = Field(default=None, gt=0)
    budget_period: Literal["day", "month", "total"] | None = None

    @model_validator(mode="after")
    def _period_needs_budget(self) -> Limits:
        if self.budget_period is not None and self.budget_usd is None:
            raise ValueError("budget_period needs budget_usd")
        return self


class KeyConfig(_Strict):
    name: str = Field(min_length=1, max_length=KEY_NAME_MAX_CHARS)
    key: SecretStr
    models: list[str] = ["*"]
    limits: Limits = Limits()
    expires_at: datetime | None = None
    metadata: dict[str, Any] = {}
    # Log each admitted request's messages (or embedding input) on gateway.prompts.
    log_prompts: bool = False

    @field_validator("key")
    @classmethod
    def _looks_like_a_key(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if not secret.startswith("sk-") or len(secret) < 8:
            raise ValueError("a key must start with 'sk-' and be at least 8 characters")
        return value

    @field_validator("name")
    @classmethod
    def _printable_name(cls, value: str) -> str:
        return check_key_name(value)

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_metadata(value)


class RedisTLS(_Strict):
    """TLS to Redis (``rediss://`` URLs): whom to trust, and who the gateway is."""

    # The CA bundle that signed the Redis servers' certificates; unset: the system's.
    ca_file: Path | None = None
    # The gateway's own certificate and key, for a Redis that asks for one
    # (tls-auth-clients yes).
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> RedisTLS:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both, or neither")
        return self


class ServerConfig(_Strict):
    cors_origins: list[str] = []
    # The browser playground and console at /ui (docs/operations.md, "Browser console").
    ui: bool = True
    fail_mode: Literal["open", "closed"] = "open"
    data_dir: Path | None = None
    metrics: bool = True
    # stderr's lines: text, or one JSON object each (docs/operations.md, "Logs").
    log_format: Literal["text", "json"] = "text"
    # OpenTelemetry spans over OTLP (the `tracing` extra; docs/operations.md, "Tracing").
    tracing: bool = False
    # Key prefix in Redis, for gateways that share one Redis.
    redis_prefix: str = Field(default="gw:", min_length=1)
    # Certificates for rediss:// (docs/operations.md, "Redis: Cluster, Sentinel, TLS").
    redis_tls: RedisTLS = RedisTLS()
    # Redis down, fail_mode open: a key's cached record is trusted this long after the
    # store last confirmed it, so a key revoked elsewhere stops working within it
    # (docs/limits.md, "When the store is down").
    stale_key_seconds: PositiveFloat = 300.0
    # A request's lease (max_parallel, budget reservation) lives this long unless renewed;
    # renewed every third of it while in flight. Bounds how long a crashed instance's
    # requests still hold their slots and reservations.
    lease_ttl_seconds: float = Field(default=30.0, ge=1, le=3600)
    # Bodies are refused past this (413) before they are read. Parsing costs CPU and
    # memory in proportion to the body, so 8 MiB bounds both while still fitting
    # images sent as base64 data URLs of a few MB (docs/limits.md).
    max_body_bytes: PositiveInt = 8 * 1024 * 1024
    default_max_output_tokens: PositiveInt = 4096
    # How long in-flight requests and streams may finish after SIGTERM.
    drain_seconds: float = Field(default=30.0, ge=0)
    # A stream's headers wait this long for the first upstream chunk (docs/wire-formats.md, "Streams"),
    # then ": ping" comments keep idle proxies from closing it.
    stream_commit_seconds: PositiveFloat = 5.0
    keepalive_seconds: PositiveFloat = 15.0
    # The edge, enforced by the server before the app sees a request (gateway/server.py,
    # docs/operations.md "The edge's protections"): a request head (request line and
    # headers) of at most max_head_bytes and max_header_fields (else 431), arriving
    # within head_timeout_seconds (else 408); no read of a body stalled for longer
    # than body_timeout_seconds (else 408); idle keep-alive connections closed after
    # keepalive_timeout_seconds, longer than a proxy's own so the proxy closes first;
    # at most max_connections open per process (beyond it new ones get 503).
    max_head_bytes: int = Field(default=64 * 1024, ge=1024)
    max_header_fields: PositiveInt = 100
    head_timeout_seconds: PositiveFloat = 10.0
    body_timeout_seconds: PositiveFloat = 30.0
    keepalive_timeout_seconds: PositiveFloat = 75.0
    max_connections: PositiveInt = 2048
    # Interactive API docs (/docs, /redoc) and the schema (/openapi.json).
    docs: bool = True
    # The measured departures from FastAPI, Starlette, uvicorn and pydantic
    # (gateway/fastpath.py); off, the gateway answers the same, only slower.
    # GATEWAY_FRAMEWORK_BYPASSES=0 or 1, when set, overrides it.
    framework_bypasses: bool = True


class Settings(_Strict):
    providers: dict[str, ProviderConfig] = {}
    models: dict[str, ModelConfig] = {}
    keys: list[KeyConfig] = []
    server: ServerConfig = ServerConfig()
    prices: dict[str, Price] = {}
    # Not from the YAML: where it came from and what the environment adds.
    source: str = Field(default="<defaults>", exclude=True)
    master_key: SecretStr | None = Field(default=None, exclude=True)
    redis_url: SecretStr | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _references_resolve(self) -> Settings:
        problems = []
        for name, provider in self.providers.items():
            for field in REQUIRED_BY_TYPE.get(provider.type, ()):
                if not getattr(provider, field):
                    problems.append(f"providers.{name}.{field}: required for type {provider.type}")
        for name, model in self.models.items():
            for i, dep in enumerate(model.deployments):
                if dep.provider not in self.providers:
                    problems.append(
                        f"models.{name}.deployments[{i}].provider: unknown provider {dep.provider!r}"
                    )
            for field in ("fallbacks", "context_fallbacks"):
                for i, fallback in enumerate(getattr(model, field)):
                    if fallback not in self.models:
                        problems.append(f"models.{name}.{field}[{i}]: unknown model {fallback!r}")
                    elif fallback == name:
                        problems.append(
                            f"models.{name}.{field}[{i}]: a model cannot fall back to itself"
                        )
        if not self.models:
            problems.append("models: no models are configured, so there is nothing to serve")
        elif not problems and not self.enabled_models():
            problems.append(
                "models: no model has an enabled provider (every provider they use has an "
                "empty api_key), so there is nothing to serve"
            )
        seen: dict[str, int] = {}
        for i, key in enumerate(self.keys):
            if key.name in seen:
                problems.append(f"keys[{i}].name: duplicate key name {key.name!r}")
            seen[key.name] = i
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def enabled_models(self) -> dict[str, ModelConfig]:
        """Models with at least one deployment on an enabled provider."""
        return {
            name: model
            for name, model in self.models.items()
            if any(self.providers[d.provider].enabled for d in model.deployments)
        }

    def price_for(self, deployment: Deployment) -> Price | None:
        return deployment.price or self.prices.get(deployment.model)


def substitute_env(node: Any, env: Mapping[str, str], path: str = "") -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of a YAML tree."""
    if isinstance(node, dict):
        return {k: substitute_env(v, env, _join(path, k)) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute_env(v, env, f"{path}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if value is None:
            if default is None:
                raise ConfigError(f"{path or '<root>'}: environment variable {name} is not set")
            return default
        return value

    whole = _VAR.fullmatch(node)
    result = _VAR.sub(replace, node)
    # A value that is exactly one ${VAR} keeps YAML typing (``rpm: ${RPM:-60}`` is an int).
    if whole and result != "":
        try:
            loaded = yaml.safe_load(result)
        except yaml.YAMLError:  # ``*``, ``@x``, ``a: b: c``: not YAML, so plain text
            return result
        # Numbers only: a secret that happens to read "yes" or "0123" stays a string.
        if (
            isinstance(loaded, int | float)
            and not isinstance(loaded, bool)
            and str(loaded) == result
        ):
            return loaded
    return result


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _describe(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "field required"
    msg = error["msg"]
    return msg.removeprefix("Value error, ")


def format_validation_error(source: str, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        loc = format_loc(tuple(error["loc"]))
        if loc:
            lines.append(f"{source}: {loc}: {_describe(error)}")
        else:
            # Model-level checks already name their paths, joined by "; ".
            lines.extend(f"{source}: {part}" for part in _describe(error).split("; "))
    return "\n".join(lines)


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML: nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    return data


def _packaged(name: str) -> str:
    return resources.files("gateway").joinpath("configs", name).read_text()


def resolve_config_path(cli_path: str | None, env: Mapping[str, str]) -> Path | None:
    """``--config`` > ``GATEWAY_CONFIG`` > None (the embedded default)."""
    chosen = cli_path or env.get("GATEWAY_CONFIG")
    return Path(chosen) if chosen else None


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    if path is None:
        source, text, base = f"<embedded {DEFAULT_CONFIG}>", _packaged(DEFAULT_CONFIG), None
    else:
        source, base = str(path), path.resolve().parent
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read the config file: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{source}: cannot read the config file: not UTF-8 text") from None

    raw = _read_yaml(text, source)
    if not raw:
        raise ConfigError(f"{source}: the config file is empty; it needs at least one model")
    try:
        data = substitute_env(raw, env)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None

    # The packaged price list, overridden per model by a ``prices:`` section.
    packaged = _read_yaml(_packaged(DEFAULT_PRICES), f"<embedded {DEFAULT_PRICES}>")
    data["prices"] = {**(packaged.get("models") or {}), **(data.get("prices") or {})}
    if "keys" in data:
        data["keys"] = _without_empty_keys(data["keys"])
    server = data.get("server")
    if base is not None and isinstance(server, dict):  # paths are the file's, not the cwd's
        if server.get("data_dir"):
            server["data_dir"] = str(base / Path(str(server["data_dir"])).expanduser())
        tls = server.get("redis_tls")
        if isinstance(tls, dict):
            for name in ("ca_file", "cert_file", "key_file"):
                if tls.get(name):
                    tls[name] = str(base / Path(str(tls[name])).expanduser())
    try:
        settings = Settings.model_validate(
            {
                **data,
                "source": source,
                "master_key": env.get("GATEWAY_MASTER_KEY") or None,
                "redis_url": env.get("REDIS_URL") or None,
            }
        )
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None
    _check_environment(settings)
    return settings


def _check_environment(settings: Settings) -> None:
    """What the environment adds must work too; named by its variable, never printed."""
    problems = []
    master = settings.master_key.get_secret_value() if settings.master_key else None
    if master is not None and len(master) < MIN_MASTER_KEY_CHARS:
        problems.append(
            f"GATEWAY_MASTER_KEY: too short ({len(master)} characters); the master key must "
            f"have at least {MIN_MASTER_KEY_CHARS}. Make one with: "
            "python -c \"import secrets; print('sk-' + secrets.token_urlsafe(32))\""
        )
    if settings.redis_url is not None:
        try:
            check_redis_url(settings.redis_url.get_secret_value())
        except ValueError as exc:
            problems.append(f"REDIS_URL: {exc}")
    if problems:
        raise ConfigError("\n".join(problems))


def _without_empty_keys(keys: Any) -> Any:
    """A key whose value came out empty (``${DEMO_KEY:-}``) is switched off, not an error."""
    if not isinstance(keys, list):
        return keys
    kept = []
    for entry in keys:
        if isinstance(entry, dict) and entry.get("key") == "":
            log.warning("key %r is disabled: its key is empty", entry.get("name"))
            continue
        kept.append(entry)
    return kept


def warn_about(settings: Settings) -> list[str]:
    """Things that work but deserve an operator's attention, logged at start."""
    warnings = []
    for name, provider in settings.providers.items():
        if not provider.enabled:
            warnings.append(f"provider {name!r} is disabled: its api_key is empty")
    for name, model in settings.enabled_models().items():
        for dep in model.deployments:
            if settings.providers[dep.provider].type != "mock" and not settings.price_for(dep):
                warnings.append(
                    f"model {name!r}: no price for {dep.provider}/{dep.model}; its cost counts as 0"
                )
    return warnings
