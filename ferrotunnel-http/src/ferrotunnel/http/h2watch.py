"""Following the exchanges of an HTTP/2 connection the ingress passes through undecoded.

Theory of operation. An h2c connection goes to its origin byte for byte (see ``h2c.py``), so
the ingress has no request heads to hand the middlewares' ``on_complete``, the access log or
the metrics. When they want records, the ingress also shows an :class:`H2Watch` every chunk it
passes, in each direction. The watch splits the chunks into frames — keeping only the frame
header and the payloads it reads (header blocks, RST_STREAM), never copying DATA — and decodes
every header block with one HPACK reader per direction (``ferrotunnel.core.hpack_reader``:
the few fields wanted are decoded, the rest only stepped over): the dynamic tables are built
from all blocks in order, so none may be skipped. Per stream it notes the request's method, path
and authority, the final ``:status``, the bytes each way, a non-zero ``grpc-status`` in the
trailers, and its end: the response's END_STREAM (the request need not have ended: a server
may answer first), a RST_STREAM, or the connection's end.

Each direction's decoder accepts the dynamic table sizes the other peer allowed in its
SETTINGS (``SETTINGS_HEADER_TABLE_SIZE``: grpcio, the ``h2`` library and browsers may allow
more than 4096 bytes), up to ``max_table``: that is what the watch's tables may hold.

It never changes or delays a byte. What it cannot follow (a block that does not decode, one
larger than ``max_block``, a table larger than ``max_table``) ends its watch: the streams it
knew end with that error and later ones go unrecorded, while the connection carries on. At
most ``max_streams`` unfinished streams are tracked, their method, path and authority
together at most ``max_held`` bytes (4 blocks' worth): a visitor can leave streams
unfinished, each path up to ``max_block`` long, so one opening more, or longer, gets the
rest unrecorded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ferrotunnel.core.h2wire import (
    ACK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER,
    HEADERS,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    SETTINGS_HEADER_TABLE_SIZE,
    error_name,
    header_fragment,
    setting,
)

from .h1 import normalize_host

__all__ = ["H2Exchange", "H2Watch"]

_READ = frozenset({HEADERS, CONTINUATION, PUSH_PROMISE, RST_STREAM, SETTINGS})
#: the fields read from each direction's header blocks (the others are only stepped over)
_REQUEST_FIELDS = frozenset({b":method", b":path", b":authority", b"host"})
_RESPONSE_FIELDS = frozenset({b":status", b"grpc-status"})


@dataclass(slots=True)
class H2Exchange:
    """One stream of an HTTP/2 connection: a request and its response."""

    stream_id: int
    method: bytes
    target: bytes
    authority: str
    started: float  # monotonic
    wall: float  # seconds since the epoch
    status: int = 0  # the final status; 0 while none came
    bytes_in: int = 0  # frames from the visitor on this stream, headers included
    bytes_out: int = 0
    error: str | None = None
    request_done: bool = False
    response_done: bool = False


class _Direction:
    """One direction's frame reader and HPACK reader."""

    __slots__ = (
        "block",
        "block_size",
        "block_stream",
        "decoder",
        "end_stream",
        "frame",
        "head",
        "payload",
        "skip",
        "wanted",
    )

    def __init__(self, wanted: frozenset[bytes]) -> None:
        # raised by the other peer's SETTINGS_HEADER_TABLE_SIZE: see H2Watch._settings
        # hpack's Huffman table: imported on first use
        from ferrotunnel.core.hpack_reader import HeaderReader

        self.decoder = HeaderReader()  # allowed: the initial 4096 bytes, until SETTINGS
        self.wanted = wanted  # the fields read out of its header blocks
        self.head = bytearray()  # a frame header still arriving
        self.frame = (0, 0, 0, 0)  # the current frame: type, flags, stream, length
        self.payload: bytearray | None = None  # a payload being read (None: skipped)
        self.skip = 0  # payload bytes of the current frame still to come
        self.block = bytearray()  # a header block spanning CONTINUATION frames
        self.block_stream = -1  # its stream (-1: none open; 0: a PUSH_PROMISE's, ignored)
        self.block_size = 0  # the bytes of its frames, headers included
        self.end_stream = False  # its HEADERS frame ended the stream


