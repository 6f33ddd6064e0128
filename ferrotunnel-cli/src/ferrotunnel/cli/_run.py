"""What every command shares: logging, the event loop choice, signals, error exits."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import anyio
import click

from ferrotunnel.core import ConfigError, FerroTunnelError, RejectedError

LOOPS = ("auto", "asyncio", "uvloop", "trio")
LOG_LEVELS = ("debug", "info", "warning", "error")

log = logging.getLogger("ferrotunnel.cli")


def log_level_option(default: str = "info") -> Callable[[Any], Any]:
    """``--log-level``, shared by every command."""
    return click.option(
        "--log-level",
        envvar="FERROTUNNEL_LOG_LEVEL",
        type=click.Choice(LOG_LEVELS),
        default=default,
        show_default=True,
    )


def config_option(tables: str) -> Callable[[Any], Any]:
    """``--config FILE``: the TOML file whose ``tables`` (and plugin tables) a command reads."""
    return click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False),
        envvar="FERROTUNNEL_CONFIG",
        help=f"TOML configuration file ({tables} and plugin tables); flags win over it.",
    )


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def run(main: Callable[[], Awaitable[None]], loop: str) -> None:
    """Run ``main`` on the chosen event loop until it returns or a signal stops it.

    The first SIGINT/SIGTERM cancels ``main``, whose ``finally`` blocks shut down gracefully;
    a second one exits at once.
    """
    backend, options = _backend(loop)

    async def guarded() -> None:
        # the signal watcher must outlive the cancellation of ``main`` (and its graceful
        # shutdown), or a second signal is lost or lands as a KeyboardInterrupt mid-shutdown
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                main_scope = anyio.CancelScope()

                async def watch_signals() -> None:
                    async for signum in signals:
                        if main_scope.cancel_called:
                            _exit_now("interrupted again, exiting now", status=130)
                        log.info("%s: shutting down", signal.Signals(signum).name)
                        main_scope.cancel()

                tg.start_soon(watch_signals)
                with main_scope:
                    await main()
                tg.cancel_scope.cancel()

    try:
        anyio.run(guarded, backend=backend, backend_options=options)
    except* SystemExit as group:
        # fail() called inside the event loop: the task group wrapped its SystemExit
        raise _first(group) from None
    except* RejectedError as group:
        fail(str(_first(group)), status=1)
    except* ConfigError as group:
        fail(str(_first(group)), status=2)
    except* (FerroTunnelError, OSError) as group:
        fail(describe(_first(group)), status=1)


def dashboard_absence(endpoint: str | None) -> str:
    """Why a client has no dashboard URL to print: the plugin's own word when it gave one
    ("unavailable: cannot listen on ..."), else whether it is installed at all."""
    if endpoint:
        return endpoint
    if importlib.util.find_spec("ferrotunnel.observability") is None:
        return "not installed (it comes with ferrotunnel-observability)"
    return "off (the dashboard plugin is not loaded: --no-plugins or --block-plugin)"


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first error itself, however deep in nested task groups (trio's nurseries nest
    one group per level): its message, not "Exceptions from Trio nursery (1 sub-exception)"."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _backend(loop: str) -> tuple[str, dict[str, Any]]:
    # a chosen loop that is missing is a usage error saying how to install it, not a traceback
    if loop == "trio":
        if not _importable("trio"):
            fail("--loop trio: trio is not installed (pip install trio)", status=2)
        return "trio", {}
    has_uvloop = _importable("uvloop")
    if loop == "uvloop" and not has_uvloop:
        fail("--loop uvloop: uvloop is not installed (pip install uvloop)", status=2)
    return "asyncio", {"use_uvloop": loop == "uvloop" or (loop == "auto" and has_uvloop)}


def _importable(module: str) -> bool:
    """Whether ``module`` imports (the loop runs on it next, so importing it costs nothing)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        target = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{target}"
    return str(exc)


def _exit_now(message: str, status: int) -> NoReturn:
    """Exit without waiting for the graceful shutdown in progress (shielded from cancellation)."""
    click.echo(f"ferrotunnel: error: {message}", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def fail(message: str, status: int = 1) -> NoReturn:
    """One line on stderr, then exit with ``status`` (2: bad usage or configuration)."""
    click.echo(f"ferrotunnel: error: {message}", err=True)
    sys.exit(status)


def config_errors(func: Callable[[], Any]) -> Any:
    """Call ``func``; a ConfigError becomes a one-line usage error (exit status 2)."""
    try:
        return func()
    except ConfigError as exc:
        fail(str(exc), status=2)


def check_option() -> Callable[[Any], Any]:
    """``--check``: everything a start does before it listens, then exit (like ``nginx -t``)."""
    return click.option(
        "--check",
        "check_only",
        is_flag=True,
        help="Check the settings (flags, environment, --config file, plugins) as a start "
        "would, then exit without connecting or listening.",
    )


def read_token(token: str | None, *, required: bool, prompt: bool = True) -> str | None:
    """The token from the flag or environment, else a no-echo prompt on a terminal."""
    if token:
        return token
    if prompt and sys.stdin.isatty():
        value: str = click.prompt("Token", hide_input=True, err=True)
        return value
    if required:
        fail("missing token: pass --token or set FERROTUNNEL_TOKEN", status=2)
    return None
