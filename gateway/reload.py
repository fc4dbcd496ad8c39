"""What sets a reload off, and what it says: SIGHUP, the admin API, the sibling workers.

A reload reads the config from where the running one came from (the file, or
the embedded default) with the process's environment, and hands it to
``Live.reload`` (gateway/live.py). Each outcome is one log line: what changed,
what needs a restart to apply, or why the file was refused.

Under ``serve --workers N`` each worker holds its own config: SIGHUP to the
supervisor is passed on to every worker, and a worker that reloads through the
admin API signals the supervisor so that its siblings read the file too
(docs/operations.md, "Reloading the config").
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway.config import ConfigError, Settings, load_settings
from gateway.live import Live, Reloaded, ReloadRefused
from gateway.providers.registry import check_types
from gateway.resources import Resources

log = logging.getLogger("gateway.reload")

# Set by ``serve --workers N`` in each worker's environment: the supervisor to signal.
SUPERVISOR_ENV = "GATEWAY_SUPERVISOR_PID"


def loader(source: str) -> Callable[[], Settings]:
    """What reads the config named ``source`` (a ``Settings.source``) again, checked as
    ``serve`` checks it at start (``ConfigError`` naming the file and field if not)."""
    if source.startswith("<") and not source.startswith("<embedded"):

        def refuse() -> Settings:
            raise ConfigError(
                f"{source}: the config was not loaded from a file, so there is no file to read again"
            )

        return refuse
    path = None if source.startswith("<embedded") else Path(source)

    def load() -> Settings:
        settings = load_settings(path)
        check_types(settings)  # an unknown provider type, refused like any config error
        return settings

    return load


async def reload_config(
    live: Live,
    build: Callable[[Settings, Resources], Awaitable[Resources]],
    *,
    cause: str = "signal",
) -> Reloaded:
    """Reload this worker's config; logs the outcome, raises ``ReloadRefused``."""
    assert live.current is not None
    pid = os.getpid()  # under --workers, which worker says it
    try:
        reloaded = await live.reload(loader(live.current.settings.source), build)
    except ReloadRefused as exc:
        log.error(
            "config reload (%s, pid %d) refused, still serving the config loaded before: %s",
            cause,
            pid,
            exc,
        )
        raise
    if reloaded.changed:  # empty: nothing was swapped
        log.info(
            "config reloaded (%s, pid %d) from %s, generation %d: %s",
            cause,
            pid,
            reloaded.source,
            reloaded.generation,
            "; ".join(reloaded.changed),
        )
    else:
        log.info(
            "config reload (%s, pid %d): %s is unchanged, generation %d",
            cause,
            pid,
            reloaded.source,
            reloaded.generation,
        )
    if reloaded.restart_needed:
        log.warning(
            "config reload (pid %d): %s changed, but apply only when the gateway restarts",
            pid,
            ", ".join(reloaded.restart_needed),
        )
    return reloaded


def signal_siblings() -> bool:
    """Under ``serve --workers N``, have the supervisor pass SIGHUP to every worker;
    whether there was one to signal."""
    pid = os.environ.get(SUPERVISOR_ENV)
    if not pid or not pid.isdigit() or int(pid) != os.getppid():
        return False
    os.kill(int(pid), signal.SIGHUP)
    return True


def listen_for_sighup(reload: Callable[[], Awaitable[Reloaded]]) -> Callable[[], None]:
    """SIGHUP reloads the config, on the running loop; returns what stops listening."""
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task[None]] = set()

    async def on_signal() -> None:
        try:
            await reload()
        except ReloadRefused:
            pass  # logged where it was refused

    def fire() -> None:
        task = loop.create_task(on_signal(), name="gateway-reload")
        running.add(task)
        task.add_done_callback(running.discard)

    loop.add_signal_handler(signal.SIGHUP, fire)
    return lambda: loop.remove_signal_handler(signal.SIGHUP)
