"""Per-stream credit: a reader that stops holds back only its own stream, within its window."""

from __future__ import annotations

import os

import anyio
import pytest

from ferrotunnel.core import SessionConfig, Stream
from ferrotunnel.core.relay import SpliceProtocol

from .helpers import (
    connect,
    receive_all,
    roundtrip,
    session_pair,
    tcp_service,
    tunnel,
    wait_for,
)

pytestmark = pytest.mark.anyio

KiB = 1 << 10
MiB = 1 << 20


async def test_session_credit_blocks_sender_at_window() -> None:
    """Library level: with a 64 KiB window, a peer stream that never reads holds exactly
    ``window`` bytes and the sender's ``send()`` blocks; another stream on the same session
    still flows; once the reader reads, the sender resumes and every byte arrives."""
    window = 64 * KiB
    config = SessionConfig(
        window=window, max_window=window, max_frame=16 * KiB, handshake_timeout=5
    )
    payload = os.urandom(4 * window + 123)
    async with session_pair(config) as pair:
        stalled = pair.client.open_stream("t")
        sent = anyio.Event()

        async def send_all() -> None:
            await stalled.send(payload)
            await stalled.send_eof()
            sent.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(send_all)
            await wait_for(lambda: len(pair.accepted) == 1)
            (receiver,) = pair.accepted
            await wait_for(lambda: receiver.buffered == window)

            # the sender is stuck: its credit is spent and the receiver returns none
            with anyio.move_on_after(0.3) as scope:
                await sent.wait()
            assert scope.cancelled_caught, "send() completed beyond the receive window"
            assert receiver.buffered == window, "the receiver buffered beyond its window"

            # a second stream on the same session is not held back by the first
            other = pair.client.open_stream("t")
            other_data = os.urandom(3 * window)
            await wait_for(lambda: len(pair.accepted) == 2)
            other_receiver = pair.accepted[1]
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg2:

                    async def send_other() -> None:
                        await other.send(other_data)
                        await other.send_eof()

                    tg2.start_soon(send_other)
                    assert await receive_all(other_receiver) == other_data
            assert receiver.buffered == window
            assert not sent.is_set()

            # reading resumes the sender
            with anyio.fail_after(5):
                got = bytearray()
                async for chunk in receiver:
                    assert receiver.buffered <= window
                    got += chunk
                await sent.wait()
        assert got == payload


async def test_stalled_stream_does_not_hold_back_others() -> None:
    """Through a real tunnel: one visitor's stream is served by a handler that stops reading,
    while 7 others echo 2 MiB each. The 7 finish; the stalled one stays stuck, and what it
    buffers on the client side (``Stream.buffered``, the handler never reads) never exceeds
    the receive window the client granted (``SessionConfig.window``): the server may send a
    stream only what the window allows, whatever the frame size. Released, it completes."""
    window = 256 * KiB
    config = SessionConfig(window=window, handshake_timeout=5)
    stalled: list[Stream] = []
    release = anyio.Event()

    async def handler(stream: Stream) -> None:
        marker = await stream.receive(1)
        if marker == b"S":
            stalled.append(stream)
            await release.wait()
        async for chunk in stream:
            await stream.send(chunk)
        await stream.send_eof()

    payloads = [os.urandom(2 * MiB) for _ in range(7)]
    stalled_payload = os.urandom(2 * MiB)
    results: dict[int, bytes] = {}
    stalled_result: list[bytes] = []
    others_done = anyio.Event()

    async with tunnel(handler=handler, session=config) as t:

        async def visit(i: int) -> None:
            results[i] = await roundtrip(t.port, b"E" + payloads[i])

        async def visit_stalled() -> None:
            stalled_result.append(await roundtrip(t.port, b"S" + stalled_payload))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(visit_stalled)
                await wait_for(lambda: bool(stalled))
                (stream,) = stalled
                # the marker byte was read, so the window holds window - 1 unread bytes
                await wait_for(lambda: stream.buffered == window - 1)

                async with anyio.create_task_group() as others:
                    for i in range(7):
                        others.start_soon(visit, i)

                    async def watch() -> None:
                        for _ in range(100_000):  # (until others_done; bounded by fail_after)
                            if others_done.is_set():
                                return
                            assert stream.buffered <= window
                            await anyio.sleep(0.005)

                    tg.start_soon(watch)
                others_done.set()
                for i in range(7):
                    assert results[i] == payloads[i]
                assert not stalled_result, "the stalled stream cannot have finished"
                assert stream.buffered == window - 1
                release.set()
        assert stalled_result == [stalled_payload]


