"""The server's configurable limits: each one holds, says why, and harms nobody else.

Connections still in their handshake (``max_unauthenticated``), streams per session
(``SessionConfig.max_streams``, the server's own direction), tunnels per session
(``max_tunnels``), failed authentications per address (``auth_failure_limit`` within
``auth_failure_window``), late DATA after a RESET (bounded by the stream's credit), and no
token in any log line.
"""

from __future__ import annotations

import logging
import os

import anyio
import pytest

from ferrotunnel.core import (
    Address,
    RejectedError,
    Server,
    SessionConfig,
    StreamLimitError,
    Tunnel,
    TunnelKind,
)
from ferrotunnel.core.throttle import FailureThrottle
from ferrotunnel.protocol import (
    Data,
    ErrorCode,
    GoAway,
    Open,
    Ping,
    Pong,
    RejectCode,
    Reset,
    TunnelRequest,
    WindowUpdate,
)

from .helpers import (
    TOKEN,
    background,
    connect,
    echo_server,
    make_client,
    make_server,
    raw_session,
    read_until_error,
    roundtrip,
    tunnel,
    wait_for,
)

pytestmark = pytest.mark.anyio

CLOSED = (anyio.EndOfStream, anyio.BrokenResourceError)


async def test_connections_over_max_unauthenticated_are_closed_at_accept() -> None:
    """Two silent connections fill the cap: a third is closed at once, long before the
    handshake deadline; once the silent ones are gone, clients get in again."""
    config = SessionConfig(handshake_timeout=30)
    async with echo_server() as echo_port, make_server(config, max_unauthenticated=2) as server:
        port = server.control_address.port
        silent = [await connect(port), await connect(port)]
        await wait_for(lambda: server._unauthenticated == 2)
        with anyio.fail_after(5):
            async with await connect(port) as third:
                with pytest.raises(CLOSED):
                    await read_until_error(third)
        for sock in silent:
            await sock.aclose()
        await wait_for(lambda: server._unauthenticated == 0)
        async with make_client(server, echo_port) as client:
            remote = client.tunnels[0].remote_port
            assert remote is not None
            assert await roundtrip(remote, b"in again") == b"in again"


async def test_server_side_stream_limit_refuses_the_extra_visitor() -> None:
    """The server opens at most ``max_streams`` streams on a session: one more TCP visitor
    is disconnected, the open ones carry on, and a freed slot is usable again."""
    limited = SessionConfig(max_streams=2, handshake_timeout=5)
    async with echo_server() as echo_port, tunnel(echo_port, server_session=limited) as t:
        [session] = t.server.sessions
        async with await connect(t.port) as first, await connect(t.port) as second:
            for sock in (first, second):
                await sock.send(b"open")
                assert await sock.receive() == b"open"
            with pytest.raises(StreamLimitError):
                session.open_stream("anything", TunnelKind.TCP)
            with anyio.fail_after(5):
                async with await connect(t.port) as third:
                    with pytest.raises(CLOSED):
                        await read_until_error(third)
            await first.send(b"still")
            assert await first.receive() == b"still"
        await wait_for(lambda: len(session.streams) == 0)
        assert await roundtrip(t.port, b"slot free") == b"slot free"


async def test_more_tunnels_than_max_tunnels_are_refused() -> None:
    async with echo_server() as echo_port, make_server(max_tunnels=2, tcp_bind=None) as server:
        local = Address("127.0.0.1", echo_port)
        many = [Tunnel(f"t{i}", local, TunnelKind.TCP) for i in range(3)]
        client = make_client(server, tunnels=many)
        with anyio.fail_after(5), pytest.raises(RejectedError) as rejected:
            await client.start()
        assert rejected.value.code is RejectCode.BAD_REQUEST
        assert "allows 2 per client" in str(rejected.value)


