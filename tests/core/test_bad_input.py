"""Bad input from the wire, against a real server on 127.0.0.1.

* Garbage instead of a HELLO (random bytes, an HTTP request, a TLS ClientHello, broken
  headers, broken HELLO payloads, truncated frames then EOF): that connection alone is
  closed — with GOAWAY carrying the decoder's verdict when the bytes are wrong, with nothing
  when the peer simply left mid-frame — and the reason is logged.
* Malformed or out-of-place frames after a valid handshake (complementing
  ``test_protocol_violations.py``): unknown types, stream id 0 or the reserved bit, stray
  flags, frames for streams never opened, OPEN with the server's parity, DATA/FIN after the
  peer's own RESET, truncated frames then EOF.
* A Hypothesis fuzz of the handshake: random and mutated HELLO bytes as the first bytes of
  a connection to one live server.
* A flood of bad connections while a witness session keeps moving verified data.

Every test also checks that nothing else happened: the witness session (a real client, a
TCP tunnel to an echo service) is the same object before and after and round-trips data
byte for byte, the server counts only it, and no record at ERROR or above was logged (an
exception escaping a protocol callback or a task would be logged by the event loop).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import struct
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferrotunnel.core import Server, Session
from ferrotunnel.protocol import (
    MAX_PAYLOAD,
    SUPPORTED_VERSIONS,
    Data,
    ErrorCode,
    Event,
    Fin,
    FrameDecoder,
    FrameType,
    GoAway,
    Hello,
    Open,
    Ping,
    Pong,
    ProtocolError,
    Reject,
    RejectCode,
    Reset,
    TunnelKind,
    TunnelRequest,
    Welcome,
    WindowUpdate,
    data_header,
    encode,
    encode_window_update,
)

from .helpers import (
    FAST,
    TOKEN,
    RawPeer,
    TunnelPair,
    connect,
    echo_server,
    free_port_range,
    raw_session,
    roundtrip,
    set_reset_on_close,
    tls_client_hello,
    tunnel,
    wait_for,
)

pytestmark = pytest.mark.anyio

KiB = 1 << 10
MAX_CONTROL = FAST.max_control  # 64 KiB: the server's limit for HELLO/OPEN/... payloads
MAX_FRAME = FAST.max_frame  # 256 KiB: the server's limit for DATA payloads
HANDSHAKE_TIMEOUT = FAST.handshake_timeout
PROTOCOL_CODES = {
    ErrorCode.PROTOCOL_ERROR,
    ErrorCode.FRAME_SIZE_ERROR,
    ErrorCode.FLOW_CONTROL_ERROR,
    ErrorCode.STREAM_CLOSED,
}
_HEADER = struct.Struct("!IBI")  # (length << 8 | type), flags, stream id


# ---------------------------------------------------------------------------- wire helpers


def header(ftype: int, length: int, stream_id: int = 0, flags: int = 0) -> bytes:
    return _HEADER.pack(length << 8 | ftype, flags, stream_id)


def frame(ftype: int, payload: bytes = b"", stream_id: int = 0, flags: int = 0) -> bytes:
    return header(ftype, len(payload), stream_id, flags) + payload


GOOD_HELLO = Hello(SUPPORTED_VERSIONS, "bad-input", token=TOKEN, agent="bad-input-test")
HELLO_WIRE = encode(GOOD_HELLO)


def hello_with(**change: object) -> bytes:
    """A well-framed HELLO whose JSON has ``change`` applied to a valid object."""
    obj = json.loads(HELLO_WIRE[9:])
    obj.update(change)
    return frame(FrameType.HELLO, json.dumps(obj).encode())


def decoder_verdict(wire: bytes) -> ProtocolError | None:
    """What the server's decoder (the server's limits) says of ``wire`` fed in one piece."""
    try:
        FrameDecoder(FAST.limits).feed(wire)
    except ProtocolError as exc:
        return exc
    return None


async def receive_until_closed(sock: SocketStream, limit: int = 1 << 20) -> bytes:
    """What arrives until the connection ends (FIN or RST): it must end."""
    received = bytearray()
    try:
        while len(received) <= limit:
            received += await sock.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
        return bytes(received)
    raise AssertionError(f"the connection stayed open past {limit} bytes")


def local_port(peer: RawPeer) -> int:
    port: int = peer.sock.extra(SocketAttribute.local_port)
    return port


# ---------------------------------------------------------------------------- log checks


def protocol_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "protocol error" in r.getMessage()]


def assert_one_protocol_error(caplog: pytest.LogCaptureFixture, port: int, message: str) -> None:
    """Exactly one protocol error was logged, at WARNING, naming the peer and the reason."""
    errors = protocol_errors(caplog)
    assert len(errors) == 1, [r.getMessage() for r in errors]
    record = errors[0]
    assert record.levelno == logging.WARNING
    assert record.name == "ferrotunnel.core.session"
    assert f"127.0.0.1:{port}" in record.getMessage()
    assert message in record.getMessage()


def assert_nothing_went_wrong(caplog: pytest.LogCaptureFixture) -> None:
    """No ERROR or CRITICAL record: no exception escaped a callback, a task or a plugin."""
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


def close_logged(caplog: pytest.LogCaptureFixture, port: int, during_handshake: bool) -> bool:
    """The server logged (INFO or WARNING) that the connection from ``port`` closed."""
    for record in caplog.records:
        message = record.getMessage()
        if (
            record.name == "ferrotunnel.core.server"
            and logging.INFO <= record.levelno <= logging.WARNING
            and f"127.0.0.1:{port}" in message
            and "closed" in message
            and (
                "during the handshake" in message
                if during_handshake
                else message.startswith("session ")
            )
        ):
            return True
    return False


# ---------------------------------------------------------------------------- the witness


@dataclass
class Witness:
    """A real client's session through which verified data keeps flowing."""

    pair: TunnelPair
    session: Session

    @property
    def server(self) -> Server:
        return self.pair.server

    async def transfer(self, size: int = 256 * KiB) -> None:
        payload = os.urandom(size)
        with anyio.fail_after(10):
            assert await roundtrip(self.pair.port, payload) == payload

    def assert_untouched(self) -> None:
        """Still the one and only session on the server, never replaced."""
        assert self.pair.client.session is self.session
        assert not self.session.closed
        assert self.pair.client.reconnects == 0
        sessions = self.server.sessions
        assert len(sessions) == 1
        assert sessions[0].session_id == self.session.session_id


