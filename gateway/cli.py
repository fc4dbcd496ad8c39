"""The ``gateway`` command: serve, check-config, mock-upstream."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import yaml

from gateway import __version__
from gateway.config import ConfigError, Settings, load_settings, resolve_config_path, warn_about
from gateway.observability.logging import configure_logging
from gateway.providers.registry import check_types

log = logging.getLogger("gateway")

DEMO_KEY = "sk-gateway-demo"


def _settings(config: str | None) -> Settings:
    settings = load_settings(resolve_config_path(config, os.environ))
    check_types(settings)
    return settings


def _fail(message: str) -> int:
    print(f"gateway: {message}", file=sys.stderr)
    return 1


def _uvicorn_kwargs(args: argparse.Namespace) -> dict[str, object]:
    return {
        "host": args.host,
        "port": args.port,
        "loop": "uvloop",
        "http": "gateway.server:HttpProtocol",  # httptools, one write per answer
        "access_log": False,  # the gateway writes its own, with what uvicorn cannot know
        "log_level": args.log_level.lower(),
        "server_header": False,
        "proxy_headers": False,  # nothing here reads the client address; one layer less
        # Longer than a proxy's idle keep-alive, so the proxy closes first and
        # never sends a request down a connection we are closing.
        "timeout_keep_alive": 75,
    }


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    try:
        settings = _settings(args.config)
    except ConfigError as exc:
        return _fail(f"invalid config:\n{exc}")
    if args.workers > 1 and settings.redis_url is None:
        return _fail(
            f"--workers {args.workers} needs a shared store: set REDIS_URL "
            "(the embedded store serves exactly one process)"
        )
    for warning in warn_about(settings):
        log.warning("%s", warning)
    _warn_demo_key(settings)
    log.info(
        "gateway %s: config %s, %d models, store %s",
        __version__,
        settings.source,
        len(settings.enabled_models()),
        "redis" if settings.redis_url else "embedded",
    )
    kwargs = _uvicorn_kwargs(args)
    # Streams in flight at SIGTERM get drain_seconds to finish before they are cut.
    kwargs["timeout_graceful_shutdown"] = int(settings.server.drain_seconds) + 1
    if args.workers > 1:
        # Each worker is a fresh process: it reads its config and log level from here.
        if args.config:
            os.environ["GATEWAY_CONFIG"] = os.path.abspath(args.config)
        os.environ["GATEWAY_LOG_LEVEL"] = args.log_level
        uvicorn.run("gateway.app:app_from_env", factory=True, workers=args.workers, **kwargs)
    else:
        from gateway.app import create_app

        uvicorn.run(create_app(settings), **kwargs)
    return 0


def _warn_demo_key(settings: Settings) -> None:
    for key in settings.keys:
        if key.key.get_secret_value() == DEMO_KEY:
            log.warning(
                "the demo key %s is enabled: anyone who knows it can use the gateway; "
                "set GATEWAY_DEMO_KEY or use your own config",
                DEMO_KEY,
            )


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args.config)
    except ConfigError as exc:
        return _fail(f"invalid config:\n{exc}")
    resolved = settings.model_dump(mode="json", exclude={"prices"})
    for provider in resolved["providers"].values():
        # Custom headers often carry credentials: show which, not what.
        provider["headers"] = {name: "**********" for name in provider["headers"]}
    print(f"# {settings.source}: valid")
    print(yaml.safe_dump(resolved, sort_keys=False), end="")
    for warning in warn_about(settings):
        print(f"# warning: {warning}")
    return 0


def cmd_mock_upstream(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.mockserver import create_mock_app

    log.info("mock upstream on http://%s:%d/v1", args.host, args.port)
    uvicorn.run(create_mock_app(), **_uvicorn_kwargs(args))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway", description="An OpenAI-compatible LLM gateway."
    )
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, port: int) -> None:
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=port)
        p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument(
        "--config", help="config file (default: $GATEWAY_CONFIG, else the embedded default)"
    )
    common(serve, 8080)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate a config and print it, secrets masked")
    check.add_argument("--config")
    check.set_defaults(func=cmd_check_config)

    mock = sub.add_parser(
        "mock-upstream", help="serve the mock provider as an OpenAI-compatible API"
    )
    common(mock, 8000)
    mock.set_defaults(func=cmd_mock_upstream)

    from gateway import keys_cli

    keys_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(getattr(args, "log_level", "INFO"))
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
