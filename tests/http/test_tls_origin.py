"""An HTTPS origin behind an HTTP tunnel (``local_tls``): verified like any TLS client would,
and a verification failure is the visitor's 502, not a hang."""

from __future__ import annotations

import ssl

import httpx
import pytest
import trustme

from .harness import HOST, Origin, http_tunnel, tunnel_stack, wait_until

pytestmark = pytest.mark.anyio

APP = "secure.localhost"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def fetch(port: int) -> httpx.Response:
    async with httpx.AsyncClient(
        base_url=f"http://{HOST}:{port}", headers={"Host": APP}, timeout=10, trust_env=False
    ) as client:
        return await client.get("/over-tls")


async def test_https_origin_trusted(ca: trustme.CA) -> None:
    async with (
        Origin(name="tls", ssl_context=server_context(ca, HOST)) as origin,
        tunnel_stack([http_tunnel(APP, origin.port, local_tls=trusting(ca))]) as stack,
    ):
        response = await fetch(stack.port)
    assert response.status_code == 200
    assert response.json()["origin"] == "tls"
    assert response.json()["target"] == "/over-tls"


async def test_https_origin_untrusted_is_a_502(ca: trustme.CA) -> None:
    untrusting = ssl.create_default_context()  # the system's roots: not our test CA
    async with (
        Origin(name="tls", ssl_context=server_context(ca, HOST)) as origin,
        tunnel_stack([http_tunnel(APP, origin.port, local_tls=untrusting)]) as stack,
    ):
        response = await fetch(stack.port)
    assert response.status_code == 502
    assert origin.requests == []


async def test_https_origin_with_the_wrong_name_is_a_502(ca: trustme.CA) -> None:
    """A certificate the CA issued, but for another name than the address dialled."""
    async with (
        Origin(name="tls", ssl_context=server_context(ca, "elsewhere.example")) as origin,
        tunnel_stack([http_tunnel(APP, origin.port, local_tls=trusting(ca))]) as stack,
    ):
        response = await fetch(stack.port)
    assert response.status_code == 502
    assert origin.requests == []


async def test_plain_http_to_an_https_origin_is_a_502(ca: trustme.CA) -> None:
    async with (
        Origin(name="tls", ssl_context=server_context(ca, HOST)) as origin,
        tunnel_stack([http_tunnel(APP, origin.port)], response_timeout=5) as stack,
    ):
        response = await fetch(stack.port)
    assert response.status_code == 502


@pytest.mark.parametrize("tls", [pytest.param(False, id="plain"), pytest.param(True, id="tls")])
async def test_origin_connections_are_pooled_across_visitors(ca: trustme.CA, tls: bool) -> None:
    """A visitor's connection ends; its origin connection stays in the client's pool, the next
    visitor's request reuses it, and the client's shutdown closes it."""
    async with Origin(name="o", ssl_context=server_context(ca, HOST) if tls else None) as origin:
        async with tunnel_stack(
            [http_tunnel(APP, origin.port, local_tls=trusting(ca) if tls else None)]
        ) as stack:
            for _ in range(3):
                assert (await fetch(stack.port)).status_code == 200  # closes its connection
            await wait_until(
                lambda: len(stack.clients[0].origin_pool) == 1, within=1, what="a pooled origin"
            )
            assert origin.connections == 1
        await wait_until(lambda: not origin._tasks, within=1, what="the origin connection to end")
