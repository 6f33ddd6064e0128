"""Each request of a passed-through HTTP/2 connection put to the middlewares before the origin.

Theory of operation
-------------------
An h2c connection (gRPC) goes to its origin byte for byte: the ingress does not terminate
HTTP/2. Its first request routes it and is decided on before the connection is opened
(``connection.py``); the :class:`H2Gate` puts every later one to ``decide`` — which answers
one that routes to another tunnel 421 and puts the others to the same middlewares, so that
a rate limit or basic auth applies per call, not per connection.

It reads the visitor's frames before they are forwarded. A HEADERS frame that opens a stream
is held, with its CONTINUATIONs, until the header block is whole; the block is decoded (an
HPACK reader kept in step with the visitor's encoder: every block is read, in order) and
``decide`` says whether the request goes on. Other frames pass as they come.

A refused request must leave both peers' views of the connection intact:

* its header block is dropped, which the origin's HPACK table survives only if the block did
  not change the table (an entry added, a size update: :attr:`HeaderReader.changes`). When
  it did, the origin's table and the visitor's part ways, and no header block may reach the
  origin any more: the gate *drains* the connection. The refusal is answered, and a GOAWAY
  right behind it (in the same write) tells the visitor which streams were processed (it
  opens new ones on a new connection); the calls in flight go on to their end (their DATA
  needs no table), and a stream opened after
  all is refused with RST_STREAM(REFUSED_STREAM), which a client may retry elsewhere. A
  header block for the origin after that (request trailers: gRPC clients send none) cannot
  be passed on: :attr:`closing` asks the connection to close;
* the answer (``decide`` builds its header block: literals kept out of the visitor's
  table, which the origin's encoder shares — no DATA, whose bytes the origin's flow-control
  count would not know of) goes to the visitor between two of the origin's frames, and not
  inside a header block of the origin's (its HEADERS and CONTINUATIONs come together). One
  thing in the visitor's table it must change: a visitor that lowered its
  SETTINGS_HEADER_TABLE_SIZE expects the first header block after the origin's ACK to open
  with a table size update (RFC 7541, 4.2), and an answer coming before the origin's own
  next block carries it (to the size the SETTINGS allow: the origin's update, at most that,
  follows; evicting down to one and then the other leaves what the origin's evicting does);
* the stream's later frames are dropped, and the bytes of its DATA given back to the visitor
  with WINDOW_UPDATEs (the origin never saw them, so it will not). An upload
  still going is not reset: RFC 9113 (8.1) allows a RST_STREAM(NO_ERROR) after the answer,
  but some clients (the ``h2`` library under httpx) then fail the request instead of
  reading the answer, so its bytes are dropped as they come.
  Its id stays refused for the connection's life: a frame the visitor had in flight must not
  reach an origin that never saw the stream (for it, an idle stream: a connection error).
  After ``_MAX_REFUSED`` of them, the connection drains as above (and, should the visitor
  go on opening streams, closes).

Which streams are new is the origin's view, not the gate's: a stream above the highest the
origin was given (:attr:`_passed`) is a new request, even below a refused one (which the
origin never saw), and is decided.

Its copy of the origin's HPACK table may grow as far as the origin's SETTINGS allow the
visitor (4096 bytes until they say more; never beyond ``_MAX_TABLE``): a size update beyond is
a block that does not decode, for the origin too.

What the gate cannot follow (a block that does not decode, one larger than ``max_block``, a
header block interrupted by another frame, a CONTINUATION with no block) fails closed: a
GOAWAY, and the connection closes (:attr:`closing`). Passing it on undecided would let a
visitor around the middlewares with a block the origin reads and the gate does not (gRPC
servers take header blocks of megabytes); where the origin could not read it either, it
would have ended the connection itself.

Credit for dropped DATA is summed until it can go out (one WINDOW_UPDATE per window, not
per frame): a visitor sending tiny frames while the origin is inside a frame of its own
would otherwise grow what waits for it without bound.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Container
from typing import NamedTuple

from ferrotunnel.core.h2wire import (
    ACK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER,
    GOAWAY,
    HEADERS,
    INITIAL_MAX_FRAME_SIZE,
    INITIAL_TABLE_SIZE,
    MAX_WINDOW,
    PADDED,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    SETTINGS_HEADER_TABLE_SIZE,
    WINDOW_UPDATE,
    frame,
    header_fragment,
    header_frames,
    setting,
    table_size_update,
)

__all__ = ["H2Gate"]

#: a frame's fate: passed on, held until decided, dropped (a refused stream's), refused at
#: once (a new stream while draining)
_PASS, _HOLD, _DROP, _REFUSE = 0, 1, 2, 3
#: refused streams whose frames are still dropped, at most (more: the connection drains)
_MAX_REFUSED = 1024
#: a header block's frames, at most: an encoder splits a block at the frame size (16 KiB at
#: least); a flood of empty CONTINUATIONs, each held, goes beyond
_MAX_BLOCK_FRAMES = 256
#: the visitor's SETTINGS frames the origin has not acknowledged yet, at most
_MAX_UNACKED = 64
#: the largest HPACK table the gate keeps for the visitor's encoder, whatever the origin allows
_MAX_TABLE = 1 << 20
#: the frames of a header block (none other may come between them)
_BLOCK_KINDS = (HEADERS, PUSH_PROMISE, CONTINUATION)
_PROTOCOL_ERROR, _REFUSED_STREAM, _COMPRESSION_ERROR = 0x1, 0x7, 0x9
_FRAME_SIZE_ERROR, _ENHANCE_YOUR_CALM = 0x6, 0xB

#: decide(stream id, header fields, ended) -> the header block answering a refused request
#: (sent alone, ending its stream), or None
Decide = Callable[[int, list[tuple[bytes, bytes]], bool], bytes | None]


class _Answer(NamedTuple):
    """A refusal's header block, framed when it goes out (it may need a size update)."""

    stream: int
    block: bytes


