"""The dashboard plugin: a live inspector for a client's HTTP traffic at 127.0.0.1:4040.

Found through the ``ferrotunnel`` entry-point group (``dashboard``), so ``ferrotunnel client``
serves it unless ``--no-dashboard``. Library users register it themselves::

    from ferrotunnel.core import Client
    from ferrotunnel.core.plugin import PluginHost
    from ferrotunnel.observability.dashboard import Dashboard

    host = PluginHost.with_plugins([Dashboard(port=4040)])
    async with Client(server_addr="...", local_addr="127.0.0.1:8000", protocol="http",
                      plugins=host) as client:
        print(client.endpoints["dashboard"])

At ``ferrotunnel_startup`` with a :class:`~ferrotunnel.core.Client` the plugin binds its port,
starts uvicorn inside the client's own event loop (asyncio only: uvicorn has no trio
support), and asks the client for a tap on every HTTP stream (:class:`~.capture.CaptureObserver`).
Tunnel status follows the client's ``ferrotunnel_tunnel_registered`` / ``_closed`` hooks. On a
server it does nothing (yet).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from ferrotunnel.core import Client, GrantedTunnel, Session
from ferrotunnel.core.net import running_asyncio_loop
from ferrotunnel.core.plugin import Config, ConfigSchema, hookimpl

from .api import DashboardContext, create_app
from .capture import CaptureObserver
from .store import Store, TunnelState

__all__ = ["Dashboard", "DashboardSettings"]

log = logging.getLogger("ferrotunnel.observability.dashboard")


@dataclass(frozen=True)
class DashboardSettings:
    """The ``[dashboard]`` table. ``ferrotunnel client`` sets ``enabled`` and ``port`` from
    ``--no-dashboard`` / ``--dashboard-port`` (or ``dashboard`` / ``dashboard_port`` of
    ``[client]``)."""

    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = 4040
    #: how much of each request and response body is kept (KiB)
    capture_kib: int = 64
    #: how many exchanges are kept (oldest dropped first)
    keep: int = 200


class _Server(uvicorn.Server):
    """uvicorn inside someone else's loop: the host process owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _Running:
    """One client's dashboard: its store, web server and serving task."""

    def __init__(self, client: Client, settings: DashboardSettings) -> None:
        self.client = client
        self.settings = settings
        self.store = Store(keep=settings.keep)
        self.ctx = DashboardContext(
            store=self.store,
            tunnels={t.name: t for t in client.config.tunnels},
            capture_limit=settings.capture_kib * 1024,
        )
        for tunnel in client.config.tunnels:
            local = str(tunnel.local_addr) if tunnel.local_addr is not None else None
            self.store.set_tunnel(TunnelState(tunnel.name, str(tunnel.kind), local))
        self.server: _Server | None = None
        self.task: asyncio.Task[None] | None = None
        self.url = ""

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self.settings.bind else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.settings.bind, self.settings.port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        port = sock.getsockname()[1]
        host = f"[{self.settings.bind}]" if ":" in self.settings.bind else self.settings.bind
        allowed = ["127.0.0.1", "localhost", "[::1]", self.settings.bind]
        app = create_app(self.ctx, allowed_hosts=allowed)
        config = uvicorn.Config(
            app,
            lifespan="off",
            ws="none",
            http="h11",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self.server = server = _Server(config)
        self.task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        self._sock = sock
        while not server.started:
            if self.task.done():
                self.task.result()
                raise OSError("the dashboard's web server stopped at start")
            await asyncio.sleep(0.01)
        self.url = f"http://{host}:{port}"
        self.client.observe(CaptureObserver(self.store, self.ctx.capture_limit))
        self.client.endpoints["dashboard"] = self.url

    async def stop(self) -> None:
        self.ctx.closing.set()
        self.store.close_subscribers()
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self.task), 5)
            if not self.task.done():
                self.task.cancel()
        self._sock.close()
        self.client.endpoints.pop("dashboard", None)
        for state in self.store.tunnels.values():
            state.status = "closed"


class Dashboard:
    """The plugin object: one dashboard per client it is started with."""

    def __init__(self, settings: DashboardSettings | None = None, **overrides: Any) -> None:
        base = settings or DashboardSettings()
        self.settings = DashboardSettings(**{**base.__dict__, **overrides})
        self._running: dict[int, _Running] = {}

    def running(self, client: Client) -> _Running | None:
        """This client's dashboard (for tests and embedding)."""
        return self._running.get(id(client))

    @hookimpl
    def ferrotunnel_add_config(self, schema: ConfigSchema) -> None:
        if "dashboard" not in schema.tables:
            schema.add_table(
                "dashboard",
                DashboardSettings,
                owner="ferrotunnel-observability",
                help="the client's live dashboard",
            )

    @hookimpl
    def ferrotunnel_configure(self, config: Config) -> None:
        settings = config.table("dashboard")
        if isinstance(settings, DashboardSettings):
            self.settings = settings

    @hookimpl
    async def ferrotunnel_startup(self, app: Any) -> None:
        if not isinstance(app, Client) or not self.settings.enabled:
            return
        if running_asyncio_loop() is None:
            log.warning("the dashboard needs asyncio (uvicorn); not starting it")
            return
        running = _Running(app, self.settings)
        try:
            await running.start()
        except OSError as exc:
            where = f"{self.settings.bind}:{self.settings.port}"
            log.warning("dashboard: cannot listen on %s: %s", where, exc.strerror or exc)
            app.endpoints["dashboard"] = f"unavailable: cannot listen on {where}"
            return
        self._running[id(app)] = running
        log.info("dashboard at %s", running.url)

    @hookimpl
    async def ferrotunnel_shutdown(self, app: Any) -> None:
        running = self._running.pop(id(app), None)
        if running is not None:
            await running.stop()

    @hookimpl
    def ferrotunnel_tunnel_registered(self, session: Session, tunnel: GrantedTunnel) -> None:
        for running in self._running.values():
            if running.client.session is session:
                running.ctx.public_urls[tunnel.name] = tunnel.public_url
                running.store.tunnel_status(tunnel.name, "connected", tunnel.public_url)

    @hookimpl
    def ferrotunnel_tunnel_closed(self, session: Session, tunnel: GrantedTunnel) -> None:
        for running in self._running.values():
            if running.client.session is session:
                running.store.tunnel_status(tunnel.name, running.client.status.value)


#: the instance the entry point registers (configured from the ``[dashboard]`` table)
plugin = Dashboard()


@hookimpl
def ferrotunnel_add_config(schema: ConfigSchema) -> None:
    plugin.ferrotunnel_add_config(schema)


@hookimpl
def ferrotunnel_configure(config: Config) -> None:
    plugin.ferrotunnel_configure(config)


@hookimpl
async def ferrotunnel_startup(app: Any) -> None:
    await plugin.ferrotunnel_startup(app)


@hookimpl
async def ferrotunnel_shutdown(app: Any) -> None:
    await plugin.ferrotunnel_shutdown(app)


@hookimpl
def ferrotunnel_tunnel_registered(session: Session, tunnel: GrantedTunnel) -> None:
    plugin.ferrotunnel_tunnel_registered(session, tunnel)


@hookimpl
def ferrotunnel_tunnel_closed(session: Session, tunnel: GrantedTunnel) -> None:
    plugin.ferrotunnel_tunnel_closed(session, tunnel)
