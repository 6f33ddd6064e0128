"""Data integrity through a real tunnel: bulk and many-stream echo, half-close, resets."""

from __future__ import annotations

import hashlib
import os
import random

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream

from ferrotunnel.core import SessionConfig, Stream, StreamAttribute

from .helpers import (
    connect,
    echo_server,
    raise_nofile_limit,
    read_until_error,
    receive_all,
    roundtrip,
    set_reset_on_close,
    tcp_service,
    tunnel,
    wait_for,
)

pytestmark = pytest.mark.anyio

MiB = 1 << 20


CONFIGS = {
    "defaults": SessionConfig(handshake_timeout=5),
    # small windows and frames: credit runs out and is returned constantly
    "small-window": SessionConfig(window=32 << 10, max_frame=4 << 10, handshake_timeout=5),
    # a tiny connection write buffer: the session is write-paused again and again (spliced
    # sockets stop reading, Stream.send waits) while windows allow MiBs in flight
    "write-paused": SessionConfig(
        max_frame=16 << 10, write_high_water=16 << 10, handshake_timeout=5
    ),
}


@pytest.mark.parametrize("config", list(CONFIGS))
async def test_eight_concurrent_streams_of_2mib_echo_intact(config: str) -> None:
    """8 visitors at once, each 2 MiB of random bytes: every byte comes back, in order."""
    payloads = [os.urandom(2 * MiB) for _ in range(8)]
    results: dict[int, bytes] = {}
    async with echo_server() as echo_port, tunnel(echo_port, session=CONFIGS[config]) as t:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:

                async def visit(i: int) -> None:
                    results[i] = await roundtrip(t.port, payloads[i])

                for i in range(8):
                    tg.start_soon(visit, i)
    for i, payload in enumerate(payloads):
        assert len(results[i]) == len(payload)
        assert results[i] == payload, f"stream {i} corrupted"


@pytest.fixture
def many_fds() -> None:
    # in-process, each stream costs 4 fds: visitor, server side, client side, echo side
    raise_nofile_limit(4 * 1000 + 512)


@pytest.mark.usefixtures("many_fds")
async def test_thousand_concurrent_streams_on_one_session() -> None:
    """1,000 visitors at once on one session — all 1,000 streams open together — each with
    its own payload: all echoed intact, no cross-talk between streams, in bounded time."""
    count = 1000
    payloads = [f"stream {i}: ".encode() + os.urandom(64 + i % 512) for i in range(count)]
    results: dict[int, bytes] = {}
    connected = 0
    all_connected = anyio.Event()
    release = anyio.Event()
    async with echo_server() as echo_port, tunnel(echo_port) as t:
        session = t.client.session

        async def visit(i: int) -> None:
            nonlocal connected
            async with await connect(t.port) as sock:
                connected += 1
                if connected == count:
                    all_connected.set()
                await release.wait()  # all streams are open at the same time
                await sock.send(payloads[i])
                await sock.send_eof()
                results[i] = await receive_all(sock, len(payloads[i]))

        with anyio.fail_after(40):
            async with anyio.create_task_group() as tg:
                for i in range(count):
                    tg.start_soon(visit, i)
                await all_connected.wait()
                # every stream is open in the session at once before any data moves
                assert session is not None
                await wait_for(lambda: len(session.streams) == count, seconds=20)
                release.set()
        assert t.client.session is session, "the session must survive the load"
        assert t.client.reconnects == 0
    assert len(results) == count
    for i in range(count):
        assert results[i] == payloads[i], f"stream {i} got someone else's bytes"


async def test_visitor_half_close_still_gets_reply() -> None:
    """The visitor sends a request then shuts down its write side (FIN); the tunnel carries
    the EOF to the origin, and the origin's reply — sent after it saw EOF — still arrives."""
    request = os.urandom(300_000)
    saw_eof = anyio.Event()

    async def digest_service(sock: SocketStream) -> None:
        async with sock:
            h = hashlib.sha256()
            async for chunk in sock:  # until the visitor's FIN
                h.update(chunk)
            saw_eof.set()
            await sock.send(b"digest:" + h.hexdigest().encode())
            await sock.send_eof()

    async with tcp_service(digest_service) as port, tunnel(port) as t:
        with anyio.fail_after(10):
            async with await connect(t.port) as sock:
                await sock.send(request)
                await sock.send_eof()
                reply = await receive_all(sock)
    assert saw_eof.is_set()
    assert reply == b"digest:" + hashlib.sha256(request).hexdigest().encode()


