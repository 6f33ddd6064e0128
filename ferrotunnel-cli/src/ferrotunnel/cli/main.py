"""The ``ferrotunnel`` command."""

from __future__ import annotations

import difflib
import os
import platform
import sys

import click

from ferrotunnel.core import ConfigError
from ferrotunnel.core import __version__ as core_version
from ferrotunnel.core.plugin import PluginHost, load_plugins

from ._run import LOOPS, fail
from .client import client
from .config_commands import config
from .demo import demo
from .server import server


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--loop",
    type=click.Choice(LOOPS),
    default="auto",
    envvar="FERROTUNNEL_LOOP",
    show_default=True,
    help="Event loop: auto picks uvloop when installed.",
)
@click.option("--no-plugins", is_flag=True, help="Load no plugins (not even the built-ins).")
@click.option(
    "--block-plugin",
    multiple=True,
    metavar="NAME",
    help="Do not load this plugin (repeatable; FERROTUNNEL_BLOCK_PLUGINS=a,b); "
    "a name no installed plugin has is an error.",
)
@click.option("--strict-plugins", is_flag=True, help="A plugin that fails to load is an error.")
@click.pass_context
def cli(
    ctx: click.Context,
    loop: str,
    no_plugins: bool,
    block_plugin: tuple[str, ...],
    strict_plugins: bool,
) -> None:
    """ferrotunnel: expose services behind NAT through one multiplexed connection."""
    ctx.ensure_object(dict)
    ctx.obj["loop"] = loop


@cli.command()
def version() -> None:
    """Print the versions of ferrotunnel and its runtime."""
    click.echo(f"ferrotunnel {core_version}")
    click.echo(f"python {platform.python_version()} ({platform.python_implementation()})")
    click.echo(f"platform {sys.platform} {platform.machine()}")


@cli.group()
def plugins() -> None:
    """Inspect plugins."""


@plugins.command("list")
@click.pass_context
def plugins_list(ctx: click.Context) -> None:
    """Show every plugin found: name, distribution, version, hooks, status."""
    host: PluginHost = ctx.obj["plugins"]
    if not host.infos:
        click.echo("no plugins found")
        return
    rows = [("NAME", "DISTRIBUTION", "VERSION", "STATUS", "HOOKS")]
    for info in host.infos:
        hooks = ", ".join(h.removeprefix("ferrotunnel_") for h in info.hooks) or "-"
        status = info.status + (f" ({info.error})" if info.error else "")
        rows.append((info.name, info.distribution, info.version, status, hooks))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[4]
        )


cli.add_command(server)
cli.add_command(client)
cli.add_command(demo)
cli.add_command(config)


def _plugin_switches(argv: list[str]) -> tuple[bool, list[tuple[str, str]], bool]:
    """The group's plugin options, read before click parses (plugins add commands).

    Blocked names come with where they were given (``--block-plugin`` or the variable).
    """
    enabled, strict = True, False
    variable = os.environ.get("FERROTUNNEL_BLOCK_PLUGINS", "")
    blocked = [(b.strip(), "FERROTUNNEL_BLOCK_PLUGINS") for b in variable.split(",") if b.strip()]
    for i, arg in enumerate(argv):
        if arg in ("server", "client", "demo", "config", "plugins", "version"):
            break
        if arg == "--no-plugins":
            enabled = False
        elif arg == "--strict-plugins":
            strict = True
        elif arg == "--block-plugin" and i + 1 < len(argv):
            blocked.append((argv[i + 1], "--block-plugin"))
        elif arg.startswith("--block-plugin="):
            blocked.append((arg.split("=", 1)[1], "--block-plugin"))
    return enabled, blocked, strict


def _check_blocked(host: PluginHost, blocked: list[tuple[str, str]]) -> None:
    """A blocked name no installed plugin has is an error: a typo would block nothing."""
    installed = sorted({info.name for info in host.infos})
    for name, source in blocked:
        if name in installed:
            continue
        match = difflib.get_close_matches(name, installed, n=1)
        hint = f"; did you mean {match[0]!r}?" if match else ""
        fail(
            f"{source} {name!r}: no installed plugin has that name{hint} "
            f"(installed: {', '.join(installed) or 'none'})",
            status=2,
        )


def main() -> None:
    enabled, blocked, strict = _plugin_switches(sys.argv[1:])
    try:
        host = load_plugins(enabled=enabled, block=[name for name, _ in blocked], strict=strict)
        host.register_commands(cli, strict=strict)
    except ConfigError as exc:
        fail(str(exc), status=2)
    if enabled:  # with --no-plugins nothing is loaded: no name to check against
        _check_blocked(host, blocked)
    cli(prog_name="ferrotunnel", obj={"plugins": host, "table_hint": _table_hint(host, enabled)})


def _table_hint(host: PluginHost, enabled: bool) -> str:
    """Why a configuration table may be unknown: its plugin was not loaded."""
    if not enabled:
        return "plugins are off (--no-plugins), so their tables are unknown"
    blocked = [info.name for info in host.infos if info.status == "blocked"]
    if blocked:
        return f"blocked plugins declare no tables (blocked: {', '.join(blocked)})"
    return ""
