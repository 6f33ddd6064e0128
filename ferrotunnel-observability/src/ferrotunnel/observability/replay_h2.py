"""Replaying an HTTP/2 (h2c, gRPC) request: one stream on a connection of its own.

The request goes out as an HTTP/2 client with prior knowledge would send it: the preface,
SETTINGS (no server push, the largest receive window, so the answer never waits for us),
HEADERS (``:authority`` from the captured Host field) and the body in DATA frames. The body
is sent as the origin's flow-control windows allow (65,535 bytes until its SETTINGS and
WINDOW_UPDATEs say more); its SETTINGS and PINGs are acknowledged. Everything sent and
received is shown to the replay's :class:`~.capture.ExchangeTap`, which records it through
its :class:`~.http2.H2Capture` like any other HTTP/2 exchange.
"""

from __future__ import annotations

import struct

import anyio
import anyio.abc

from ferrotunnel.core.h2wire import (
    ACK,
    DATA,
    END_STREAM,
    FRAME_HEADER,
    GOAWAY,
    INITIAL_MAX_FRAME_SIZE,
    INITIAL_WINDOW,
    MAX_WINDOW,
    PING,
    PREFACE,
    SETTINGS,
    SETTINGS_ENABLE_PUSH,
    SETTINGS_INITIAL_WINDOW_SIZE,
    WINDOW_UPDATE,
    frame,
    header_frames,
)

from .capture import ExchangeTap
from .exchange import Exchange
from .replay import Edits, request_parts, resent

__all__ = ["build_h2_request", "exchange_h2"]

_STREAM = 1


def build_h2_request(original: Exchange, edits: Edits, *, scheme: str) -> tuple[bytes, bytes]:
    """(the connection's opening and the request's HEADERS, the body to send in DATA)."""
    import hpack

    method, target, headers, body = request_parts(original, edits)
    fields = [(":method", method), (":scheme", scheme), (":path", target)]
    authority = next((_value(v) for k, v in headers if k.lower() == "host"), None)
    if authority:
        fields.append((":authority", authority))
    for name, value in headers:
        key = name.lower()  # HTTP/2 field names are lower case
        if key != "host" and resent(name, value, http2=True):
            fields.append((key, "trailers" if key == "te" else _value(value)))
    # as bytes: hpack would encode text as UTF-8, and heads are Latin-1 (see export._raw);
    # without Huffman coding, whose encoder takes seconds for a value of a few hundred KB
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in fields]
    block = hpack.Encoder().encode(raw, huffman=False)
    settings = struct.pack(
        "!HIHI", SETTINGS_ENABLE_PUSH, 0, SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW
    )
    opening = PREFACE + frame(SETTINGS, 0, 0, settings)
    opening += frame(WINDOW_UPDATE, 0, 0, struct.pack("!I", MAX_WINDOW - INITIAL_WINDOW))
    opening += header_frames(_STREAM, block, 0 if body else END_STREAM)
    return opening, body


def _value(text: str) -> str:
    """A field value as HTTP/2 takes it: without surrounding spaces and tabs (RFC 9113,
    8.2.1: an origin resets the stream of a request with one), as HTTP/1.1 reads it."""
    return text.strip(" \t")


class _Sender:
    """The request body, sent as the origin's windows open."""

    def __init__(self, body: bytes) -> None:
        self.body = memoryview(body)
        self.sent = 0
        self.connection_window = self.stream_window = INITIAL_WINDOW
        self.initial_window = INITIAL_WINDOW

    def frames(self) -> bytes:
        """DATA frames for as much of the body as the windows allow now."""
        out = bytearray()
        while self.sent < len(self.body):
            size = min(
                INITIAL_MAX_FRAME_SIZE,
                self.connection_window,
                self.stream_window,
                len(self.body) - self.sent,
            )
            if size <= 0:
                break
            chunk = self.body[self.sent : self.sent + size]
            self.sent += size
            self.connection_window -= size
            self.stream_window -= size
            out += frame(DATA, END_STREAM if self.sent == len(self.body) else 0, _STREAM, chunk)
        return bytes(out)

    def control(self, kind: int, flags: int, stream: int, payload: bytes) -> bytes:
        """What to answer one of the origin's frames with (windows noted)."""
        if kind == SETTINGS and not flags & ACK:
            for at in range(0, len(payload) - len(payload) % 6, 6):
                key, value = struct.unpack_from("!HI", payload, at)
                if key == SETTINGS_INITIAL_WINDOW_SIZE:
                    self.stream_window += value - self.initial_window
                    self.initial_window = value
            return frame(SETTINGS, ACK, 0)
        if kind == PING and not flags & ACK:
            return frame(PING, ACK, 0, payload)
        if kind == WINDOW_UPDATE and len(payload) == 4:
            increment = struct.unpack("!I", payload)[0] & 0x7FFFFFFF
            if stream == 0:
                self.connection_window += increment
            elif stream == _STREAM:
                self.stream_window += increment
        return b""


async def exchange_h2(
    sock: anyio.abc.ByteStream, tap: ExchangeTap, opening: bytes, body: bytes
) -> str | None:
    """Sends the request (``tap`` has seen ``opening`` already) and feeds the answer to
    ``tap`` until the stream is over; returns why the connection broke, if it did."""
    sender = _Sender(body)
    data_frames = sender.frames()
    tap.to_origin(data_frames)
    buffer = bytearray()
    try:
        await sock.send(opening + data_frames)
        while not tap.idle:
            try:
                data = await sock.receive()
            except anyio.EndOfStream:
                return None  # the tap's ``closed`` tells an unanswered request
            tap.to_visitor(data)
            buffer += data
            answer = bytearray()
            at = 0  # the frames read are dropped from the buffer once, after the loop
            while len(buffer) - at >= 9:
                high, low, kind, flags, stream = FRAME_HEADER.unpack_from(buffer, at)
                size = high << 8 | low
                if len(buffer) - at < 9 + size:
                    break
                payload = bytes(buffer[at + 9 : at + 9 + size])
                at += 9 + size
                # GOAWAY's last stream id (its reserved bit masked) below ours: not taken
                if kind == GOAWAY and int.from_bytes(payload[:4], "big") & 0x7FFFFFFF < _STREAM:
                    return "the origin closed the connection without taking the request (GOAWAY)"
                answer += sender.control(kind, flags, stream & 0x7FFFFFFF, payload)
            del buffer[:at]
            more = sender.frames()
            tap.to_origin(more)
            if answer or more:
                await sock.send(bytes(answer) + more)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
        return f"the connection broke: {exc.__cause__ or 'closed'}"
    return None