async def test_origin_half_close_first_visitor_keeps_sending() -> None:
    """The origin sends a banner and half-closes first; the visitor reads the banner and EOF,
    then keeps sending: every byte it sends after that still reaches the origin."""
    upload = os.urandom(1 * MiB)
    received = anyio.Event()
    got: list[bytes] = []

    async def banner_then_sink(sock: SocketStream) -> None:
        async with sock:
            await sock.send(b"banner")
            await sock.send_eof()  # origin -> visitor direction is over
            got.append(await receive_all(sock))
            received.set()

    async with tcp_service(banner_then_sink) as port, tunnel(port) as t:
        with anyio.fail_after(10):
            async with await connect(t.port) as sock:
                assert await receive_all(sock) == b"banner"  # banner, then EOF
                for offset in range(0, len(upload), 64 << 10):
                    await sock.send(upload[offset : offset + (64 << 10)])
                await sock.send_eof()
                await received.wait()
                # both directions ended: the tunnel closes the visitor's connection
                with pytest.raises(anyio.EndOfStream):
                    await sock.receive()
    assert got == [upload]


async def test_origin_reset_reaches_visitor_promptly(anyio_backend_name: str) -> None:
    """The origin aborts its connection with RST (SO_LINGER 0): the visitor's connection is
    torn down promptly. The asyncio splice relays a real RST; the portable relay (trio)
    may end the visitor's connection with a FIN instead."""
    got_request = anyio.Event()

    async def resetting_service(sock: SocketStream) -> None:
        await sock.receive()
        set_reset_on_close(sock)
        await sock.aclose()
        got_request.set()

    # on asyncio a FIN (EndOfStream) fails the test: only a RST passes
    expected: tuple[type[Exception], ...] = (anyio.BrokenResourceError,)
    if anyio_backend_name != "asyncio":
        expected += (anyio.EndOfStream,)
    async with (
        tcp_service(resetting_service) as port,
        tunnel(port) as t,
        await connect(t.port) as sock,
    ):
        await sock.send(b"hello")
        with anyio.fail_after(5):
            await got_request.wait()
            with pytest.raises(expected):
                await read_until_error(sock)
        # the tunnel itself is unharmed
        assert t.client.session is not None
        assert not t.client.session.closed
        await wait_for(lambda: t.client.session is not None and not t.client.session.streams)


async def test_unreachable_local_service_ends_visitor_connection() -> None:
    """A tunnel whose local service refuses connections: each visitor is disconnected at
    once (the client resets the stream), and the session stays up for the next one."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    dead_port = listener.extra(SocketAttribute.local_port)
    await listener.aclose()  # nothing listens there any more
    async with tunnel(dead_port) as t:
        for _ in range(3):
            with anyio.fail_after(5):
                async with await connect(t.port) as sock:
                    with pytest.raises((anyio.BrokenResourceError, anyio.EndOfStream)):
                        await read_until_error(sock)
        assert t.client.session is not None
        assert not t.client.session.closed
        assert t.client.reconnects == 0


async def test_handler_tunnel_sees_visitor_and_tunnel_attributes() -> None:
    """A handler tunnel gets a Stream carrying the tunnel name and the visitor's address."""
    seen: list[Stream] = []

    async def handler(stream: Stream) -> None:
        seen.append(stream)
        payload = await stream.receive()
        await stream.send(payload.upper())
        await stream.send_eof()

    async with tunnel(handler=handler, tunnel_id="attrs") as t:
        with anyio.fail_after(5):
            async with await connect(t.port) as sock:
                visitor = sock.extra(SocketAttribute.local_address)
                await sock.send(b"shout")
                assert await receive_all(sock) == b"SHOUT"
    (stream,) = seen
    assert stream.extra(StreamAttribute.tunnel) == "attrs"
    assert stream.extra(StreamAttribute.visitor_address) == (visitor[0], visitor[1])
    assert stream.extra(StreamAttribute.stream_id) % 2 == 0  # opened by the server