class H2Gate:
    """Feed it the visitor's bytes (after the preface) and the origin's; forward what it
    returns. ``decide(stream, fields, ended)`` gets each new request's header fields: those
    named in ``wanted`` (every field unless given)."""

    def __init__(
        self,
        decide: Decide,
        *,
        first_stream: int,
        max_block: int = 64 << 10,
        wanted: Container[bytes] | None = None,
    ) -> None:
        from ferrotunnel.core.hpack_reader import EVERY_FIELD, HeaderReader

        self._decide = decide
        # the origin's decoder, as the gate follows it: 4096 bytes until the origin's SETTINGS
        # allow the visitor more (:meth:`_origin_frame`)
        self._reader = HeaderReader()
        self._wanted = EVERY_FIELD if wanted is None else wanted
        self._max_block = max_block
        self._opened = first_stream  # the highest stream opened so far (decided already)
        #: the highest stream the origin was given: any above it is new to the origin
        self._passed = first_stream
        self._refused: set[int] = set()
        # the visitor's frame being read
        self._head = bytearray()
        self._kind = self._flags = self._stream = self._size = self._left = 0
        self._mode = _PASS
        self._payload: bytearray | None = None  # a header block's or SETTINGS frame's payload
        self._held = bytearray()  # the frames of a new request's header block, not forwarded
        self._block = bytearray()
        self._block_stream = 0
        self._block_mode: int | None = None  # the mode of the block being gathered
        self._block_ended = False  # its HEADERS frame ended the stream
        self._block_bytes = self._block_frames = 0  # its frames' payloads so far, and frames
        # the origin's frames: where they end, so that answers go between two of them
        self._origin_head = bytearray()
        self._origin_left = 0
        self._origin_in_block = False  # inside a header block of the origin's
        self._pending: list[bytes | _Answer] = []  # for the visitor, waiting for a boundary
        self._credit = 0  # dropped DATA's bytes to give back on the connection
        self._stream_credit: dict[int, int] = {}  # ... and on each refused stream
        # the visitor's decoder: SETTINGS_HEADER_TABLE_SIZE of each SETTINGS frame not yet
        # acknowledged (None: not named), the one in force, and the size update it awaits
        self._unacked: deque[int | None] = deque()
        self._table_limit = INITIAL_TABLE_SIZE
        self._size_update: int | None = None
        #: a refusal changed the visitor's table: no new stream reaches the origin (see above)
        self.draining = False
        #: the connection must close once the frames for the visitor are out (a header block
        #: could not be passed on while draining, or the gate could not follow: ``stopped``)
        self.closing = False
        #: why the gate could not go on deciding (it fails closed: see :attr:`closing`)
        self.stopped: str | None = None

    # ------------------------------------------------------------------ the visitor's bytes

    def from_visitor(self, data: bytes) -> bytes:
        """What of ``data`` goes on to the origin."""
        if self.closing:
            return b""
        out = bytearray()
        view = memoryview(data)
        at, end = 0, len(view)
        run = 0  # where the whole frames passed on as they are, not yet in ``out``, begin
        while at < end and not self.closing:
            if not self._left and not self._head and self._block_mode is None and end - at >= 9:
                # most frames come whole, and most go on as they are: no copy of their own
                high, low, kind, flags, stream = FRAME_HEADER.unpack_from(view, at)
                stop = at + 9 + (high << 8 | low)
                if stop <= end:
                    stream &= 0x7FFFFFFF
                    if kind != HEADERS and kind != CONTINUATION and stream not in self._refused:
                        if kind == SETTINGS and not flags & ACK:
                            self._visitor_settings(view[at + 9 : stop])
                        at = stop
                        continue
                    if (
                        kind == HEADERS
                        and flags & END_HEADERS
                        and not flags & (PADDED | PRIORITY_FLAG)
                        and stop - at - 9 <= self._max_block
                        and stream not in self._refused
                    ):  # a whole header block in one frame: a call's, nearly always
                        out += view[run:at]
                        self._whole_block(view[at:stop], stream, flags, out)
                        at = run = stop
                        continue
            out += view[run:at]
            at = run = self._step(view, at, end, out)
        if run == 0 and not out and at == end:
            return data  # all of it, as it came
        out += view[run:at]
        return bytes(out)

    def _step(self, view: memoryview, at: int, end: int, out: bytearray) -> int:
        """Reads the visitor's bytes at ``at`` a piece at a time (a frame that did not come
        whole, or one that needs its payload read); returns where it stopped."""
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
            return at
        take = min(9 - len(self._head), end - at)
        self._head += view[at : at + take]
        at += take
        if len(self._head) == 9:
            self._frame_begin(out)
        return at

    def _whole_block(self, frame: memoryview, stream: int, flags: int, out: bytearray) -> None:
        """A HEADERS frame holding a whole header block, unpadded: what :meth:`_frame_begin`,
        :meth:`_frame_done` and :meth:`_block_done` do for it, in one step."""
        mode = self._mode_of(HEADERS, stream)
        if mode is None:
            return
        if mode == _PASS:
            out += frame
        elif mode == _HOLD:
            self._held += frame
        self._block_stream, self._block_mode = stream, mode
        self._block_ended = bool(flags & END_STREAM)
        self._block_done(out, bytes(frame[9:]))

    def _frame_begin(self, out: bytearray) -> None:
        header = bytes(self._head)
        self._head.clear()
        high, low, kind, flags, stream = FRAME_HEADER.unpack(header)
        stream &= 0x7FFFFFFF
        self._kind, self._flags, self._stream = kind, flags, stream
        self._size = self._left = high << 8 | low
        mode = self._mode_of(kind, stream)
        if mode is None:
            return
        self._mode = mode
        if kind in (HEADERS, CONTINUATION):
            if kind == HEADERS:
                self._block_bytes = self._block_frames = 0
            self._block_bytes += self._size
            self._block_frames += 1
            if (
                self._block_bytes > self._max_block + 261  # pad length, padding, priority
                or self._block_frames > _MAX_BLOCK_FRAMES
            ):
                why = f"a header block larger than {self._max_block} bytes"
                self._fail(why, _ENHANCE_YOUR_CALM)
                return
            self._payload = bytearray()
        elif kind == SETTINGS and not flags & ACK:
            if self._size > INITIAL_MAX_FRAME_SIZE:  # 2,730 parameters: no client's
                self._fail("a SETTINGS frame larger than 16 KiB", _FRAME_SIZE_ERROR)
                return
            self._payload = bytearray()
        if mode == _PASS:
            out += header
        elif mode == _HOLD:
            self._held += header
        if not self._left:
            self._frame_done(out)

    def _mode_of(self, kind: int, stream: int) -> int | None:
        """What becomes of a frame (None: the connection fails, see :meth:`_fail`)."""
        if self._block_mode is not None:  # a header block is one piece (RFC 9113, 4.3)
            if kind != CONTINUATION or stream != self._block_stream:
                self._fail("a frame inside a header block", _PROTOCOL_ERROR)
                return None
            return self._block_mode
        if kind == CONTINUATION:
            self._fail("a CONTINUATION with no header block", _PROTOCOL_ERROR)
            return None
        if stream in self._refused:
            return _DROP
        if kind == HEADERS and stream > self._passed:
            # new to the origin (even below a refused stream, which it never saw)
            return _REFUSE if self.draining else _HOLD
        if kind == HEADERS and self.draining:
            # the origin's table no longer matches the visitor's: no block may reach it
            self.closing = True
            return None
        return _PASS

    def _frame_done(self, out: bytearray) -> None:
        kind, flags, stream = self._kind, self._flags, self._stream
        payload, self._payload = self._payload, None
        if self._mode == _DROP and kind == DATA and self._size:
            # the origin never sees these bytes, so it will not give them back: the
            # connection's window, and the stream's, for a client still sending its body
            self._credit += self._size
            self._stream_credit[stream] = self._stream_credit.get(stream, 0) + self._size
        if kind == SETTINGS and payload is not None:
            self._visitor_settings(payload)
            return
        if kind == HEADERS and payload is not None:
            fragment = header_fragment(kind, flags, payload)
            if fragment is None:
                self._fail("a malformed HEADERS frame", _PROTOCOL_ERROR)
                return
            self._block = bytearray(fragment)
            self._block_stream, self._block_mode = stream, self._mode
            self._block_ended = bool(flags & END_STREAM)
        elif kind == CONTINUATION and payload is not None and self._block_mode is not None:
            self._block += payload
        else:
            return
        if flags & END_HEADERS:
            block, self._block = bytes(self._block), bytearray()
            self._block_done(out, block)

    def _block_done(self, out: bytearray, block: bytes) -> None:
        mode, self._block_mode = self._block_mode, None
        stream, ended = self._block_stream, self._block_ended
        before = self._reader.changes
        try:
            fields = self._reader.read(block, self._wanted)
        except ValueError as exc:  # HpackError
            self._fail(f"a header block that does not decode ({exc})", _COMPRESSION_ERROR)
            return
        changed = self._reader.changes != before
        if mode == _REFUSE:  # opened while draining: to be retried elsewhere
            self._opened = max(self._opened, stream)
            self._refused.add(stream)
            self._send(frame(RST_STREAM, 0, stream, struct.pack("!I", _REFUSED_STREAM)))
            if len(self._refused) > 2 * _MAX_REFUSED:
                self.closing = True
            return
        if mode == _DROP:
            if changed:  # the trailers of a refused request
                self._drain()
            return
        if mode == _PASS:
            return
        self._opened = max(self._opened, stream)
        held, self._held = bytes(self._held), bytearray()
        answer = self._decide(stream, fields, ended)
        if answer is None:
            self._passed = stream
            out += held
            return
        self._refused.add(stream)
        self._pending.append(_Answer(stream, answer))
        # a block that changed the table: the origin's would lack what it added. The GOAWAY
        # follows the answer in the same write: a client of the h2 library (httpx) takes
        # any frame after a GOAWAY for an error, and grpc-core reads both before it starts
        # another call (one started on this connection anyway is refused, and retried)
        if changed or len(self._refused) > _MAX_REFUSED:
            self._drain()

    def _visitor_settings(self, payload: bytes | bytearray | memoryview) -> None:
        """Remember what a SETTINGS frame does to the visitor's decoder, for when the origin
        acknowledges it (:meth:`_origin_frame`)."""
        if len(self._unacked) >= _MAX_UNACKED:
            self._fail("SETTINGS frames the origin does not acknowledge", _ENHANCE_YOUR_CALM)
            return
        self._unacked.append(setting(payload, SETTINGS_HEADER_TABLE_SIZE))

    def _drain(self) -> None:
        """Take no further stream: a GOAWAY naming the last one processed (given to the
        origin, or answered here): the visitor opens later ones on another connection."""
        if not self.draining:
            self._send(frame(GOAWAY, 0, 0, struct.pack("!II", self._opened, 0)))
            self.draining = True

    def _fail(self, why: str, code: int) -> None:
        """The gate cannot decide what follows: it fails closed (a GOAWAY saying why, unless
        one went already, and the connection closes). Nothing held goes on."""
        self.stopped = why
        if not self.draining:
            self._send(frame(GOAWAY, 0, 0, struct.pack("!II", self._opened, code)))
            self.draining = True
        self.closing = True
        self._block_mode = None
        self._block = bytearray()
        self._held.clear()
        self._payload = None

    # ------------------------------------------------------------------ the origin's bytes

    def _send(self, frames: bytes) -> None:
        self._pending.append(frames)

    def _take(self) -> bytes:
        """The frames waiting for the visitor, the credit owed it last."""
        frames = bytearray()
        for item in self._pending:
            if isinstance(item, _Answer):
                block = item.block
                if self._size_update is not None:  # see the theory of operation
                    block = table_size_update(self._size_update) + block
                    self._size_update = None
                frames += header_frames(item.stream, block, END_STREAM)
            else:
                frames += item
        self._pending.clear()
        if self._credit:
            frames += _window_updates(0, self._credit)
            for stream, credit in self._stream_credit.items():
                frames += _window_updates(stream, credit)
            self._credit = 0
            self._stream_credit.clear()
        return bytes(frames)

    @property
    def waiting(self) -> bool:
        """Frames for the visitor wait for the origin's current frame to end."""
        return bool(self._pending or self._credit)

    def ready(self) -> bytes:
        """Frames for the visitor that may go now: the origin is between two frames."""
        if not self.waiting or self._origin_left or self._origin_head or self._origin_in_block:
            return b""
        return self._take()

    def from_origin(self, data: bytes | memoryview) -> bytes | memoryview:
        """``data``, with the frames waiting for the visitor put at its first frame
        boundary (its start, if the origin was between frames)."""
        if not self.waiting:
            self._follow_origin(data, 0)
            return data
        boundary = self._follow_origin(data, 0, stop=True)
        if boundary < 0:
            return data
        frames = self._take()  # as the visitor's decoder will be there
        self._follow_origin(data, boundary)
        return bytes(data[:boundary]) + frames + bytes(data[boundary:])

    def _follow_origin(self, data: bytes | memoryview, at: int, *, stop: bool = False) -> int:
        """Follows the origin's frames through ``data`` from ``at``; with ``stop``, only up
        to the first offset where one frame has ended and the next not begun, outside a
        header block (a header block's frames come one after another: RFC 9113, 6.10), and
        returns it. -1 when it went to the end."""
        end = len(data)
        while True:
            if not self._origin_left and not self._origin_head:
                if stop and not self._origin_in_block:
                    return at
                while end - at >= 9:  # whole frames: skipped by their length alone
                    high, low, kind, flags, _ = FRAME_HEADER.unpack_from(data, at)
                    size = high << 8 | low
                    if end - at < 9 + size:
                        break
                    if kind in _BLOCK_KINDS:
                        self._origin_frame(kind, flags)
                    elif kind == SETTINGS:
                        self._origin_frame(kind, flags, data[at + 9 : at + 9 + size])
                    at += 9 + size
                    if stop and not self._origin_in_block:
                        return at
            if at >= end:
                return -1
            if self._origin_left:
                take = min(self._origin_left, end - at)
                self._origin_left -= take
                at += take
                continue
            take = min(9 - len(self._origin_head), end - at)
            self._origin_head += data[at : at + take]
            at += take
            if len(self._origin_head) == 9:
                head = self._origin_head
                self._origin_left = int.from_bytes(head[:3], "big")
                self._origin_frame(head[3], head[4])
                head.clear()

    def _origin_frame(
        self, kind: int, flags: int, payload: bytes | memoryview | None = None
    ) -> None:
        """What an origin's frame tells: whether a header block is open; how large a table
        the visitor's encoder may keep (its SETTINGS, ``payload`` unless they came in
        pieces); what the visitor's decoder expects (the origin acknowledging a lowered
        table size; the origin's own header block, which opens with the update)."""
        if kind in _BLOCK_KINDS:
            self._origin_in_block = not flags & END_HEADERS
            if kind != CONTINUATION:
                self._size_update = None
        elif kind == SETTINGS and not flags & ACK:
            allowed = (
                _MAX_TABLE if payload is None else setting(payload, SETTINGS_HEADER_TABLE_SIZE)
            )
            if allowed is not None:
                self._reader.allow(allowed, _MAX_TABLE)
        elif kind == SETTINGS and self._unacked:
            size = self._unacked.popleft()
            if size is None:
                return
            if size < self._table_limit or self._size_update is not None:
                # the smallest since the last block first (RFC 7541, 4.2)
                due = self._size_update
                self._size_update = size if due is None else min(due, size)
            self._table_limit = size


def _window_updates(stream: int, credit: int) -> bytes:
    """WINDOW_UPDATEs giving ``credit`` back (an increment is at most 2^31 - 1)."""
    out = bytearray()
    while credit:
        step = min(credit, MAX_WINDOW)
        out += frame(WINDOW_UPDATE, 0, stream, struct.pack("!I", step))
        credit -= step
    return bytes(out)
