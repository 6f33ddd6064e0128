"""A real tunnel with the dashboard plugin on its client: server, HTTP ingress, client and an
origin, all in the test's event loop on 127.0.0.1 (ephemeral ports)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest

from ferrotunnel.core import Address, Client, Server
from ferrotunnel.core.plugin import PluginHost
from ferrotunnel.http import HttpIngress, HttpIngressConfig
from ferrotunnel.observability.dashboard import Dashboard
from ferrotunnel.observability.store import Store

from ..e2e.conftest import launch
from ..http.harness import HOST, TOKEN, Handler, Origin, RawOrigin, http_tunnel

__all__ = ["launch"]  # the end-to-end suite's process launcher, for the CLI tests here

APP = "app.localhost"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the HTTP ingress and uvicorn are asyncio-only


@dataclass
class DashStack:
    server: Server
    ingress: HttpIngress
    client: Client
    origin: Origin | RawOrigin
    plugin: Dashboard
    visitor: httpx.AsyncClient  # talks to the public ingress, Host: app.localhost
    api: httpx.AsyncClient  # talks to the dashboard

    @property
    def store(self) -> Store:
        running = self.plugin.running(self.client)
        assert running is not None
        return running.store

    @property
    def dashboard_url(self) -> str:
        return self.client.endpoints["dashboard"]

    @property
    def public_port(self) -> int:
        assert self.ingress.address is not None
        return self.ingress.address.port

    async def wait_for(self, count: int, *, within: float = 5.0) -> list[dict[str, Any]]:
        """Wait until ``count`` exchanges are complete; returns the list, newest first."""
        with anyio.fail_after(within):
            while True:
                rows = (await self.api.get("/api/v1/requests?limit=500")).json()["requests"]
                if len([r for r in rows if r["state"] != "pending"]) >= count:
                    return list(rows)
                await anyio.sleep(0.02)


@asynccontextmanager
async def dash_stack(
    handler: Handler | None = None,
    *,
    origin: Origin | RawOrigin | None = None,
    reconnect: bool = False,
    tunnel: dict[str, Any] | None = None,
    **settings: Any,
) -> AsyncIterator[DashStack]:
    """``settings`` are :class:`DashboardSettings` fields (port 0 unless given); ``tunnel``
    more :class:`Tunnel` fields."""
    settings.setdefault("port", 0)
    plugin = Dashboard(**settings)
    host = PluginHost.with_plugins([plugin], names=["dashboard"])
    ingress = HttpIngress(HttpIngressConfig(bind=Address(HOST, 0)))
    async with (
        origin or Origin(handler) as origin,
        Server(token=TOKEN, bind=f"{HOST}:0", ingresses=[ingress], drain_timeout=0.25) as server,
        Client(
            server_addr=str(server.control_address),
            token=TOKEN,
            tunnels=[http_tunnel(APP, origin.port, **(tunnel or {}))],
            drain_timeout=0.25,
            reconnect=reconnect,
            plugins=host,
        ) as client,
    ):
        assert ingress.address is not None
        async with (
            httpx.AsyncClient(
                base_url=f"http://{HOST}:{ingress.address.port}", headers={"host": APP}
            ) as visitor,
            httpx.AsyncClient(base_url=_dashboard_base(client), timeout=10) as api,
        ):
            yield DashStack(server, ingress, client, origin, plugin, visitor, api)
        for conn in list(ingress.connections):
            conn._close()


def _dashboard_base(client: Client) -> str:
    url = client.endpoints.get("dashboard", "")
    return url if url.startswith("http") else "http://127.0.0.1:9"  # not running


@pytest.fixture
async def stack() -> AsyncIterator[DashStack]:
    async with dash_stack() as s:
        yield s