async def test_handler_failure_resets_the_stream() -> None:
    """A handler that raises resets its stream: the visitor is disconnected, the session
    survives."""

    async def handler(stream: Stream) -> None:
        await stream.receive()
        raise RuntimeError("handler bug")

    async with tunnel(handler=handler) as t:
        for _ in range(2):
            with anyio.fail_after(5):
                async with await connect(t.port) as sock:
                    await sock.send(b"x")
                    with pytest.raises((anyio.BrokenResourceError, anyio.EndOfStream)):
                        await sock.receive()
        assert t.client.session is not None
        assert not t.client.session.closed


async def test_random_chunking_is_preserved_across_streams() -> None:
    """Many streams writing randomly sized chunks with interleaving: each one's byte
    sequence arrives exactly, whatever the framing."""
    rng = random.Random(1234)
    payloads = [rng.randbytes(rng.randrange(1, 400_000)) for _ in range(12)]
    results: dict[int, bytes] = {}

    async with echo_server() as echo_port, tunnel(echo_port) as t:

        async def visit(i: int) -> None:
            data = payloads[i]
            chunk_rng = random.Random(i)
            async with await connect(t.port) as sock, anyio.create_task_group() as tg:

                async def write() -> None:
                    offset = 0
                    while offset < len(data):
                        size = chunk_rng.choice((1, 7, 100, 4096, 65536, 300_000))
                        await sock.send(data[offset : offset + size])
                        offset += size
                    await sock.send_eof()

                tg.start_soon(write)
                results[i] = await receive_all(sock, len(data))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(len(payloads)):
                    tg.start_soon(visit, i)
    assert all(results[i] == payloads[i] for i in range(len(payloads)))


async def test_visitor_reset_reaches_origin(anyio_backend_name: str) -> None:
    """The reverse of the origin reset: the visitor aborts with RST mid-stream; the origin's
    connection is torn down promptly (a real RST from the asyncio splice; on trio's portable
    relay possibly a FIN), and the session carries on."""
    origin_saw: list[type[BaseException]] = []
    origin_done = anyio.Event()

    async def watching_service(sock: SocketStream) -> None:
        async with sock:
            try:
                await sock.send(await sock.receive())
                await read_until_error(sock)
            except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                origin_saw.append(type(exc))
            origin_done.set()

    async with tcp_service(watching_service) as port, tunnel(port) as t:
        async with await connect(t.port) as sock:
            await sock.send(b"hello")
            assert await sock.receive() == b"hello"
            set_reset_on_close(sock)
        with anyio.fail_after(5):
            await origin_done.wait()
        if anyio_backend_name == "asyncio":
            assert origin_saw == [anyio.BrokenResourceError]
        else:
            assert origin_saw in ([anyio.BrokenResourceError], [anyio.EndOfStream])
        assert await roundtrip(t.port, b"next") == b"next"


async def test_client_max_streams_refuses_the_excess() -> None:
    """The client allows the server ``max_streams`` open streams: one more visitor is
    refused at once (disconnected), those already open are untouched, and a slot freed by a
    finished stream is usable again."""
    limited = SessionConfig(max_streams=2, handshake_timeout=5)
    async with echo_server() as echo_port, tunnel(echo_port, session=limited) as t:
        session = t.client.session
        assert session is not None
        async with await connect(t.port) as first, await connect(t.port) as second:
            for sock in (first, second):
                await sock.send(b"open")
                assert await sock.receive() == b"open"
            assert len(session.streams) == 2
            with anyio.fail_after(5):
                async with await connect(t.port) as third:
                    with pytest.raises((anyio.BrokenResourceError, anyio.EndOfStream)):
                        await read_until_error(third)
            await first.send(b"still")
            assert await first.receive() == b"still"
            await first.send_eof()
            assert await receive_all(first) == b""
        await wait_for(lambda: len(session.streams) == 0)
        assert await roundtrip(t.port, b"slot free") == b"slot free"
