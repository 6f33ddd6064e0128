"""Bodies stream: big ones in constant memory, events as the origin produces them, uploads
with ``Expect: 100-continue``, and uploads that take longer than the response timeout."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import httpx
import pytest

from .harness import (
    CURL,
    MiB,
    Origin,
    OriginRequest,
    OriginResponse,
    RawOrigin,
    ResponseReader,
    RssWatch,
    content_length,
    curl,
    curl_resolve,
    http_tunnel,
    read_head,
    read_response,
    request_bytes,
    tunnel_stack,
    visitor,
)

pytestmark = pytest.mark.anyio

APP = "app.localhost"
GiB = 1 << 30
_BLOCK = os.urandom(MiB)


def block(i: int) -> bytes:
    """The i-th MiB of a big body: distinct blocks, so reordering or loss changes the hash."""
    return struct.pack(">Q", i) + _BLOCK[8:]


def expected_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for i in range(size // MiB):
        digest.update(block(i))
    return digest.hexdigest()


# ---------------------------------------------------------------------------- constant memory


async def hashing_sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Origin: read a Content-Length request body, answer its size and sha256."""
    head = await read_head(reader)
    remaining = content_length(head)
    digest = hashlib.sha256()
    received = 0
    while remaining:
        chunk = await reader.read(min(remaining, 1 << 18))
        if not chunk:
            break
        digest.update(chunk)
        received += len(chunk)
        remaining -= len(chunk)
    body = json.dumps({"received": received, "sha256": digest.hexdigest()}).encode()
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()


