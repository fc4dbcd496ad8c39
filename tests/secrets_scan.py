"""The session's search for leaked secrets: no secret in any log or /metrics.

Every gateway a test runs as a process (``ServerProcess``) registers its log file
and the secrets its config and environment hold: keys, the master key, provider
api keys, Redis passwords. Each gateway's ``/metrics`` is scraped before it stops.
When the session ends, every log and scrape is searched for every secret of the
whole session, and for any key the gateway generated (``new_secret``: the admin
API and ``gateway keys create`` hand those out, and a test need not say so). A
find fails the session; it is reported by a hint (``sk-...abcd``), never the secret.

What is not a secret: the documented demo key, and a key's hint (its last four
characters). Values shorter than ``MIN_LENGTH`` are left out, since they would be
found in any text by chance; the config refuses a key that short.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from gateway.config import ConfigError, substitute_env

# gateway/limits/keys.py, new_secret: "sk-gw-" and 32 random bytes in URL-safe base64.
GENERATED_KEY = re.compile(r"sk-gw-[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
PUBLIC = frozenset({"sk-gateway-demo"})  # README.md: the demo key of the built-in config
MIN_LENGTH = 8
# Names of config fields and environment variables whose string value is a secret.
_SECRET_NAME = re.compile(r"(^|_)(key|api_key|master_key|secret|password|token)$", re.I)


@dataclass
class Registry:
    secrets: set[str] = field(default_factory=set)
    logs: list[Path] = field(default_factory=list)
    scrapes: list[tuple[str, str]] = field(default_factory=list)  # (where, text)
    gateways: int = 0  # `gateway serve` processes started
    configured: int = 0  # those of them given a config file


REGISTRY = Registry()


def register_secret(value: str | None) -> None:
    """A secret a test knows of that no config holds, e.g. a key the admin API made
    (those are found without it, by ``GENERATED_KEY``)."""
    if value and len(value) >= MIN_LENGTH and value not in PUBLIC:
        REGISTRY.secrets.add(value)


def register_server(args: list[str], env: Mapping[str, str], given: Mapping[str, str]) -> None:
    """What a process keeps secret: its config file's (``--config`` or
    ``GATEWAY_CONFIG``, ``${VAR}`` resolved in ``env``) and the variables the test
    ``given`` it. Its log is ``register_log``'s."""
    found = secrets_of_env(given)
    path = config_path(args, env)
    if path is not None:
        found |= secrets_of_config_file(path, env)
    for value in found:
        register_secret(value)
    if args[:1] == ["serve"]:
        REGISTRY.gateways += 1
        REGISTRY.configured += path is not None


def register_log(path: Path) -> None:
    REGISTRY.logs.append(path)


def register_scrape(where: str, text: str) -> None:
    REGISTRY.scrapes.append((where, text))


def config_path(args: list[str], env: Mapping[str, str]) -> Path | None:
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--config="):
            return Path(arg.partition("=")[2])
    found = env.get("GATEWAY_CONFIG")
    return Path(found) if found else None


def secrets_of_config_file(path: Path, env: Mapping[str, str]) -> set[str]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return set()  # a test of a broken config: the gateway refuses it, serving nothing
    try:
        data = substitute_env(data, env)
    except ConfigError:
        pass  # an unset variable: the gateway refuses it too; the literals still count
    return secrets_of_config(data)


def secrets_of_config(node: Any, name: str = "") -> set[str]:
    """Every secret in a config tree, found by its field's name (``api_key``, a key's
    ``key``, anything ``*_key``, ``password``, ``token``) wherever the schema puts it,
    and the password of any URL in it."""
    found: set[str] = set()
    if isinstance(node, Mapping):
        for key, value in node.items():
            found |= secrets_of_config(value, str(key))
    elif isinstance(node, list):
        for value in node:
            found |= secrets_of_config(value, name)
    elif isinstance(node, str):
        if _SECRET_NAME.search(name) or name.lower() == "authorization":
            found.add(node.removeprefix("Bearer ").strip())
        found |= _url_password(node)
    return found


def secrets_of_env(env: Mapping[str, str]) -> set[str]:
    """The values of ``*_KEY``, ``*_SECRET``, ``*_PASSWORD``, ``*_TOKEN``, and the
    password of any URL (``REDIS_URL``)."""
    found: set[str] = set()
    for name, value in env.items():
        if _SECRET_NAME.search(name):
            found.add(value)
        found |= _url_password(value)
    return found


def _url_password(value: str) -> set[str]:
    if "://" not in value or "@" not in value:
        return set()
    try:
        password = urlsplit(value.strip()).password
    except ValueError:
        return set()
    return {password} if password else set()


def hint(secret: str) -> str:
    """Enough to tell which secret leaked, as a key's hint is."""
    return f"{secret[:3]}...{secret[-4:]} ({len(secret)} chars)"


@dataclass
class Report:
    files: int = 0
    scrapes: int = 0
    secrets: int = 0
    gateways: int = 0
    leaks: list[str] = field(default_factory=list)  # where and the secret's hint
    problems: list[str] = field(default_factory=list)  # why the scan cannot vouch

    @property
    def failed(self) -> bool:
        return bool(self.leaks or self.problems)

    def add(self, other: Report) -> None:
        """Count in another process's scan (a parallel worker's)."""
        self.files += other.files
        self.scrapes += other.scrapes
        self.secrets += other.secrets
        self.gateways += other.gateways
        self.leaks += other.leaks
        self.problems += other.problems

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        return cls(**data)

    def summary(self) -> str:
        verdict = "LEAKED" if self.leaks else "unsure" if self.problems else "clean"
        return (
            f"secrets scan: {self.files} server logs and {self.scrapes} /metrics scrapes "
            f"of {self.gateways} gateways searched for {self.secrets} secrets and any "
            f"generated key: {verdict}"
        )


def find(text: str, secrets: Iterable[str]) -> list[tuple[int, str]]:
    """(line number, hint) of every secret in ``text``, each secret once a line."""
    known = sorted(secrets, key=len, reverse=True)  # the longest of overlapping ones wins
    parts = [re.escape(s) for s in known] + [GENERATED_KEY.pattern]
    pattern = re.compile("|".join(parts))
    found: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        seen = {m.group() for m in pattern.finditer(line)}
        found.extend((number, hint(secret)) for secret in sorted(seen))
    return found


def scan(registry: Registry | None = None) -> Report:
    """Search every log and scrape ``registry`` (the session's) holds."""
    registry = REGISTRY if registry is None else registry
    report = Report(
        files=len(registry.logs),
        scrapes=len(registry.scrapes),
        secrets=len(registry.secrets),
        gateways=registry.gateways,
    )
    sources: list[tuple[str, str]] = []
    for path in registry.logs:
        try:
            sources.append((str(path), path.read_text(errors="replace")))
        except OSError as exc:
            report.problems.append(f"{path}: cannot be read ({exc.strerror})")
    sources.extend(registry.scrapes)
    for where, text in sources:
        for number, secret_hint in find(text, registry.secrets):
            report.leaks.append(f"{where}:{number}: {secret_hint}")
    if registry.configured and not registry.secrets:
        # Every config the suite serves holds a key, a provider's key or comes with a
        # master key: none known means the registration broke, and the scan would pass
        # whatever the logs hold. (The built-in config, served alone, has none.)
        report.problems.append(
            f"{registry.configured} gateways ran from a config, yet no secret was registered"
        )
    return report
