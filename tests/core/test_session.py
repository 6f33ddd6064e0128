"""The Session and Stream library API on their own: two sessions over a real connection
(or an in-memory pipe), no Server or Client."""

from __future__ import annotations

import os

import anyio
import pytest

from ferrotunnel.core import SessionConfig, StreamAttribute, StreamResetError
from ferrotunnel.core.links import StreamLink
from ferrotunnel.core.session import Role, Session
from ferrotunnel.protocol import (
    SUPPORTED_VERSIONS,
    ErrorCode,
    FrameDecoder,
    Hello,
    Welcome,
    encode,
)

from .helpers import memory_pipe, receive_all, session_pair, wait_for

pytestmark = pytest.mark.anyio


async def test_keepalive_aborts_a_peer_that_stops_reading() -> None:
    """A session over an unbuffered in-memory pipe: the peer answers the handshake and then
    stops reading (and sending). The session's keep-alive aborts it after ``ping_timeout``
    — and the abort really ends the connection, even though its writer is stuck on a send
    the silent peer will never take."""
    config = SessionConfig(ping_interval=0.05, ping_timeout=0.2, handshake_timeout=5)
    ours, theirs = memory_pipe()
    link = StreamLink(ours, config)
    session = Session(link, Role.CLIENT, config)
    link_done = anyio.Event()

    async def run_link() -> None:
        await link.run(session)
        link_done.set()

    async with theirs, anyio.create_task_group() as tg:
        tg.start_soon(run_link)
        session.send_hello(Hello(SUPPORTED_VERSIONS, "mem"))
        decoder = FrameDecoder()
        with anyio.fail_after(5):
            (hello,) = decoder.feed(await theirs.receive())
        assert isinstance(hello, Hello)
        await theirs.send(encode(Welcome(1, "mem-session")))
        assert isinstance(await session.wait_handshake(), Welcome)
        # from now on, `theirs` is never read again
        started = anyio.current_time()
        with anyio.fail_after(3):
            await session.run()
        assert anyio.current_time() - started >= config.ping_timeout
        assert session.closed
        assert isinstance(session.close_reason, TimeoutError)
        with anyio.fail_after(2):
            await link_done.wait()
        tg.cancel_scope.cancel()


async def test_pull_api_half_close_both_ways() -> None:
    """``send_eof()`` half-closes: the peer reads everything then EndOfStream, and can
    still answer; once both directions ended, both sessions forget the stream."""
    request, reply = os.urandom(200_000), os.urandom(300_000)
    async with session_pair() as pair:
        stream = pair.client.open_stream("t")
        await stream.send(request)
        await stream.send_eof()
        with pytest.raises(anyio.ClosedResourceError):
            await stream.send(b"after eof")
        with anyio.fail_after(5):
            await wait_for(lambda: bool(pair.accepted))
            (peer,) = pair.accepted
            assert await receive_all(peer) == request
            with pytest.raises(anyio.EndOfStream):
                await peer.receive()
            await peer.send(reply)
            await peer.send_eof()
            assert await receive_all(stream) == reply
            await wait_for(lambda: not pair.client.streams and not pair.server.streams)
        assert stream.done
        assert peer.done


async def test_reset_reaches_the_peer_with_its_code() -> None:
    """``reset(code)`` aborts both directions: the peer's ``receive()`` and ``send()`` raise
    StreamResetError carrying the code, and the session lives on."""
    async with session_pair() as pair:
        stream = pair.client.open_stream("t")
        await stream.send(b"x")
        await wait_for(lambda: bool(pair.accepted))
        (peer,) = pair.accepted
        assert await peer.receive() == b"x"
        stream.reset(ErrorCode.CANCEL)
        with anyio.fail_after(5), pytest.raises(StreamResetError) as info:
            await peer.receive()
        assert info.value.code == ErrorCode.CANCEL
        with pytest.raises(StreamResetError):
            await peer.send(b"y")
        with pytest.raises(StreamResetError):
            await stream.send(b"z")
        assert not pair.client.closed
        assert not pair.server.closed


async def test_close_with_unread_data_resets_the_sender() -> None:
    """Like a socket closed with unread data: ``aclose()`` on a stream holding unread bytes
    resets it (CANCEL), so the sender learns its data was not consumed."""
    async with session_pair() as pair:
        stream = pair.client.open_stream("t")
        await stream.send(b"unread")
        await wait_for(lambda: bool(pair.accepted) and pair.accepted[0].buffered == 6)
        await pair.accepted[0].aclose()
        with anyio.fail_after(5), pytest.raises(StreamResetError) as info:
            await stream.receive()
        assert info.value.code == ErrorCode.CANCEL


