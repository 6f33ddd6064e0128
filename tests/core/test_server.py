"""The server: handshakes under hostile input, keep-alive, drain on shutdown, port claims."""

from __future__ import annotations

import logging
import os
import random

import anyio
import pytest

from ferrotunnel.core import Refused, RejectedError, Server, SessionConfig
from ferrotunnel.core.plugin import PluginHost, hookimpl
from ferrotunnel.core.plugin.types import Identity, Peer, TcpConnection
from ferrotunnel.protocol import (
    ErrorCode,
    FrameType,
    GoAway,
    GrantedTunnel,
    Hello,
    Ping,
    Reject,
    RejectCode,
    TunnelKind,
    TunnelRequest,
)

from .helpers import (
    FAST,
    TOKEN,
    RawPeer,
    background,
    connect,
    echo_server,
    free_port_range,
    make_client,
    make_server,
    raw_session,
    receive_all,
    roundtrip,
    says,
    tcp_service,
    tunnel,
    wait_for,
)

pytestmark = pytest.mark.anyio

KiB = 1 << 10


def _rejections(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "ferrotunnel.core.server" and r.getMessage().startswith("rejected")
    ]


async def test_wrong_token_is_rejected_at_once_without_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrong token fails ``start()`` with AUTH_FAILED within 2 s, after exactly one
    handshake: the client does not retry a final rejection (even with reconnect on)."""
    caplog.set_level(logging.INFO, logger="ferrotunnel")
    async with echo_server() as echo_port, make_server() as server:
        client = make_client(server, echo_port, token="wrong-token")
        assert client.config.reconnect
        start = anyio.current_time()
        with anyio.fail_after(2), pytest.raises(RejectedError) as info:
            await client.start()
        assert anyio.current_time() - start < 2
        assert info.value.code is RejectCode.AUTH_FAILED
        assert TOKEN not in str(info.value)
        assert client.session is None
        assert client.tunnels == ()
        # the server is fine: a good client gets in, and still only one handshake failed
        async with make_client(server, echo_port) as good:
            assert await roundtrip(good.tunnels[0].remote_port or 0, b"ping") == b"ping"
    assert len(_rejections(caplog)) == 1


async def test_garbage_and_silent_connections_are_closed_while_others_work(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Garbage on the control port gets that connection closed at once (a protocol error);
    a silent connection is closed after the handshake timeout (0.5 s). Meanwhile an existing
    session keeps moving verified data and a new client connects without waiting."""
    caplog.set_level(logging.INFO, logger="ferrotunnel")
    timeout = 0.5
    config = SessionConfig(handshake_timeout=timeout)
    control_port = 0
    transfers = 0
    stop = anyio.Event()

    async def keep_transferring(port: int) -> None:
        nonlocal transfers
        rng = random.Random(7)
        while not stop.is_set() and transfers < 10_000:
            data = rng.randbytes(64 * KiB)
            assert await roundtrip(port, data) == data
            transfers += 1

    span = free_port_range(2)
    async with (
        echo_server() as echo_port,
        tunnel(echo_port, session=config, server_settings={"tcp_port_range": span}) as t,
    ):
        control_port = t.server.control_address.port
        session = t.client.session
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(keep_transferring, t.port)

                # 1. garbage: an HTTP request is no frame; the server answers GOAWAY, closes
                garbage = RawPeer(await connect(control_port))
                async with garbage.sock:
                    sent = anyio.current_time()
                    await garbage.send_raw(b"GET / HTTP/1.1\r\nHost: tunnel\r\n\r\n")
                    with anyio.fail_after(2):
                        events = await garbage.read_until_closed()
                    assert anyio.current_time() - sent < timeout, "closed by the timeout?"
                assert [type(e) for e in events] == [GoAway]
                assert isinstance(events[0], GoAway)
                assert events[0].code == ErrorCode.FRAME_SIZE_ERROR

                # 2. a well-framed HELLO that is not JSON
                bad_hello = RawPeer(await connect(control_port))
                async with bad_hello.sock:
                    junk = b"{not json"
                    header = (len(junk) << 8 | FrameType.HELLO).to_bytes(4, "big")
                    sent = anyio.current_time()
                    await bad_hello.send_raw(header + b"\x00" + bytes(4) + junk)
                    with anyio.fail_after(2):
                        events = await bad_hello.read_until_closed()
                    assert anyio.current_time() - sent < timeout, "closed by the timeout?"
                assert [type(e) for e in events] == [GoAway]
                assert isinstance(events[0], GoAway)
                assert events[0].code == ErrorCode.PROTOCOL_ERROR

                # 3. silence: closed by the handshake timeout, not before
                before = transfers
                opened = anyio.current_time()  # (before the server can start its timer)
                async with await connect(control_port) as silent:
                    # a new client is not held up by the silent connection's handshake
                    started = anyio.current_time()
                    async with make_client(t.server, echo_port, session=config) as late:
                        joined = anyio.current_time() - started
                        port = late.tunnels[0].remote_port
                        assert port is not None
                        assert port != t.port
                        assert await roundtrip(port, b"late") == b"late"
                    with anyio.fail_after(timeout + 3):
                        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                            await silent.receive()
                    waited = anyio.current_time() - opened
                assert joined < timeout, "a new client waited behind a silent connection"
                assert timeout <= waited < timeout + 2
                await wait_for(lambda: transfers > before + 2)
                stop.set()
        assert session is not None
        assert t.client.session is session
        assert not session.closed
        assert t.client.reconnects == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("protocol error" in m for m in messages) == 2
    assert any("timed out" in m for m in messages)


