"""``ferrotunnel demo``: server, client and a sample web app in one process, on loopback.

The sample app is reached only through the tunnel's public HTTP ingress, routed by its host
name, exactly as a visitor on the Internet would reach a web app behind NAT. The demo checks
that path once itself before it tells you how to try it. Its client has the installed
plugins, at their defaults, as ``ferrotunnel client`` would: with ferrotunnel-observability,
the dashboard (on a free port, so that a running client's 4040 is left alone) lists each
request as it passes.
"""

from __future__ import annotations

import contextlib
import secrets
import time

import anyio
import click
from anyio.abc import SocketStream

from ferrotunnel.core import Address, Client, Server, Tunnel, TunnelKind
from ferrotunnel.core.plugin import PluginHost
from ferrotunnel.http import HttpIngress, HttpIngressConfig

from ._run import config_errors, dashboard_absence, log_level_option, run, setup_logging
from .settings import load_settings

DEMO_HOST = "demo.localhost"
_MAX_HEAD = 16 << 10


class SampleApp:
    """A tiny HTTP/1.1 app standing for "your local service" (keep-alive, GET only)."""

    def __init__(self) -> None:
        self.visits = 0

    async def serve(self, sock: SocketStream) -> None:
        async with sock:
            buffer = b""
            while True:
                with anyio.move_on_after(30):
                    while b"\r\n\r\n" not in buffer and len(buffer) < _MAX_HEAD:
                        try:
                            buffer += await sock.receive()
                        except (anyio.EndOfStream, anyio.BrokenResourceError):
                            return
                if b"\r\n\r\n" not in buffer:
                    return
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                await self._answer(sock, head)

    async def _answer(self, sock: SocketStream, head: bytes) -> None:
        self.visits += 1
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])
        }
        body = (
            "Hello from behind the tunnel!\n"
            f"You asked for: {lines[0]}\n"
            f"Host: {headers.get('host', '?')}, visitor: {headers.get('x-forwarded-for', '?')}\n"
            f"Visit #{self.visits}, served at {time.strftime('%H:%M:%S')} by the demo's app.\n"
        ).encode()
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await sock.send(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )


async def fetch(address: Address, host: str) -> bytes:
    """One HTTP GET over a raw socket: the demo's self-check."""
    async with await anyio.connect_tcp(address.host, address.port) as sock:
        await sock.send(
            f"GET /self-check HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n".encode()
        )
        reply = b""
        with contextlib.suppress(anyio.BrokenResourceError):
            async for chunk in sock:
                reply += chunk
    return reply


@click.command()
@log_level_option(default="warning")
@click.pass_context
def demo(ctx: click.Context, log_level: str) -> None:
    """Run a server, a client and a sample web app locally; print how to reach the app."""
    setup_logging(log_level)
    plugins: PluginHost = ctx.obj["plugins"]
    loaded = config_errors(lambda: load_settings(plugins, None))
    if "dashboard" in loaded.schema.tables:
        loaded.replace("dashboard", port=0)
    config_errors(lambda: plugins.configure(loaded))
    observers = config_errors(lambda: plugins.stream_observers(loaded))

    async def main() -> None:
        token = secrets.token_urlsafe(16)
        app = SampleApp()
        ingress = HttpIngress(HttpIngressConfig(bind=Address("127.0.0.1", 0)))
        async with anyio.create_task_group() as tg:
            listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
            app_port = listener.extra(anyio.abc.SocketAttribute.local_port)
            tg.start_soon(listener.serve, app.serve)
            tunnel = Tunnel(DEMO_HOST, Address("127.0.0.1", app_port), TunnelKind.HTTP)
            async with (
                Server(token=token, bind="127.0.0.1:0", ingresses=[ingress]) as server,
                Client(
                    server_addr=str(server.control_address),
                    token=token,
                    tunnels=[tunnel],
                    plugins=plugins,
                    stream_observers=observers,
                ) as client,
            ):
                public = ingress.address
                assert public is not None
                started = time.perf_counter()
                reply = await fetch(public, DEMO_HOST)
                took = (time.perf_counter() - started) * 1000
                ok = reply.startswith(b"HTTP/1.1 200")
                url = client.tunnels[0].public_url
                click.echo(
                    "ferrotunnel demo: a tunnel server, a client and a sample web app, "
                    "all on this machine."
                )
                click.echo(f"  local app (behind the tunnel)  http://127.0.0.1:{app_port}/")
                click.echo(f"  tunnel server control plane    {server.control_address}")
                click.echo(f"  public URL                     {url}/")
                dashboard = client.endpoints.get("dashboard", "")
                if dashboard.startswith("http"):
                    click.echo(f"  dashboard (inspect, replay)    {dashboard}")
                else:
                    click.echo(f"  dashboard                      {dashboard_absence(dashboard)}")
                click.echo(
                    f"  self-check through the tunnel  {'OK' if ok else 'FAILED'} ({took:.1f} ms)"
                )
                if not ok:
                    raise SystemExit(1)
                click.echo("")
                click.echo("Try it (curl resolves *.localhost to this machine):")
                click.echo(f"  curl {url}/hello")
                click.echo(f"  curl -H 'Host: {DEMO_HOST}' http://{public}/hello")
                if dashboard.startswith("http"):
                    click.echo(f"and watch the requests arrive at {dashboard} (replay one there).")
                click.echo("Press Ctrl-C to stop.")
                await anyio.sleep_forever()
            tg.cancel_scope.cancel()

    run(main, ctx.obj["loop"])
    click.echo("Stopped: the server, the client and the app are shut down.")
