"""``ferrotunnel demo``: server, client and a sample web app in one process, on loopback.

The sample app is reached only through the tunnel's public port, exactly as a visitor on the
Internet would reach a service behind NAT. The demo checks that path once itself before it
tells you how to try it.
"""

from __future__ import annotations

import contextlib
import secrets
import time

import anyio
import click
from anyio.abc import SocketStream

from ferrotunnel.core import Client, Server

from ._run import LOG_LEVELS, run, setup_logging

_MAX_HEAD = 16 << 10


async def sample_app(sock: SocketStream) -> None:
    """A tiny HTTP/1.1 app standing for "your local service": one response per connection."""
    visits = sample_app.visits = getattr(sample_app, "visits", 0) + 1  # type: ignore[attr-defined]
    async with sock:
        head = b""
        with anyio.move_on_after(10):
            while b"\r\n\r\n" not in head and len(head) < _MAX_HEAD:
                try:
                    head += await sock.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        body = (
            "Hello from behind the tunnel!\n"
            f"You asked for: {request_line}\n"
            f"Visit #{visits}, served at {time.strftime('%H:%M:%S')} by the demo's local app.\n"
        ).encode()
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await sock.send(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\n"
                + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                + body
            )


async def fetch(host: str, port: int) -> bytes:
    """One HTTP GET over a raw socket: the demo's self-check."""
    async with await anyio.connect_tcp(host, port) as sock:
        await sock.send(b"GET /self-check HTTP/1.1\r\nhost: demo\r\nconnection: close\r\n\r\n")
        reply = b""
        try:
            async for chunk in sock:
                reply += chunk
        except anyio.BrokenResourceError:
            pass
    return reply


@click.command()
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="warning", show_default=True)
@click.pass_context
def demo(ctx: click.Context, log_level: str) -> None:
    """Run a server, a client and a sample web app locally; print how to reach the app."""
    setup_logging(log_level)

    async def main() -> None:
        token = secrets.token_urlsafe(16)
        async with anyio.create_task_group() as tg:
            app = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
            app_port = app.extra(anyio.abc.SocketAttribute.local_port)
            tg.start_soon(app.serve, sample_app)
            async with (
                Server(token=token, bind="127.0.0.1:0", tcp_bind="127.0.0.1:0") as server,
                Client(
                    server_addr=str(server.control_address),
                    token=token,
                    local_addr=f"127.0.0.1:{app_port}",
                    protocol="tcp",
                    tunnel_id="demo",
                ) as client,
            ):
                public = server.tcp_address
                assert public is not None
                started = time.perf_counter()
                reply = await fetch(public.host, public.port)
                took = (time.perf_counter() - started) * 1000
                ok = reply.startswith(b"HTTP/1.1 200")
                click.echo(
                    "ferrotunnel demo: a tunnel server, a client and a sample web app, "
                    "all on this machine."
                )
                click.echo(f"  local app (behind the tunnel)  http://127.0.0.1:{app_port}/")
                click.echo(f"  tunnel server control plane    {server.control_address}")
                click.echo(f"  public address                 {client.tunnels[0].public_url}")
                click.echo(
                    f"  self-check through the tunnel  {'OK' if ok else 'FAILED'} ({took:.1f} ms)"
                )
                if not ok:
                    raise SystemExit(1)
                click.echo("")
                click.echo("Try it:")
                click.echo(f"  curl http://{public}/hello")
                click.echo("Press Ctrl-C to stop.")
                await anyio.sleep_forever()
            tg.cancel_scope.cancel()

    run(main, ctx.obj["loop"])
