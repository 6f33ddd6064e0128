"""The client's pool of idle origin connections (HTTP tunnels).

A stream released by the ingress between exchanges leaves its origin connection in the
client's pool for the next visitor; a connection the origin will close (or has closed) must
never be reused.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx
import pytest

from .harness import HOST, http_tunnel, tunnel_stack, wait_until

APP = "pool.localhost"

pytestmark = pytest.mark.anyio


class CountingOrigin:
    """Answers every request with 200 on a kept-alive connection; counts connections, and
    closes each connection after ``close_after`` responses if set."""

    def __init__(self, close_after: int | None = None) -> None:
        self.close_after = close_after
        self.connections = 0
        self.open = 0
        self.port = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        answered = 0
        try:
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
                answered += 1
                if self.close_after is not None and answered >= self.close_after:
                    return
        finally:
            self.open -= 1
            writer.close()


@asynccontextmanager
async def origin(close_after: int | None = None) -> AsyncIterator[CountingOrigin]:
    counting = CountingOrigin(close_after)
    server = await asyncio.start_server(counting.serve, HOST, 0)
    counting.port = server.sockets[0].getsockname()[1]
    try:
        yield counting
    finally:
        server.close()


async def get(port: int, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(
        base_url=f"http://{HOST}:{port}", timeout=10, trust_env=False
    ) as client:
        return await client.get("/", headers={"Host": APP, **headers})


async def test_visitors_share_one_origin_connection() -> None:
    async with origin() as app, tunnel_stack([http_tunnel(APP, app.port)]) as stack:
        for _ in range(5):
            assert (await get(stack.port)).text == "ok"
        assert app.connections == 1


async def test_a_connection_close_request_is_not_pooled() -> None:
    async with origin() as app, tunnel_stack([http_tunnel(APP, app.port)]) as stack:
        assert (await get(stack.port, Connection="close")).text == "ok"
        await anyio.sleep(0.05)
        assert len(stack.clients[0].origin_pool) == 0
        assert (await get(stack.port)).text == "ok"
        assert app.connections == 2


async def test_an_origin_that_closes_idle_connections_is_not_reused() -> None:
    async with origin(close_after=1) as app, tunnel_stack([http_tunnel(APP, app.port)]) as stack:
        for _ in range(3):
            assert (await get(stack.port)).text == "ok"
            await wait_until(lambda: app.open == 0, within=2, what="the origin to close")
        pool = stack.clients[0].origin_pool
        await wait_until(lambda: len(pool) == 0, within=2, what="the pool to drop it")
        assert app.connections == 3


class BothOrigin(CountingOrigin):
    """HTTP/1.1 on kept-alive connections, and HTTP/2 with prior knowledge on a connection
    that opens with the preface (RFC 9113, 3.3): a preface later on one that served HTTP/1.1
    is a request line no HTTP/1.1 server takes (answered 505 here)."""

    def __init__(self) -> None:
        super().__init__()
        self.http2 = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from ferrotunnel.core.h2wire import PREFACE

        self.connections += 1
        try:
            first = True
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if head.startswith(PREFACE[:18]):
                    if not first:
                        writer.write(b"HTTP/1.1 505 HTTP Version Not Supported\r\n\r\n")
                        return
                    self.http2 += 1
                    await serve_h2(reader, writer, PREFACE[18:])
                    return
                first = False
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        finally:
            writer.close()


async def serve_h2(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rest: bytes) -> None:
    """Answers each request of an HTTP/2 connection ``200 h2`` (``rest``: the preface's
    tail, still to be read)."""
    import h2.config
    import h2.connection
    import h2.events

    await reader.readexactly(len(rest))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    conn.receive_data(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    writer.write(conn.data_to_send())
    while data := await reader.read(65536):
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.StreamEnded):
                conn.send_headers(event.stream_id, [(":status", "200"), ("content-length", "2")])
                conn.send_data(event.stream_id, b"h2", end_stream=True)
        writer.write(conn.data_to_send())
        await writer.drain()


async def test_an_http2_connection_never_takes_a_pooled_http1_connection() -> None:
    """An h2c visitor's bytes open an HTTP/2 connection: on a pooled origin connection that
    served HTTP/1.1 they would be a request line, not a preface."""
    app = BothOrigin()
    server = await asyncio.start_server(app.serve, HOST, 0)
    app.port = server.sockets[0].getsockname()[1]
    try:
        async with tunnel_stack([http_tunnel(APP, app.port)]) as stack:
            assert (await get(stack.port)).text == "ok"
            pool = stack.clients[0].origin_pool
            await wait_until(lambda: len(pool) == 1, within=2, what="a pooled connection")
            async with httpx.AsyncClient(
                base_url=f"http://{HOST}:{stack.port}", http1=False, http2=True, timeout=10
            ) as h2_client:
                response = await h2_client.get("/", headers={"Host": APP})
            assert (response.http_version, response.text) == ("HTTP/2", "h2")
            assert app.http2 == 1
            assert (await get(stack.port)).text == "ok"  # the pooled one, still there
            assert app.connections == 2
    finally:
        server.close()