async def test_keepalive_aborts_a_peer_that_stops_answering() -> None:
    """A peer that completes the handshake and then goes silent (it neither sends nor
    answers PING) is aborted once ``ping_timeout`` passes without a byte from it — not
    before — and its tunnel port is released for someone else."""
    interval, timeout = 0.1, 0.4
    config = SessionConfig(ping_interval=interval, ping_timeout=timeout, handshake_timeout=5)
    async with echo_server() as echo_port, make_server(config) as server:
        silent_since = anyio.current_time()  # the server's session starts after this
        async with raw_session(server, tunnels=(TunnelRequest("raw"),)) as (peer, welcome):
            fixed = server.tcp_address
            assert fixed is not None
            assert welcome.tunnels[0].remote_port == fixed.port
            with anyio.fail_after(timeout + 3):
                events = await peer.read_until_closed()
            lived = anyio.current_time() - silent_since
        assert timeout <= lived < timeout + 2
        assert sum(isinstance(e, Ping) for e in events) >= 2, "the server should have pinged"
        await wait_for(lambda: not server.sessions)
        async with make_client(server, echo_port, session=config) as client:
            assert client.tunnels[0].remote_port == fixed.port


async def test_idle_session_survives_many_ping_intervals() -> None:
    """Both ends idle, pinging every 0.1 s with a 0.3 s timeout: the session lives through
    four times its ping timeout — PINGs and PONGs seen both ways all along — and then still
    carries data."""
    interval = 0.1
    config = SessionConfig(ping_interval=interval, ping_timeout=3 * interval, handshake_timeout=5)
    async with echo_server() as echo_port, tunnel(echo_port, session=config) as t:
        client_session = t.client.session
        assert client_session is not None
        (server_session,) = t.server.sessions
        ping_size = 9 + 8  # header + opaque: PING and PONG alike
        start_in = server_session.bytes_in, client_session.bytes_in
        started = anyio.current_time()
        survive = 4 * config.ping_timeout
        # each side hears at least one PING or PONG per interval
        await wait_for(
            lambda: (
                anyio.current_time() - started >= survive
                and server_session.bytes_in - start_in[0] >= 8 * ping_size
                and client_session.bytes_in - start_in[1] >= 8 * ping_size
            ),
            seconds=survive + 5,
        )
        assert not client_session.closed
        assert not server_session.closed
        assert t.client.session is client_session
        assert t.server.sessions == [server_session]
        assert t.client.reconnects == 0
        assert await roundtrip(t.port, b"still here") == b"still here"


