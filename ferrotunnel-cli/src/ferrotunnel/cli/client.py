"""``ferrotunnel client``: the side next to the service being exposed."""

from __future__ import annotations

import hashlib
import socket
import ssl
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from ferrotunnel.core import (
    Address,
    Client,
    ClientConfig,
    ConfigError,
    RejectedError,
    Tunnel,
    TunnelKind,
)
from ferrotunnel.core.plugin import Config, PluginHost, TlsOptions, TlsPurpose
from ferrotunnel.protocol import RejectCode

from ._run import (
    check_option,
    config_errors,
    config_option,
    dashboard_absence,
    describe,
    fail,
    log_level_option,
    read_token,
    run,
    setup_logging,
)
from .settings import (
    ClientSettings,
    TunnelSettings,
    existing_files,
    load_settings,
    merge,
    needs,
    origin,
    take_plugin_options,
)
from .tunnels import TunnelOptions, parse_tunnel_spec


def stable_client_id(server: Address, tunnels: tuple[Tunnel, ...]) -> str:
    """The same command on the same machine gets the same id, so a restarted client
    (even after ``kill -9``) reclaims its tunnels at once."""
    parts = [socket.gethostname(), str(server)]
    parts += [f"{t.name}:{t.kind}:{t.local_addr}:{t.remote_port}:{t.path}" for t in tunnels]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def _explicit(ctx: click.Context, param: str) -> bool:
    source = ctx.get_parameter_source(param)
    return source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def _file_tunnel(entry: TunnelSettings, config: Config, index: int) -> Tunnel:
    """The ``index``-th ``[[client.tunnels]]``; errors name its FILE:LINE."""
    table = "client.tunnels"
    tunnel = f"[[client.tunnels]] {entry.name!r}"

    def name(key: str) -> str:
        return f"{config.where(table, key, entry=index)}: {tunnel} {key}"

    local_ca = str(config.path(entry.local_ca)) if entry.local_ca else None
    options = TunnelOptions(entry.host_header, entry.local_https, local_ca, name=name)
    try:
        kind = TunnelKind(entry.protocol)
    except ValueError:
        raise ConfigError(f"{name('protocol')}: must be http or tcp") from None
    local = Address.parse(entry.local_addr, what=name("local_addr"))
    return options.make(kind, entry.name, local, path=entry.path, remote_port=entry.remote_port)


def _refuse_server_tables(config: Config) -> None:
    """A table only a server reads ([basic_auth], [rate_limit]...) in a client's file would be
    ignored — a tunnel the user meant to protect would not be — so it is an error. A file that
    has a [server] table too is shared by both: each side reads its own."""
    if "server" in config.raw:
        return
    for name in config.raw:
        spec = config.schema.tables.get(name)
        if spec is not None and "client" not in spec.sides:
            raise ConfigError(
                f"{config.where(name)}: [{name}] is read by the server only ({spec.owner}): "
                "a client ignores it; put it in the server's configuration"
            )


def _target(tunnel: Tunnel) -> str:
    if tunnel.kind is TunnelKind.TCP:
        return str(tunnel.local_addr)
    return f"{'https' if tunnel.local_tls else 'http'}://{tunnel.local_addr}"


def _tls_context(
    plugins: PluginHost, merged: dict[str, Any], name: Callable[[str], str]
) -> ssl.SSLContext | None:
    """The control connection's SSL context (None: no TLS); ``name(param)`` says where a
    setting came from, for the errors."""
    keys = ("tls_ca", "tls_server_name", "tls_cert", "tls_key", "tls_skip_verify")
    if not merged["tls"] and not any(merged[k] for k in keys):
        return None
    for given, missing in (("tls_cert", "tls_key"), ("tls_key", "tls_cert")):
        if merged[given] is not None and merged[missing] is None:
            raise ConfigError(needs(name, given, missing, table="client") + " (mutual TLS)")
    if merged["tls_skip_verify"] and merged["tls_ca"]:
        raise ConfigError(
            f"{name('tls_skip_verify')} and {name('tls_ca')} contradict each other: "
            "verify the server against that CA, or not at all"
        )
    existing_files(name, **{k: merged[k] for k in ("tls_ca", "tls_cert", "tls_key")})
    pairs = ((merged["tls_cert"], merged["tls_key"]),) if merged["tls_cert"] else ()
    return plugins.ssl_context(
        TlsOptions(
            TlsPurpose.CLIENT,
            pairs,
            ca=merged["tls_ca"],
            skip_verify=merged["tls_skip_verify"],
        )
    )


