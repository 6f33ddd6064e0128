"""The kernel's configuration tables, and how the command line, environment and file combine.

Precedence: a flag given on the command line, then its environment variable, then the
``--config`` file, then the default. A plugin may add options to ``server`` and ``client``
(in ``ferrotunnel_register_commands``): an option named ``TABLE__KEY`` sets ``KEY`` of the
plugin's ``[TABLE]`` when given, with the same precedence. Every table of the file is
validated (plugins declare theirs through ``ferrotunnel_add_config``), so a typo is an error
naming the key, the file and line, and the closest valid key. A bad value is named where it
came from (:func:`origin`): ``--bind 'x'``, ``FERROTUNNEL_BIND 'x'`` or
``server.toml:3: [server] bind 'x'``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from ferrotunnel.core import ConfigError
from ferrotunnel.core.plugin import Config, ConfigSchema, PluginHost, load_toml

__all__ = [
    "ClientSettings",
    "ServerSettings",
    "TunnelSettings",
    "kernel_schema",
    "load_settings",
    "needs",
    "origin",
    "take_plugin_options",
]


@dataclass(frozen=True)
class ServerSettings:
    """``[server]``: the options of ``ferrotunnel server`` (same names, ``-`` or ``_``)."""

    token: str | None = None
    bind: str = "0.0.0.0:7835"
    http_bind: str = "0.0.0.0:8080"
    tcp_bind: str | None = None
    #: "20000-20100"
    tcp_port_range: str | None = None
    domain: str | None = None
    #: CIDRs whose X-Forwarded-* headers are kept
    trust_proxy: tuple[str, ...] = ()
    response_timeout: float = 60.0
    health_path: str = "/health"
    public_host: str | None = None
    handshake_timeout: float = 10.0
    max_sessions: int = 1000
    #: connections still in their (TLS and protocol) handshake at once
    max_unauthenticated: int = 256
    #: open streams (visitor connections and requests) per client session
    max_streams: int = 1000
    #: tunnels per client session
    max_tunnels: int = 64
    #: bytes of an HTTP request head (then 431)
    max_head_size: int = 65536
    #: failed authentications an address may make within auth_failure_window seconds
    auth_failure_limit: int = 10
    auth_failure_window: float = 60.0
    #: TLS for the control plane: certificate and key (PEM)
    tls_cert: str | None = None
    tls_key: str | None = None
    #: CA of client certificates (with tls_client_auth)
    tls_ca: str | None = None
    tls_client_auth: bool = False
    #: HTTPS ingress address, and its certificates (default: tls_cert/tls_key)
    https_bind: str | None = None
    https_cert: tuple[str, ...] = ()
    https_key: tuple[str, ...] = ()
    log_level: str = "info"


@dataclass(frozen=True)
class TunnelSettings:
    """One ``[[client.tunnels]]`` entry."""

    name: str
    local_addr: str
    protocol: str = "http"
    remote_port: int | None = None
    path: str | None = None
    host_header: str = "preserve"
    local_https: bool = False
    local_ca: str | None = None


@dataclass(frozen=True)
class ClientSettings:
    """``[client]``: the options of ``ferrotunnel client``, plus ``[[client.tunnels]]``."""

    server: str | None = None
    token: str | None = None
    local_addr: str = "127.0.0.1:8000"
    protocol: str = "http"
    tunnel_id: str | None = None
    remote_port: int | None = None
    path: str | None = None
    host_header: str = "preserve"
    local_https: bool = False
    local_ca: str | None = None
    client_id: str | None = None
    reconnect: bool = True
    dashboard_port: int = 4040
    dashboard: bool = True
    #: TLS to the server (implied by any other tls_* key)
    tls: bool = False
    #: CA that issued the server's certificate (default: the system's roots)
    tls_ca: str | None = None
    #: name the server's certificate must carry (default: the host of ``server``)
    tls_server_name: str | None = None
    #: client certificate and key (mutual TLS)
    tls_cert: str | None = None
    tls_key: str | None = None
    #: do not verify the server's certificate (insecure; warned about on every start)
    tls_skip_verify: bool = False
    log_level: str = "info"
    tunnels: list[TunnelSettings] = field(default_factory=list)


#: what the starter files show, commented out, for keys without a default (the certificate
#: paths are what ``ferrotunnel cert init`` writes; tls_ca needs tls_client_auth)
SERVER_EXAMPLE: dict[str, object] = {
    "tcp_bind": "0.0.0.0:7836",
    "tcp_port_range": "20000-20100",
    "domain": "tunnel.example.com",
    "public_host": "tunnel.example.com",
    "tls_cert": "certs/server.pem",
    "tls_key": "certs/server-key.pem",
    "tls_ca": "certs/ca.pem",
    "tls_client_auth": True,
    "https_bind": "0.0.0.0:8443",
}
CLIENT_EXAMPLE: dict[str, object] = {"server": "tunnel.example.com:7835", "token": "CHANGE-ME"}


def kernel_schema() -> ConfigSchema:
    schema = ConfigSchema()
    schema.add_table(
        "server",
        ServerSettings,
        owner="ferrotunnel",
        help="ferrotunnel server",
        example=SERVER_EXAMPLE,
    )
    schema.add_table(
        "client",
        ClientSettings,
        owner="ferrotunnel",
        help="ferrotunnel client",
        example=CLIENT_EXAMPLE,
    )
    return schema


def load_settings(plugins: PluginHost, path: str | None, table_hint: str = "") -> Config:
    """The validated configuration: kernel and plugin tables, from ``path`` or defaults.

    ``table_hint`` ends the error about an unknown table (plugins off or blocked)."""
    return load_toml(plugins.schema(kernel_schema()), path, unknown_table_hint=table_hint)


#: settings that name files: a relative path in the configuration file is relative to the
#: file's folder (``Config.path``, as for the plugins' ``tokens_file`` and ``access_log.path``)
PATH_KEYS = frozenset({"tls_cert", "tls_key", "tls_ca", "https_cert", "https_key", "local_ca"})


def _file_value(config: Config, key: str, value: Any) -> Any:
    if key not in PATH_KEYS or not value:
        return value
    if isinstance(value, str):
        return str(config.path(value))
    return tuple(str(config.path(item)) for item in value)


def merge(
    ctx: click.Context,
    options: dict[str, Any],
    config: Config,
    table: str,
    rename: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``options`` (as click parsed them) with file values where no flag or env var was given."""
    rename = rename or {}
    file_values = config.table(table)
    merged = dict(options)
    for param in options:
        key = rename.get(param, param)
        if not hasattr(file_values, key):
            continue
        source = ctx.get_parameter_source(param)
        explicit = source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
        if not explicit and config.given(table, key):
            merged[param] = _file_value(config, key, getattr(file_values, key))
    return merged


