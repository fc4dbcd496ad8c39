"""The ``gateway`` command: serve, check-config, mock-upstream."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence

import yaml

from gateway import __version__
from gateway.config import (
    ConfigError,
    ServerConfig,
    Settings,
    load_settings,
    resolve_config_path,
    warn_about,
)
from gateway.observability.logging import configure_logging
from gateway.providers.registry import check_types
from gateway.reload import SUPERVISOR_ENV
from gateway.validation import mask_url

log = logging.getLogger("gateway")

DEMO_KEY = "sk-gateway-demo"
# Where the workers of --workers N keep their metrics (prometheus-client's multiprocess mode).
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _settings(config: str | None, *, prepare: bool = False) -> Settings:
    """The config, checked as far as it can be before serving (``ConfigError`` if not).

    ``prepare``: also create the embedded store's directory (``serve``);
    ``check-config`` only checks that it could be, and changes nothing.
    """
    settings = load_settings(resolve_config_path(config, os.environ))
    check_types(settings)
    _framework_bypasses(settings)  # a bad GATEWAY_FRAMEWORK_BYPASSES is refused here
    if settings.redis_url is None:
        _check_data_dir(settings, prepare=prepare)
    if settings.server.tracing:
        _check_tracing(settings)
    return settings


def _check_tracing(settings: Settings) -> None:
    """server.tracing needs the ``tracing`` extra: refused at start when it is missing."""
    try:
        import gateway.observability.tracing  # noqa: F401
    except ModuleNotFoundError as exc:
        raise ConfigError(f"{settings.source}: server.tracing: {exc}") from None


def _framework_bypasses(settings: Settings) -> bool:
    """Whether the framework bypasses are on (gateway/fastpath.py), the environment's
    override included."""
    from gateway import fastpath

    return fastpath.enabled(settings.server)


def _check_data_dir(settings: Settings, *, prepare: bool) -> None:
    from gateway.limits.embedded import default_data_dir, prepare_data_dir

    configured = settings.server.data_dir
    directory = configured or default_data_dir()
    field = "server.data_dir" if configured else "server.data_dir (default location)"
    try:
        if prepare:
            prepare_data_dir(directory)
            return
        # The nearest directory that exists must let us create (or use) the rest.
        existing = directory
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(existing))
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied", str(existing))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(directory) else ""
        raise ConfigError(
            f"{settings.source}: {field}: the embedded store cannot use {directory}: "
            f"{reason}{where}"
        ) from None


def _fail(message: str) -> int:
    print(f"gateway: {message}", file=sys.stderr)
    return 1


def _uvicorn_kwargs(args: argparse.Namespace, server: ServerConfig) -> dict[str, object]:
    from gateway.server import protocol_for

    return {
        "host": args.host,
        "port": args.port,
        "loop": "uvloop",
        # httptools with the edge's limits, one write per answer (gateway/server.py)
        "http": protocol_for(server),
        "access_log": False,  # the gateway writes its own, with what uvicorn cannot know
        "log_level": args.log_level.lower(),
        "server_header": False,
        "proxy_headers": False,  # nothing here reads the client address; one layer less
        # The protocol's own timer closes idle keep-alive connections; uvicorn is told
        # the same for anything of its own that reads it.
        "timeout_keep_alive": server.keepalive_timeout_seconds,
    }


def worker_app() -> object:
    """uvicorn's factory in each worker of ``serve --workers N``: ``app_from_env``. SIGHUP
    is ignored until the app's lifespan listens for it (a reload), not the end of the worker."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from gateway.app import app_from_env

    return app_from_env()


