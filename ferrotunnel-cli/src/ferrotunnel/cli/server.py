"""``ferrotunnel server``: the public side."""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Callable
from typing import Any

import click

from ferrotunnel.core import (
    Address,
    ConfigError,
    ListenError,
    Server,
    ServerConfig,
    SessionConfig,
)
from ferrotunnel.core.net import running_asyncio_loop
from ferrotunnel.core.plugin import Config, PluginHost, TlsOptions, TlsPurpose
from ferrotunnel.http import HttpIngress, HttpIngressConfig

from ._run import (
    check_option,
    config_errors,
    config_option,
    fail,
    log_level_option,
    read_token,
    run,
    setup_logging,
)
from .settings import (
    ServerSettings,
    existing_files,
    load_settings,
    merge,
    needs,
    origin,
    take_plugin_options,
)

#: the option that sets each listener's address (as :class:`ListenError` names them)
_LISTENER_OPTIONS = {
    "control plane": "bind",
    "HTTP ingress": "http_bind",
    "HTTPS ingress": "https_bind",
    "TCP ingress": "tcp_bind",
}


def _port_range(text: str | None, what: str = "--tcp-port-range") -> tuple[int, int] | None:
    if not text:
        return None
    low, sep, high = text.partition("-")
    if not (sep and low.isdigit() and high.isdigit()):
        raise ConfigError(f"{what} {text!r} must look like 20000-20100")
    if not 1 <= int(low) <= int(high) <= 65535:
        raise ConfigError(f"{what} {text!r}: need 1 <= LOW <= HIGH <= 65535")
    return int(low), int(high)


def _tls_contexts(
    plugins: PluginHost, settings: ServerSettings, name: Callable[[str], str]
) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """The control plane's and the HTTPS ingress's SSL contexts, from the tls plugin.

    ``name(param)`` says where a setting came from, for the errors (see ``origin``)."""
    if settings.tls_cert is None and settings.tls_key is not None:
        raise ConfigError(needs(name, "tls_key", "tls_cert", table="server"))
    if settings.tls_cert is not None and settings.tls_key is None:
        raise ConfigError(needs(name, "tls_cert", "tls_key", table="server"))
    if settings.tls_cert is None and (settings.tls_ca or settings.tls_client_auth):
        given = "tls_ca" if settings.tls_ca else "tls_client_auth"
        raise ConfigError(needs(name, given, "tls_cert", "tls_key", table="server"))
    control = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        existing_files(
            name, tls_cert=settings.tls_cert, tls_key=settings.tls_key, tls_ca=settings.tls_ca
        )
        control = plugins.ssl_context(
            TlsOptions(
                TlsPurpose.SERVER,
                ((settings.tls_cert, settings.tls_key),),
                ca=settings.tls_ca,
                client_auth=settings.tls_client_auth,
            )
        )
    if len(settings.https_cert) != len(settings.https_key):
        raise ConfigError(
            f"{len(settings.https_cert)} certificates ({name('https_cert')}) but "
            f"{len(settings.https_key)} keys ({name('https_key')}): give one key for each "
            "certificate, in the same order"
        )
    pairs = tuple(zip(settings.https_cert, settings.https_key, strict=True))
    if not settings.https_bind:
        if pairs:
            raise ConfigError(needs(name, "https_cert", "https_bind", table="server"))
        return control, None
    if not pairs and settings.tls_cert is not None and settings.tls_key is not None:
        pairs = ((settings.tls_cert, settings.tls_key),)
    if not pairs:
        raise ConfigError(
            needs(name, "https_bind", "https_cert", "https_key", table="server")
            + " (or the control plane's tls_cert and tls_key)"
        )
    if settings.https_cert:
        existing_files(name, https_cert=settings.https_cert, https_key=settings.https_key)
    return control, plugins.ssl_context(TlsOptions(TlsPurpose.INGRESS, pairs))