async def test_server_shutdown_drains_an_in_flight_stream() -> None:
    """``server.shutdown()`` sends GOAWAY and stops accepting visitors, but a stream already
    open finishes — all its bytes echoed — well within ``drain_timeout``; only then does the
    session close."""
    drain_timeout = 5.0
    first, second = os.urandom(512 * KiB), os.urandom(512 * KiB)
    result: list[bytes] = []
    refused: list[BaseException] = []
    async with (
        echo_server() as echo_port,
        background(make_server(drain_timeout=drain_timeout)) as running,
        background(make_client(running.value, echo_port, reconnect=False)) as client,
    ):
        session = client.value.session
        assert session is not None
        port = client.value.tunnels[0].remote_port or 0

        async def visitor() -> None:
            async with await connect(port) as sock, anyio.create_task_group() as tg:

                async def write() -> None:
                    await sock.send(first)
                    await wait_for(lambda: session.going_away)  # GOAWAY arrived
                    try:  # no new visitors while draining
                        await (await connect(port)).aclose()
                    except OSError as exc:
                        refused.append(exc)
                    await sock.send(second)
                    await sock.send_eof()

                tg.start_soon(write)
                result.append(await receive_all(sock))

        with anyio.fail_after(drain_timeout + 5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(visitor)
                await wait_for(lambda: len(session.streams) == 1)
                started = anyio.current_time()
                await running.stop()
                took = anyio.current_time() - started
        await wait_for(lambda: session.closed)
    assert result == [first + second]
    assert refused, "a new visitor was accepted during the drain"
    assert took < drain_timeout, "shutdown waited for the timeout instead of the stream"


async def test_server_shutdown_cuts_a_stuck_stream_after_drain_timeout() -> None:
    """A stream that never finishes does not hold ``shutdown()`` beyond ``drain_timeout``;
    its visitor is disconnected."""
    drain_timeout = 0.3
    async with (
        echo_server() as echo_port,
        background(make_server(drain_timeout=drain_timeout)) as running,
        background(make_client(running.value, echo_port, reconnect=False)) as client,
        await connect(client.value.tunnels[0].remote_port or 0) as sock,
    ):
        await sock.send(b"open")
        assert await sock.receive() == b"open"
        started = anyio.current_time()
        with anyio.fail_after(drain_timeout + 3):
            await running.stop()
            took = anyio.current_time() - started
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await sock.receive()
    assert drain_timeout * 0.8 <= took < drain_timeout + 2


async def test_client_shutdown_releases_its_port() -> None:
    """A client that shuts down gives its port back: another client (another id) asking for
    that very port gets it, and visitors reach the new client's service."""

    async with (
        echo_server() as echo_port,
        tcp_service(says(b"B")) as b_port,
        make_server() as server,
    ):
        fixed = server.tcp_address
        assert fixed is not None
        first = make_client(server, echo_port, client_id="a")
        await first.start()
        assert first.tunnels[0].remote_port == fixed.port
        started = anyio.current_time()
        await first.shutdown()  # (no cancel scope around it: it exits start()'s)
        assert anyio.current_time() - started < 3
        assert first.status.value == "closed"
        await wait_for(lambda: not server.sessions, seconds=2)
        async with make_client(server, b_port, client_id="b", remote_port=fixed.port) as b:
            assert b.tunnels[0].remote_port == fixed.port
            async with await connect(fixed.port) as sock:
                assert await receive_all(sock) == b"B"


async def test_port_range_gives_each_client_its_own_port() -> None:
    """With ``tcp_port_range`` and no fixed port, each client gets its own port from the
    range and its own visitors; asking for a port outside the range, one held by another
    client, or one more than the range holds, is refused with PORT_UNAVAILABLE."""

    low, high = span = free_port_range(2)
    async with (
        tcp_service(says(b"one")) as one,
        tcp_service(says(b"two")) as two,
        make_server(tcp_bind=None, tcp_port_range=span) as server,
    ):
        assert server.tcp_address is None
        async with make_client(server, one) as c1, make_client(server, two) as c2:
            p1, p2 = c1.tunnels[0].remote_port, c2.tunnels[0].remote_port
            assert p1 is not None
            assert p2 is not None
            assert {p1, p2} == {low, high}
            assert c1.tunnels[0].public_url == f"tcp://127.0.0.1:{p1}"
            for port, word in ((p1, b"one"), (p2, b"two")):
                async with await connect(port) as sock:
                    assert await receive_all(sock) == word

            outside = low - 1 if low > 1024 else high + 1
            for remote_port in (outside, p1, None):
                extra = make_client(server, one, remote_port=remote_port)
                with anyio.fail_after(2), pytest.raises(RejectedError) as info:
                    await extra.start()
                assert info.value.code is RejectCode.PORT_UNAVAILABLE
        # both released: a newcomer gets a port again
        await wait_for(lambda: not server.sessions)
        async with make_client(server, one) as c3:
            assert c3.tunnels[0].remote_port in (low, high)


async def test_concurrent_clients_in_a_port_range_get_distinct_ports() -> None:
    """Two clients whose handshakes overlap each get a port of the range: claims of
    concurrent handshakes must not collide (binding the same port twice) or steal each
    other's port."""
    low, high = span = free_port_range(2)
    async with (
        echo_server() as echo_port,
        make_server(tcp_bind=None, tcp_port_range=span) as server,
    ):
        clients = [make_client(server, echo_port) for _ in range(4)]
        ready = [anyio.Event() for _ in clients]
        stop = anyio.Event()
        outcome: dict[int, RejectCode | None] = {}

        async def run(i: int) -> None:  # each client in a task of its own, all at once
            try:
                async with clients[i]:
                    outcome[i] = None
                    ready[i].set()
                    await stop.wait()
            except RejectedError as exc:
                outcome[i] = exc.code
                ready[i].set()

        async with anyio.create_task_group() as tg:
            for i in range(len(clients)):
                tg.start_soon(run, i)
            with anyio.fail_after(5):
                for event in ready:
                    await event.wait()
            winners = [i for i, code in outcome.items() if code is None]
            ports = sorted(clients[i].tunnels[0].remote_port or 0 for i in winners)
            assert ports == [low, high], outcome
            assert (
                sorted(map(str, outcome.values()))
                == ["None", "None"] + [str(RejectCode.PORT_UNAVAILABLE)] * 2
            )
            for port in ports:
                assert await roundtrip(port, b"hi") == b"hi"
            stop.set()


async def test_server_shutdown_closes_connections_still_in_handshake() -> None:
    """A control connection that has not finished its handshake when the server shuts down
    is closed by the shutdown, not left open."""
    config = SessionConfig(handshake_timeout=30)
    async with background(make_server(config)) as running:
        server = running.value
        async with await connect(server.control_address.port) as silent:
            await wait_for(lambda: server._unauthenticated == 1)
            with anyio.fail_after(3):
                await running.stop()
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    await silent.receive()


HELLO_REJECTIONS = {
    "unsupported-version": (
        Hello((99,), "c", (TunnelRequest("t"),), token=TOKEN),
        RejectCode.UNSUPPORTED_VERSION,
    ),
    "duplicate-names": (
        Hello((1,), "c", (TunnelRequest("t"), TunnelRequest("t")), token=TOKEN),
        RejectCode.BAD_REQUEST,
    ),
    "http-tunnel": (
        Hello((1,), "c", (TunnelRequest("t", TunnelKind.HTTP, hostnames=("a",)),), token=TOKEN),
        RejectCode.BAD_REQUEST,
    ),
    "no-token": (Hello((1,), "c", (TunnelRequest("t"),)), RejectCode.AUTH_FAILED),
}


@pytest.mark.parametrize("case", list(HELLO_REJECTIONS))
async def test_bad_hello_gets_reject_then_close(case: str) -> None:
    """A HELLO the server cannot accept is answered with REJECT (the right code) and the
    connection closed; nothing is claimed."""
    hello, code = HELLO_REJECTIONS[case]
    async with make_server() as server:
        address = server.control_address
        async with await anyio.connect_tcp(address.host, address.port) as sock:
            peer = RawPeer(sock)
            await peer.send(hello)
            with anyio.fail_after(2):
                events = await peer.read_until_closed()
        assert len(events) == 1
        assert isinstance(events[0], Reject)
        assert events[0].code is code
        assert server.sessions == []
        assert server._claims == {}


async def test_server_busy_is_retried_until_a_slot_frees() -> None:
    """At ``max_sessions`` a new client is refused with SERVER_BUSY — not a final code: with
    reconnect off ``start()`` raises it, with reconnect on the client keeps trying and gets
    in as soon as a session ends."""
    async with (
        echo_server() as echo_port,
        make_server(max_sessions=1, tcp_port_range=free_port_range(2)) as server,
        background(make_client(server, echo_port, client_id="first")) as first,
    ):
        impatient = make_client(server, echo_port, client_id="impatient", reconnect=False)
        with anyio.fail_after(2), pytest.raises(RejectedError) as info:
            await impatient.start()
        assert info.value.code is RejectCode.SERVER_BUSY
        assert not info.value.code.is_final

        patient = make_client(server, echo_port, client_id="patient")
        done = anyio.Event()

        async def start_patient() -> None:
            async with patient:
                done.set()
                assert await roundtrip(patient.tunnels[0].remote_port or 0, b"in") == b"in"

        async with anyio.create_task_group() as tg:
            tg.start_soon(start_patient)
            with anyio.move_on_after(0.3):
                await done.wait()
            assert not done.is_set(), "admitted beyond max_sessions"
            await first.stop()
            with anyio.fail_after(5):
                await done.wait()


async def test_max_sessions_counts_only_authenticated_sessions() -> None:
    """Connections still in their handshake (here: silent ones) do not use up session slots,
    and a client reconnecting at the limit replaces its own session instead of being refused."""
    async with (
        echo_server() as echo_port,
        make_server(max_sessions=1, tcp_port_range=free_port_range(2)) as server,
    ):
        port = server.control_address.port
        silent = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(3)]
        try:
            async with make_client(server, echo_port, client_id="only", reconnect=False) as first:
                assert await roundtrip(first.tunnels[0].remote_port or 0, b"a") == b"a"
                again = make_client(server, echo_port, client_id="only", reconnect=False)
                async with again:  # the same client: its stale session is replaced
                    assert await roundtrip(again.tunnels[0].remote_port or 0, b"b") == b"b"
                    other = make_client(server, echo_port, client_id="other", reconnect=False)
                    with anyio.fail_after(5), pytest.raises(RejectedError) as info:
                        await other.start()
                    assert info.value.code is RejectCode.SERVER_BUSY
        finally:
            for sock in silent:
                await sock.aclose()