@asynccontextmanager
async def witnessed_server(**server_settings: object) -> AsyncIterator[Witness]:
    async with echo_server() as echo_port, tunnel(echo_port, server_settings=server_settings) as t:
        session = t.client.session
        assert session is not None
        yield Witness(t, session)


# ---------------------------------------------------------------------------- 1. before HELLO


Send = Callable[[RawPeer], Awaitable[None]]


def sends(*chunks: bytes, eof: bool = False) -> Send:
    async def send(peer: RawPeer) -> None:
        for chunk in chunks:
            await peer.send_raw(chunk)
        if eof:
            await peer.sock.send_eof()

    return send


async def ping_is_answered_then_zero_header(peer: RawPeer) -> None:
    # PING is legal during the handshake (answered with PONG); what follows is not
    await peer.send(Ping(7))
    with anyio.fail_after(5):
        assert await peer.next_event() == Pong(7)
    await peer.send_raw(bytes(9))


@dataclass(frozen=True)
class Garbage:
    send: Send
    #: the GOAWAY code, or None: the peer left mid-frame, nothing to report but the close
    code: ErrorCode | None
    message: str = ""


RANDOM_BYTES = random.Random(6).randbytes(1024)
RANDOM_HELLO_PAYLOAD = frame(FrameType.HELLO, random.Random(7).randbytes(200))
TLS_HELLO = tls_client_hello()


def _type_name(ftype: int) -> str:
    return FrameType(ftype).name if ftype in set(FrameType) else f"type {ftype}"


def _verdict(wire: bytes) -> Garbage:
    verdict = decoder_verdict(wire)
    assert verdict is not None
    return Garbage(sends(wire), verdict.code, str(verdict))


