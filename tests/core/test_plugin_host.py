"""A plugin that fails while adding its commands does not take the whole CLI down."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import click
import pytest

from ferrotunnel.core.plugin import PluginError, PluginHost, hookimpl

from ..e2e.helpers import child_env, run_cli


class Fine:
    @hookimpl
    def ferrotunnel_register_commands(self, cli: click.Group) -> None:
        @cli.command()
        def fine() -> None:
            click.echo("fine")


class Broken:
    @hookimpl
    def ferrotunnel_register_commands(self, cli: click.Group) -> None:
        cli.commands["serve"].params.append(click.Option(["--x", "broken__x"]))  # no "serve"

    @hookimpl
    def ferrotunnel_exchange_complete(self) -> None:
        raise AssertionError("a plugin that failed is not called again")


def test_a_plugin_failing_in_register_commands_is_dropped() -> None:
    host = PluginHost.with_plugins([Fine(), Broken()], names=["fine", "broken"])
    group = click.Group()
    host.register_commands(group)
    assert "fine" in group.commands  # the others still add theirs
    broken = next(info for info in host.infos if info.name == "broken")
    assert (broken.status, broken.error) == ("failed", "KeyError: 'serve'")
    assert not host.listens("ferrotunnel_exchange_complete")


def test_strict_plugins_make_it_an_error() -> None:
    host = PluginHost.with_plugins([Broken()], names=["broken"])
    with pytest.raises(PluginError, match=r"'broken' failed to add its commands: KeyError"):
        host.register_commands(click.Group(), strict=True)


def _installed(site: Path) -> dict[str, str]:
    """An environment for a child ``ferrotunnel`` in which a plugin distribution whose
    ``ferrotunnel_register_commands`` raises is installed (a dist-info on PYTHONPATH)."""
    (site / "ferrotunnel_cmdfail.py").write_text(
        textwrap.dedent(
            """
            from ferrotunnel.core.plugin import hookimpl

            @hookimpl
            def ferrotunnel_register_commands(cli):
                cli.commands["serve"]
            """
        )
    )
    info = site / "ferrotunnel_cmdfail-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: ferrotunnel-cmdfail\nVersion: 0.0.1\n"
    )
    (info / "entry_points.txt").write_text("[ferrotunnel]\ncmdfail = ferrotunnel_cmdfail\n")
    return child_env(PYTHONPATH=str(site))


@pytest.mark.skipif(sys.platform == "win32", reason="PYTHONPATH plugin shim")
def test_plugins_list_still_runs_and_shows_the_failure(tmp_path: Path) -> None:
    env = _installed(tmp_path)
    result = run_cli(["plugins", "list"], env=env)
    assert result.returncode == 0, result.stderr
    line = next(row for row in result.stdout.splitlines() if row.startswith("cmdfail "))
    assert "ferrotunnel-cmdfail" in line
    assert "failed (KeyError: 'serve')" in line
    assert "failed to add its commands" in result.stderr
    assert "Traceback" not in result.stderr

    strict = run_cli(["--strict-plugins", "plugins", "list"], env=env)
    assert strict.returncode == 2
    assert strict.stderr.strip().splitlines() == [
        "ferrotunnel: error: plugin 'cmdfail' from ferrotunnel-cmdfail 0.0.1 failed to add "
        "its commands: KeyError: 'serve' (--strict-plugins)"
    ]
