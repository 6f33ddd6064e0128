"""``ferrotunnel config init|check``: starter files and validation without starting.

Every commented-out line of a starter file is valid TOML once uncommented: a key without a
default shows its table's declared example value (``add_table(..., example=...)``), and so do
empty tables of per-tunnel entries (``# [ip_filter.tunnels."*"]``).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import click
import tomli_w

from ferrotunnel.core import ConfigError
from ferrotunnel.core.plugin import ConfigSchema, PluginHost

from ._run import fail
from .settings import (
    CLIENT_EXAMPLE,
    ServerSettings,
    TunnelSettings,
    kernel_schema,
    load_settings,
)

_SERVER_HELP = {
    "token": "token clients present (for several scoped tokens use the [auth] table)",
    "bind": "control plane: where clients connect",
    "http_bind": "HTTP ingress: where web visitors connect",
    "tcp_bind": "TCP ingress for a client's --protocol tcp tunnel",
    "tcp_port_range": 'ports handed to TCP tunnels, e.g. "20000-20100"',
    "domain": "a tunnel named NAME (no dot) serves NAME.<domain>",
    "trust_proxy": "CIDRs whose X-Forwarded-* headers are kept",
    "response_timeout": "seconds an origin has to start answering (then 504)",
    "health_path": "answered by the server itself on the HTTP ingress",
    "public_host": "host name shown in public TCP URLs (default: domain, else the bind address)",
    "handshake_timeout": "seconds a new connection has to finish its TLS and HELLO handshake",
    "max_sessions": "most client sessions at once",
    "max_unauthenticated": "most connections still in their handshake (more are closed)",
    "max_streams": "most open streams (visitor connections, requests) per client session",
    "max_tunnels": "most tunnels per client session",
    "max_head_size": "largest HTTP request head in bytes (then 431)",
    "auth_failure_limit": "failed logins an address may make per auth_failure_window",
    "auth_failure_window": "seconds an address over auth_failure_limit is refused",
    "tls_cert": "TLS 1.3 for the control plane: certificate (ferrotunnel cert init)",
    "tls_key": "and its private key",
    "tls_ca": "mutual TLS: the CA that issues client certificates",
    "tls_client_auth": "mutual TLS: require a client certificate from tls_ca",
    "https_bind": "HTTPS ingress address (certificates: https_cert/https_key, else tls_*)",
    "https_cert": "HTTPS certificates, chosen by SNI; paired with https_key",
    "https_key": "keys of https_cert, in the same order",
    "log_level": "debug, info, warning or error",
}

_CLIENT_HELP = {
    "server": "the server's control address, HOST:PORT",
    "token": "auth token (or leave out and set FERROTUNNEL_TOKEN)",
    "client_id": "stable id for reclaiming tunnels after a restart",
    "reconnect": "reconnect with backoff when the connection drops",
    "tls": "connect over TLS 1.3 (implied by any other tls_* key)",
    "tls_ca": "CA of the server's certificate (default: the system's roots)",
    "tls_server_name": "name the server's certificate must carry (default: server's host)",
    "tls_cert": "mutual TLS: this client's certificate",
    "tls_key": "and its private key",
    "tls_skip_verify": "do not verify the server (insecure, warned about on every start)",
    "log_level": "debug, info, warning or error",
}


def _toml(data: dict[str, Any], commented: bool) -> list[str]:
    """``data`` as TOML lines (tomli_w writes arrays and sub-tables on several lines: every
    one of them is commented out)."""
    lines = [line for line in tomli_w.dumps(data).strip().splitlines() if line]
    return [f"# {line}" for line in lines] if commented else lines


def _value_lines(key: str, value: Any, help_text: str | None, commented: bool) -> list[str]:
    lines = [f"# {help_text}"] if help_text else []
    return lines + _toml({key: value}, commented)


def _is_tables(value: Any) -> bool:
    """A table, or an array of tables: written as ``[TABLE.key]`` / ``[[TABLE.key]]``."""
    if isinstance(value, list) and value:
        return all(isinstance(v, dict) for v in value)
    return isinstance(value, dict)


def _plain(value: Any) -> Any:
    """A default as TOML data: tuples as arrays, dataclasses as tables."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _table(
    name: str,
    settings: Any,
    help_texts: dict[str, str],
    commented: bool,
    example: Mapping[str, object] | None = None,
) -> list[str]:
    """``[name]`` at its defaults, but a key ``example`` has shows that value, commented out
    (for a key without a default, an empty table of entries, or a setting that needs another
    one); a key with neither a default nor an example is left out."""
    example = example or {}
    lines = [f"{'# ' if commented else ''}[{name}]"]
    tables: list[str] = []
    for f in dataclasses.fields(settings):
        value = _plain(getattr(settings, f.name))
        shown_commented = commented
        if f.name in example:
            value, shown_commented = example[f.name], True
        elif value is None or value == {}:
            continue
        if _is_tables(value):
            help_text = help_texts.get(f.name)
            tables += ([f"# {help_text}"] if help_text else []) + _toml(
                {name: {f.name: value}}, shown_commented
            )
            continue
        lines += _value_lines(f.name, value, help_texts.get(f.name), shown_commented)
    return [*lines, *tables, ""]