PRE_HANDSHAKE: dict[str, Garbage] = {
    "random-bytes": _verdict(RANDOM_BYTES),
    "random-hello-payload": _verdict(RANDOM_HELLO_PAYLOAD),
    "http-request": Garbage(
        sends(b"GET / HTTP/1.1\r\nHost: tunnel\r\n\r\n"),
        ErrorCode.FRAME_SIZE_ERROR,
        "type 32 frame of 4670804 bytes exceeds limit 65536",
    ),
    "tls-client-hello": Garbage(
        sends(TLS_HELLO),
        ErrorCode.FRAME_SIZE_ERROR,
        # 16 03 01 (a handshake record, TLS 1.0 framing) is the length; the type is the
        # high byte of the record's length, 2 for a ~512-byte ClientHello
        f"{_type_name(TLS_HELLO[3])} frame of {0x160301} bytes exceeds limit 65536",
    ),
    "ssh-banner": Garbage(
        sends(b"SSH-2.0-OpenSSH_9.6\r\n"),
        ErrorCode.FRAME_SIZE_ERROR,
        "type 45 frame of 5460808 bytes exceeds limit 65536",
    ),
    "zero-header": Garbage(sends(bytes(9)), ErrorCode.PROTOCOL_ERROR, "unknown frame type 0"),
    "unknown-type": Garbage(
        sends(header(0x42, 0)), ErrorCode.PROTOCOL_ERROR, "unknown frame type 66"
    ),
    "unknown-type-with-payload": Garbage(
        sends(frame(0xEE, bytes(32), stream_id=3)),
        ErrorCode.PROTOCOL_ERROR,
        "unknown frame type 238",
    ),
    "unknown-type-oversized": Garbage(
        sends(header(0x42, MAX_CONTROL + 1)),
        ErrorCode.FRAME_SIZE_ERROR,
        f"type 66 frame of {MAX_CONTROL + 1} bytes exceeds limit {MAX_CONTROL}",
    ),
    "hello-length-over-limit": Garbage(
        sends(header(FrameType.HELLO, MAX_CONTROL + 1)),
        ErrorCode.FRAME_SIZE_ERROR,
        f"HELLO frame of {MAX_CONTROL + 1} bytes exceeds limit {MAX_CONTROL}",
    ),
    "hello-length-max-u24": Garbage(
        sends(header(FrameType.HELLO, MAX_PAYLOAD)),
        ErrorCode.FRAME_SIZE_ERROR,
        f"HELLO frame of {MAX_PAYLOAD} bytes exceeds limit {MAX_CONTROL}",
    ),
    "data-length-over-limit": Garbage(
        sends(data_header(1, MAX_FRAME + 1)),
        ErrorCode.FRAME_SIZE_ERROR,
        f"DATA frame of {MAX_FRAME + 1} bytes exceeds limit {MAX_FRAME}",
    ),
    "truncated-header-then-eof": Garbage(sends(HELLO_WIRE[:5], eof=True), None),
    "header-only-then-eof": Garbage(sends(HELLO_WIRE[:9], eof=True), None),
    "truncated-hello-then-eof": Garbage(sends(HELLO_WIRE[:-7], eof=True), None),
    "hello-invalid-json": Garbage(
        sends(frame(FrameType.HELLO, b"{not json")),
        ErrorCode.PROTOCOL_ERROR,
        "HELLO is not valid JSON",
    ),
    "hello-not-utf8": Garbage(
        sends(frame(FrameType.HELLO, b'{"versions":[1],"client_id":"\xff"}')),
        ErrorCode.PROTOCOL_ERROR,
        "HELLO is not UTF-8",
    ),
    "hello-json-array": Garbage(
        sends(frame(FrameType.HELLO, b"[1]")),
        ErrorCode.PROTOCOL_ERROR,
        "HELLO must be a JSON object",
    ),
    "hello-versions-string": Garbage(
        sends(hello_with(versions="1")),
        ErrorCode.PROTOCOL_ERROR,
        "HELLO.versions must be a list",
    ),
    "hello-versions-empty": Garbage(
        sends(hello_with(versions=[])),
        ErrorCode.PROTOCOL_ERROR,
        "HELLO.versions must be a non-empty list of versions",
    ),
    "hello-client-id-number": Garbage(
        sends(hello_with(client_id=7)),
        ErrorCode.PROTOCOL_ERROR,
        "HELLO.client_id must be a string",
    ),
    "hello-client-id-missing": Garbage(
        sends(frame(FrameType.HELLO, b'{"versions":[1]}')),
        ErrorCode.PROTOCOL_ERROR,
        "HELLO.client_id must be a string",
    ),
    "hello-token-number": Garbage(
        sends(hello_with(token=123)), ErrorCode.PROTOCOL_ERROR, "HELLO.token must be a string"
    ),
    "hello-window-negative": Garbage(
        sends(hello_with(window=-1)),
        ErrorCode.PROTOCOL_ERROR,
        "HELLO.window must be an integer within 0..2147483647",
    ),
    "hello-window-bool": Garbage(
        sends(hello_with(window=True)),
        ErrorCode.PROTOCOL_ERROR,
        "HELLO.window must be an integer within 0..2147483647",
    ),
    "hello-tunnels-object": Garbage(
        sends(hello_with(tunnels={"t": 1})),
        ErrorCode.PROTOCOL_ERROR,
        "HELLO.tunnels must be a list",
    ),
    "hello-tunnel-kind-unknown": Garbage(
        sends(hello_with(tunnels=[{"name": "t", "kind": "udp"}])),
        ErrorCode.PROTOCOL_ERROR,
        "HELLO.tunnels[].kind must be a known value",
    ),
    "hello-lone-surrogate": Garbage(
        sends(hello_with(client_id="\ud800")),
        ErrorCode.PROTOCOL_ERROR,
        "HELLO contains an unpaired surrogate",
    ),
    "hello-with-flags": Garbage(
        sends(HELLO_WIRE[:4] + b"\x01" + HELLO_WIRE[5:]),
        ErrorCode.PROTOCOL_ERROR,
        "HELLO frame with unknown flags 0x1",
    ),
    "hello-on-a-stream": Garbage(
        sends(HELLO_WIRE[:5] + (1).to_bytes(4, "big") + HELLO_WIRE[9:]),
        ErrorCode.PROTOCOL_ERROR,
        "HELLO frame on stream 1, must be 0",
    ),
    "welcome-instead-of-hello": Garbage(
        sends(encode(Welcome(1, "forged"))),
        ErrorCode.PROTOCOL_ERROR,
        "unexpected Welcome frame during the handshake",
    ),
    "open-instead-of-hello": Garbage(
        sends(encode(Open(1, TunnelKind.TCP, "t"))),
        ErrorCode.PROTOCOL_ERROR,
        "unexpected Open frame during the handshake",
    ),
    "data-instead-of-hello": Garbage(
        sends(encode(Data(1, b"early"))),
        ErrorCode.PROTOCOL_ERROR,
        "DATA for stream 1, which was never opened",
    ),
    "ping-answered-then-zero-header": Garbage(
        ping_is_answered_then_zero_header, ErrorCode.PROTOCOL_ERROR, "unknown frame type 0"
    ),
}