def origin(
    ctx: click.Context, config: Config, table: str, param: str, key: str | None = None
) -> str:
    """Where the value of option ``param`` came from, as an error about it names it: its flag
    (given, or its default), its environment variable, or ``FILE:LINE: [table] key``."""
    option = next((p for p in ctx.command.params if p.name == param), None)
    source = ctx.get_parameter_source(param)
    if option is not None and source is ParameterSource.ENVIRONMENT:
        names = option.envvar if isinstance(option.envvar, (list, tuple)) else [option.envvar]
        given = [n for n in names if n and n in os.environ]
        if given:
            return str(given[0])
    key = key or param
    if source is not ParameterSource.COMMANDLINE and config.given(table, key):
        return config.file_source(table, key)
    if option is not None and option.opts:
        return max(option.opts, key=len)
    return f"--{param.replace('_', '-')}"


def needs(name: Callable[[str], str], given: str, *needed: str, table: str) -> str:
    """``X needs Y``, for a setting that is only valid with others: ``X`` named by where it
    came from (``name``: see :func:`origin`), the settings it needs in the same terms — a
    file's key if it came from the file, else their flags."""
    source = name(given)
    from_file = ": [" in source  # FILE:LINE: [table] key
    wanted = [f"[{table}] {param}" if from_file else name(param) for param in needed]
    return f"{source} needs {' and '.join(wanted)}"


def existing_files(name: Callable[[str], str], **paths: str | Sequence[str] | None) -> None:
    """Each of ``paths`` (a setting's value: a path, a list of them, or None) must be a file.

    One that is not is named where it came from (``name``: the flag, the variable, or the
    file's table, key and line) — not by the flag a user may never have typed — and a relative
    one (from a flag or a variable: the file's are made absolute) says the directory it was
    looked up in.
    """
    for param, value in paths.items():
        for path in [value] if isinstance(value, str) else value or ():
            if not Path(path).is_file():
                where = (
                    ""
                    if Path(path).is_absolute()
                    else f" (relative to the working directory {Path.cwd()})"
                )
                raise ConfigError(f"{name(param)} {path!r}: no such file{where}")


def take_plugin_options(
    ctx: click.Context, options: dict[str, Any], config: Config
) -> dict[str, Any]:
    """Remove the ``TABLE__KEY`` options plugins added from ``options``; those given on the
    command line or in the environment override that key of ``config``'s ``[TABLE]``."""
    kept = {}
    for param, value in options.items():
        table, sep, key = param.partition("__")
        if not sep:
            kept[param] = value
            continue
        source = ctx.get_parameter_source(param)
        if source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            config.replace(table, **{key: value})
            config.note_source(table, key, origin(ctx, config, table, param, key))
    return kept


def settings_fields(settings: type) -> list[str]:
    return [f.name for f in dataclasses.fields(settings)]
