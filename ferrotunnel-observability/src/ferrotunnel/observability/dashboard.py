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
support), and gives the client a stream observer that taps every HTTP stream
(:class:`~.capture.CaptureObserver`, through ``client.observe``). Tunnel status follows the
client's ``ferrotunnel_tunnel_registered`` / ``_closed`` hooks. Its ``/metrics`` serves the
client's metrics when the client also has the ``metrics`` plugin.

On a server, with ``[dashboard] admin = true``, the same plugin serves the admin view of
:mod:`.admin` (sessions, tunnels, visitors; close a session) behind the server's token.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import prometheus_client
from prometheus_client import CollectorRegistry

from ferrotunnel.core import Client, ConfigError, GrantedTunnel, Server, Session
from ferrotunnel.core.net import running_asyncio_loop
from ferrotunnel.core.plugin import Config, ConfigSchema, Identity, hookimpl

from .metrics import MetricsPlugin

# The web parts (starlette, uvicorn: ~0.1 s to import) are imported when a dashboard or an
# admin view starts, not when the plugin is loaded: every ferrotunnel command loads it.
if TYPE_CHECKING:
    from .admin import AdminState
    from .embedded import EmbeddedServer

__all__ = ["Dashboard", "DashboardSettings"]

log = logging.getLogger("ferrotunnel.observability.dashboard")


@dataclass(frozen=True)
class DashboardSettings:
    """The ``[dashboard]`` table. ``ferrotunnel client``'s ``--no-dashboard`` /
    ``--dashboard-port`` (or ``dashboard`` / ``dashboard_port`` of ``[client]``), when given,
    win over ``enabled`` and ``port``."""

    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = 4040
    #: how much of each request and response body is kept (KiB)
    capture_kib: int = 64
    #: how many exchanges are kept (oldest dropped first)
    keep: int = 200
    #: on a server: serve the admin view (needs the server's token) on ``bind:admin_port``
    admin: bool = False
    admin_port: int = 4041


def _hosts(bind: str) -> list[str]:
    return ["127.0.0.1", "localhost", "[::1]", bind]


def _metrics_registry(client: Client) -> CollectorRegistry:
    """What the dashboard's ``/metrics`` serves: the client's metrics when the client has the
    ``metrics`` plugin (:class:`~.metrics.MetricsPlugin`), else prometheus_client's
    process-wide registry."""
    if client.plugins is not None:
        for plugin in client.plugins.manager.get_plugins():
            if isinstance(plugin, MetricsPlugin):
                return plugin.client_registry(client)
    return prometheus_client.REGISTRY


class _ClientDashboard:
    """One client's dashboard: its store and web server."""

    def __init__(self, client: Client, settings: DashboardSettings) -> None:
        from .api import DashboardContext, create_app
        from .embedded import EmbeddedServer
        from .store import Store, TunnelState

        self.client = client
        self.store = Store(keep=settings.keep)
        self.ctx = DashboardContext(
            store=self.store,
            tunnels={t.name: t for t in client.config.tunnels},
            capture_limit=settings.capture_kib * 1024,
            registry=_metrics_registry(client),
        )
        for tunnel in client.config.tunnels:
            local = str(tunnel.local_addr) if tunnel.local_addr is not None else None
            self.store.set_tunnel(TunnelState(tunnel.name, str(tunnel.kind), local))
        app = create_app(self.ctx, allowed_hosts=_hosts(settings.bind))
        self.web = EmbeddedServer(app, settings.bind, settings.port)

    @property
    def url(self) -> str:
        return self.web.url

    async def start(self) -> None:
        from .capture import CaptureObserver

        await self.web.start()
        self.client.observe(CaptureObserver(self.store, self.ctx.capture_limit))
        self.client.endpoints["dashboard"] = self.url

    async def stop(self) -> None:
        self.ctx.closing.set()
        self.store.close_subscribers()
        await self.web.stop()
        self.client.endpoints.pop("dashboard", None)
        for state in self.store.tunnels.values():
            state.status = "closed"


