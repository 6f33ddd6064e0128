"""The client: API forms, configuration errors, reconnects, reclaiming ports, keep-alive."""

from __future__ import annotations

import contextlib
import os

import anyio
import pytest
from anyio.abc import SocketStream

from ferrotunnel.core import (
    Address,
    Backoff,
    Client,
    ClientStatus,
    ConfigError,
    HandshakeError,
    RejectedError,
    Server,
    SessionConfig,
    Stream,
    Tunnel,
)
from ferrotunnel.core.plugin import PluginHost, hookimpl
from ferrotunnel.protocol import (
    GrantedTunnel,
    Hello,
    RejectCode,
    TunnelKind,
    TunnelRequest,
    Welcome,
)

from .helpers import (
    FAST,
    TOKEN,
    RawPeer,
    background,
    connect,
    echo_server,
    echo_stream_handler,
    free_port_range,
    make_client,
    make_server,
    raw_session,
    read_until_error,
    receive_all,
    roundtrip,
    says,
    tcp_service,
    wait_for,
)

# ---------------------------------------------------------------------------- API forms


def status(client: Client) -> ClientStatus:
    return client.status  # (a call, so that mypy does not pin the status between awaits)


@pytest.mark.anyio
async def test_builders_start_and_shutdown() -> None:
    """``Server.builder()...build()`` and ``Client.builder()...build()``, then
    ``await start()`` / ``await shutdown()``: tunnels granted, data flows, status follows."""
    async with echo_server() as echo_port:
        server = (
            Server.builder()
            .bind("127.0.0.1:0")
            .token(TOKEN)
            .tcp_bind("127.0.0.1:0")
            .public_host("tunnel.example")
            .session_config(FAST)
            .build()
        )
        await server.start()
        try:
            ingress = server.tcp_address
            assert ingress is not None
            assert ingress.port != 0
            client = (
                Client.builder()
                .server_addr(str(server.control_address))
                .token(TOKEN)
                .local_addr(f"127.0.0.1:{echo_port}")
                .protocol("tcp")
                .tunnel_id("built")
                .client_id("builder-client")
                .backoff(0.05, 0.5)
                .auto_reconnect(False)
                .session_config(FAST)
                .build()
            )
            assert status(client) is ClientStatus.IDLE
            tunnels = await client.start()
            assert status(client) is ClientStatus.CONNECTED
            assert tunnels == client.tunnels
            (granted,) = tunnels
            assert granted.name == "built"
            assert granted.public_url == f"tcp://tunnel.example:{ingress.port}"
            assert await roundtrip(ingress.port, b"built") == b"built"
            with pytest.raises(RuntimeError):
                await client.start()
            await client.shutdown()
            assert status(client) is ClientStatus.CLOSED
            await client.shutdown()  # idempotent
        finally:
            await server.shutdown()
        await server.shutdown()  # idempotent
        with pytest.raises(OSError):  # noqa: PT011 (refused: the message varies by backend)
            await (await connect(server.control_address.port)).aclose()


@pytest.mark.anyio
async def test_async_with_forms_and_tunnel_objects() -> None:
    """``async with Server(...)`` / ``async with Client(...)``; one client serving two
    ``Tunnel`` objects at once — a local socket and an in-process handler — each on its own
    public port."""

    async def shout(stream: Stream) -> None:
        async for chunk in stream:
            await stream.send(chunk.upper())
        await stream.send_eof()

    span = free_port_range(1)
    async with echo_server() as echo_port:
        server = Server(
            token=TOKEN,
            bind="127.0.0.1:0",
            tcp_bind="127.0.0.1:0",
            tcp_port_range=span,
            session=FAST,
            drain_timeout=0.5,
        )
        async with server:
            client = Client(
                server_addr=server.control_address,
                token=TOKEN,
                tunnels=[
                    Tunnel("echo", local_addr=Address("127.0.0.1", echo_port)),
                    Tunnel("shout", handler=shout),
                ],
                session=FAST,
                drain_timeout=0.5,
            )
            async with client as same:
                assert same is client
                assert status(client) is ClientStatus.CONNECTED
                ports = {t.name: t.remote_port or 0 for t in client.tunnels}
                assert server.tcp_address is not None
                assert ports == {"echo": server.tcp_address.port, "shout": span[0]}
                assert await roundtrip(ports["echo"], b"quiet") == b"quiet"
                assert await roundtrip(ports["shout"], b"quiet") == b"QUIET"
            assert status(client) is ClientStatus.CLOSED
            await wait_for(lambda: not server.sessions)
            # keyword form with an inline handler
            async with Client(
                server_addr=str(server.control_address),
                token=TOKEN,
                handler=echo_stream_handler,
                session=FAST,
            ) as handled:
                assert await roundtrip(handled.tunnels[0].remote_port or 0, b"h") == b"h"