async def test_custom_authenticator_identities_scope_port_ownership() -> None:
    """With an authenticator, a port belongs to (identity, client id): another identity
    reusing the same client id cannot take it over, the same identity can; a refusal from
    the authenticator is passed on as it is."""

    class Users:
        async def authenticate(self, hello: Hello, peer: Peer) -> Identity:
            identities = {"alice-token": "alice", "bob-token": "bob"}
            if hello.token not in identities:
                raise Refused(RejectCode.AUTH_FAILED, "unknown user")
            return Identity(identities[hello.token])

    async with (
        echo_server() as echo_port,
        Server(
            authenticators=[Users()],
            bind="127.0.0.1:0",
            tcp_bind="127.0.0.1:0",
            session=FAST,
            drain_timeout=0.5,
        ) as server,
    ):
        assert server.tcp_address is not None
        port = server.tcp_address.port
        # (reconnect off: two live clients with one id would take the port from each other)
        async with make_client(
            server, echo_port, token="alice-token", client_id="laptop", reconnect=False
        ) as a:
            assert a.tunnels[0].remote_port == port
            bob = make_client(server, echo_port, token="bob-token", client_id="laptop")
            with anyio.fail_after(2), pytest.raises(RejectedError) as info:
                await bob.start()
            assert info.value.code is RejectCode.PORT_UNAVAILABLE
            stranger = make_client(server, echo_port, token="nobody", client_id="laptop")
            with anyio.fail_after(2), pytest.raises(RejectedError) as info:
                await stranger.start()
            assert info.value.code is RejectCode.AUTH_FAILED
            assert a.session is not None
            assert not a.session.closed
            async with make_client(
                server, echo_port, token="alice-token", client_id="laptop"
            ) as again:
                assert again.tunnels[0].remote_port == port
                await wait_for(lambda: a.session is not None and a.session.closed)
                assert await roundtrip(port, b"alice") == b"alice"