class Dashboard:
    """The plugin object: a dashboard for each client, an admin view for each server."""

    def __init__(self, settings: DashboardSettings | None = None, **overrides: Any) -> None:
        base = settings or DashboardSettings()
        values = {f.name: getattr(base, f.name) for f in fields(base)}
        self.settings = DashboardSettings(**{**values, **overrides})
        self._running: dict[int, _ClientDashboard] = {}
        self._admins: dict[int, tuple[AdminState, EmbeddedServer]] = {}
        #: shared with the VisitorLog middlewares handed out before the servers started
        self._admin_states: list[AdminState] = []

    def running(self, client: Client) -> _ClientDashboard | None:
        """This client's dashboard (for tests and embedding)."""
        return self._running.get(id(client))

    def admin(self, server: Server) -> tuple[AdminState, str] | None:
        """This server's admin state and URL."""
        found = self._admins.get(id(server))
        return (found[0], found[1].url) if found else None

    # ---- configuration

    @hookimpl
    def ferrotunnel_add_config(self, schema: ConfigSchema) -> None:
        if "dashboard" not in schema.tables:
            schema.add_table(
                "dashboard",
                DashboardSettings,
                owner="ferrotunnel-observability",
                help="the client's live dashboard, the server's admin view",
            )

    @hookimpl
    def ferrotunnel_configure(self, config: Config) -> None:
        settings = config.table("dashboard")
        if isinstance(settings, DashboardSettings):
            # a bad one: a configuration error, not at bind
            for key, flag in (("port", "--dashboard-port"), ("admin_port", "")):
                port = getattr(settings, key)
                if not 0 <= port <= 65535:
                    what = config.source_of("dashboard", key, flag or f"[dashboard] {key}")
                    raise ConfigError(f"{what} {port} is not a TCP port (0-65535)")
            self.settings = settings

    @hookimpl
    def ferrotunnel_http_middlewares(self, config: Config) -> Iterable[object]:
        return self._visitor_log()

    @hookimpl
    def ferrotunnel_tcp_middlewares(self, config: Config) -> Iterable[object]:
        return self._visitor_log()

    def _visitor_log(self) -> list[object]:
        """The admin view's notes on visitors (HTTP and TCP), when it is on."""
        if not self.settings.admin:
            return []
        from .admin import VisitorLog

        return [VisitorLog(self._admin_states)]

    # ---- lifecycle

    @hookimpl
    async def ferrotunnel_startup(self, app: Any) -> None:
        if isinstance(app, Client) and self.settings.enabled:
            await self._start_dashboard(app)
        elif isinstance(app, Server) and self.settings.admin:
            await self._start_admin(app)

    async def _start_dashboard(self, client: Client) -> None:
        if running_asyncio_loop() is None:
            log.warning("the dashboard needs asyncio (uvicorn); not starting it")
            # said where its URL would be (ferrotunnel client prints it), rather than nothing,
            # which reads as "not installed"
            client.endpoints["dashboard"] = "unavailable: it needs --loop asyncio or uvloop"
            return
        running = _ClientDashboard(client, self.settings)
        try:
            await running.start()
        except OSError as exc:
            where = f"{self.settings.bind}:{self.settings.port}"
            log.warning("dashboard: cannot listen on %s: %s", where, exc.strerror or exc)
            client.endpoints["dashboard"] = f"unavailable: cannot listen on {where}"
            return
        self._running[id(client)] = running
        log.info("dashboard at %s", running.url)

    async def _start_admin(self, server: Server) -> None:
        token = server.config.token
        if not token:
            log.warning("the admin view needs the server's --token; not starting it")
            return
        if running_asyncio_loop() is None:
            log.warning("the admin view needs asyncio (uvicorn); not starting it")
            return
        from .admin import AdminState, create_admin_app
        from .embedded import EmbeddedServer

        state = AdminState(server)
        app = create_admin_app(state, token, _hosts(self.settings.bind))
        web = EmbeddedServer(app, self.settings.bind, self.settings.admin_port)
        try:
            await web.start()
        except OSError as exc:
            where = f"{self.settings.bind}:{self.settings.admin_port}"
            log.warning("admin view: cannot listen on %s: %s", where, exc.strerror or exc)
            return
        self._admins[id(server)] = (state, web)
        self._admin_states.append(state)
        log.info("admin view at %s", web.url)

    @hookimpl
    async def ferrotunnel_shutdown(self, app: Any) -> None:
        running = self._running.pop(id(app), None)
        if running is not None:
            await running.stop()
        admin = self._admins.pop(id(app), None)
        if admin is not None:
            state, web = admin
            self._admin_states.remove(state)
            await web.stop()

    # ---- events

    @hookimpl
    def ferrotunnel_session_opened(self, session: Session, identity: Identity) -> None:
        for state in self._admin_states:
            if session in state.server.sessions:
                from .admin import SessionInfo

                state.sessions[session] = SessionInfo(session, identity.name)

    @hookimpl
    def ferrotunnel_session_closed(self, session: Session) -> None:
        for state in self._admin_states:
            state.sessions.pop(session, None)
            state.closing.discard(session)

    @hookimpl
    def ferrotunnel_tunnel_registered(self, session: Session, tunnel: GrantedTunnel) -> None:
        for running in self._running.values():
            if running.client.session is session:
                running.ctx.public_urls[tunnel.name] = tunnel.public_url
                running.store.tunnel_status(tunnel.name, "connected", tunnel.public_url)
        for state in self._admin_states:
            info = state.sessions.get(session)
            if info is not None:
                info.tunnels.append(tunnel)

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
def ferrotunnel_http_middlewares(config: Config) -> Iterable[object]:
    return plugin.ferrotunnel_http_middlewares(config)


@hookimpl
def ferrotunnel_tcp_middlewares(config: Config) -> Iterable[object]:
    return plugin.ferrotunnel_tcp_middlewares(config)


@hookimpl
async def ferrotunnel_startup(app: Any) -> None:
    await plugin.ferrotunnel_startup(app)


@hookimpl
async def ferrotunnel_shutdown(app: Any) -> None:
    await plugin.ferrotunnel_shutdown(app)


@hookimpl
def ferrotunnel_session_opened(session: Session, identity: Identity) -> None:
    plugin.ferrotunnel_session_opened(session, identity)


@hookimpl
def ferrotunnel_session_closed(session: Session) -> None:
    plugin.ferrotunnel_session_closed(session)


@hookimpl
def ferrotunnel_tunnel_registered(session: Session, tunnel: GrantedTunnel) -> None:
    plugin.ferrotunnel_tunnel_registered(session, tunnel)


@hookimpl
def ferrotunnel_tunnel_closed(session: Session, tunnel: GrantedTunnel) -> None:
    plugin.ferrotunnel_tunnel_closed(session, tunnel)