class H2Watch:
    """Feed it what passes each way; it returns the exchanges each chunk completed."""

    def __init__(
        self,
        *,
        max_block: int = 64 << 10,
        max_streams: int = 1024,
        max_table: int = 1 << 20,
        max_held: int | None = None,  # 4 * max_block
    ) -> None:
        self._max_block = max_block
        self._max_streams = max_streams
        self._max_table = max_table
        self._max_held = 4 * max_block if max_held is None else max_held
        self._held = 0  # the bytes of the tracked streams' method, path and authority
        self._visitor = _Direction(_REQUEST_FIELDS)
        self._origin = _Direction(_RESPONSE_FIELDS)
        self._streams: dict[int, H2Exchange] = {}
        self._done: list[H2Exchange] = []
        #: why the watch stopped following the connection, once it has
        self.failed: str | None = None

    def from_visitor(self, data: bytes | bytearray | memoryview) -> list[H2Exchange]:
        """``data`` (frames after the preface) went to the origin."""
        return self._feed(self._visitor, True, data)

    def from_origin(self, data: bytes | bytearray | memoryview) -> list[H2Exchange]:
        """``data`` went to the visitor."""
        return self._feed(self._origin, False, data)

    def close(self, error: str) -> list[H2Exchange]:
        """The connection ended: every unfinished exchange, ended with ``error``."""
        for exchange in self._streams.values():
            exchange.error = exchange.error or error
        ended = list(self._streams.values())
        self._streams.clear()
        self._held = 0
        return ended

    # ------------------------------------------------------------------ frames

    def _feed(
        self, side: _Direction, visitor: bool, data: bytes | bytearray | memoryview
    ) -> list[H2Exchange]:
        view = memoryview(data)
        pos, size = 0, len(view)
        while pos < size and self.failed is None:
            if side.skip:
                n = min(side.skip, size - pos)
                if side.payload is not None:
                    side.payload += view[pos : pos + n]
                side.skip -= n
                pos += n
                if not side.skip:
                    self._frame_done(side, visitor)
                continue
            head = side.head
            if not head and size - pos >= 9:  # a whole frame header: the usual case
                high, low, ftype, flags, stream = FRAME_HEADER.unpack_from(view, pos)
                pos += 9
                length = high << 8 | low
                if ftype not in _READ and pos + length <= size:
                    # and a payload that is only counted (DATA, WINDOW_UPDATE, PING), whole
                    pos += length
                    self._skipped(visitor, ftype, flags, stream & 0x7FFFFFFF, length)
                    continue
            else:
                n = min(9 - len(head), size - pos)
                head += view[pos : pos + n]
                pos += n
                if len(head) < 9:
                    break
                high, low, ftype, flags, stream = FRAME_HEADER.unpack(head)
                head.clear()
            self._frame_start(side, visitor, ftype, flags, stream & 0x7FFFFFFF, high << 8 | low)
        done, self._done = self._done, []
        return done

    def _count(self, visitor: bool, stream: int, length: int) -> H2Exchange | None:
        """A frame of ``length`` payload bytes on ``stream``: its exchange's, if it has one."""
        exchange = self._streams.get(stream)
        if exchange is not None:
            if visitor:
                exchange.bytes_in += 9 + length
            else:
                exchange.bytes_out += 9 + length
        return exchange

    def _skipped(self, visitor: bool, ftype: int, flags: int, stream: int, length: int) -> None:
        """A frame whose payload the watch does not read went by, whole."""
        if self._count(visitor, stream, length) and ftype == DATA and flags & END_STREAM:
            self._ended(stream, visitor)

    def _frame_start(
        self, side: _Direction, visitor: bool, ftype: int, flags: int, stream: int, length: int
    ) -> None:
        side.frame = (ftype, flags, stream, length)
        self._count(visitor, stream, length)
        if ftype in _READ:
            if length > self._max_block:
                self._fail(f"an HTTP/2 frame of {length} bytes is more than the watch reads")
                return
            side.payload = bytearray()
        else:
            side.payload = None
        side.skip = length
        if not length:
            self._frame_done(side, visitor)

    def _frame_done(self, side: _Direction, visitor: bool) -> None:
        ftype, flags, stream, length = side.frame
        payload, side.payload = side.payload, None
        if ftype == DATA:
            if flags & END_STREAM:
                self._ended(stream, visitor)
            return
        if ftype == RST_STREAM:
            exchange = self._streams.get(stream)
            if exchange is not None and payload is not None and len(payload) == 4:
                code = int.from_bytes(payload, "big")
                # NO_ERROR after a whole response: the server stops an upload it no longer
                # needs (RFC 9113, section 8.1), the exchange succeeded
                if code or not exchange.response_done:
                    name = error_name(code)
                    who = "visitor" if visitor else "origin"
                    exchange.error = exchange.error or f"stream reset by the {who} ({name})"
                self._finish(exchange)
            return
        if payload is None:
            return
        if ftype == SETTINGS:
            if not flags & ACK:
                self._settings(payload, visitor)
            return
        if ftype in (HEADERS, PUSH_PROMISE):
            fragment = header_fragment(ftype, flags, payload)
            if fragment is None:
                self._fail("an HTTP/2 header frame with more padding than payload")
                return
            if ftype == PUSH_PROMISE:
                stream = 0  # its block only feeds the decoder
            side.block, side.block_size = bytearray(fragment), 9 + length
            side.block_stream, side.end_stream = stream, bool(flags & END_STREAM)
        elif ftype == CONTINUATION and side.block_stream >= 0:
            side.block += payload
            side.block_size += 9 + length
            if len(side.block) > self._max_block:
                self._fail("an HTTP/2 header block is larger than the watch reads")
                return
        else:
            return
        if flags & END_HEADERS:
            block, block_stream = bytes(side.block), side.block_stream
            side.block, side.block_stream = bytearray(), -1
            try:
                fields = side.decoder.read(block, side.wanted if block_stream else ())
            except Exception as exc:  # HpackError, and anything else it should not raise
                self._fail(f"an undecodable HTTP/2 header block ({exc or type(exc).__name__})")
                return
            if block_stream:
                self._headers(block_stream, fields, visitor, side.end_stream, side.block_size)

    def _settings(self, payload: bytearray, visitor: bool) -> None:
        """A peer's SETTINGS_HEADER_TABLE_SIZE is how large the *other* peer's encoder may make
        its table (up to ``max_table``: see :meth:`HeaderReader.allow`)."""
        size = setting(payload, SETTINGS_HEADER_TABLE_SIZE)
        if size is not None:
            (self._origin if visitor else self._visitor).decoder.allow(size, self._max_table)

    # ------------------------------------------------------------------ exchanges

    def _headers(
        self,
        stream: int,
        fields: list[tuple[bytes, bytes]],
        visitor: bool,
        end_stream: bool,
        size: int,
    ) -> None:
        exchange = self._streams.get(stream)
        if visitor:
            if exchange is None:
                exchange = self._track(stream, fields, size)
                if exchange is None:
                    return
        elif exchange is not None:
            for name, value in fields:
                if name == b":status" and not exchange.status:
                    # three digits: int() of thousands raises (Python's digit limit)
                    status = int(value) if len(value) == 3 and value.isdigit() else 0
                    if status >= 200:
                        exchange.status = status
                elif name == b"grpc-status" and value != b"0":
                    exchange.error = f"grpc-status {value.decode('latin-1')}"
        if end_stream:
            self._ended(stream, visitor)

    def _track(
        self, stream: int, fields: list[tuple[bytes, bytes]], size: int
    ) -> H2Exchange | None:
        """A new stream's exchange, or None if the watch holds all it may already."""
        if len(self._streams) >= self._max_streams:
            return None
        values = dict(fields)
        method, target = values.get(b":method", b""), values.get(b":path", b"")
        authority = normalize_host(values.get(b":authority") or values.get(b"host") or b"")
        held = len(method) + len(target) + len(authority)
        if self._held + held > self._max_held:
            return None
        self._held += held
        exchange = self._streams[stream] = H2Exchange(
            stream,
            method,
            target,
            authority,
            time.monotonic(),
            time.time(),
            bytes_in=size,  # the frames of its block went by before it existed
        )
        return exchange

    def _ended(self, stream: int, visitor: bool) -> None:
        exchange = self._streams.get(stream)
        if exchange is None:
            return
        if visitor:
            exchange.request_done = True
        else:
            exchange.response_done = True
        # a whole response ends the exchange: a visitor that never ends its request (a
        # server may answer before reading it all) must not hold the record back
        if exchange.response_done:
            self._finish(exchange)

    def _finish(self, exchange: H2Exchange) -> None:
        del self._streams[exchange.stream_id]
        self._held -= len(exchange.method) + len(exchange.target) + len(exchange.authority)
        self._done.append(exchange)

    def _fail(self, why: str) -> None:
        self.failed = why
        self._done += self.close(f"the ingress stopped following the connection: {why}")