def chunked_source(
    size: int,
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """Origin: answer any request with ``size`` bytes of :func:`block`s, chunked."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(size // MiB):
            writer.write(b"%x\r\n" % MiB)
            writer.write(block(i))
            writer.write(b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()  # until the visitor is done

    return serve


async def upload(size: int, limit: int) -> None:
    async with (
        RawOrigin(hashing_sink) as origin,
        tunnel_stack([http_tunnel(APP, origin.port)]) as st,
        visitor(st.port) as (reader, writer),
    ):
        watch = RssWatch()
        writer.write(request_bytes("POST", "/upload", APP, f"Content-Length: {size}"))
        digest = hashlib.sha256()
        for i in range(size // MiB):
            data = block(i)
            digest.update(data)
            writer.write(data)
            await writer.drain()
            watch.sample()
        response = await read_response(reader, within=60)
    assert response.status == 200
    assert json.loads(response.body) == {"received": size, "sha256": digest.hexdigest()}
    assert watch.growth < limit, f"RSS grew by {watch.growth / MiB:.0f} MiB"


async def download(size: int, limit: int) -> None:
    async with (
        RawOrigin(chunked_source(size)) as origin,
        tunnel_stack([http_tunnel(APP, origin.port)]) as st,
        visitor(st.port) as (reader, writer),
    ):
        watch = RssWatch()
        writer.write(request_bytes("GET", "/big", APP))
        head = await read_head(reader)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        # the raw chunked body: MiB chunks, framing included, as the origin wrote it
        digest = hashlib.sha256()
        received = 0
        for _ in range(size // MiB):
            assert await reader.readuntil(b"\r\n") == b"%x\r\n" % MiB
            data = await reader.readexactly(MiB)
            assert await reader.readexactly(2) == b"\r\n"
            digest.update(data)
            received += len(data)
            watch.sample()
        assert await reader.readexactly(5) == b"0\r\n\r\n"
    assert received == size
    assert digest.hexdigest() == expected_sha256(size)
    assert watch.growth < limit, f"RSS grew by {watch.growth / MiB:.0f} MiB"


async def test_upload_64_mib_in_bounded_memory() -> None:
    await upload(64 * MiB, limit=32 * MiB)


async def test_download_64_mib_in_bounded_memory() -> None:
    await download(64 * MiB, limit=32 * MiB)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_upload_1_gib_in_constant_memory() -> None:
    await upload(GiB, limit=200 * MiB)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_download_1_gib_in_constant_memory() -> None:
    await download(GiB, limit=200 * MiB)


# ---------------------------------------------------------------------------- no buffering


async def test_server_sent_events_arrive_as_produced() -> None:
    """The second event is produced only after the visitor has the first."""
    visitor_has_first = asyncio.Event()
    produced: list[str] = []

    async def events(request: OriginRequest) -> OriginResponse:
        async def stream() -> AsyncIterator[bytes]:
            produced.append("one")
            yield b"event: tick\ndata: one\n\n"
            await visitor_has_first.wait()
            produced.append("two")
            yield b"event: tick\ndata: two\n\n"

        return OriginResponse(200, [("content-type", "text/event-stream")], stream())

    async with (
        Origin(events) as origin,
        tunnel_stack([http_tunnel(APP, origin.port)]) as stack,
        httpx.AsyncClient(base_url=stack.url(), headers={"Host": APP}, timeout=10) as client,
        client.stream("GET", "/events") as response,
    ):
        assert response.headers["content-type"] == "text/event-stream"
        lines = response.aiter_lines()
        with anyio.fail_after(5):
            first = [await anext(lines) for _ in range(3)]
        assert first == ["event: tick", "data: one", ""]
        assert produced == ["one"]
        visitor_has_first.set()
        with anyio.fail_after(5):
            second = [await anext(lines) for _ in range(3)]
        assert second == ["event: tick", "data: two", ""]


async def test_a_response_delimited_by_close_streams_too() -> None:
    """No Content-Length, no chunking: the body ends when the origin closes, and each part
    is delivered when written (long-poll style), not when the connection ends."""
    visitor_has_first = asyncio.Event()

    async def long_poll(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst;")
        await visitor_has_first.wait()
        writer.write(b"second;")
        await writer.drain()

    async with (
        RawOrigin(long_poll) as origin,
        tunnel_stack([http_tunnel(APP, origin.port)]) as st,
        visitor(st.port) as (reader, writer),
    ):
        writer.write(request_bytes("GET", "/poll", APP))
        with anyio.fail_after(5):
            head = await read_head(reader)
            assert b"200 OK" in head
            assert await reader.readexactly(6) == b"first;"
        visitor_has_first.set()
        with anyio.fail_after(5):
            assert await reader.read() == b"second;"  # then EOF: the visitor connection closes


# ---------------------------------------------------------------------------- Expect: 100-continue


@pytest.mark.skipif(not CURL.exists(), reason="curl is not installed")
async def test_curl_expect_100_continue(tmp_path: Path) -> None:
    body = os.urandom(3 * MiB)
    path = tmp_path / "body"
    path.write_bytes(body)
    async with Origin(name="app") as origin, tunnel_stack([http_tunnel(APP, origin.port)]) as st:
        result = await curl(
            "-v",
            *curl_resolve(APP, st.port),
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "15",
            "--data-binary",
            f"@{path}",
            f"http://{APP}:{st.port}/upload",
        )
        # the session survived: another request goes through
        after = await curl(*curl_resolve(APP, st.port), f"http://{APP}:{st.port}/after")
    assert result.returncode == 0, result.stderr
    assert b"< HTTP/1.1 100" in result.stderr  # curl saw the origin's 100 Continue...
    echo = json.loads(result.stdout)  # ...and then the final response
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert origin.requests[0].header("expect") == "100-continue"
    assert json.loads(after.stdout)["target"] == "/after"


async def test_informational_and_final_head_in_one_read() -> None:
    async def hints(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_head(reader)
            writer.write(
                b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            )

    async with (
        RawOrigin(hints) as origin,
        tunnel_stack([http_tunnel(APP, origin.port)]) as st,
        visitor(st.port) as (reader, writer),
    ):
        responses = ResponseReader(reader)
        for _ in range(3):
            writer.write(request_bytes("GET", "/", APP))
            response = await responses.next()
            assert (response.status, response.body) == (200, b"ok")
    assert responses.informational == [103, 103, 103]


# ---------------------------------------------------------------------------- uploads and timeouts


async def test_a_slow_upload_is_not_a_slow_origin() -> None:
    """The response timeout starts when the request has been forwarded: an upload that
    takes longer than it (but keeps moving) still gets the origin's answer."""
    async with (
        Origin(name="app") as origin,
        tunnel_stack([http_tunnel(APP, origin.port)], response_timeout=0.5) as stack,
        visitor(stack.port) as (reader, writer),
    ):
        writer.write(request_bytes("POST", "/slow", APP, "Content-Length: 12"))
        for i in range(12):  # 12 times 0.1 s: more than twice the response timeout
            writer.write(b"%x" % i)
            await writer.drain()
            await anyio.sleep(0.1)
        response = await read_response(reader)
    assert response.status == 200
    assert json.loads(response.body)["body_len"] == 12


async def test_a_stalled_upload_times_out() -> None:
    """An upload that stops moving (here: the visitor stops) ends in a 504 after the
    response timeout rather than hanging."""
    async with (
        Origin(name="app") as origin,
        tunnel_stack([http_tunnel(APP, origin.port)], response_timeout=0.5) as stack,
        visitor(stack.port) as (reader, writer),
    ):
        writer.write(request_bytes("POST", "/stalled", APP, "Content-Length: 100") + b"partial")
        with anyio.fail_after(5):
            response = await read_response(reader)
    assert response.status == 504