@pytest.mark.anyio
async def test_serve_forever_under_a_deadline_leaves_the_shutdown_to_its_owner() -> None:
    """``async with Client(...)``/``Server(...)``, then ``serve_forever()`` inside
    ``move_on_after``: the deadline ends only ``serve_forever`` (it raised "Attempted to exit a
    cancel scope that isn't the current task's current cancel scope"); the tunnel still works
    until the ``async with`` shuts it down."""
    async with echo_server() as echo_port, make_server() as server:
        ingress = server.tcp_address
        assert ingress is not None
        async with make_client(server, echo_port) as client:
            with anyio.move_on_after(0.2) as scope:
                await client.serve_forever()
            assert scope.cancelled_caught
            assert status(client) is ClientStatus.CONNECTED
            assert await roundtrip(ingress.port, b"still here") == b"still here"
            with anyio.move_on_after(0.2) as scope:
                await server.serve_forever()
            assert scope.cancelled_caught
            assert await roundtrip(ingress.port, b"and here") == b"and here"
        assert status(client) is ClientStatus.CLOSED


class _SeesShutdown:
    def __init__(self) -> None:
        self.shut_down: list[object] = []

    @hookimpl
    async def ferrotunnel_shutdown(self, app: object) -> None:
        self.shut_down.append(app)


@pytest.mark.anyio
async def test_a_cancelled_serve_forever_closes_the_client_it_started() -> None:
    """``serve_forever()`` on a client not started yet, then cancelled (Ctrl-C, a task group
    cancelled): the client ends ``closed`` and its plugins' shutdown hook runs. (The
    cancellation could end ``shutdown()`` while it closed its task group: the status stayed
    ``reconnecting`` and the plugins were never told.)"""
    async with echo_server() as echo_port, make_server() as server:
        for _ in range(3):  # the task group's closing raised the cancellation only at times
            plugin = _SeesShutdown()
            client = make_client(server, echo_port, plugins=PluginHost.with_plugins([plugin]))
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.serve_forever)
                await wait_for(lambda: status(client) is ClientStatus.CONNECTED)  # noqa: B023
                tg.cancel_scope.cancel()
            assert status(client) is ClientStatus.CLOSED
            assert plugin.shut_down == [client]


@pytest.mark.anyio
async def test_a_start_cancelled_before_it_connects_closes_the_client() -> None:
    """``start()`` still trying to reach a server that is not there, then cancelled: the
    client ends ``closed`` (not ``reconnecting``) and its plugins' shutdown hook runs."""
    async with echo_server() as echo_port:
        for _ in range(3):  # the task group's closing raised the cancellation only at times
            plugin = _SeesShutdown()
            nowhere = f"127.0.0.1:{free_port_range(1)[0]}"
            client = make_client(nowhere, echo_port, plugins=PluginHost.with_plugins([plugin]))
            with anyio.move_on_after(0.3):
                await client.start()
            assert status(client) is ClientStatus.CLOSED
            assert plugin.shut_down == [client]