@pytest.mark.parametrize("case", list(PRE_HANDSHAKE))
async def test_garbage_instead_of_hello_closes_only_that_connection(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Bytes that are not a HELLO get exactly ``GOAWAY(0, code, reason)`` and the connection
    closed, with one WARNING naming the peer and the reason; bytes cut short by the peer's
    EOF get a silent close and an INFO line. Either way no session is created, and the
    witness session neither notices nor stops carrying data."""
    caplog.set_level(logging.INFO, logger="ferrotunnel")
    garbage = PRE_HANDSHAKE[case]
    async with witnessed_server() as witness:
        async with await connect(witness.server.control_address.port) as sock:
            peer = RawPeer(sock)
            port = local_port(peer)
            await garbage.send(peer)
            # well before the handshake timeout (5 s): closed because of the bytes
            with anyio.fail_after(HANDSHAKE_TIMEOUT / 2):
                events = await peer.read_until_closed()
        if garbage.code is None:
            assert events == []
            assert protocol_errors(caplog) == []
        else:
            assert events == [GoAway(0, garbage.code, garbage.message)]
            assert_one_protocol_error(caplog, port, garbage.message)
        await wait_for(lambda: close_logged(caplog, port, during_handshake=True))
        witness.assert_untouched()
        await witness.transfer()
        witness.assert_untouched()
    assert_nothing_went_wrong(caplog)


# ---------------------------------------------------------------------------- 2. after WELCOME


Violation = Callable[[RawPeer, int], Awaitable[None]]


def raw(make: Callable[[int], bytes]) -> Violation:
    """A violation that sends the bytes ``make(stream_id)``."""

    async def violate(peer: RawPeer, stream_id: int) -> None:
        await peer.send_raw(make(stream_id))

    return violate


def raw_then_eof(make: Callable[[int], bytes]) -> Violation:
    async def violate(peer: RawPeer, stream_id: int) -> None:
        await peer.send_raw(make(stream_id))
        await peer.sock.send_eof()

    return violate


async def open_id_going_backwards(peer: RawPeer, stream_id: int) -> None:
    await peer.send(Open(3, TunnelKind.TCP, "raw"))
    # clients may not open streams: refused, a stream error (and id 3 is now used)
    refused = await peer.expect(Reset, skip=(Ping, Pong, WindowUpdate))
    assert refused == Reset(3, ErrorCode.REFUSED_STREAM)
    await peer.send(Open(1, TunnelKind.TCP, "raw"))  # ids must only grow: fatal


@dataclass(frozen=True)
class Bad:
    violate: Violation
    #: GOAWAY code; None: the peer ended the connection mid-frame, a clean close
    code: ErrorCode | None
    #: the reason, ``{sid}`` standing for the server-opened stream's id
    message: str = ""
    #: GOAWAY's last_stream_id: the highest stream id the peer opened
    last: int = 0
    #: what the visitor may receive before it is cut off (a DATA frame's first piece)
    delivered: bytes = b""


_OPEN_JSON = b'{"kind":"tcp","tunnel":"raw"}'
_U32_ONE = (1).to_bytes(4, "big")

AFTER_HANDSHAKE: dict[str, Bad] = {
    "unknown-frame-type": Bad(
        raw(lambda sid: header(0x42, 0)), ErrorCode.PROTOCOL_ERROR, "unknown frame type 66"
    ),
    "unknown-frame-type-on-stream": Bad(
        raw(lambda sid: frame(0xFF, b"x" * 100, sid)),
        ErrorCode.PROTOCOL_ERROR,
        "unknown frame type 255",
    ),
    "unknown-frame-type-oversized": Bad(
        raw(lambda sid: header(0x42, MAX_CONTROL + 1, sid)),
        ErrorCode.FRAME_SIZE_ERROR,
        f"type 66 frame of {MAX_CONTROL + 1} bytes exceeds limit {MAX_CONTROL}",
    ),
    "garbage-bytes": Bad(
        raw(lambda sid: b"GET / HTTP/1.1\r\n\r\n"),
        ErrorCode.FRAME_SIZE_ERROR,
        "type 32 frame of 4670804 bytes exceeds limit 65536",
    ),
    "data-after-peer-reset": Bad(
        raw(lambda sid: encode(Reset(sid, ErrorCode.CANCEL)) + encode(Data(sid, b"late"))),
        ErrorCode.STREAM_CLOSED,
        "DATA for closed stream {sid}",
    ),
    "fin-after-peer-reset": Bad(
        raw(lambda sid: encode(Reset(sid, ErrorCode.CANCEL)) + encode(Fin(sid))),
        ErrorCode.STREAM_CLOSED,
        "FIN for closed stream {sid}",
    ),
    "open-with-the-server-stream-id": Bad(
        raw(lambda sid: encode(Open(sid, TunnelKind.TCP, "raw"))),
        ErrorCode.PROTOCOL_ERROR,
        "OPEN with invalid or reused stream id {sid}",
    ),
    "open-id-going-backwards": Bad(
        open_id_going_backwards,
        ErrorCode.PROTOCOL_ERROR,
        "OPEN with invalid or reused stream id 1",
        last=3,
    ),
    "window-update-unopened-server-stream": Bad(
        raw(lambda sid: encode_window_update(sid + 2, 1)),
        ErrorCode.PROTOCOL_ERROR,
        "WINDOW_UPDATE for stream {sid+2}, which was never opened",
    ),
    "reset-unopened-client-stream": Bad(
        raw(lambda sid: encode(Reset(5))),
        ErrorCode.PROTOCOL_ERROR,
        "RESET for stream 5, which was never opened",
    ),
    "fin-unopened-server-stream": Bad(
        raw(lambda sid: encode(Fin(sid + 2))),
        ErrorCode.PROTOCOL_ERROR,
        "FIN for stream {sid+2}, which was never opened",
    ),
    "data-on-stream-0": Bad(
        raw(lambda sid: frame(FrameType.DATA, b"x", 0)),
        ErrorCode.PROTOCOL_ERROR,
        "DATA frame on invalid stream id 0",
    ),
    "window-update-on-stream-0": Bad(
        raw(lambda sid: frame(FrameType.WINDOW_UPDATE, _U32_ONE, 0)),
        ErrorCode.PROTOCOL_ERROR,
        "WINDOW_UPDATE frame on invalid stream id 0",
    ),
    "open-on-stream-0": Bad(
        raw(lambda sid: frame(FrameType.OPEN, _OPEN_JSON, 0)),
        ErrorCode.PROTOCOL_ERROR,
        "OPEN frame on invalid stream id 0",
    ),
    "reset-on-stream-0": Bad(
        raw(lambda sid: frame(FrameType.RESET, _U32_ONE, 0)),
        ErrorCode.PROTOCOL_ERROR,
        "RESET frame on invalid stream id 0",
    ),
    "data-with-the-reserved-bit": Bad(
        raw(lambda sid: frame(FrameType.DATA, b"x", sid | 1 << 31)),
        ErrorCode.PROTOCOL_ERROR,
        "DATA frame on invalid stream id {sid|2**31}",
    ),
    "ping-on-a-stream": Bad(
        raw(lambda sid: frame(FrameType.PING, bytes(8), sid)),
        ErrorCode.PROTOCOL_ERROR,
        "PING frame on stream {sid}, must be 0",
    ),
    "goaway-on-a-stream": Bad(
        raw(lambda sid: frame(FrameType.GOAWAY, bytes(8), sid)),
        ErrorCode.PROTOCOL_ERROR,
        "GOAWAY frame on stream {sid}, must be 0",
    ),
    "data-with-flags": Bad(
        raw(lambda sid: frame(FrameType.DATA, b"x", sid, flags=0x01)),
        ErrorCode.PROTOCOL_ERROR,
        "DATA frame with unknown flags 0x1",
    ),
    "window-update-with-flags": Bad(
        raw(lambda sid: frame(FrameType.WINDOW_UPDATE, _U32_ONE, sid, flags=0x80)),
        ErrorCode.PROTOCOL_ERROR,
        "WINDOW_UPDATE frame with unknown flags 0x80",
    ),
    "ping-with-flags": Bad(
        raw(lambda sid: frame(FrameType.PING, bytes(8), 0, flags=0xFF)),
        ErrorCode.PROTOCOL_ERROR,
        "PING frame with unknown flags 0xff",
    ),
    "fin-with-a-payload": Bad(
        raw(lambda sid: frame(FrameType.FIN, b"x", sid)),
        ErrorCode.FRAME_SIZE_ERROR,
        "FIN payload must be 0 bytes, got 1",
    ),
    "window-update-of-zero": Bad(
        raw(lambda sid: frame(FrameType.WINDOW_UPDATE, bytes(4), sid)),
        ErrorCode.FLOW_CONTROL_ERROR,
        "window increment 0 out of range",
    ),
    "window-update-above-max-window": Bad(
        raw(lambda sid: frame(FrameType.WINDOW_UPDATE, (1 << 31).to_bytes(4, "big"), sid)),
        ErrorCode.FLOW_CONTROL_ERROR,
        f"window increment {1 << 31} out of range",
    ),
    "open-invalid-json": Bad(
        raw(lambda sid: frame(FrameType.OPEN, b"{", 1)),
        ErrorCode.PROTOCOL_ERROR,
        "OPEN is not valid JSON",
    ),
    "welcome-after-handshake": Bad(
        raw(lambda sid: encode(Welcome(1, "forged"))),
        ErrorCode.PROTOCOL_ERROR,
        "unexpected Welcome frame after handshake",
    ),
    "reject-after-handshake": Bad(
        raw(lambda sid: encode(Reject(RejectCode.BAD_REQUEST, "no"))),
        ErrorCode.PROTOCOL_ERROR,
        "unexpected Reject frame after handshake",
    ),
    "truncated-header-then-eof": Bad(raw_then_eof(lambda sid: data_header(sid, 10)[:5]), None),
    "truncated-window-update-then-eof": Bad(
        raw_then_eof(lambda sid: encode_window_update(sid, 1000)[:-2]), None
    ),
    # the first piece of a DATA frame is relayed as it arrives (frames are streamed)
    "truncated-data-then-eof": Bad(
        raw_then_eof(lambda sid: data_header(sid, 100) + b"x" * 50), None, delivered=b"x" * 50
    ),
    "truncated-open-then-eof": Bad(
        raw_then_eof(lambda sid: encode(Open(1, TunnelKind.TCP, "raw"))[:-3]), None
    ),
}


def _expected_message(template: str, stream_id: int) -> str:
    return (
        template.replace("{sid}", str(stream_id))
        .replace("{sid+2}", str(stream_id + 2))
        .replace("{sid|2**31}", str(stream_id | 1 << 31))
    )


@pytest.mark.parametrize("name", list(AFTER_HANDSHAKE))
async def test_bad_frame_after_handshake_closes_only_that_session(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """After a valid handshake, with a visitor's stream open (the server opened it): a
    malformed or out-of-place frame ends that session with exactly one GOAWAY (the right
    code and reason; nothing after it) and one WARNING; a frame cut short by the peer's EOF
    ends it with no GOAWAY, no protocol error, and an INFO line. The visitor on the dead
    session is disconnected; the witness carries on."""
    caplog.set_level(logging.INFO, logger="ferrotunnel")
    bad = AFTER_HANDSHAKE[name]
    span = free_port_range(1)
    async with witnessed_server(tcp_port_range=span) as witness:
        async with raw_session(
            witness.server, client_id="violator", tunnels=(TunnelRequest("raw"),)
        ) as (peer, welcome):
            port = local_port(peer)
            assert welcome.tunnels[0].remote_port == span[0]
            assert len(witness.server.sessions) == 2
            async with await connect(span[0]) as visitor:
                with anyio.fail_after(5):
                    opened = await peer.expect(Open, skip=(Ping, Pong, WindowUpdate))
                    assert (opened.tunnel, opened.stream_id) == ("raw", 2)
                    await bad.violate(peer, opened.stream_id)
                    events = await peer.read_until_closed()
                    # the visitor of the dead session is cut off
                    received = await receive_until_closed(visitor)
            assert bad.delivered.startswith(received)
            goaways = [e for e in events if isinstance(e, GoAway)]
            if bad.code is None:
                assert goaways == []
                assert protocol_errors(caplog) == []
            else:
                message = _expected_message(bad.message, opened.stream_id)
                assert goaways == [GoAway(bad.last, bad.code, message)], events
                assert events[-1] == goaways[0], "nothing may follow GOAWAY"
                assert_one_protocol_error(caplog, port, message)
            await wait_for(lambda: len(witness.server.sessions) == 1)
            await wait_for(lambda: close_logged(caplog, port, during_handshake=False))
        witness.assert_untouched()
        await witness.transfer()
        witness.assert_untouched()
    assert_nothing_went_wrong(caplog)


async def test_late_data_after_a_local_reset_is_tolerated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The other half of "data after RESET": when the *server* reset a stream (its visitor
    vanished), DATA and FIN the peer had already sent for it are dropped, not a violation
    (they crossed the RESET on the wire). The session stays up — it answers PING and
    carries the next visitor's stream, FIN included — and no protocol error is logged."""
    caplog.set_level(logging.INFO, logger="ferrotunnel")
    span = free_port_range(1)
    async with witnessed_server(tcp_port_range=span) as witness:
        async with raw_session(
            witness.server, client_id="late", tunnels=(TunnelRequest("raw"),)
        ) as (peer, _):
            skip = (Ping, Pong, WindowUpdate)
            with anyio.fail_after(5):
                visitor = await connect(span[0])
                opened = await peer.expect(Open, skip=skip)
                set_reset_on_close(visitor)
                await visitor.aclose()  # RST: the server resets the stream
                assert await peer.expect(Reset, skip=skip) == Reset(
                    opened.stream_id, ErrorCode.CONNECT_ERROR
                )
                await peer.send(Data(opened.stream_id, b"in flight"), Fin(opened.stream_id))
                await peer.send(Ping(99))
                assert await peer.expect(Pong, skip=(Ping, WindowUpdate)) == Pong(99)
                # the session still works: a new visitor's stream carries data, then EOF
                async with await connect(span[0]) as second:
                    reopened = await peer.expect(Open, skip=skip)
                    assert reopened.stream_id == opened.stream_id + 2
                    await peer.send(Data(reopened.stream_id, b"alive"), Fin(reopened.stream_id))
                    assert await second.receive() == b"alive"
                    with pytest.raises(anyio.EndOfStream):
                        await second.receive()
            assert len(witness.server.sessions) == 2
        await wait_for(lambda: len(witness.server.sessions) == 1)
        witness.assert_untouched()
        await witness.transfer()
    assert protocol_errors(caplog) == []
    assert_nothing_went_wrong(caplog)


# ---------------------------------------------------------------------------- 3. fuzzing


FUZZ_HELLO = encode(
    Hello(
        SUPPORTED_VERSIONS,
        "fuzzer",
        (TunnelRequest("fuzz"),),
        token=TOKEN,
        window=64 * KiB,
        max_frame=16 * KiB,
        agent="fuzz",
    )
)


@st.composite
def mutated_hello(draw: st.DrawFn) -> bytes:
    """A valid HELLO frame with a few byte-level edits: flips, overwrites, insertions,
    deletions, truncation (length header included)."""
    wire = bytearray(FUZZ_HELLO)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(0, len(wire) - 1)))
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if op == "flip" and wire:
            wire[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and wire:
            wire[at] = draw(st.integers(0, 255))
        elif op == "insert":
            wire[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del wire[at : at + draw(st.integers(1, 16))]
        elif op == "truncate":
            del wire[at:]
    return bytes(wire)


@st.composite
def plausible_frames(draw: st.DrawFn) -> bytes:
    """One to three frames with a sane-looking header (any type, flags, stream, a small
    length) and random payloads, the last possibly cut."""
    wire = b""
    for _ in range(draw(st.integers(1, 3))):
        ftype = draw(st.one_of(st.sampled_from(list(FrameType)), st.integers(0, 255)))
        flags = draw(st.sampled_from([0, 0, 0, 1, 0x80]))
        stream_id = draw(st.sampled_from([0, 0, 1, 2, 3, 1 << 31]))
        payload = draw(st.binary(max_size=64))
        wire += frame(int(ftype), payload, stream_id, flags)
    cut = draw(st.integers(0, len(wire)))
    return wire[: max(1, cut)] if draw(st.booleans()) else wire


FIRST_BYTES = st.one_of(st.binary(min_size=1, max_size=512), mutated_hello(), plausible_frames())
FUZZ_REPLIES = (Welcome, Reject, GoAway, Pong)
BACKENDS = [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    pytest.param(("trio", {}), id="trio"),
]


class _Records(logging.Handler):
    """Records of every thread (the server runs in the portal's thread)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock:
            self.records.append(record)

    def snapshot(self) -> list[logging.LogRecord]:
        with self._lock:
            return list(self.records)


async def _probe(server: Server, wire: bytes) -> tuple[int, list[Event]]:
    """Send ``wire`` as the first bytes of a connection, then EOF; every frame the server
    sends until it closes the connection — which it must, well before the handshake
    timeout: because of the bytes, or of the EOF."""
    address = server.control_address
    with anyio.fail_after(HANDSHAKE_TIMEOUT / 2):
        async with await anyio.connect_tcp(address.host, address.port) as sock:
            peer = RawPeer(sock)
            with contextlib.suppress(anyio.BrokenResourceError, ConnectionError):
                await peer.send_raw(wire)
                await sock.send_eof()
            return local_port(peer), await peer.read_until_closed()


async def _good_client(server: Server) -> None:
    """A well-behaved client still gets in (and leaves)."""
    with anyio.fail_after(5):
        async with raw_session(server, client_id="good") as (_, welcome):
            assert welcome.session_id
        await wait_for(lambda: len(server.sessions) == 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fuzzed_handshake_against_a_live_server(backend: tuple[str, dict[str, bool]]) -> None:
    """Random bytes, mutated HELLO frames and plausible-looking frames as the first bytes
    of a connection, then EOF, all against one server (run in a thread of its own). For
    every example: the server closes the connection; whatever it sent decodes to whole
    frames among WELCOME/REJECT/GOAWAY/PONG, with nothing after GOAWAY or REJECT; a GOAWAY
    carries a protocol error code and matches a WARNING naming this peer and the reason;
    input the decoder refuses never passes silently (GOAWAY, or REJECT of a HELLO read
    first); a good client can connect right after. At the end the witness session is the
    same one and round-trips verified data, and nothing was logged at ERROR."""
    name, options = backend
    records = _Records()
    logger = logging.getLogger("ferrotunnel")
    logger.addHandler(records)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    examples = 0
    try:
        with (
            start_blocking_portal(name, options) as portal,
            portal.wrap_async_context_manager(witnessed_server()) as witness,
        ):
            server = witness.server

            @settings(
                max_examples=50,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            )
            @given(wire=FIRST_BYTES)
            def check(wire: bytes) -> None:
                nonlocal examples
                examples += 1
                port, events = portal.call(_probe, server, wire)
                assert all(isinstance(e, FUZZ_REPLIES) for e in events), events
                final = [i for i, e in enumerate(events) if isinstance(e, GoAway | Reject)]
                assert final in ([], [len(events) - 1]), events
                goaways = [e for e in events if isinstance(e, GoAway)]
                logged = [
                    r.getMessage()
                    for r in records.snapshot()
                    if "protocol error" in r.getMessage() and f"127.0.0.1:{port}:" in r.getMessage()
                ]
                if goaways:
                    (goaway,) = goaways
                    assert goaway.code in PROTOCOL_CODES
                    assert goaway.message
                    assert len(logged) == 1
                    assert goaway.message in logged[0]
                else:
                    assert logged == []
                if decoder_verdict(wire) is not None:
                    assert any(isinstance(e, GoAway | Reject) for e in events), events
                portal.call(_good_client, server)

            check()
            portal.call(witness.transfer)
            portal.call(witness.assert_untouched)
    finally:
        logger.removeHandler(records)
        logger.setLevel(old_level)
    assert examples >= 50
    errors = [r for r in records.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


# ---------------------------------------------------------------------------- 4. a flood


#: the flood goes on until this many bad connections were made and the witness moved
#: ``FLOOD_MIN_TRANSFERS`` payloads meanwhile; never past the cap or the time limit
FLOOD_CONNECTIONS = 200
FLOOD_CAP = 1000
FLOOD_SECONDS = 5.0
FLOOD_MIN_TRANSFERS = 3
FLOOD_WORKERS = 4


async def _garbage_first(server: Server, n: int) -> bool:
    async with await connect(server.control_address.port) as sock:
        peer = RawPeer(sock)
        await peer.send_raw(b"\xff" + random.Random(n).randbytes(64))
        events = await peer.read_until_closed()
    assert [type(e) for e in events] == [GoAway]
    return True


async def _bad_frame_after_welcome(server: Server, n: int) -> bool:
    async with raw_session(server, client_id=f"flood-{n}") as (peer, _):
        await peer.send_raw(header(0x42 + n % 100, 0))
        events = await peer.read_until_closed()
    assert GoAway(0, ErrorCode.PROTOCOL_ERROR, f"unknown frame type {0x42 + n % 100}") in events
    return True


async def _firehose(server: Server, n: int) -> bool:
    """A session that sends garbage without pause: closed after the first bad bytes."""
    async with raw_session(server, client_id=f"hose-{n}") as (peer, _):
        junk = random.Random(n).randbytes(16 * KiB)
        with contextlib.suppress(anyio.BrokenResourceError, ConnectionError):
            for _ in range(64):
                await peer.send_raw(junk)
        events = await peer.read_until_closed()
    assert all(isinstance(e, Ping | Pong | GoAway | WindowUpdate) for e in events)
    return True


async def _truncated_then_eof(server: Server, n: int) -> bool:
    async with await connect(server.control_address.port) as sock:
        peer = RawPeer(sock)
        await peer.send_raw(HELLO_WIRE[: 1 + n % (len(HELLO_WIRE) - 1)])
        await sock.send_eof()
        assert await peer.read_until_closed() == []
    return False


FLOOD_SHAPES = (_garbage_first, _bad_frame_after_welcome, _firehose, _truncated_then_eof)


async def test_a_flood_of_bad_connections_leaves_a_working_session_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Four workers open 200 bad connections (more while the witness has not yet moved 3
    payloads; at most 1000, for at most 5 s): garbage before HELLO, an unknown frame right
    after WELCOME, a firehose of garbage, truncated HELLOs then EOF. Meanwhile the witness
    keeps round-tripping random 64 KiB payloads, each compared byte for byte. Every bad
    connection is closed by the server; exactly one protocol error is
    logged per violating connection; the witness made progress during the flood, never
    reconnected, and is again the server's only session."""
    caplog.set_level(logging.INFO, logger="ferrotunnel")
    async with witnessed_server() as witness:
        started = 0
        violators = 0
        transfers = 0
        stop = anyio.Event()

        async def keep_transferring() -> None:
            nonlocal transfers
            rng = random.Random(1)
            while not stop.is_set() and transfers < 100_000:
                payload = rng.randbytes(64 * KiB)
                with anyio.fail_after(10):
                    assert await roundtrip(witness.pair.port, payload) == payload
                transfers += 1

        def flooding(deadline: float, before: int) -> bool:
            if started >= FLOOD_CAP or anyio.current_time() >= deadline:
                return False
            return started < FLOOD_CONNECTIONS or transfers - before < FLOOD_MIN_TRANSFERS

        async def flood(deadline: float, before: int) -> None:
            nonlocal started, violators
            while flooding(deadline, before):
                n = started
                started += 1
                with anyio.fail_after(5):
                    violated = await FLOOD_SHAPES[n % len(FLOOD_SHAPES)](witness.server, n)
                violators += violated  # (not `+= await`: that would read the old count)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(keep_transferring)
                await wait_for(lambda: transfers >= 1)
                before = transfers
                deadline = anyio.current_time() + FLOOD_SECONDS
                async with anyio.create_task_group() as flooders:
                    for _ in range(FLOOD_WORKERS):
                        flooders.start_soon(flood, deadline, before)
                during = transfers - before
                stop.set()
        assert started >= 50, f"only {started} bad connections in {FLOOD_SECONDS} s"
        assert during >= FLOOD_MIN_TRANSFERS, f"the witness moved {during} payloads meanwhile"
        await wait_for(lambda: len(witness.server.sessions) == 1)
        witness.assert_untouched()
        await witness.transfer()
        assert len(protocol_errors(caplog)) == violators
    assert_nothing_went_wrong(caplog)
