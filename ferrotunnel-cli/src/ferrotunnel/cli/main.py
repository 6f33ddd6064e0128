"""The ``ferrotunnel`` command."""

from __future__ import annotations

import platform
import sys

import click

from ferrotunnel.core import __version__ as core_version

from ._run import LOOPS
from .client import client
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
@click.pass_context
def cli(ctx: click.Context, loop: str) -> None:
    """ferrotunnel: expose services behind NAT through one multiplexed connection."""
    ctx.obj = {"loop": loop}


@cli.command()
def version() -> None:
    """Print the versions of ferrotunnel and its runtime."""
    click.echo(f"ferrotunnel {core_version}")
    click.echo(f"python {platform.python_version()} ({platform.python_implementation()})")
    click.echo(f"platform {sys.platform} {platform.machine()}")


cli.add_command(server)
cli.add_command(client)
cli.add_command(demo)


def main() -> None:
    cli(prog_name="ferrotunnel")