def _serve_workers(kwargs: dict[str, object], workers: int) -> None:
    """``uvicorn.run(..., workers=N)``, but SIGHUP to the supervisor reloads the config in
    every worker (gateway/reload.py) instead of replacing them: uvicorn's would drop their
    requests in flight, and the supervisor's own ``server:`` settings would stay old."""
    import uvicorn
    from uvicorn.supervisors.multiprocess import Multiprocess

    class Supervisor(Multiprocess):
        def handle_hup(self) -> None:
            log.info("SIGHUP: reloading the config in %d workers", len(self.processes))
            for process in self.processes:
                if process.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGHUP)

        def keep_subprocess_alive(self) -> None:
            before = {process.pid for process in self.processes}
            super().keep_subprocess_alive()
            # A worker that died took no leave of the metrics: its in-flight gauges
            # leave the totals here (a worker that stops does it itself).
            for pid in before - {process.pid for process in self.processes}:
                if pid is not None:
                    from prometheus_client import multiprocess

                    multiprocess.mark_process_dead(pid)

    os.environ[SUPERVISOR_ENV] = str(os.getpid())
    # The workers' metrics meet in one directory (docs/operations.md, "Metrics"), named
    # in their environment before they import prometheus_client. An operator's own is
    # theirs (to empty between runs); else a fresh one, removed at exit.
    metrics_dir = None
    if not os.environ.get(METRICS_DIR_ENV):
        metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
        os.environ[METRICS_DIR_ENV] = metrics_dir
    config = uvicorn.Config("gateway.cli:worker_app", factory=True, workers=workers, **kwargs)
    try:
        Supervisor(config, sockets=[config.bind_socket()]).run()
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _make_room_for_connections(max_connections: int) -> None:
    """Every connection is an open file: raise the soft limit on them (up to the hard
    one) so that ``max_connections`` clients, upstream connections and the store fit;
    else the kernel refuses connections before the gateway can answer them 503."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    wanted = max_connections + 1024  # upstream pools, the store, the log
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft < wanted:
        log.warning(
            "open files are limited to %d (ulimit -n), fewer than server.max_connections "
            "(%d) and the upstream connections need: raise the limit or lower max_connections",
            soft,
            max_connections,
        )


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    # What loading the config logs waits for the format the config chooses.
    configure_logging(args.log_level, hold=True)
    try:
        settings = _settings(args.config, prepare=True)
    except ConfigError as exc:
        configure_logging(args.log_level)
        return _fail(f"invalid config:\n{exc}")
    log_format = settings.server.log_format
    configure_logging(args.log_level, log_format)
    if args.workers > 1 and settings.redis_url is None:
        return _fail(
            f"--workers {args.workers} needs a shared store: set REDIS_URL "
            "(the embedded store serves exactly one process)"
        )
    # Else each worker fails at start, a traceback of prometheus-client's apiece
    # (docs/operations.md, "Metrics").
    metrics_dir = os.environ.get(METRICS_DIR_ENV)
    if settings.server.metrics and metrics_dir and not os.path.isdir(metrics_dir):
        return _fail(f"{METRICS_DIR_ENV}={metrics_dir} is not a directory: create it (empty)")
    for warning in warn_about(settings):
        log.warning("%s", warning)
    _warn_demo_key(settings)
    if not _framework_bypasses(settings):
        log.warning("framework bypasses are off: the same answers, at more CPU per request")
    log.info(
        "gateway %s: config %s, %d models, store %s",
        __version__,
        settings.source,
        len(settings.enabled_models()),
        "redis" if settings.redis_url else "embedded",
    )
    kwargs = _uvicorn_kwargs(args, settings.server)
    # Streams in flight at SIGTERM get drain_seconds to finish before they are cut.
    kwargs["timeout_graceful_shutdown"] = int(settings.server.drain_seconds) + 1
    if log_format != "text":  # uvicorn's loggers write through configure_logging's handler
        kwargs["log_config"] = None
    _make_room_for_connections(settings.server.max_connections)
    if args.workers > 1:
        # Each worker is a fresh process: it reads its config and log level from here
        # (the edge's limits travel inside the protocol factory, in uvicorn's config).
        if args.config:
            os.environ["GATEWAY_CONFIG"] = os.path.abspath(args.config)
        os.environ["GATEWAY_LOG_LEVEL"] = args.log_level
        os.environ["GATEWAY_LOG_FORMAT"] = log_format
        _serve_workers(kwargs, args.workers)
    else:
        from gateway.app import create_app

        # Until the lifespan listens for SIGHUP (a reload), it must not end the process.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        uvicorn.run(create_app(settings, signals=True), **kwargs)
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
        if provider["base_url"]:  # https://user:password@host/... : the same
            provider["base_url"] = mask_url(provider["base_url"])
    print(f"# {settings.source}: valid")
    if settings.redis_url is not None:
        print(f"# store: redis at {mask_url(settings.redis_url.get_secret_value())}")
    else:
        from gateway.limits.embedded import default_data_dir

        print(f"# store: embedded, in {settings.server.data_dir or default_data_dir()}")
    bypasses = _framework_bypasses(settings)
    if bypasses != settings.server.framework_bypasses:
        state = "on" if bypasses else "off"
        print(f"# framework bypasses: {state} (GATEWAY_FRAMEWORK_BYPASSES overrides the config)")
    print(yaml.safe_dump(resolved, sort_keys=False), end="")
    for warning in warn_about(settings):
        print(f"# warning: {warning}")
    return 0


def cmd_mock_upstream(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.mockserver import counting_connections, create_mock_app

    log.info("mock upstream on http://%s:%d/v1", args.host, args.port)
    app, kwargs = create_mock_app(), _uvicorn_kwargs(args, ServerConfig())
    kwargs["http"] = counting_connections(app, kwargs["http"])  # type: ignore[arg-type]
    uvicorn.run(app, **kwargs)
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
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # ``gateway keys usage | head``: the reader has gone; so has the point of writing.
        # stdout goes to /dev/null so that flushing it at exit does not fail once more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as exc:
        # A bug, not a config mistake (those are ConfigError, answered above): one line
        # for the operator, the traceback only when asked for (--log-level DEBUG).
        log.debug("traceback", exc_info=exc)
        return _fail(f"{args.command} failed: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    sys.exit(main())
