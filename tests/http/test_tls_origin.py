"""An HTTPS origin behind an HTTP tunnel (``local_tls``): verified like any TLS client would,
and a verification failure is the visitor's 502, not a hang."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
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


@asynccontextmanager
async def grpc_tls_origin(ca: trustme.CA) -> AsyncIterator[int]:
    """A gRPC server over TLS (grpc-core: it refuses a TLS client that offers no ALPN
    ``h2``) answering ``tls:`` and the request."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc  # type: ignore[import-untyped]

    from .test_grpc import SERVICE

    cert = ca.issue_cert(HOST)
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    unary = grpc.unary_unary_rpc_method_handler(lambda request, _: b"tls:" + request)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Unary": unary}),)
    )
    key_and_chain = (cert.private_key_pem.bytes(), cert.cert_chain_pems[0].bytes())
    port = server.add_secure_port(f"{HOST}:0", grpc.ssl_server_credentials([key_and_chain]))
    server.start()
    try:
        yield port
    finally:
        await anyio.to_thread.run_sync(lambda: server.stop(grace=None).wait(5))


def h2_trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = trusting(ca)
    context.set_alpn_protocols(["h2"])
    return context


async def test_grpc_to_an_https_origin_offers_alpn_h2(ca: trustme.CA) -> None:
    """An h2c visitor's connection goes to the origin over TLS with ALPN ``h2``
    (``local_tls_http2``); HTTP/1.1 visitors of the same tunnel keep ``local_tls``."""
    from .test_grpc import AUTHORITY, SERVICE, channel

    async with grpc_tls_origin(ca) as port:
        tunnel = http_tunnel(
            AUTHORITY, port, local_tls=trusting(ca), local_tls_http2=h2_trusting(ca)
        )
        async with tunnel_stack([tunnel]) as stack:

            def call() -> bytes:
                with channel(stack) as ch:
                    return ch.unary_unary(f"/{SERVICE}/Unary")(b"hi", timeout=10)  # type: ignore[no-any-return]

            with anyio.fail_after(20):
                assert await anyio.to_thread.run_sync(call) == b"tls:hi"
    async with (
        Origin(name="tls", ssl_context=server_context(ca, HOST)) as origin,
        tunnel_stack(
            [http_tunnel(APP, origin.port, local_tls=trusting(ca), local_tls_http2=h2_trusting(ca))]
        ) as stack,
    ):
        assert (await fetch(stack.port)).json()["origin"] == "tls"
