"""The server's admin view: sessions, tunnels, visitors, closing a session — behind the token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import httpx
import pytest
from anyio.abc import SocketStream

from ferrotunnel.core import Address, Client, ClientStatus, Server, Tunnel, TunnelKind
from ferrotunnel.core.testing import plugin_host
from ferrotunnel.http import HttpIngress, HttpIngressConfig
from ferrotunnel.observability.admin import AdminState
from ferrotunnel.observability.dashboard import Dashboard

from ..http.harness import HOST, TOKEN, Origin, http_tunnel, wait_until

pytestmark = pytest.mark.anyio

APP = "app.localhost"


@dataclass
class AdminStack:
    server: Server
    client: Client
    state: AdminState
    api: httpx.AsyncClient  # authorized
    anonymous: httpx.AsyncClient
    http_port: int
    tcp: tuple[str, int]


async def _echo(sock: SocketStream) -> None:
    async with sock:
        async for chunk in sock:
            await sock.send(chunk)


@asynccontextmanager
async def admin_stack() -> AsyncIterator[AdminStack]:
    plugin = Dashboard()
    host = plugin_host(plugin, config={"dashboard": {"admin": True, "admin_port": 0}})
    assert host.config is not None
    ingress = HttpIngress(
        HttpIngressConfig(bind=Address(HOST, 0)), middlewares=host.http_middlewares(host.config)
    )
    listener = await anyio.create_tcp_listener(local_host=HOST, local_port=0)
    echo_port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with (
        listener,
        anyio.create_task_group() as tg,
        Origin() as origin,
        Server(
            token=TOKEN,
            bind=f"{HOST}:0",
            tcp_bind=f"{HOST}:0",
            ingresses=[ingress],
            tcp_middlewares=host.tcp_middlewares(host.config),
            plugins=host,
            drain_timeout=0.25,
        ) as server,
    ):
        tg.start_soon(listener.serve, _echo)
        found = plugin.admin(server)
        assert found is not None
        state, url = found
        tunnels = [
            http_tunnel(APP, origin.port),
            Tunnel("db", Address(HOST, echo_port), TunnelKind.TCP),
        ]
        async with (
            Client(
                server_addr=str(server.control_address),
                token=TOKEN,
                tunnels=tunnels,
                reconnect=False,
                drain_timeout=0.25,
            ) as client,
            httpx.AsyncClient(
                base_url=url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=10
            ) as api,
            httpx.AsyncClient(base_url=url, timeout=10) as anonymous,
        ):
            assert ingress.address is not None
            tcp = server.tcp_address
            assert tcp is not None
            yield AdminStack(
                server, client, state, api, anonymous, ingress.address.port, (tcp.host, tcp.port)
            )
            for conn in list(ingress.connections):
                conn._close()
        tg.cancel_scope.cancel()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_sessions_tunnels_and_visitors() -> None:
    async with admin_stack() as stack:
        sessions = (await stack.api.get("/api/v1/sessions")).json()["sessions"]
        assert len(sessions) == 1
        session = sessions[0]
        assert session["id"] == stack.client.session.session_id  # type: ignore[union-attr]
        assert session["identity"] == "token"
        assert session["peer"].startswith("127.0.0.1:")
        assert sorted(t["name"] for t in session["tunnels"]) == [APP, "db"]

        tunnels = (await stack.api.get("/api/v1/tunnels")).json()["tunnels"]
        assert sorted((t["name"], t["kind"]) for t in tunnels) == [(APP, "http"), ("db", "tcp")]
        assert all(t["session"] == session["id"] for t in tunnels)

        async with httpx.AsyncClient(headers={"host": APP}) as visitor:
            response = await visitor.get(f"http://{HOST}:{stack.http_port}/seen")
            assert response.status_code == 200
        async with await anyio.connect_tcp(*stack.tcp) as sock:
            await sock.send(b"ping")
            assert await sock.receive() == b"ping"
        with anyio.fail_after(5):
            while True:
                visitors = (await stack.api.get("/api/v1/visitors")).json()["visitors"]
                if visitors and visitors[0]["requests"] and visitors[0]["connections"]:
                    break
                await anyio.sleep(0.02)
        (visitor_row,) = visitors
        assert visitor_row["ip"] == "127.0.0.1"
        assert visitor_row["tunnels"] == [APP, "db"]
        assert (visitor_row["requests"], visitor_row["connections"]) == (1, 1)
        assert visitor_row["last_status"] == 200


async def test_closing_a_session_disconnects_its_client() -> None:
    async with admin_stack() as stack:
        session_id = stack.client.session.session_id  # type: ignore[union-attr]
        response = await stack.api.delete(f"/api/v1/sessions/{session_id}")
        assert response.status_code == 202
        assert response.json() == {"closing": session_id}
        await wait_until(lambda: stack.client.status is ClientStatus.CLOSED, what="closed")
        await wait_until(lambda: not stack.state.sessions, what="the session forgotten")
        assert (await stack.api.get("/api/v1/sessions")).json()["sessions"] == []
        response = await stack.api.delete(f"/api/v1/sessions/{session_id}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize("path", ["/api/v1/sessions", "/api/v1/tunnels", "/api/v1/visitors"])
async def test_every_admin_route_needs_the_token(path: str) -> None:
    async with admin_stack() as stack:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            response = await stack.anonymous.get(path, headers=headers)
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["error"]["code"] == "UNAUTHORIZED"
        response = await stack.anonymous.delete("/api/v1/sessions/x")
        assert response.status_code == 401


async def test_admin_page_health_and_host_check() -> None:
    async with admin_stack() as stack:
        assert (await stack.anonymous.get("/api/v1/health")).json()["status"] == "ok"
        page = await stack.anonymous.get("/")
        assert 'src="/static/admin.js"' in page.text
        assert (await stack.anonymous.get("/static/admin.js")).status_code == 200
        foreign = await stack.api.get("/api/v1/sessions", headers={"host": "evil.example"})
        assert foreign.status_code == 400
        assert foreign.json()["error"]["code"] == "INVALID_HOST"
        missing = await stack.api.get("/api/v1/nothing")
        assert missing.json()["error"]["code"] == "NOT_FOUND"


async def test_the_admin_view_is_off_by_default_and_needs_a_token() -> None:
    plugin = Dashboard()
    host = plugin_host(plugin)
    assert host.config is not None
    assert host.http_middlewares(host.config) == []  # nothing on the request path
    assert host.tcp_middlewares(host.config) == []
    async with Server(token=TOKEN, bind=f"{HOST}:0", plugins=host) as server:
        assert plugin.admin(server) is None
    on = Dashboard()
    host = plugin_host(on, config={"dashboard": {"admin": True, "admin_port": 0}})
    async with Server(bind=f"{HOST}:0", plugins=host, authenticators=[_Nobody()]) as tokenless:
        assert on.admin(tokenless) is None  # token-less: nothing to guard the view with


class _Nobody:
    async def authenticate(self, hello: object, peer: object) -> None:
        return None