@click.command()
@click.option("--token", envvar="FERROTUNNEL_TOKEN", help="Token clients must present.")
@click.option(
    "--bind",
    envvar="FERROTUNNEL_BIND",
    default="0.0.0.0:7835",
    show_default=True,
    help="Control plane: where clients connect.",
)
@click.option(
    "--http-bind",
    envvar="FERROTUNNEL_HTTP_BIND",
    default="0.0.0.0:8080",
    show_default=True,
    help="HTTP ingress: visitors' HTTP requests, routed by Host.",
)
@click.option(
    "--domain",
    envvar="FERROTUNNEL_DOMAIN",
    help="A tunnel named NAME (no dot) serves NAME.<domain>.",
)
@click.option(
    "--trust-proxy",
    "trust_proxy",
    multiple=True,
    metavar="CIDR",
    envvar="FERROTUNNEL_TRUST_PROXY",
    help="Keep X-Forwarded-*/Forwarded from visitors in CIDR (repeatable).",
)
@click.option(
    "--response-timeout",
    type=click.FloatRange(0.1),
    default=60.0,
    show_default=True,
    help="Seconds an origin has to start answering an HTTP request (then 504).",
)
@click.option(
    "--health-path",
    default="/health",
    show_default=True,
    help="Path the server answers itself on the HTTP ingress ('' to disable).",
)
@click.option(
    "--tcp-bind",
    envvar="FERROTUNNEL_TCP_BIND",
    help="TCP ingress for a client tunnel started with --protocol tcp.",
)
@click.option(
    "--tcp-port-range",
    envvar="FERROTUNNEL_TCP_PORT_RANGE",
    metavar="LOW-HIGH",
    help="Ports clients may ask for with --remote-port (or be given).",
)
@click.option(
    "--public-host",
    envvar="FERROTUNNEL_PUBLIC_HOST",
    help="Host name shown in public TCP URLs [default: --domain, else the bind address].",
)
@click.option(
    "--handshake-timeout",
    type=click.FloatRange(0.1, 300),
    default=10.0,
    show_default=True,
    help="Seconds a new connection has to complete its handshake.",
)
@click.option(
    "--max-sessions",
    type=click.IntRange(1),
    default=1000,
    show_default=True,
    help="Most client sessions at once.",
)
@click.option(
    "--max-unauthenticated",
    type=click.IntRange(1),
    default=256,
    show_default=True,
    help="Most connections still in their TLS/protocol handshake; more are closed at once.",
)
@click.option(
    "--max-streams",
    type=click.IntRange(1),
    default=1000,
    show_default=True,
    help="Most open streams (visitor connections, requests) per client session.",
)
@click.option(
    "--max-tunnels",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="Most tunnels one client session may register.",
)
@click.option(
    "--max-head-size",
    type=click.IntRange(1024),
    default=65536,
    show_default=True,
    help="Largest HTTP request head in bytes (larger: 431).",
)
@click.option(
    "--auth-failure-limit",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="Failed authentications an address may make per --auth-failure-window.",
)
@click.option(
    "--auth-failure-window",
    type=click.FloatRange(1),
    default=60.0,
    show_default=True,
    help="Seconds an address over --auth-failure-limit is refused.",
)
@click.option("--tls-cert", envvar="FERROTUNNEL_TLS_CERT", help="TLS certificate (PEM).")
@click.option("--tls-key", envvar="FERROTUNNEL_TLS_KEY", help="TLS private key (PEM).")
@click.option(
    "--tls-ca",
    envvar="FERROTUNNEL_TLS_CA",
    help="CA that issues client certificates (with --tls-client-auth).",
)
@click.option(
    "--tls-client-auth",
    is_flag=True,
    help="Mutual TLS: require a client certificate issued by --tls-ca.",
)
@click.option(
    "--https-bind",
    envvar="FERROTUNNEL_HTTPS_BIND",
    help="HTTPS ingress address (certificates: --https-cert/--https-key, else --tls-*).",
)
@click.option(
    "--https-cert",
    multiple=True,
    help="HTTPS ingress certificate (repeatable, paired with --https-key; chosen by SNI).",
)
@click.option("--https-key", multiple=True, help="Key of the --https-cert at the same position.")
@log_level_option()
@config_option("[server]")
@check_option()
@click.pass_context
def server(
    ctx: click.Context, /, config_file: str | None, check_only: bool, **options: Any
) -> None:
    """Run a tunnel server: clients connect to --bind, visitors to the ingress ports."""
    plugins: PluginHost = ctx.obj["plugins"]
    hint: str = ctx.obj.get("table_hint", "")
    loaded: Config = config_errors(lambda: load_settings(plugins, config_file, hint))
    options = config_errors(lambda: take_plugin_options(ctx, options, loaded))
    settings = ServerSettings(**merge(ctx, options, loaded, "server"))
    setup_logging(settings.log_level)
    config_errors(lambda: plugins.configure(loaded))
    authenticators = config_errors(lambda: plugins.authenticators(loaded))
    http_middlewares = config_errors(lambda: plugins.http_middlewares(loaded))
    tcp_middlewares = config_errors(lambda: plugins.tcp_middlewares(loaded))
    token = read_token(
        settings.token,
        required=not authenticators and not settings.tls_client_auth,
        prompt=not check_only,
    )

    def name(param: str) -> str:
        """The flag, variable or file key the value of ``param`` came from."""
        return origin(ctx, loaded, "server", param)

    control_tls, https_tls = config_errors(lambda: _tls_contexts(plugins, settings, name))

    def build_http() -> HttpIngressConfig:
        for cidr in settings.trust_proxy:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(
                    f"{name('trust_proxy')} {cidr!r} is not an address or CIDR"
                ) from None
        health_path = settings.health_path
        if health_path and not health_path.startswith("/"):
            raise ConfigError(f"{name('health_path')} {health_path!r} must start with /")
        return HttpIngressConfig(
            bind=Address.parse(settings.http_bind, what=name("http_bind")),
            domain=settings.domain.strip(".").lower() if settings.domain else None,
            health_path=health_path or None,
            response_timeout=settings.response_timeout,
            trusted_proxies=tuple(settings.trust_proxy),
            max_head_size=settings.max_head_size,
            https_bind=Address.parse(settings.https_bind, what=name("https_bind"))
            if settings.https_bind
            else None,
            https_context=https_tls,
        )

    def build() -> ServerConfig:
        return ServerConfig(
            token=token,
            bind=Address.parse(settings.bind, what=name("bind")),
            tcp_bind=Address.parse(settings.tcp_bind, what=name("tcp_bind"))
            if settings.tcp_bind
            else None,
            tcp_port_range=_port_range(settings.tcp_port_range, name("tcp_port_range")),
            # a server with a --domain is reached by that name: its TCP URLs say so too
            # (else the bind address, or this host's name for 0.0.0.0)
            public_host=settings.public_host
            or (settings.domain.strip(".").lower() if settings.domain else None),
            session=SessionConfig(
                handshake_timeout=settings.handshake_timeout, max_streams=settings.max_streams
            ),
            ssl_context=control_tls,
            max_sessions=settings.max_sessions,
            max_unauthenticated=settings.max_unauthenticated,
            max_tunnels=settings.max_tunnels,
            auth_failure_limit=settings.auth_failure_limit,
            auth_failure_window=settings.auth_failure_window,
        )

    config: ServerConfig = config_errors(build)
    http_config: HttpIngressConfig = config_errors(build_http)
    if check_only:
        enabled = [i.name for i in plugins.infos if i.status == "enabled"]
        click.echo(
            f"ferrotunnel server: settings ok (control plane {config.bind}, HTTP ingress "
            f"{http_config.bind}; plugins: {', '.join(enabled) or 'none'})"
        )
        return

    async def main() -> None:
        ingresses = []
        if running_asyncio_loop() is not None:
            ingresses.append(
                HttpIngress(http_config, middlewares=http_middlewares, plugins=plugins)
            )
        tunnel_server = Server(
            config,
            authenticators=authenticators,
            ingresses=ingresses,
            tcp_middlewares=tcp_middlewares,
            plugins=plugins,
        )
        try:
            await tunnel_server.start()
        except ListenError as exc:
            param = _LISTENER_OPTIONS.get(exc.listener)
            what = f"the {exc.listener}" + (f" ({name(param)})" if param else "")
            fail(f"cannot listen on {exc.address} for {what}: {exc.strerror}", status=1)
        except OSError as exc:
            fail(f"cannot listen: {exc.strerror or exc}", status=1)
        try:
            click.echo("ferrotunnel server ready")
            tls = ""
            if control_tls is not None:
                tls = " (TLS 1.3" + (
                    ", client certificates required)" if settings.tls_client_auth else ")"
                )
            click.echo(f"  control plane   {tunnel_server.control_address}{tls}")
            if tunnel_server.tcp_address is not None:
                click.echo(f"  TCP ingress     {tunnel_server.tcp_address}")
            if config.tcp_port_range is not None:
                low, high = config.tcp_port_range
                click.echo(f"  TCP port range  {low}-{high}")
            for ingress in tunnel_server.ingresses:
                for label, value in ingress.describe():
                    click.echo(f"  {label:<15} {value}")
            if not ingresses:
                click.echo("  HTTP ingress    off: it needs --loop asyncio or uvloop")
            enabled = [i.name for i in plugins.infos if i.status == "enabled"]
            click.echo(f"  plugins         {', '.join(enabled) or 'none'}")
            click.echo("Press Ctrl-C to stop.", nl=True)
            await tunnel_server.serve_forever()
        finally:
            await tunnel_server.shutdown()

    run(main, ctx.obj["loop"])
