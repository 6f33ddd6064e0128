"""Which origin a request reaches: its Host, then the longest matching path prefix —
under concurrent load from several clients, and per request on a kept-alive connection."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack

import anyio
import httpx
import pytest

from .harness import Origin, ResponseReader, Stack, http_tunnel, tunnel_stack, visitor

pytestmark = pytest.mark.anyio

APP = "app.localhost"


def client_for(stack: Stack, host: str, **kwargs: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=stack.url(),
        headers={"Host": host},
        timeout=15,
        trust_env=False,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_two_clients_four_hosts_under_concurrent_load() -> None:
    hosts = ["alpha.localhost", "beta.localhost", "gamma.localhost", "delta.example"]
    per_host = 50
    async with AsyncExitStack() as exits:
        origins = {h: await exits.enter_async_context(Origin(name=h)) for h in hosts}
        stack = await exits.enter_async_context(
            tunnel_stack(
                [http_tunnel(h, origins[h].port) for h in hosts[:2]],  # client 1
                [http_tunnel(h, origins[h].port) for h in hosts[2:]],  # client 2
            )
        )
        assert len(stack.clients) == 2
        results: dict[str, list[tuple[str, str]]] = {h: [] for h in hosts}
        limits = httpx.Limits(max_connections=per_host, max_keepalive_connections=per_host)

        async def one(client: httpx.AsyncClient, host: str, i: int) -> None:
            response = await client.post(f"/{host}/{i}", content=f"{host} {i}".encode())
            assert response.status_code == 200, response.text
            echo = response.json()
            results[host].append((echo["origin"], echo["target"]))

        clients = {
            h: await exits.enter_async_context(client_for(stack, h, limits=limits)) for h in hosts
        }
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(per_host):
                    for host in hosts:
                        tg.start_soon(one, clients[host], host, i)
    for host in hosts:
        assert sorted(results[host]) == sorted((host, f"/{host}/{i}") for i in range(per_host))
        assert len(origins[host].requests) == per_host
        assert all(r.header("host") == host for r in origins[host].requests)
        assert origins[host].connections > 1  # the requests really were concurrent


async def test_longest_path_prefix_wins() -> None:
    async with (
        Origin(name="root") as root,
        Origin(name="api") as api,
        Origin(name="v2") as v2,
        tunnel_stack(
            [
                http_tunnel(APP, root.port, name="root"),
                http_tunnel(APP, api.port, name="api", path="/api"),
                http_tunnel(APP, v2.port, name="v2", path="/api/v2/"),
            ]
        ) as stack,
        client_for(stack, APP) as client,
    ):
        expected = {
            "/": "root",
            "/index.html": "root",
            "/api": "api",
            "/api/": "api",
            "/api/users?id=1": "api",
            "/apix": "root",  # a prefix matches whole segments only
            "/api-docs": "root",
            "/api/v2": "v2",
            "/api/v2/things": "v2",
            "/api/v20": "api",
            "/API": "root",  # paths are case-sensitive
        }
        got = {}
        for path in expected:  # one kept-alive connection, routed request by request
            response = await client.get(path)
            echo = response.json()
            assert echo["target"] == path  # the origin sees the path unchanged
            got[path] = echo["origin"]
    assert got == expected
    assert root.connections >= 1
    assert api.connections >= 1
    assert v2.connections >= 1


async def test_a_prefix_on_another_host_does_not_match() -> None:
    async with (
        Origin(name="api") as api,
        tunnel_stack([http_tunnel(APP, api.port, name="api", path="/api")]) as stack,
        client_for(stack, APP) as client,
    ):
        assert (await client.get("/api/x")).json()["origin"] == "api"
        outside = await client.get("/elsewhere")
        assert outside.status_code == 404
        assert APP in outside.text
        # the host is served, under another path: the page says which, not "no tunnel"
        assert "serve the path prefixes /api" in outside.text
        assert "Start a client" not in outside.text
        other = await client.get("/api/x", headers={"Host": "other.localhost"})
        assert other.status_code == 404


async def test_host_matching_ignores_case_port_and_trailing_dot() -> None:
    async with (
        Origin(name="app") as app,
        tunnel_stack([http_tunnel(APP, app.port)]) as stack,
    ):
        for host in ["APP.localhost", "app.localhost:8080", "app.localhost.", "App.LocalHost.:1"]:
            async with client_for(stack, host) as client:
                response = await client.get("/")
            assert response.status_code == 200, host
            assert response.json()["origin"] == "app"
            assert dict(response.json()["headers"])["host"] == host  # forwarded as sent


async def test_pipelined_requests_with_bodies_across_hosts() -> None:
    """Three requests in one write — a sized body, a chunked body, none — for two hosts:
    each body is delimited exactly and each request reaches its own host's origin."""
    pipelined = (
        b"POST /a HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 5\r\n\r\nhello"
        b"POST /b HTTP/1.1\r\nHost: other.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n"
        b"GET /c HTTP/1.1\r\nHost: app.localhost\r\n\r\n"
    )
    async with (
        Origin(name="app") as app,
        Origin(name="other") as other,
        tunnel_stack(
            [http_tunnel(APP, app.port), http_tunnel("other.localhost", other.port)]
        ) as st,
        visitor(st.port) as (reader, writer),
    ):
        writer.write(pipelined)
        responses = ResponseReader(reader)
        echoes = [json.loads((await responses.next()).body) for _ in range(3)]
    assert [(e["origin"], e["target"], e["body_len"]) for e in echoes] == [
        ("app", "/a", 5),
        ("other", "/b", 7),
        ("app", "/c", 0),
    ]
    assert other.requests[0].body == b"abcdefg"


async def test_the_404_page_names_the_tunnel_id_a_user_would_give() -> None:
    """With ``domain``, a tunnel named ``shop`` serves ``shop.<domain>``: the page for an
    unserved ``shop.<domain>`` suggests ``--tunnel-id shop``; a host outside the domain is
    suggested as it is."""
    async with (
        Origin(name="app") as app,
        tunnel_stack([http_tunnel("app", app.port)], domain="tunnel.test") as stack,
        client_for(stack, "shop.tunnel.test") as client,
    ):
        inside = await client.get("/")
        outside = await client.get("/", headers={"Host": "api.example.com"})
        served = await client.get("/", headers={"Host": "app.tunnel.test"})
    assert inside.status_code == outside.status_code == 404
    assert "--tunnel-id shop --local-addr" in inside.text
    assert "--tunnel-id api.example.com --local-addr" in outside.text
    assert served.status_code == 200
