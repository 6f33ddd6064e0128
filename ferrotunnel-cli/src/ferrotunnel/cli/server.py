"""``ferrotunnel server``: the public side."""

from __future__ import annotations

import ipaddress
from typing import Any

import click

from ferrotunnel.core import Address, ConfigError, Server, ServerConfig, SessionConfig
from ferrotunnel.core.net import running_asyncio_loop
from ferrotunnel.core.plugin import Config, PluginHost
from ferrotunnel.http import HttpIngress, HttpIngressConfig

from ._run import (
    config_errors,
    config_option,
    fail,
    log_level_option,
    read_token,
    run,
    setup_logging,
)
from .settings import ServerSettings, load_settings, merge, take_plugin_options


def _port_range(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    low, sep, high = text.partition("-")
    if not (sep and low.isdigit() and high.isdigit()):
        raise ConfigError(f"--tcp-port-range {text!r} must look like 20000-20100")
    if not 1 <= int(low) <= int(high) <= 65535:
        raise ConfigError(f"--tcp-port-range {text!r}: need 1 <= LOW <= HIGH <= 65535")
    return int(low), int(high)


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
    "--public-host", envvar="FERROTUNNEL_PUBLIC_HOST", help="Host name shown in public URLs."
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
@log_level_option()
@config_option("[server]")
@click.pass_context
def server(ctx: click.Context, /, config_file: str | None, **options: Any) -> None:
    """Run a tunnel server: clients connect to --bind, visitors to the ingress ports."""
    plugins: PluginHost = ctx.obj["plugins"]
    loaded: Config = config_errors(lambda: load_settings(plugins, config_file))
    options = take_plugin_options(ctx, options, loaded)
    settings = ServerSettings(**merge(ctx, options, loaded, "server"))
    setup_logging(settings.log_level)
    config_errors(lambda: plugins.configure(loaded))
    authenticators = config_errors(lambda: plugins.authenticators(loaded))
    http_middlewares = config_errors(lambda: plugins.http_middlewares(loaded))
    tcp_middlewares = config_errors(lambda: plugins.tcp_middlewares(loaded))
    token = read_token(settings.token, required=not authenticators)

    def build_http() -> HttpIngressConfig:
        for cidr in settings.trust_proxy:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"--trust-proxy {cidr!r} is not an address or CIDR") from None
        health_path = settings.health_path
        if health_path and not health_path.startswith("/"):
            raise ConfigError(f"--health-path {health_path!r} must start with /")
        return HttpIngressConfig(
            bind=Address.parse(settings.http_bind, what="--http-bind"),
            domain=settings.domain.strip(".").lower() if settings.domain else None,
            health_path=health_path or None,
            response_timeout=settings.response_timeout,
            trusted_proxies=tuple(settings.trust_proxy),
        )

    def build() -> ServerConfig:
        return ServerConfig(
            token=token,
            bind=Address.parse(settings.bind, what="--bind"),
            tcp_bind=Address.parse(settings.tcp_bind, what="--tcp-bind")
            if settings.tcp_bind
            else None,
            tcp_port_range=_port_range(settings.tcp_port_range),
            public_host=settings.public_host,
            session=SessionConfig(handshake_timeout=settings.handshake_timeout),
            max_sessions=settings.max_sessions,
        )

    config: ServerConfig = config_errors(build)
    http_config: HttpIngressConfig = config_errors(build_http)

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
        except OSError as exc:
            fail(f"cannot listen: {exc.strerror or exc}", status=1)
        try:
            click.echo("ferrotunnel server ready")
            click.echo(f"  control plane   {tunnel_server.control_address}")
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