async def test_late_data_for_a_stream_reset_here_is_not_an_error() -> None:
    """DATA still in flight for a stream this side already reset is dropped quietly: the
    session does not treat it as a protocol violation, and other streams keep working."""
    async with session_pair() as pair:
        pair.server.on_stream = lambda stream: stream.reset(ErrorCode.REFUSED_STREAM)
        doomed = pair.client.open_stream("t")
        # a whole window goes out at once, before the RESET can come back; then it waits
        with anyio.fail_after(5), pytest.raises(StreamResetError) as info:
            await doomed.send(os.urandom(4 << 20))
        assert info.value.code == ErrorCode.REFUSED_STREAM
        assert not pair.client.closed
        assert not pair.server.closed
        accepted: list[object] = []
        pair.server.on_stream = accepted.append
        second = pair.client.open_stream("t")
        await second.send(b"fine")
        await wait_for(lambda: bool(accepted))
        assert not pair.server.closed


async def test_open_metadata_reaches_the_peer() -> None:
    """The OPEN frame carries the tunnel name, the visitor address and trace context."""
    trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    async with session_pair() as pair:
        pair.client.open_stream("web", visitor=("203.0.113.7", 51000), trace=trace)
        await wait_for(lambda: bool(pair.accepted))
        (peer,) = pair.accepted
        assert peer.tunnel == "web"
        assert peer.extra(StreamAttribute.visitor_address) == ("203.0.113.7", 51000)
        assert peer.extra(StreamAttribute.trace) == trace
        assert peer.extra(StreamAttribute.stream_id) == 1


async def test_session_close_fails_open_streams() -> None:
    """Closing a session ends every stream on both sides with an error (never a silent
    EOF), and ``wait_closed()`` returns on both."""
    async with session_pair() as pair:
        stream = pair.client.open_stream("t")
        await stream.send(b"x")
        await wait_for(lambda: bool(pair.accepted))
        (peer,) = pair.accepted
        pair.server.close()
        with anyio.fail_after(5):
            await pair.client.wait_closed()
            await pair.server.wait_closed()
        for s in (stream, peer):
            with pytest.raises(anyio.BrokenResourceError):
                await s.send(b"y")
        with pytest.raises(anyio.BrokenResourceError):
            await stream.receive()
        assert pair.client.streams == []
        assert pair.server.streams == []


async def test_goaway_refuses_new_streams_and_drain_waits_for_open_ones() -> None:
    """``drain()``: GOAWAY first — the peer may open no more streams — then the open stream
    finishes normally, and only then does the session close (well before the timeout)."""
    async with session_pair() as pair:
        stream = pair.client.open_stream("t")
        await wait_for(lambda: bool(pair.accepted))
        (peer,) = pair.accepted
        async with anyio.create_task_group() as tg:
            drained = anyio.Event()

            async def drain() -> None:
                await pair.server.drain(timeout=10)
                drained.set()

            started = anyio.current_time()
            tg.start_soon(drain)
            await wait_for(lambda: pair.client.going_away)
            with pytest.raises(anyio.BrokenResourceError):
                pair.client.open_stream("t")
            assert not drained.is_set()
            await stream.send(b"last words")
            await stream.send_eof()
            assert await receive_all(peer) == b"last words"
            await peer.send_eof()
            with anyio.fail_after(5):
                await drained.wait()
            assert anyio.current_time() - started < 5
        with anyio.fail_after(5):
            await pair.client.wait_closed()


async def test_concurrent_senders_and_receivers_on_one_stream_all_progress() -> None:
    """Two tasks sending on one stream while credit is short, and two tasks receiving from
    it: every send completes and every byte is received exactly once."""
    config = SessionConfig(window=16 << 10, max_frame=4 << 10, handshake_timeout=5)
    chunk = 100_000
    async with session_pair(config) as pair:
        stream = pair.client.open_stream("t")
        await stream.send(b"0")
        await wait_for(lambda: bool(pair.accepted))
        (peer,) = pair.accepted
        assert await peer.receive() == b"0"
        received: list[int] = []
        sent = 0

        async def send(byte: bytes) -> None:
            nonlocal sent
            await stream.send(byte * chunk)
            sent += 1

        async def receive() -> None:
            for _ in range(10_000):
                try:
                    received.append(len(await peer.receive(1000)))
                except anyio.EndOfStream:
                    return

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(receive)
                tg.start_soon(receive)
                async with anyio.create_task_group() as senders:
                    senders.start_soon(send, b"a")
                    senders.start_soon(send, b"b")
                await stream.send_eof()
        assert sent == 2
        assert sum(received) == 2 * chunk
