"""Helpers for testing plugins and embedding code: a server and client in one process.

::

    from ferrotunnel.core.testing import plugin_host, running_tunnel

    async def test_my_plugin():
        host = plugin_host(my_plugin, config={"my_table": {"greeting": "hi"}})
        async with running_tunnel(origin=echo, plugins=host) as tunnel:
            async with await anyio.connect_tcp(*tunnel.public) as sock:
                ...

Everything listens on 127.0.0.1 with ephemeral ports; the tunnel is torn down on exit.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import SocketStream

from ferrotunnel.protocol import TunnelKind

from .client import Client, Tunnel
from .ingress import Ingress
from .net import Address
from .plugin import ConfigSchema, PluginHost, StreamObserver
from .plugin.config import from_mapping
from .server import Server
from .session import SessionConfig

__all__ = ["Origin", "RunningTunnel", "plugin_host", "running_tunnel"]

#: serves one connection to the local service
Origin = Callable[[SocketStream], Awaitable[None]]


def plugin_host(
    *plugins: object, config: Mapping[str, object] | None = None, base: ConfigSchema | None = None
) -> PluginHost:
    """A host with exactly ``plugins`` registered, configured from ``config`` (a dict of
    tables, as TOML would give), and nothing from entry points."""
    host = PluginHost.with_plugins(plugins)
    host.configure(from_mapping(host.schema(base), config or {}))
    return host


@dataclass
class RunningTunnel:
    server: Server
    client: Client
    #: where the origin listens
    origin: Address
    #: the public TCP address of a TCP tunnel (None for HTTP tunnels)
    public: tuple[str, int] | None


@asynccontextmanager
async def running_tunnel(
    origin: Origin,
    *,
    kind: TunnelKind = TunnelKind.TCP,
    name: str = "test",
    plugins: PluginHost | None = None,
    ingresses: Sequence[Ingress] = (),
    session: SessionConfig | None = None,
    client_plugins: PluginHost | None = None,
    stream_observers: Sequence[StreamObserver] = (),
    **client_options: Any,
) -> AsyncIterator[RunningTunnel]:
    """A server, a client and ``origin`` (serving each connection), wired together.

    With ``plugins`` (see :func:`plugin_host`), the server uses their authenticators, TCP
    middlewares and events; HTTP middlewares belong to the ingress you pass in ``ingresses``.
    The client gets ``client_plugins`` (their events and stream observers) and
    ``stream_observers``: a client-side plugin is tested with those.
    """
    token = secrets.token_urlsafe(16)
    config = plugins.config if plugins is not None else None
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        origin_port = listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.start_soon(listener.serve, origin)
        server = Server(
            token=token,
            bind="127.0.0.1:0",
            tcp_bind="127.0.0.1:0" if kind is TunnelKind.TCP else None,
            session=session or SessionConfig(),
            ingresses=ingresses,
            authenticators=plugins.authenticators(config) if plugins and config else (),
            tcp_middlewares=plugins.tcp_middlewares(config) if plugins and config else (),
            plugins=plugins,
        )
        async with server:
            tunnel = Tunnel(name, Address("127.0.0.1", origin_port), kind, **client_options)
            client = Client(
                server_addr=str(server.control_address),
                token=token,
                tunnels=[tunnel],
                plugins=client_plugins,
                stream_observers=stream_observers,
            )
            async with client:
                public = server.tcp_address
                yield RunningTunnel(
                    server,
                    client,
                    Address("127.0.0.1", origin_port),
                    (public.host, public.port) if public else None,
                )
        tg.cancel_scope.cancel()
