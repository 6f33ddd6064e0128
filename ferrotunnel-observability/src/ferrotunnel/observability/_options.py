"""Command-line options a plugin adds to ``ferrotunnel server`` and ``ferrotunnel client``.

The CLI routes an option named ``TABLE__KEY`` to ``KEY`` of the plugin's ``[TABLE]`` when it
is given on the command line or in the environment, over the configuration file.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import click

__all__ = ["add_options"]


def add_options(cli: Any, commands: Iterable[str], options: Iterable[click.Option]) -> None:
    """Append ``options`` to each of ``commands`` of the ``cli`` group that exists."""
    options = list(options)
    group_commands = getattr(cli, "commands", {})
    for name in commands:
        command = group_commands.get(name)
        if isinstance(command, click.Command):
            known = {param.name for param in command.params}
            command.params.extend(o for o in options if o.name not in known)