def test_config_errors() -> None:
    """Bad or missing settings raise ConfigError naming the problem, at construction."""
    with pytest.raises(ConfigError, match="server_addr"):
        Client(token="t", local_addr="127.0.0.1:80")
    for bad in ("localhost", "host:port", "host:99999", "::1:80", "", "host:-1"):
        with pytest.raises(ConfigError):
            Client(server_addr=bad, token="t", local_addr="127.0.0.1:80")
        with pytest.raises(ConfigError):
            Server(token="t", bind=bad)
    with pytest.raises(ConfigError, match="local_addr"):
        Client(server_addr="127.0.0.1:1", token="t", local_addr="nowhere")
    with pytest.raises(ConfigError, match="token"):
        Server(bind="127.0.0.1:0")
    with pytest.raises(ConfigError, match="token"):
        Server(token="", bind="127.0.0.1:0")
    with pytest.raises(ConfigError, match="range"):
        Server(token="t", tcp_port_range=(2000, 1000))
    with pytest.raises(ConfigError, match="range"):
        Server(token="t", tcp_port_range=(0, 10))
    with pytest.raises(ConfigError):
        Server(token="t", no_such_setting=1)
    with pytest.raises(ConfigError):
        Client(server_addr="127.0.0.1:1", local_addr="127.0.0.1:2", no_such_setting=1)
    with pytest.raises(ConfigError, match="exactly one"):
        Client(server_addr="127.0.0.1:1")  # neither local_addr nor handler
    with pytest.raises(ConfigError, match="exactly one"):
        Tunnel("both", local_addr=Address("127.0.0.1", 1), handler=echo_stream_handler)
    with pytest.raises(ConfigError, match="not both"):
        Client(
            server_addr="127.0.0.1:1",
            local_addr="127.0.0.1:2",
            tunnels=[Tunnel("x", local_addr=Address("127.0.0.1", 2))],
        )
    with pytest.raises(ConfigError, match="unique"):
        Client(
            server_addr="127.0.0.1:1",
            tunnels=[
                Tunnel("x", local_addr=Address("127.0.0.1", 2)),
                Tunnel("x", local_addr=Address("127.0.0.1", 3)),
            ],
        )
    with pytest.raises(ConfigError, match="at least one"):
        Client(server_addr="127.0.0.1:1", tunnels=[])
    # the good forms parse
    assert Address.parse("[::1]:80") == Address("::1", 80)
    assert Address.parse(":7835", default_host="0.0.0.0") == Address("0.0.0.0", 7835)
    assert str(Address("::1", 80)) == "[::1]:80"


# ---------------------------------------------------------------------------- reconnects


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["graceful", "abrupt"])
async def test_client_reconnects_after_server_restart(how: str) -> None:
    """The server goes away (a graceful shutdown, or its sessions dropped without a word as
    if the process died) and comes back on the same control and ingress ports: the client
    reconnects by itself, gets the same public port, and visitors get through again."""
    async with echo_server() as echo_port, background(make_server()) as first:
        control, ingress = first.value.control_address, first.value.tcp_address
        assert ingress is not None
        async with background(make_client(str(control), echo_port)) as running:
            client = running.value
            assert await roundtrip(ingress.port, b"before") == b"before"
            if how == "abrupt":
                for session in first.value.sessions:
                    session.abort()
            await first.stop()
            await wait_for(lambda: status(client) is not ClientStatus.CONNECTED)
            assert status(client) is ClientStatus.RECONNECTING
            restarted = make_server(bind=str(control), tcp_bind=str(ingress))
            async with background(restarted):
                with anyio.fail_after(10):
                    await client.wait_connected()
                assert client.reconnects >= 1
                assert client.tunnels[0].remote_port == ingress.port
                assert await roundtrip(ingress.port, b"after") == b"after"


@pytest.mark.anyio
async def test_same_client_id_reclaims_its_port_from_a_stale_session() -> None:
    """A client killed without the server noticing leaves its session behind (here: a raw
    peer that did the handshake and went quiet). The same client id reconnecting gets the
    same port at once — the stale session is closed — while any other client id asking for
    that port is refused with PORT_UNAVAILABLE."""
    async with (
        echo_server() as echo_port,
        make_server() as server,
        raw_session(server, client_id="same-id", tunnels=(TunnelRequest("web"),)) as (
            ghost,
            welcome,
        ),
    ):
        port = welcome.tunnels[0].remote_port
        assert port is not None
        assert server.tcp_address is not None
        assert port == server.tcp_address.port

        intruder = make_client(
            server, echo_port, client_id="other-id", tunnel_id="web", remote_port=port
        )
        with anyio.fail_after(2), pytest.raises(RejectedError) as info:
            await intruder.start()
        assert info.value.code is RejectCode.PORT_UNAVAILABLE
        (stale,) = server.sessions

        started = anyio.current_time()
        async with make_client(server, echo_port, client_id="same-id", tunnel_id="web") as new:
            assert anyio.current_time() - started < 1.0, "waited for the stale session"
            assert new.tunnels[0].remote_port == port
            with anyio.fail_after(2):
                await ghost.read_until_closed()  # the stale session was dropped
            assert stale.closed
            assert len(server.sessions) == 1
            assert server.sessions[0] is not stale
            assert await roundtrip(port, b"revived") == b"revived"

            # and with the new session holding it, other ids are still refused
            with anyio.fail_after(2), pytest.raises(RejectedError) as info:
                await make_client(server, echo_port, client_id="other-id", remote_port=port).start()
            assert info.value.code is RejectCode.PORT_UNAVAILABLE