async def test_never_reading_local_service_is_isolated(anyio_backend_name: str) -> None:
    """Spliced (socket) variant: the local service accepts one connection and never reads
    it. The other 7 streams finish at full speed. What the client holds for the stuck stream
    in user space is bounded: on asyncio the splice writes into the local socket's transport
    and stops returning credit once that transport is paused, so its buffer stays within
    ``write high-water + window`` (plus one frame in flight); on trio the relay holds at most
    ``window`` in ``Stream.buffered`` (plus the one chunk the relay is sending)."""
    window = 128 * KiB
    config = SessionConfig(
        window=window, max_window=window, max_frame=32 * KiB, handshake_timeout=5
    )
    stuck = anyio.Event()
    release = anyio.Event()

    async def service(sock: anyio.abc.SocketStream) -> None:
        async with sock:
            marker = await sock.receive(1)
            if marker == b"S":
                stuck.set()
                await release.wait()
                await receive_all(sock)
                return
            async for chunk in sock:
                await sock.send(chunk)
            await sock.send_eof()

    high_water = 0

    def held_by_client(stream: Stream) -> int:
        nonlocal high_water
        held = stream.buffered
        sink = stream._sink  # the local socket's protocol, when spliced (asyncio)
        if isinstance(sink, SpliceProtocol) and sink.transport is not None:
            held += sink.transport.get_write_buffer_size()
            high_water = sink.transport.get_write_buffer_limits()[1]
        return held

    payloads = [os.urandom(2 * MiB) for _ in range(7)]
    results: dict[int, bytes] = {}
    async with tcp_service(service) as port, tunnel(port, session=config) as t:
        session = t.client.session
        assert session is not None
        async with await connect(t.port) as stalled_sock, anyio.create_task_group() as tg:

            async def push() -> None:
                try:
                    await stalled_sock.send(b"S")
                    for _ in range(100_000):  # blocks long before: nobody reads
                        await stalled_sock.send(b"x" * 65536)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass

            tg.start_soon(push)
            with anyio.fail_after(30):
                await stuck.wait()
                await wait_for(lambda: len(session.streams) == 1)
                (stream,) = session.streams
                peak = 0

                async def visit(i: int) -> None:
                    results[i] = await roundtrip(t.port, b"E" + payloads[i])

                async def watch() -> None:
                    nonlocal peak
                    for _ in range(1_000_000):  # until cancelled; bounded by fail_after
                        peak = max(peak, held_by_client(stream))
                        await anyio.sleep(0.002)

                async with anyio.create_task_group() as others:
                    others.start_soon(watch)
                    async with anyio.create_task_group() as visitors:
                        for i in range(7):
                            visitors.start_soon(visit, i)
                    others.cancel_scope.cancel()
                peak = max(peak, held_by_client(stream))
            if anyio_backend_name == "asyncio":
                # the transport pauses once above its high-water mark, at most one frame
                # past it; from then on no credit returns, so at most one window follows
                assert high_water > 0
                bound = high_water + config.max_frame + window
            else:
                bound = window  # Stream.buffered only; the relay's chunk in flight is apart
            assert peak <= bound
            assert stream.buffered <= window
            assert all(results[i] == payloads[i] for i in range(7))
            assert not stream.done
            release.set()
            tg.cancel_scope.cancel()


async def test_a_stalled_stream_pins_no_more_memory_than_its_window() -> None:
    """The window bounds what a stream holds in *memory*, not just in ``Stream.buffered``:
    a stalled stream whose bytes arrived as small pieces interleaved with another stream's
    large ones must not keep the whole received chunks those pieces came in alive."""
    window = 64 * KiB
    config = SessionConfig(window=window, handshake_timeout=5)
    async with session_pair(config) as pair:
        stalled, busy = pair.client.open_stream("t"), pair.client.open_stream("t")
        await wait_for(lambda: len(pair.accepted) == 2)
        stalled_peer, busy_peer = pair.accepted
        drained = 0

        async def drain_busy() -> None:
            nonlocal drained
            for _ in range(100_000):
                drained += len(await busy_peer.receive())

        async with anyio.create_task_group() as tg:
            tg.start_soon(drain_busy)
            with anyio.fail_after(10):
                for _ in range(window // KiB):
                    # 1 KiB for the stalled stream, then 255 KiB for the busy one, so that
                    # each read on the receiving side is mostly busy-stream bytes
                    await stalled.send(os.urandom(KiB))
                    await busy.send(os.urandom(255 * KiB))
                    await wait_for(lambda: drained % (255 * KiB) == 0 and drained > 0)
                await wait_for(lambda: stalled_peer.buffered == window)
            tg.cancel_scope.cancel()
        # what the queued pieces keep alive: the objects under memoryview slices, or bytes
        queue = stalled_peer._queue
        assert queue is not None
        owners = [c.obj if isinstance(c, memoryview) else c for c in queue]
        held = sum(memoryview(owner).nbytes for owner in {id(o): o for o in owners}.values())
        assert held <= 2 * window, f"{held} bytes kept alive for {window} buffered"


async def test_window_grows_while_the_reader_keeps_up_and_never_past_max_window() -> None:
    """Auto-tuning: a stream whose reader keeps up gets its window doubled with each grant,
    up to ``max_window``; when the reader then stalls, what is buffered stays within
    ``max_window``."""
    window, max_window = 64 * KiB, 512 * KiB
    config = SessionConfig(
        window=window, max_window=max_window, max_frame=16 * KiB, handshake_timeout=5
    )
    async with session_pair(config) as pair:
        stream = pair.client.open_stream("t")
        await wait_for(lambda: len(pair.accepted) == 1)
        (receiver,) = pair.accepted
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream.send, os.urandom(4 * MiB))
            received = 0
            with anyio.fail_after(10):
                while received < 2 * MiB:  # a reader that keeps up
                    received += len(await receiver.receive())
            # the sender was granted more than the initial window at once
            assert receiver._recv_limit == max_window
            # now the reader stalls: the sender fills the grown window and no more
            await wait_for(lambda: stream._send_window == 0)
            await anyio.sleep(0.2)
            assert window < receiver.buffered <= max_window
            with anyio.fail_after(10):
                while received < 4 * MiB:
                    received += len(await receiver.receive())
        assert received == 4 * MiB