async def test_a_limited_identitys_tunnels_are_named_after_it_on_the_server() -> None:
    """Tunnel names are the client's to choose, so the server prefixes those of a limited
    identity (one with host or port scopes) with the identity: TCP middlewares and the
    ``tunnel_registered`` hook see ``carol/db``; the client still knows its tunnel as ``db``,
    and an unlimited identity's names are left as they are."""

    class Users:
        async def authenticate(self, hello: Hello, peer: Peer) -> Identity:
            if hello.token == "carol-token":
                return Identity("carol", ports=((1, 65535),))
            return Identity("dave")

    class Seen:
        def __init__(self) -> None:
            self.connections: list[str] = []
            self.registered: list[str] = []

        def on_connect(self, conn: TcpConnection) -> bool:
            self.connections.append(conn.tunnel)
            return True

        @hookimpl
        def ferrotunnel_tunnel_registered(self, session: object, tunnel: GrantedTunnel) -> None:
            self.registered.append(tunnel.name)

    seen = Seen()
    async with (
        echo_server() as echo_port,
        Server(
            authenticators=[Users()],
            tcp_middlewares=[seen],
            plugins=PluginHost.with_plugins([seen]),
            bind="127.0.0.1:0",
            tcp_port_range=free_port_range(2),
            session=FAST,
            drain_timeout=0.5,
        ) as server,
    ):
        for token in ("carol-token", "dave-token"):
            async with make_client(
                server, echo_port, token=token, tunnel_id="db", reconnect=False
            ) as client:
                [granted] = client.tunnels
                assert granted.name == "db"
                assert granted.remote_port is not None
                assert await roundtrip(granted.remote_port, b"hi") == b"hi"
    assert seen.registered == ["carol/db", "db"]
    assert seen.connections == ["carol/db", "db"]


