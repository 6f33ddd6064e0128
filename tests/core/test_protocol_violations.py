"""Session-level protocol violations, crafted by hand after a valid handshake.

Each one must close the offending session — GOAWAY with the matching error code, then the
connection — and be logged as a protocol error, while another client's session on the same
server keeps carrying verified data.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable

import anyio
import pytest
from anyio.abc import SocketStream

from ferrotunnel.core import Backoff, SessionConfig
from ferrotunnel.protocol import (
    MAX_WINDOW,
    Data,
    ErrorCode,
    Fin,
    FrameType,
    GoAway,
    GrantedTunnel,
    Hello,
    Open,
    Ping,
    Pong,
    Reset,
    TunnelKind,
    TunnelRequest,
    Welcome,
    WindowUpdate,
    data_header,
)

from .helpers import (
    RawPeer,
    background,
    connect,
    echo_server,
    free_port_range,
    make_client,
    raw_session,
    roundtrip,
    tcp_service,
    tunnel,
    wait_for,
)

pytestmark = pytest.mark.anyio

KiB = 1 << 10
WINDOW = 64 * KiB
#: the server accepts DATA frames larger than its per-stream window, so that a single frame
#: can overrun the window before any credit could be returned
MAX_FRAME = 2 * WINDOW
CONFIG = SessionConfig(window=WINDOW, max_frame=MAX_FRAME, handshake_timeout=5)

Violation = Callable[[RawPeer, int], Awaitable[None]]


async def data_for_unopened_client_stream(peer: RawPeer, stream_id: int) -> None:
    await peer.send(Data(1, b"never opened"))


async def data_for_unopened_server_stream(peer: RawPeer, stream_id: int) -> None:
    await peer.send(Data(stream_id + 2, b"the server never opened this"))


async def open_reusing_an_id(peer: RawPeer, stream_id: int) -> None:
    await peer.send(Open(1, TunnelKind.TCP, "raw"))
    # clients may not open streams: the first OPEN is refused (a stream error, not fatal)
    refused = await peer.expect(Reset, skip=(Ping, Pong, WindowUpdate))
    assert refused == Reset(1, ErrorCode.REFUSED_STREAM)
    await peer.send(Open(1, TunnelKind.TCP, "raw"))  # the same id again: fatal


async def data_beyond_the_window(peer: RawPeer, stream_id: int) -> None:
    await peer.send(Data(stream_id, os.urandom(WINDOW + 1)))


async def window_update_overflow(peer: RawPeer, stream_id: int) -> None:
    await peer.send(WindowUpdate(stream_id, MAX_WINDOW))


async def frame_over_max_frame_size(peer: RawPeer, stream_id: int) -> None:
    # the header alone is enough: the length is refused before any payload is read
    await peer.send_raw(data_header(stream_id, MAX_FRAME + 1))


async def control_frame_over_max_control_size(peer: RawPeer, stream_id: int) -> None:
    header = ((CONFIG.max_control + 1) << 8 | FrameType.OPEN).to_bytes(4, "big")
    await peer.send_raw(header + b"\x00" + (stream_id + 1).to_bytes(4, "big"))


async def data_after_fin(peer: RawPeer, stream_id: int) -> None:
    await peer.send(Fin(stream_id), Data(stream_id, b"too late"))


async def second_hello(peer: RawPeer, stream_id: int) -> None:
    await peer.send(Hello((1,), "again"))


VIOLATIONS: dict[str, tuple[Violation, ErrorCode]] = {
    "data-unopened-client-stream": (data_for_unopened_client_stream, ErrorCode.PROTOCOL_ERROR),
    "data-unopened-server-stream": (data_for_unopened_server_stream, ErrorCode.PROTOCOL_ERROR),
    "open-reused-id": (open_reusing_an_id, ErrorCode.PROTOCOL_ERROR),
    "data-beyond-window": (data_beyond_the_window, ErrorCode.FLOW_CONTROL_ERROR),
    "window-update-overflow": (window_update_overflow, ErrorCode.FLOW_CONTROL_ERROR),
    "frame-over-max-frame-size": (frame_over_max_frame_size, ErrorCode.FRAME_SIZE_ERROR),
    "control-over-max-control": (control_frame_over_max_control_size, ErrorCode.FRAME_SIZE_ERROR),
    "data-after-fin": (data_after_fin, ErrorCode.STREAM_CLOSED),
    "second-hello": (second_hello, ErrorCode.PROTOCOL_ERROR),
}


@pytest.mark.parametrize("name", list(VIOLATIONS))
async def test_violation_closes_only_the_offending_session(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """See the module docstring; the raw peer first has the server open a stream to it
    (a visitor on its tunnel), so stream-level violations have a real stream to abuse."""
    caplog.set_level(logging.INFO, logger="ferrotunnel")
    violate, code = VIOLATIONS[name]
    span = free_port_range(1)
    payload = os.urandom(256 * KiB)
    async with (
        echo_server() as echo_port,
        tunnel(echo_port, session=CONFIG, server_settings={"tcp_port_range": span}) as witness,
    ):
        witness_session = witness.client.session
        assert witness_session is not None
        assert witness.port != span[0]
        async with raw_session(
            witness.server,
            client_id="violator",
            tunnels=(TunnelRequest("raw"),),
            window=WINDOW,
            max_frame=MAX_FRAME,
        ) as (peer, welcome):
            assert welcome.tunnels[0].remote_port == span[0]
            assert len(witness.server.sessions) == 2
            async with await connect(span[0]) as visitor:
                with anyio.fail_after(5):
                    opened = await peer.expect(Open, skip=(Ping, Pong, WindowUpdate))
                    assert opened.tunnel == "raw"
                    assert opened.stream_id % 2 == 0
                    await violate(peer, opened.stream_id)
                    events = await peer.read_until_closed()
                    # the visitor on the dead session is disconnected too
                    with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                        await visitor.receive()
            goaways = [e for e in events if isinstance(e, GoAway)]
            assert len(goaways) == 1, events
            assert goaways[0].code == code, goaways[0]
            assert isinstance(events[-1], GoAway), "nothing may follow GOAWAY"
            await wait_for(lambda: len(witness.server.sessions) == 1)

        # the other session did not notice
        assert witness.client.session is witness_session
        assert not witness_session.closed
        assert witness.server.sessions[0].session_id == witness_session.session_id
        with anyio.fail_after(10):
            assert await roundtrip(witness.port, payload) == payload
    errors = [r for r in caplog.records if "protocol error" in r.getMessage()]
    assert len(errors) == 1, errors
    assert errors[0].levelno == logging.WARNING


async def test_client_speaks_the_protocol_to_a_hand_driven_server(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The client from the wire's point of view: its HELLO carries its settings; a stream
    the server opens is relayed to the local service and back with FIN; a stream for an
    unknown tunnel is refused; a server that breaks the protocol gets GOAWAY, and the
    client reconnects by itself."""
    caplog.set_level(logging.INFO, logger="ferrotunnel")
    config = SessionConfig(window=WINDOW, max_frame=16 * KiB, handshake_timeout=5)
    connections: list[Hello] = []
    second = anyio.Event()
    seen: dict[str, object] = {}

    async def fake_server(sock: SocketStream) -> None:
        async with sock:
            peer = RawPeer(sock)
            hello = await peer.expect(Hello)
            connections.append(hello)
            granted = GrantedTunnel("web", TunnelKind.TCP, "tcp://127.0.0.1:1", 1)
            await peer.send(Welcome(1, f"fake-{len(connections)}", (granted,), WINDOW, 16 * KiB))
            if len(connections) == 2:
                second.set()
                await peer.read_until_closed()
                return
            # a visitor's stream: the client relays it to its local echo service
            await peer.send(Open(2, TunnelKind.TCP, "web", "198.51.100.1", 4242))
            await peer.send(Data(2, b"hello through"), Fin(2))
            echoed = bytearray()
            for _ in range(1000):
                event = await peer.next_event()
                if isinstance(event, Fin):
                    break
                if isinstance(event, Data):
                    echoed += event.data
                else:
                    assert isinstance(event, (Ping, Pong, WindowUpdate)), event
            seen["echoed"] = bytes(echoed)
            # a stream for a tunnel the client does not have
            await peer.send(Open(4, TunnelKind.TCP, "nope"))
            seen["refused"] = await peer.expect(Reset, skip=(Ping, Pong, WindowUpdate))
            # and a violation: DATA for a stream never opened
            await peer.send(Data(8, b"?"))
            seen["closing"] = await peer.read_until_closed()

    async with tcp_service(fake_server) as port, echo_server() as echo_port:
        client = make_client(
            f"127.0.0.1:{port}",
            echo_port,
            session=config,
            tunnel_id="web",
            client_id="wire-client",
            backoff=Backoff(0.01, 0.05),
        )
        async with background(client):
            with anyio.fail_after(10):
                await second.wait()
            assert client.reconnects >= 1
    first_hello = connections[0]
    assert first_hello.client_id == "wire-client"
    assert first_hello.window == WINDOW
    assert first_hello.max_frame == 16 * KiB
    assert first_hello.tunnels == (TunnelRequest("web"),)
    assert connections[1].client_id == "wire-client"  # the same id on reconnect
    assert seen["echoed"] == b"hello through"
    assert seen["refused"] == Reset(4, ErrorCode.REFUSED_STREAM)
    closing = seen["closing"]
    assert isinstance(closing, list)
    goaways = [e for e in closing if isinstance(e, GoAway)]
    assert len(goaways) == 1
    assert goaways[0].code == ErrorCode.PROTOCOL_ERROR
    assert any("protocol error" in r.getMessage() for r in caplog.records)