async def test_failed_authentications_are_throttled_per_address() -> None:
    """After ``auth_failure_limit`` wrong tokens, the address is refused with
    ``rate_limited`` — even with the right token — until the window has passed."""
    async with (
        echo_server() as echo_port,
        make_server(auth_failure_limit=3, auth_failure_window=1.0) as server,
    ):
        for _ in range(3):
            wrong = make_client(server, echo_port, token="guess")
            with anyio.fail_after(5), pytest.raises(RejectedError) as rejected:
                await wrong.start()
            assert rejected.value.code is RejectCode.AUTH_FAILED
        for token in ("guess", TOKEN):
            throttled = make_client(server, echo_port, reconnect=False, token=token)
            with anyio.fail_after(5), pytest.raises(RejectedError) as rejected:
                await throttled.start()
            assert rejected.value.code is RejectCode.RATE_LIMITED
            assert "too many failed authentications" in str(rejected.value)
        await anyio.sleep(1.1)
        async with make_client(server, echo_port) as client:
            assert client.tunnels


def test_failure_throttle_window_eviction_and_reset() -> None:
    now = [100.0]
    throttle = FailureThrottle(2, 10.0, max_tracked=3, clock=lambda: now[0])
    throttle.failed("a")
    assert throttle.retry_after("a") == 0
    throttle.failed("a")
    assert throttle.retry_after("a") == pytest.approx(10.0)
    now[0] += 4
    assert throttle.retry_after("a") == pytest.approx(6.0)
    now[0] += 6
    assert throttle.retry_after("a") == 0  # the window is over
    throttle.failed("b")
    throttle.failed("b")
    throttle.succeeded("b")
    assert throttle.retry_after("b") == 0
    for address in ("c", "d", "e", "f"):  # bounded memory: the oldest is dropped
        throttle.failed(address)
    assert len(throttle._failures) <= 3
    assert "f" in throttle._failures


async def test_late_data_after_a_reset_is_bounded_by_the_stream_credit() -> None:
    """DATA in flight when we reset a stream is dropped — but only up to the window the
    peer had; past it the peer is ignoring the RESET, a flow-control violation."""
    window = 64 * 1024
    server = make_server(SessionConfig(window=window, handshake_timeout=5))
    async with (
        server,
        raw_session(server, client_id="sink", tunnels=(TunnelRequest("raw"),), window=window) as (
            peer,
            _,
        ),
    ):
        await peer.send(Open(1, TunnelKind.TCP, "x"))  # clients may not open: refused
        refused = await peer.expect(Reset, skip=(Ping, Pong, WindowUpdate))
        assert refused == Reset(1, ErrorCode.REFUSED_STREAM)
        await peer.send(Data(1, bytes(window)))  # within the credit: dropped quietly
        await peer.send(Ping(7))
        assert await peer.expect(Pong, skip=(Ping, WindowUpdate)) == Pong(7)
        await peer.send(Data(1, b"one byte too many"))
        with anyio.fail_after(5):
            events = await peer.read_until_closed()
        goaways = [e for e in events if isinstance(e, GoAway)]
        assert [g.code for g in goaways] == [ErrorCode.FLOW_CONTROL_ERROR]


async def test_no_token_in_any_log_line_over_a_whole_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A session with a secret token, traffic, a wrong-token attempt and shutdown, at DEBUG:
    the token never appears in a log record, formatted or not."""
    secret = "s3cr3t-" + os.urandom(8).hex()
    caplog.set_level(logging.DEBUG)
    async with echo_server() as echo_port:
        server = Server(token=secret, bind="127.0.0.1:0", tcp_bind="127.0.0.1:0", drain_timeout=0.5)
        async with background(server) as running:
            server = running.value
            async with make_client(server, echo_port, token=secret) as client:
                remote = client.tunnels[0].remote_port
                assert remote is not None
                assert await roundtrip(remote, b"traffic") == b"traffic"
            wrong = make_client(server, echo_port, token=secret + "x")
            with anyio.fail_after(5), pytest.raises(RejectedError) as rejected:
                await wrong.start()
            assert secret not in str(rejected.value)
            await running.stop()
    assert caplog.records
    for record in caplog.records:
        assert secret not in record.getMessage()
        assert secret not in repr(record.args)