async def test_a_failing_authenticator_refuses_one_client_not_the_server(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An authenticator that raises (say its backend is down) gets that one HELLO refused
    with SERVER_BUSY — retryable — and logged; the server and its other sessions go on."""
    caplog.set_level(logging.INFO, logger="ferrotunnel")

    class Flaky:
        async def authenticate(self, hello: Hello, peer: Peer) -> Identity:
            if hello.client_id == "unlucky":
                raise RuntimeError("auth backend down")
            return Identity("user")

    async with (
        echo_server() as echo_port,
        Server(
            authenticators=[Flaky()],
            bind="127.0.0.1:0",
            tcp_bind="127.0.0.1:0",
            tcp_port_range=free_port_range(1),
            session=FAST,
            drain_timeout=0.5,
        ) as server,
        make_client(server, echo_port, client_id="early") as early,
    ):
        unlucky = make_client(server, echo_port, client_id="unlucky", reconnect=False)
        with anyio.fail_after(2), pytest.raises(RejectedError) as info:
            await unlucky.start()
        assert info.value.code is RejectCode.SERVER_BUSY
        assert any(r.exc_info and "authenticator" in r.getMessage() for r in caplog.records)
        assert early.session is not None
        assert not early.session.closed
        assert await roundtrip(early.tunnels[0].remote_port or 0, b"ok") == b"ok"
        async with make_client(server, echo_port, client_id="late") as late:
            assert await roundtrip(late.tunnels[0].remote_port or 0, b"ok") == b"ok"