@pytest.mark.anyio
async def test_second_live_client_with_same_id_takes_over() -> None:
    """Two live Client instances with one client id (the first one stops reconnecting): the
    second takes the port over at once and visitors reach the second one's service."""

    async with (
        tcp_service(says(b"first")) as first_port,
        tcp_service(says(b"second")) as second_port,
        make_server() as server,
    ):
        assert server.tcp_address is not None
        port = server.tcp_address.port
        first = make_client(server, first_port, client_id="dup", tunnel_id="t", reconnect=False)
        async with background(first):
            async with await connect(port) as sock:
                assert await sock.receive() == b"first"
            async with make_client(server, second_port, client_id="dup", tunnel_id="t") as second:
                assert second.tunnels[0].remote_port == port
                await wait_for(lambda: first.session is not None and first.session.closed)
                async with await connect(port) as sock:
                    assert await sock.receive() == b"second"


# ---------------------------------------------------------------------------- keep-alive


@pytest.mark.anyio
async def test_client_detects_a_dead_server_and_reconnects() -> None:
    """A server that welcomes the client and then stops answering (no PONG, nothing): the
    client declares it dead after ``ping_timeout`` and connects again by itself."""
    interval, timeout = 0.1, 0.3
    config = SessionConfig(ping_interval=interval, ping_timeout=timeout, handshake_timeout=5)
    accepted: list[float] = []
    second = anyio.Event()

    async def mute_server(sock: SocketStream) -> None:
        async with sock:
            peer = RawPeer(sock)
            await peer.expect(Hello)
            granted = GrantedTunnel("t", TunnelKind.TCP, "tcp://127.0.0.1:1", 1)
            accepted.append(anyio.current_time())  # before the client can start its timer
            await peer.send(Welcome(1, f"mute-{len(accepted)}", (granted,)))
            if len(accepted) == 2:
                second.set()
            await peer.read_until_closed()  # never answers a PING

    async with tcp_service(mute_server) as port, echo_server() as echo_port:
        client = make_client(
            f"127.0.0.1:{port}", echo_port, session=config, backoff=Backoff(0.01, 0.05)
        )
        async with background(client):
            first_session = client.session
            with anyio.fail_after(timeout + 3):
                await second.wait()
            assert first_session is not None
            assert first_session.closed
            assert isinstance(first_session.close_reason, TimeoutError)
            assert client.reconnects >= 1
            assert accepted[1] - accepted[0] >= timeout


