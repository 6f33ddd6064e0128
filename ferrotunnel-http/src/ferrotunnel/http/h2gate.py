"""Each request of a passed-through HTTP/2 connection put to the middlewares before the origin.

Theory of operation
-------------------
An h2c connection (gRPC) goes to its origin byte for byte: the ingress does not terminate
HTTP/2. Its first request is decided on before the connection is opened (``connection.py``);
the :class:`H2Gate` puts every later one to the same middlewares, so that a rate limit or
basic auth applies per call, not per connection.

It reads the visitor's frames before they are forwarded. A HEADERS frame that opens a stream
is held, with its CONTINUATIONs, until the header block is whole; the block is decoded (an
HPACK reader kept in step with the visitor's encoder: every block is read, in order) and
``decide`` says whether the request goes on. Other frames pass as they come.

A refused request must leave both peers' views of the connection intact:

* its header block is dropped, which the origin's HPACK table survives only if the block did
  not change the table (an entry added, a size update: :attr:`HeaderReader.changes`). When
  it did, the origin's table and the visitor's part ways, and no header block may reach the
  origin any more: the gate *drains* the connection. A GOAWAY tells the visitor which streams
  were processed (it opens new ones on a new connection), the refusal is answered, the
  calls in flight go on to their end (their DATA needs no table), and a stream opened after
  all is refused with RST_STREAM(REFUSED_STREAM), which a client may retry elsewhere. A
  header block for the origin after that (request trailers: gRPC clients send none) cannot
  be passed on: :attr:`closing` asks the connection to close;
* the answer (``decide`` builds it: a HEADERS frame of literals kept out of the visitor's
  table, which the origin's encoder shares — no DATA, whose bytes the origin's flow-control
  count would not know of) goes to the visitor between two of the origin's frames;
* the stream's later frames are dropped, and the bytes of its DATA given back to the visitor
  with WINDOW_UPDATEs (the origin never saw them, so it will not). An upload
  still going is not reset: RFC 9113 (8.1) allows a RST_STREAM(NO_ERROR) after the answer,
  but some clients (the ``h2`` library under httpx) then fail the request instead of
  reading the answer, so its bytes are dropped as they come.
  Its id stays refused for the connection's life: a frame the visitor had in flight must not
  reach an origin that never saw the stream (for it, an idle stream: a connection error).
  After ``_MAX_REFUSED`` of them, the connection drains as above (and, should the visitor
  go on opening streams, closes).

What the gate cannot follow (a block that does not decode, one larger than ``max_block``)
ends its work: from then on everything passes, undecided, as before this module existed.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from ferrotunnel.core.h2wire import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER,
    GOAWAY,
    HEADERS,
    PADDED,
    PRIORITY_FLAG,
    RST_STREAM,
    WINDOW_UPDATE,
)

__all__ = ["H2Gate"]

_PASS, _HOLD, _DROP = 0, 1, 2
#: refused streams whose frames are still dropped, at most (more: the connection drains)
_MAX_REFUSED = 1024
_REFUSED_STREAM = 0x7

#: decide(stream id, header fields) -> the frames answering a refused request, or None
Decide = Callable[[int, list[tuple[bytes, bytes]], bool], bytes | None]


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    size = len(payload)
    return FRAME_HEADER.pack(size >> 8, size & 0xFF, kind, flags, stream) + payload


class H2Gate:
    """Feed it the visitor's bytes (after the preface) and the origin's; forward what it
    returns. ``decide(stream, fields, ended)`` gets each new request's header fields."""

    def __init__(self, decide: Decide, *, first_stream: int, max_block: int = 64 << 10) -> None:
        from ferrotunnel.core.hpack_reader import EVERY_FIELD, HeaderReader

        self._decide = decide
        self._reader = HeaderReader(1 << 20)
        self._every_field = EVERY_FIELD
        self._max_block = max_block
        self._opened = first_stream  # the highest stream opened so far (decided already)
        self._refused: set[int] = set()
        # the visitor's frame being read
        self._head = bytearray()
        self._kind = self._flags = self._stream = self._size = self._left = 0
        self._mode = _PASS
        self._payload: bytearray | None = None  # a header block frame's payload, read whole
        self._held = bytearray()  # the frames of a new request's header block, not forwarded
        self._block = bytearray()
        self._block_stream = 0
        self._block_mode: int | None = None  # the mode of the block being gathered
        self._block_ended = False  # its HEADERS frame ended the stream
        # the origin's frames: where they end, so that answers go between two of them
        self._origin_head = bytearray()
        self._origin_left = 0
        self._pending = bytearray()  # frames for the visitor, waiting for a boundary
        #: a refusal changed the visitor's table: no new stream reaches the origin (see above)
        self.draining = False
        #: a header block could not be passed on while draining: close once answers are out
        self.closing = False
        #: why the gate stopped deciding (everything passes from then on)
        self.stopped: str | None = None

    # ------------------------------------------------------------------ the visitor's bytes

    def from_visitor(self, data: bytes) -> bytes:
        """What of ``data`` goes on to the origin."""
        if self.stopped is not None:
            return data
        if self.closing:
            return b""
        out = bytearray()
        view = memoryview(data)
        at, end = 0, len(view)
        while at < end and self.stopped is None and not self.closing:
            if self._left:
                take = min(self._left, end - at)
                chunk = view[at : at + take]
                at += take
                self._left -= take
                if self._payload is not None:
                    self._payload += chunk
                if self._mode == _PASS:
                    out += chunk
                elif self._mode == _HOLD:
                    self._held += chunk
                if not self._left:
                    self._frame_done(out)
                continue
            if not self._head and end - at >= 9:
                # most frames come whole and go on as they are: no copy of their own
                high, low, kind, _, stream = FRAME_HEADER.unpack_from(view, at)
                size = high << 8 | low
                if (
                    end - at >= 9 + size
                    and kind not in (HEADERS, CONTINUATION)
                    and stream & 0x7FFFFFFF not in self._refused
                ):
                    out += view[at : at + 9 + size]
                    at += 9 + size
                    continue
            take = min(9 - len(self._head), end - at)
            self._head += view[at : at + take]
            at += take
            if len(self._head) == 9:
                self._frame_begin(out)
        if self.stopped is not None:  # everything not yet decided goes on, as it came
            out += self._held
            out += view[at:]
            self._held.clear()
        return bytes(out)

    def _frame_begin(self, out: bytearray) -> None:
        header = bytes(self._head)
        self._head.clear()
        high, low, kind, flags, stream = FRAME_HEADER.unpack(header)
        stream &= 0x7FFFFFFF
        self._kind, self._flags, self._stream = kind, flags, stream
        self._size = self._left = high << 8 | low
        if kind == CONTINUATION and self._block_mode is not None:
            mode = self._block_mode
        elif stream in self._refused:
            mode = _DROP
        elif kind == HEADERS and stream > self._opened and stream % 2:
            mode = _DROP if self.draining else _HOLD  # a new request: held until decided
        else:
            mode = _PASS
        self._mode = mode
        if kind in (HEADERS, CONTINUATION):
            if len(self._block) + self._size > self._max_block + 261:  # pad, priority
                self._stop(f"a header block larger than {self._max_block} bytes")
                out += self._held  # what was held goes first, as it came
                self._held.clear()
                out += header
                return
            self._payload = bytearray()
        if mode == _PASS:
            out += header
        elif mode == _HOLD:
            self._held += header
        if not self._left:
            self._frame_done(out)

    def _frame_done(self, out: bytearray) -> None:
        kind, flags, stream = self._kind, self._flags, self._stream
        payload, self._payload = self._payload, None
        if self._mode == _DROP and kind == DATA and self._size:
            # the origin never sees these bytes, so it will not give them back: the
            # connection's window, and the stream's, for a client still sending its body
            credit = struct.pack("!I", self._size)
            self._send(
                _frame(WINDOW_UPDATE, 0, 0, credit) + _frame(WINDOW_UPDATE, 0, stream, credit)
            )
        if kind == HEADERS and payload is not None:
            fragment = _fragment(flags, payload)
            if fragment is None:
                self._stop("a malformed HEADERS frame")
                return
            self._block = bytearray(fragment)
            self._block_stream, self._block_mode = stream, self._mode
            self._block_ended = bool(flags & END_STREAM)
        elif kind == CONTINUATION and payload is not None and self._block_mode is not None:
            self._block += payload
        else:
            return
        if flags & END_HEADERS:
            self._block_done(out)

    def _block_done(self, out: bytearray) -> None:
        block, self._block = bytes(self._block), bytearray()
        mode, self._block_mode = self._block_mode, None
        stream, ended = self._block_stream, self._block_ended
        before = self._reader.changes
        try:
            fields = self._reader.read(block, self._every_field)
        except ValueError as exc:  # HpackError
            self._stop(f"a header block that does not decode ({exc})")
            return
        changed = self._reader.changes != before
        if mode == _DROP:
            if stream > self._opened:  # opened while draining: to be retried elsewhere
                self._opened = stream
                self._refused.add(stream)
                self._send(_frame(RST_STREAM, 0, stream, struct.pack("!I", _REFUSED_STREAM)))
                if len(self._refused) > 2 * _MAX_REFUSED:
                    self.closing = True
            elif changed:  # the trailers of a refused request
                self._drain()
            return
        if mode == _PASS:
            if self.draining:  # the origin's table no longer matches the visitor's
                self.closing = True
            return
        self._opened = stream
        held, self._held = bytes(self._held), bytearray()
        answer = self._decide(stream, fields, ended)
        if answer is None:
            out += held
            return
        self._refused.add(stream)
        # a block that changed the table: the origin's would lack what it added. The GOAWAY
        # goes first, so that a client starting its next call on reading the answer knows
        # already to start it on another connection
        if changed or len(self._refused) > _MAX_REFUSED:
            self._drain()
        self._send(answer)

    def _drain(self) -> None:
        """Take no further stream: a GOAWAY naming the last one processed (given to the
        origin, or answered here): the visitor opens later ones on another connection."""
        if not self.draining:
            self._send(_frame(GOAWAY, 0, 0, struct.pack("!II", self._opened, 0)))
            self.draining = True

    def _stop(self, why: str) -> None:
        self.stopped = why
        self._block_mode = None
        self._block = bytearray()

    # ------------------------------------------------------------------ the origin's bytes

    def _send(self, frames: bytes) -> None:
        self._pending += frames

    @property
    def waiting(self) -> bool:
        """Frames for the visitor wait for the origin's current frame to end."""
        return bool(self._pending)

    def ready(self) -> bytes:
        """Frames for the visitor that may go now: the origin is between two frames."""
        if not self._pending or self._origin_left or self._origin_head:
            return b""
        frames = bytes(self._pending)
        self._pending.clear()
        return frames

    def from_origin(self, data: bytes | memoryview) -> bytes | memoryview:
        """``data``, with the frames waiting for the visitor put at its first frame
        boundary (its start, if the origin was between frames)."""
        boundary = self._follow_origin(data)
        if not self._pending or boundary is None:
            return data
        frames = bytes(self._pending)
        self._pending.clear()
        return bytes(data[:boundary]) + frames + bytes(data[boundary:])

    def _follow_origin(self, data: bytes | memoryview) -> int | None:
        """Follows the origin's frames through ``data``; returns the first offset where one
        frame has ended and the next not begun (None if there is none)."""
        first: int | None = None
        at, end = 0, len(data)
        while True:
            if not self._origin_left and not self._origin_head:
                if first is None:
                    first = at
                while end - at >= 9:  # whole frames: skipped by their length alone
                    size = int.from_bytes(data[at : at + 3], "big")
                    if end - at < 9 + size:
                        break
                    at += 9 + size
            if at >= end:
                return first
            if self._origin_left:
                take = min(self._origin_left, end - at)
                self._origin_left -= take
                at += take
                continue
            take = min(9 - len(self._origin_head), end - at)
            self._origin_head += data[at : at + take]
            at += take
            if len(self._origin_head) == 9:
                self._origin_left = int.from_bytes(self._origin_head[:3], "big")
                self._origin_head.clear()


def _fragment(flags: int, payload: bytearray) -> bytes | None:
    """The header block fragment of a HEADERS payload (None if its padding is impossible)."""
    view = memoryview(payload)
    pad = 0
    if flags & PADDED:
        if not view:
            return None
        pad, view = view[0], view[1:]
    if flags & PRIORITY_FLAG:
        view = view[5:]
    if pad > len(view):
        return None
    return bytes(view[: len(view) - pad])