@click.command()
@click.option(
    "--server",
    "server_addr",
    envvar="FERROTUNNEL_SERVER",
    help="Server control address, HOST:PORT.",
)
@click.option(
    "--token",
    envvar="FERROTUNNEL_TOKEN",
    help="Auth token (else FERROTUNNEL_TOKEN, else a prompt).",
)
@click.option(
    "--local-addr",
    envvar="FERROTUNNEL_LOCAL_ADDR",
    default="127.0.0.1:8000",
    show_default=True,
    help="The local service to expose.",
)
@click.option(
    "--protocol",
    type=click.Choice(["http", "tcp"]),
    default="http",
    envvar="FERROTUNNEL_PROTOCOL",
    show_default=True,
    help="Tunnel kind.",
)
@click.option(
    "--tunnel-id",
    envvar="FERROTUNNEL_TUNNEL_ID",
    help="Tunnel name (for HTTP: the hostname to route).",
)
@click.option(
    "--remote-port",
    type=click.IntRange(1, 65535),
    envvar="FERROTUNNEL_REMOTE_PORT",
    help="Public TCP port to ask for (within the server's --tcp-port-range).",
)
@click.option(
    "--path",
    envvar="FERROTUNNEL_PATH",
    help="HTTP: serve only requests under this path prefix (longest prefix wins).",
)
@click.option(
    "--host-header",
    default="preserve",
    show_default=True,
    metavar="preserve|rewrite|VALUE",
    help="HTTP: the Host the local service sees (rewrite: the --local-addr).",
)
@click.option("--local-https", is_flag=True, help="HTTP: the local service speaks HTTPS.")
@click.option(
    "--local-ca",
    type=click.Path(dir_okay=False),
    help="With --local-https: CA file to verify the local service (default: system roots).",
)
@click.option(
    "--tunnel",
    "tunnel_specs",
    multiple=True,
    metavar="SPEC",
    help="Several tunnels: http:HOST[/PATH]=LOCAL or tcp:NAME[@PORT]=LOCAL (repeatable).",
)
@click.option(
    "--client-id",
    envvar="FERROTUNNEL_CLIENT_ID",
    help="Stable id for reclaiming tunnels after a restart [default: derived from "
    "this machine and the options].",
)
@click.option(
    "--dashboard-port",
    type=click.IntRange(0, 65535),
    default=4040,
    envvar="FERROTUNNEL_DASHBOARD_PORT",
    show_default=True,
    help="Dashboard port (needs ferrotunnel-observability).",
)
@click.option("--no-dashboard", is_flag=True, help="Do not start the dashboard.")
@click.option("--tls", is_flag=True, help="Connect to the server over TLS 1.3.")
@click.option(
    "--tls-ca",
    envvar="FERROTUNNEL_TLS_CA",
    help="CA of the server's certificate [default: the system's roots]; implies --tls.",
)
@click.option(
    "--tls-server-name",
    help="Name the server's certificate must carry [default: the --server host].",
)
@click.option("--tls-cert", envvar="FERROTUNNEL_TLS_CERT", help="Client certificate (mutual TLS).")
@click.option("--tls-key", envvar="FERROTUNNEL_TLS_KEY", help="Key of --tls-cert.")
@click.option(
    "--tls-skip-verify",
    is_flag=True,
    help="Do not verify the server's certificate. Insecure: for tests only.",
)
@click.option("--no-reconnect", is_flag=True, help="Exit when the connection is lost.")
@log_level_option()
@config_option("[client], [[client.tunnels]]")
@check_option()
@click.pass_context
def client(
    ctx: click.Context, /, config_file: str | None, check_only: bool, **options: Any
) -> None:
    """Connect to a server and expose a local service through it."""
    plugins: PluginHost = ctx.obj["plugins"]
    hint: str = ctx.obj.get("table_hint", "")
    loaded: Config = config_errors(lambda: load_settings(plugins, config_file, hint))
    config_errors(lambda: _refuse_server_tables(loaded))
    options = config_errors(lambda: take_plugin_options(ctx, options, loaded))
    merged = merge(ctx, options, loaded, "client", rename={"server_addr": "server"})
    file_settings: ClientSettings = loaded.table("client")
    for flag in ("tls", "tls_skip_verify"):  # flags: a file's true counts unless given
        if not _explicit(ctx, flag) and loaded.given("client", flag):
            merged[flag] = getattr(file_settings, flag)
    for flag, key in (("no_reconnect", "reconnect"), ("no_dashboard", "dashboard")):
        if not _explicit(ctx, flag) and loaded.given("client", key):
            merged[flag] = not getattr(file_settings, key)
    log_level: str = merged["log_level"]
    no_dashboard: bool = merged["no_dashboard"]
    dashboard_port: int = merged["dashboard_port"]
    setup_logging(log_level)
    if "dashboard" in loaded.schema.tables:  # declared by ferrotunnel-observability
        # a flag, its variable or a [client] key wins; else [dashboard] enabled/port stand
        changes: dict[str, object] = {}
        if _explicit(ctx, "no_dashboard") or loaded.given("client", "dashboard"):
            changes["enabled"] = not no_dashboard
        if _explicit(ctx, "dashboard_port") or loaded.given("client", "dashboard_port"):
            changes["port"] = dashboard_port
        loaded.replace("dashboard", **changes)
        if "port" in changes:
            loaded.note_source("dashboard", "port", origin(ctx, loaded, "client", "dashboard_port"))
        no_dashboard = not loaded.table("dashboard").enabled
    config_errors(lambda: plugins.configure(loaded))
    token = read_token(merged["token"], required=False, prompt=not check_only)

    def source(param: str, key: str | None = None) -> str:
        """The flag, variable or file key the value of ``param`` came from."""
        return origin(ctx, loaded, "client", param, key)

    def build() -> ClientConfig:
        if not merged["server_addr"]:
            raise ConfigError("missing --server (or server in the [client] table)")
        server = Address.parse(merged["server_addr"], what=source("server_addr", "server"))
        options = TunnelOptions(
            merged["host_header"], merged["local_https"], merged["local_ca"], name=source
        )
        specs: tuple[str, ...] = merged["tunnel_specs"]
        single = [
            k for k in ("local_addr", "tunnel_id", "remote_port", "path") if _explicit(ctx, k)
        ]
        tunnels: tuple[Tunnel, ...]
        if specs:
            if any(merged[k] for k in ("tunnel_id", "remote_port", "path")):
                raise ConfigError("--tunnel replaces --tunnel-id/--remote-port/--path")
            tunnels = tuple(parse_tunnel_spec(spec, options) for spec in specs)
        elif file_settings.tunnels and not single:
            tunnels = tuple(_file_tunnel(t, loaded, i) for i, t in enumerate(file_settings.tunnels))
        else:
            local = Address.parse(merged["local_addr"], what=source("local_addr"))
            kind = TunnelKind(merged["protocol"])
            name = merged["tunnel_id"] or f"{kind}-{local.port}"
            tunnels = (
                options.make(
                    kind, name, local, path=merged["path"], remote_port=merged["remote_port"]
                ),
            )
        return ClientConfig(
            server_addr=server,
            tunnels=tunnels,
            token=token,
            client_id=merged["client_id"] or stable_client_id(server, tunnels),
            reconnect=not merged["no_reconnect"],
            ssl_context=_tls_context(plugins, merged, source),
            server_hostname=merged["tls_server_name"],
        )

    config: ClientConfig = config_errors(build)
    observers = config_errors(lambda: plugins.stream_observers(loaded))
    if check_only:
        names = ", ".join(t.name for t in config.tunnels)
        click.echo(
            f"ferrotunnel client: settings ok (server {config.server_addr}; tunnels: {names})"
        )
        return

    async def main() -> None:
        tunnel_client = Client(config, plugins=plugins, stream_observers=observers)
        tls = " over TLS" if config.ssl_context is not None else ""
        click.echo(f"connecting to {config.server_addr}{tls} ...")
        try:
            try:
                await tunnel_client.start()
            except RejectedError as exc:
                if token is None and exc.code is RejectCode.AUTH_FAILED:
                    # the likely cause: no --token, FERROTUNNEL_TOKEN or [client] token, and
                    # no terminal to prompt on (a service, a script)
                    fail(
                        f"{exc}: this client sent no token (pass --token, set "
                        "FERROTUNNEL_TOKEN or give token in the [client] table)",
                        status=1,
                    )
                raise
            click.echo("ferrotunnel client connected")
            by_name = {t.name: t for t in config.tunnels}
            for granted in tunnel_client.tunnels:
                click.echo(f"  {granted.public_url}  ->  {_target(by_name[granted.name])}")
            dashboard = tunnel_client.endpoints.get("dashboard")
            if dashboard is not None:
                click.echo(f"  dashboard: {dashboard}")
            elif not no_dashboard:
                click.echo(f"  dashboard: {dashboard_absence(None)}")
            click.echo("Press Ctrl-C to stop.")
            await tunnel_client.serve_forever()
            # it returns (rather than being cancelled) only when the session ended for good
            session = tunnel_client.session
            reason = session.close_reason if session is not None else None
            why = describe(reason) if reason is not None else "closed"
            fail(f"lost the connection to {config.server_addr} ({why})", status=1)
        finally:
            await tunnel_client.shutdown()

    run(main, ctx.obj["loop"])