@pytest.mark.anyio
async def test_unreachable_server_with_reconnect_off_fails_fast() -> None:
    """``reconnect=False``: a refused connection fails ``start()`` with HandshakeError."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()
    client = make_client(f"127.0.0.1:{port}", 1, reconnect=False)
    with anyio.fail_after(3), pytest.raises(HandshakeError):
        await client.start()
    assert status(client) is ClientStatus.CLOSED


@pytest.mark.anyio
async def test_cancelled_start_closes_its_half_open_connection() -> None:
    """Cancelling ``start()`` while the handshake is pending (a server that accepts and never
    answers) closes that connection instead of leaving it open."""
    closed = anyio.Event()
    accepted = anyio.Event()

    async def black_hole(sock: SocketStream) -> None:
        async with sock:
            accepted.set()
            with contextlib.suppress(anyio.BrokenResourceError):
                async for _ in sock:
                    pass
            closed.set()

    async with tcp_service(black_hole) as port:
        client = make_client(f"127.0.0.1:{port}", 1, session=SessionConfig(handshake_timeout=30))
        with anyio.move_on_after(5) as scope:
            async with anyio.create_task_group() as tg:

                async def cancel_when_accepted() -> None:
                    await accepted.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(cancel_when_accepted)
                await client.start()
        assert not scope.cancelled_caught
        with anyio.fail_after(3):
            await closed.wait()


@pytest.mark.anyio
async def test_handshake_timeout_with_reconnect_off() -> None:
    """A server that accepts but never answers: with ``reconnect=False``, ``start()`` fails
    with HandshakeError once ``handshake_timeout`` has passed, and closes the connection."""
    timeout = 0.3
    closed = anyio.Event()

    async def black_hole(sock: SocketStream) -> None:
        async with sock:
            with contextlib.suppress(anyio.BrokenResourceError):
                async for _ in sock:
                    pass
            closed.set()

    async with tcp_service(black_hole) as port:
        client = make_client(
            f"127.0.0.1:{port}",
            1,
            session=SessionConfig(handshake_timeout=timeout),
            reconnect=False,
        )
        started = anyio.current_time()
        with anyio.fail_after(timeout + 3), pytest.raises(HandshakeError, match="no answer"):
            await client.start()
        assert anyio.current_time() - started >= timeout
        with anyio.fail_after(3):
            await closed.wait()


@pytest.mark.anyio
async def test_client_shutdown_lets_an_in_flight_stream_finish() -> None:
    """``client.shutdown()`` sends GOAWAY: the server opens no new streams to it (a new
    visitor is turned away), while the stream in flight completes — every byte echoed —
    before the client disconnects, well within the client's ``drain_timeout``."""
    first, second = os.urandom(256 << 10), os.urandom(256 << 10)
    result: list[bytes] = []
    turned_away: list[bool] = []
    async with (
        echo_server() as echo_port,
        make_server() as server,
        background(make_client(server, echo_port, drain_timeout=5.0)) as running,
    ):
        client = running.value
        session = client.session
        assert session is not None
        port = client.tunnels[0].remote_port or 0
        (server_session,) = server.sessions

        async def visitor() -> None:
            async with await connect(port) as sock, anyio.create_task_group() as tg:

                async def write() -> None:
                    await sock.send(first)
                    await wait_for(lambda: server_session.going_away)  # GOAWAY arrived
                    async with await connect(port) as late:  # no stream for newcomers
                        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                            await read_until_error(late)
                        turned_away.append(True)
                    await sock.send(second)
                    await sock.send_eof()

                tg.start_soon(write)
                result.append(await receive_all(sock))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(visitor)
                await wait_for(lambda: len(session.streams) == 1)
                started = anyio.current_time()
                await running.stop()
                took = anyio.current_time() - started
        assert session.closed
        assert status(client) is ClientStatus.CLOSED
        await wait_for(lambda: not server.sessions)
    assert result == [first + second]
    assert turned_away == [True]
    assert took < 5.0, "shutdown waited for the drain timeout instead of the stream"


@pytest.mark.anyio
async def test_start_waits_through_failed_attempts_until_the_server_appears() -> None:
    """With reconnect on, ``start()`` keeps trying (backoff) while nothing listens, and
    returns once the server is up."""
    async with echo_server() as echo_port:
        async with make_server() as probe:  # find a control port, then free it
            control = str(probe.control_address)
        client = make_client(control, echo_port)
        up = anyio.Event()
        stop = anyio.Event()

        async def run_client() -> None:
            async with client:
                up.set()
                await stop.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_client)
            await wait_for(lambda: status(client) is ClientStatus.CONNECTING)
            with anyio.move_on_after(0.3):
                await up.wait()
            assert not up.is_set()
            async with make_server(bind=control) as server:
                with anyio.fail_after(5):
                    await up.wait()
                assert client.reconnects == 0  # never connected before: not a reconnect
                assert server.tcp_address is not None
                assert client.tunnels[0].remote_port == server.tcp_address.port
                assert await roundtrip(client.tunnels[0].remote_port or 0, b"up") == b"up"
                stop.set()