def _plugin_tables(schema: ConfigSchema, kind: str) -> list[str]:
    lines = []
    for name, spec in sorted(schema.tables.items()):  # as a reader looks for them
        if name in ("server", "client") or kind not in spec.sides:
            continue
        lines.append(f"# ---- [{name}] from {spec.owner}" + (f": {spec.help}" if spec.help else ""))
        try:
            defaults = spec.settings()
        except TypeError:
            lines += [f"# [{name}]  (see the plugin's documentation)", ""]
            continue
        lines += _table(name, defaults, {}, commented=True, example=spec.example)
    return lines


def starter(kind: str, schema: ConfigSchema) -> str:
    if kind == "server":
        lines = [
            "# ferrotunnel server configuration:  ferrotunnel server --config server.toml",
            "# Command-line flags and FERROTUNNEL_* variables override what is set here.",
            "# Relative paths (certificates, files) are relative to this file's folder.",
            "",
        ]
        settings = dataclasses.replace(ServerSettings(), token=secrets.token_urlsafe(24))
        example = schema.tables["server"].example
        lines += _table("server", settings, _SERVER_HELP, commented=False, example=example)
    else:
        lines = [
            "# ferrotunnel client configuration:  ferrotunnel client --config client.toml",
            "# Command-line flags and FERROTUNNEL_* variables override what is set here.",
            "# Relative paths (certificates, files) are relative to this file's folder.",
            "",
            "[client]",
            *_value_lines("server", "tunnel.example.com:7835", _CLIENT_HELP["server"], False),
            *_value_lines("token", CLIENT_EXAMPLE["token"], _CLIENT_HELP["token"], True),
            *_value_lines("reconnect", True, _CLIENT_HELP["reconnect"], False),
            *_value_lines("log_level", "info", _CLIENT_HELP["log_level"], False),
            "",
            "# one [[client.tunnels]] per tunnel",
        ]
        examples = [
            TunnelSettings(name="app.example.com", local_addr="127.0.0.1:3000"),
            TunnelSettings(name="db", local_addr="127.0.0.1:5432", protocol="tcp"),
        ]
        for tunnel in examples:
            values = {k: v for k, v in dataclasses.asdict(tunnel).items() if v is not None}
            lines += ["[[client.tunnels]]", tomli_w.dumps(values).strip(), ""]
    return "\n".join(lines + _plugin_tables(schema, kind)).rstrip() + "\n"


@click.group()
def config() -> None:
    """Write a starter configuration file, or check one."""


@config.command("init")
@click.argument("kind", type=click.Choice(["server", "client"]))
@click.option("--out", type=click.Path(dir_okay=False), help="File to write [default: KIND.toml].")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.pass_context
def config_init(ctx: click.Context, kind: str, out: str | None, force: bool) -> None:
    """Write a commented starter file for the server or the client."""
    path = Path(out or f"{kind}.toml")
    if path.exists() and not force:
        fail(f"{path} exists (use --force to overwrite)", status=2)
    host: PluginHost = ctx.obj["plugins"]
    text = starter(kind, host.schema(kernel_schema()))
    # it holds (or will hold) a token: readable by its owner only, from the first byte on
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", encoding="utf-8") as file:
        os.fchmod(fd, 0o600)  # an existing file (--force) keeps its mode otherwise
        file.write(text)
    click.echo(f"wrote {path}; start with: ferrotunnel {kind} --config {path}")


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@click.pass_context
def config_check(ctx: click.Context, file: str) -> None:
    """Validate FILE without starting anything: every table and key, then what ``server
    --check`` / ``client --check`` check (values, addresses, files it names, plugins) for
    its [server] or [client] table, with the environment's FERROTUNNEL_* variables."""
    host: PluginHost = ctx.obj["plugins"]
    try:
        loaded = load_settings(host, file, ctx.obj.get("table_hint", ""))
    except ConfigError as exc:
        fail(str(exc), status=2)
    root = ctx.find_root()
    group = cast(click.Group, root.command)
    for kind in ("server", "client"):
        if kind in loaded.raw:
            command = group.get_command(root, kind)
            assert command is not None
            with command.make_context(kind, ["--config", file, "--check"], parent=root) as sub:
                command.invoke(sub)
    tables = sorted(name for name in loaded.raw)
    if not tables:
        click.echo(f"{file}: ok, but it has no tables: nothing was checked")
    elif "server" in loaded.raw or "client" in loaded.raw:
        click.echo(f"{file}: ok ({', '.join(tables)})")
    else:  # what a start would check of them depends on the side that reads them
        click.echo(
            f"{file}: ok ({', '.join(tables)}; with no [server] or [client] table, only "
            "their keys and values were checked)"
        )
