"""WebSocket through the tunnel: the ingress passes the Upgrade, then becomes a raw pipe."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import InvalidStatus
from websockets.http11 import Request, Response

from ferrotunnel.http.h1 import parse_request_head

from .harness import (
    HOST,
    MiB,
    Origin,
    OriginRequest,
    OriginResponse,
    RawOrigin,
    Stack,
    http_tunnel,
    read_head,
    read_response,
    tunnel_stack,
    visitor,
)

pytestmark = pytest.mark.anyio

WS = "ws.localhost"


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


def refuse_some(ws: ServerConnection, request: Request) -> Response | None:
    if request.path == "/missing":
        return ws.respond(404, "no such socket\n")
    return None


@pytest.fixture
async def ws_stack() -> AsyncIterator[Stack]:
    async with (
        serve(echo, HOST, 0, max_size=4 * MiB, process_request=refuse_some) as server,
        tunnel_stack([http_tunnel(WS, server.sockets[0].getsockname()[1])]) as stack,
    ):
        yield stack


def ws_connect(stack: Stack, path: str = "/") -> connect:
    # the URI names the tunnel's host (so Host is right); host= and port= say where to dial
    return connect(
        f"ws://{WS}:{stack.port}{path}",
        host=HOST,
        port=stack.port,
        max_size=4 * MiB,
        open_timeout=10,
        close_timeout=5,
    )


async def test_text_and_binary_echo(ws_stack: Stack) -> None:
    async with ws_connect(ws_stack) as ws:
        for i in range(100):
            if i % 2:
                data = os.urandom(i * 7)
                await ws.send(data)
                assert await ws.recv() == data
            else:
                text = f"message {i} ✓ " * i
                await ws.send(text)
                assert await ws.recv() == text


async def test_pipelined_messages(ws_stack: Stack) -> None:
    async with ws_connect(ws_stack) as ws:
        sent = [f"m{i}" for i in range(100)]
        for message in sent:
            await ws.send(message)
        received = [await ws.recv() for _ in sent]
    assert received == sent


async def test_one_mebibyte_message(ws_stack: Stack) -> None:
    data = os.urandom(MiB)
    async with ws_connect(ws_stack) as ws:
        await ws.send(data)
        reply = await ws.recv()
    assert hashlib.sha256(reply).digest() == hashlib.sha256(data).digest()  # type: ignore[arg-type]


async def test_a_refused_upgrade_is_an_ordinary_response(ws_stack: Stack) -> None:
    with pytest.raises(InvalidStatus) as caught:
        async with ws_connect(ws_stack, "/missing"):
            pass
    assert caught.value.response.status_code == 404
    assert caught.value.response.body == b"no such socket\n"
    async with ws_connect(ws_stack) as ws:  # and the tunnel still upgrades others
        await ws.send("still here")
        assert await ws.recv() == "still here"


async def test_non_101_answer_keeps_the_connection_http() -> None:
    """An Upgrade request answered 404 by the origin leaves an HTTP connection behind:
    the next request on it is an ordinary exchange."""

    async def no_upgrades(request: OriginRequest) -> OriginResponse:
        if request.header("upgrade"):
            return OriginResponse(404, [], b"no websockets here")
        return OriginResponse(200, [], b"plain " + request.target.encode())

    async with (
        Origin(no_upgrades) as origin,
        tunnel_stack([http_tunnel(WS, origin.port)]) as st,
        visitor(st.port) as (reader, writer),
    ):
        writer.write(
            b"GET /chat HTTP/1.1\r\nHost: ws.localhost\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            b"GET /next HTTP/1.1\r\nHost: ws.localhost\r\n\r\n"
        )
        first = await read_response(reader)
        second = await read_response(reader)
    assert (first.status, first.body) == (404, b"no websockets here")
    assert (second.status, second.body) == (200, b"plain /next")


async def test_bytes_right_after_the_101_are_delivered() -> None:
    """The origin writes its 101 and a first frame in one go: both reach the visitor.

    (Regression: the bytes after the 101 head in the same read were dropped.)"""
    greeting = b"\x81\x05hello"  # an unmasked server text frame

    async def upgrade_and_greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = parse_request_head(await read_head(reader))
        key = head.get(b"sec-websocket-key")
        assert key is not None
        accept = base64.b64encode(
            hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n" + greeting
        )
        if await reader.read(65536):  # the visitor's (masked) close frame
            writer.write(b"\x88\x02\x03\xe8")  # close, 1000; then the server closes TCP

    async with (
        RawOrigin(upgrade_and_greet) as origin,
        tunnel_stack([http_tunnel(WS, origin.port)]) as stack,
        ws_connect(stack) as ws,
    ):
        assert await asyncio.wait_for(ws.recv(), 5) == "hello"
