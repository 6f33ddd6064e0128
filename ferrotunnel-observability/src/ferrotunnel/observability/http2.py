"""Capture of the exchanges of an HTTP/2 connection (h2c, gRPC) a client relays.

Theory of operation
-------------------
A visitor speaking HTTP/2 with prior knowledge (gRPC clients do) sends the connection preface
and then frames; the stream carries them to the local service byte for byte. The dashboard's
tap hands an :class:`H2Capture` what passed each way, after it passed: nothing is held up or
changed. Each direction has a :class:`_FrameReader` that cuts the bytes into frames. It
keeps whole only header blocks (a HEADERS or PUSH_PROMISE frame and its CONTINUATIONs, at
most ``max_block`` bytes) and RST_STREAM payloads; DATA goes by in slices, of which each
stream's :class:`~.exchange.Body` keeps its first ``limit`` bytes; other frames are stepped
over. Every header block is decoded, in order, by that direction's HPACK reader
(:mod:`ferrotunnel.core.hpack_reader`, every field): each block may change the dynamic table
the next ones refer to, so none may be skipped, pushed promises included.

Each client-opened stream becomes an :class:`~.exchange.Exchange` when its request head
comes: ``:method`` and ``:path`` make the request line, ``:authority`` its Host field, the
other pseudo-fields are dropped, so the detail view, exports and search treat it like an
HTTP/1.1 request of version ``HTTP/2``; a later block from the visitor on it is its trailers
(a stream never opens twice, nor below one opened before). The response's first final head
(1xx are skipped) gives the status; a later header block is its trailers, where a gRPC status
other than 0 marks the call as failed, as the server's access log does. An exchange ends when its
response does (END_STREAM), when either side resets the stream, or when the connection ends.

What it cannot follow — a block that does not decode, one larger than ``max_block``, or one
whose fields are (as RFC 9113 counts a header list's size: a few bytes may name a large table
entry again and again) — stops the capture of this connection: its unfinished exchanges say
so, later ones go unlisted. At most as many calls are followed at once as the store keeps
(its ``keep``), so what the capture holds stays within the dashboard's bound (``keep`` times 2
bodies of ``limit`` bytes); a call opened beyond that is not listed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain

from ferrotunnel.core.h2wire import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER,
    HEADERS,
    PADDED,
    PUSH_PROMISE,
    RST_STREAM,
    error_name,
    header_fragment,
)

from .exchange import NO_BODY, Body, Exchange, reason_phrase
from .http1 import Head
from .store import Store

__all__ = ["H2Capture", "H2Head"]

#: the most a HEADERS frame's payload holds besides its fragment: pad length, priority, padding
_FRAMING = 1 + 5 + 255
#: what a field adds to a header list's size besides its name and value (RFC 9113, 6.5.2)
_FIELD_OVERHEAD = 32


class _CannotFollow(Exception):
    pass


class _FrameReader:
    """One direction's frames: whole header blocks, DATA in slices, RST_STREAM codes."""

    def __init__(
        self,
        *,
        on_block: Callable[[int, int, bytes], None],  # stream, HEADERS flags, header block
        on_data: Callable[[int, memoryview], None],
        on_end_stream: Callable[[int], None],
        on_reset: Callable[[int, int], None],
        max_block: int,
    ) -> None:
        self.on_block = on_block
        self.on_data = on_data
        self.on_end_stream = on_end_stream
        self.on_reset = on_reset
        self.max_block = max_block
        self.head = bytearray()  # a frame header still arriving
        self.type = self.flags = self.stream = 0
        self.left = 0  # payload bytes of the current frame still to come
        self.payload: bytearray | None = None  # kept whole (None: sliced or skipped)
        self.data_left = 0  # of a DATA frame: its data, before any padding
        self.pad_length_due = False  # a padded DATA frame's first byte is still to come
        self.block = bytearray()  # a header block spanning CONTINUATION frames
        self.block_stream = 0
        self.block_flags = 0  # of the HEADERS frame that began it (0x100: a PUSH_PROMISE)

    def feed(self, data: memoryview) -> None:
        at, end = 0, len(data)
        while at < end:
            if self.left:  # the rest of a frame begun in an earlier chunk
                take = min(self.left, end - at)
                chunk, at = data[at : at + take], at + take
                self.left -= take
                if self.payload is not None:
                    self.payload += chunk
                elif self.type == DATA:
                    self._data(chunk)
                if not self.left:
                    self._partial_done()
                continue
            if self.head or end - at < 9:  # a frame header cut by the chunk's end
                take = min(9 - len(self.head), end - at)
                self.head += data[at : at + take]
                at += take
                if len(self.head) < 9:
                    return
                high, low, kind, flags, stream = FRAME_HEADER.unpack(self.head)
                self.head.clear()
            else:
                high, low, kind, flags, stream = FRAME_HEADER.unpack_from(data, at)
                at += 9
            size = high << 8 | low
            if end - at >= size:  # the whole frame is here: most are
                self._frame(kind, flags, stream & 0x7FFFFFFF, data[at : at + size])
                at += size
            else:
                self._partial(kind, flags, stream & 0x7FFFFFFF, size)

    def _frame(self, kind: int, flags: int, stream: int, payload: memoryview) -> None:
        """One whole frame."""
        if kind == DATA:
            if flags & PADDED and payload:
                payload = payload[1 : max(1, len(payload) - payload[0])]
            if payload:
                self.on_data(stream, payload)
            if flags & END_STREAM:
                self.on_end_stream(stream)
        elif kind in (HEADERS, PUSH_PROMISE):
            fragment = header_fragment(kind, flags, payload)
            if fragment is None:
                raise _CannotFollow("more padding than payload")
            if len(fragment) > self.max_block:
                raise _CannotFollow(f"a header block larger than {self.max_block} bytes")
            self.block_stream = stream
            self.block_flags = flags | (0x100 if kind == PUSH_PROMISE else 0)
            if flags & END_HEADERS:
                self.on_block(stream, self.block_flags, bytes(fragment))
            else:
                self.block = bytearray(fragment)
        elif kind == CONTINUATION:
            if len(self.block) + len(payload) > self.max_block:
                raise _CannotFollow(f"a header block larger than {self.max_block} bytes")
            self.block += payload
            if flags & END_HEADERS:
                block, self.block = bytes(self.block), bytearray()
                self.on_block(self.block_stream, self.block_flags, block)
        elif kind == RST_STREAM and len(payload) == 4:
            self.on_reset(stream, int.from_bytes(payload, "big"))

    def _partial(self, kind: int, flags: int, stream: int, size: int) -> None:
        """A frame whose payload ends in a later chunk: DATA is passed on in slices, the
        frames read whole are gathered (bounded), the others skipped."""
        self.type, self.flags, self.stream, self.left = kind, flags, stream, size
        if kind in (HEADERS, PUSH_PROMISE, CONTINUATION):
            # a fragment is judged by ``_frame`` once whole: a cut frame must not be refused
            # for padding the whole one would be allowed
            room = self.max_block - len(self.block) if kind == CONTINUATION else None
            if size > (self.max_block + _FRAMING if room is None else room):
                raise _CannotFollow(f"a header block larger than {self.max_block} bytes")
            self.payload = bytearray()
        elif kind == RST_STREAM and size == 4:  # (any other size is not a reset)
            self.payload = bytearray()
        elif kind == DATA:
            self.pad_length_due = bool(flags & PADDED)
            self.data_left = 0 if self.pad_length_due else size

    def _data(self, chunk: memoryview) -> None:
        if self.pad_length_due:
            self.pad_length_due = False
            self.data_left = self.left + len(chunk) - 1 - chunk[0]
            chunk = chunk[1:]
        if self.data_left > 0:
            data = chunk[: self.data_left]
            self.data_left -= len(data)
            self.on_data(self.stream, data)

    def _partial_done(self) -> None:
        payload, self.payload = self.payload, None
        self.data_left = 0
        if payload is not None:
            self._frame(self.type, self.flags, self.stream, memoryview(payload))
        elif self.type == DATA and self.flags & END_STREAM:
            self.on_end_stream(self.stream)


class H2Capture:
    """The exchanges of one HTTP/2 connection, recorded into a :class:`~.store.Store`.

    ``to_origin`` gets the bytes after the 24-byte preface; ``to_visitor`` all the origin's.
    """

    def __init__(
        self,
        store: Store,
        tunnel: str,
        limit: int,
        *,
        visitor: tuple[str, int] | None = None,
        traceparent: str | None = None,
        replay_of: int | None = None,
        max_block: int = 64 << 10,  # as an HTTP/1.1 head's limit
    ) -> None:
        # hpack's Huffman code and static table: imported on the first HTTP/2 connection only
        from ferrotunnel.core.hpack_reader import EVERY_FIELD, HeaderReader

        self.store = store
        self.tunnel = tunnel
        self.limit = limit
        self.visitor = visitor
        self.traceparent = traceparent
        self.replay_of = replay_of
        #: the latest exchange seen on this connection
        self.last: Exchange | None = None
        self._streams: dict[int, Exchange] = {}
        self._opened = 0  # the highest stream the visitor opened: streams only go up
        self.max_block = max_block
        #: why the capture stopped following the connection, once it has
        self.failed: str | None = None
        # the visitor's header blocks, then the origin's; an observer accepts whatever table
        # size the peers agreed on, up to a bound
        self._readers = (HeaderReader(1 << 20), HeaderReader(1 << 20))
        self._every_field = EVERY_FIELD
        self._requests = _FrameReader(
            on_block=self._request_block,
            on_data=self._request_data,
            on_end_stream=self._request_end,
            on_reset=self._reset,
            max_block=max_block,
        )
        self._responses = _FrameReader(
            on_block=self._response_block,
            on_data=self._response_data,
            on_end_stream=self._response_end,
            on_reset=self._reset,
            max_block=max_block,
        )

    @property
    def idle(self) -> bool:
        return not self._streams

    def to_origin(self, data: bytes | memoryview) -> None:
        self._feed(self._requests, data)

    def to_visitor(self, data: bytes | memoryview) -> None:
        self._feed(self._responses, data)

    def closed(self, error: str | None) -> None:
        for stream, exchange in list(self._streams.items()):
            cut = "response cut short" if exchange.response is not None else "no response"
            self._finish(stream, error or cut)

    def _feed(self, reader: _FrameReader, data: bytes | memoryview) -> None:
        if self.failed is not None:
            return
        try:
            reader.feed(memoryview(data))
        except _CannotFollow as exc:
            self.stop(str(exc))
        except ValueError as exc:  # HpackError, a malformed block
            self.stop(f"a header block did not decode: {exc}")

    def stop(self, why: str) -> None:
        """Follow this connection no further; its unfinished exchanges end with ``why``."""
        if self.failed is None:
            self.failed = why
            self.closed(f"capture stopped: {why}")

    def _read(self, side: int, block: bytes) -> list[tuple[bytes, bytes]]:
        """The fields of the visitor's (0) or the origin's (1) next block. Their size is
        bounded too: a few bytes may name a large table entry, again and again."""
        fields = self._readers[side].read(block, self._every_field)
        size = len(fields) * _FIELD_OVERHEAD + sum(map(len, chain.from_iterable(fields)))
        if size > self.max_block:
            raise _CannotFollow(f"a header list larger than {self.max_block} bytes")
        return fields

    # ---- requests (the visitor's frames)

    def _request_block(self, stream: int, flags: int, block: bytes) -> None:
        fields = self._read(0, block)
        if flags & 0x100 or not stream % 2:
            return  # nothing this capture lists: decoded for the table
        if stream <= self._opened:  # trailers, or a stream over already: not a new call
            if flags & END_STREAM:
                self._request_end(stream)
            return
        self._opened = stream
        if len(self._streams) >= self.store.keep:
            return  # more calls open at once than the list keeps: memory stays bounded
        pseudo, regular = _split(fields)
        authority = pseudo.get(b":authority")
        head = H2Head(
            b"",
            version="HTTP/2",
            method=pseudo.get(b":method", b"").decode("latin-1"),
            target=pseudo.get(b":path", b"").decode("latin-1"),
            fields=regular if authority is None else [(b"host", authority), *regular],
        )
        exchange = self.last = Exchange(
            self.tunnel, head, NO_BODY, self.visitor, self.traceparent, self.replay_of
        )
        self._streams[stream] = exchange
        self.store.add(exchange)
        if flags & END_STREAM:
            exchange.request_complete = True

    def _request_data(self, stream: int, data: memoryview) -> None:
        exchange = self._streams.get(stream)
        if exchange is not None:
            if exchange.request_body is NO_BODY:
                exchange.request_body = Body(self.limit)
            exchange.request_body.add(data)

    def _request_end(self, stream: int) -> None:
        exchange = self._streams.get(stream)
        if exchange is not None:
            exchange.request_complete = True

    # ---- responses (the origin's frames)

    def _response_block(self, stream: int, flags: int, block: bytes) -> None:
        fields = self._read(1, block)
        exchange = self._streams.get(stream)
        if exchange is None or flags & 0x100:
            return  # a pushed promise, or a stream not listed: decoded for the table only
        if exchange.response is None:
            pseudo, regular = _split(fields)
            status = _status(pseudo.get(b":status", b""))
            if 100 <= status < 200:
                return  # informational: the final head is still to come
            exchange.response = H2Head(
                b"", version="HTTP/2", status=status, reason=reason_phrase(status), fields=regular
            )
            exchange.response_body = Body(self.limit)
            exchange.ttfb = time.monotonic() - exchange.started_mono
            _grpc_outcome(exchange, regular)  # a gRPC "trailers-only" answer
        else:
            exchange.trailers = H2Head(b"", version="HTTP/2", fields=fields)
            _grpc_outcome(exchange, fields)
        if flags & END_STREAM:
            self._response_end(stream)

    def _response_data(self, stream: int, data: memoryview) -> None:
        exchange = self._streams.get(stream)
        if exchange is not None and exchange.response_body is not None:
            exchange.response_body.add(data)

    def _response_end(self, stream: int) -> None:
        exchange = self._streams.get(stream)
        if exchange is not None and exchange.response is not None:
            exchange.complete = True
            self._finish(stream, None)

    def _reset(self, stream: int, code: int) -> None:
        exchange = self._streams.get(stream)
        if exchange is None:
            return
        name = error_name(code)
        self._finish(stream, exchange.error or f"stream reset ({name})")

    def _finish(self, stream: int, error: str | None) -> None:
        """The exchange on ``stream`` is over; ``error`` (if any) is why it failed (a gRPC
        status found in its trailers stands unless the stream broke)."""
        exchange = self._streams.pop(stream)
        if error is not None:
            exchange.error = error
        exchange.duration = time.monotonic() - exchange.started_mono
        self.store.update(exchange)


@dataclass(slots=True)
class H2Head(Head):
    """A head of HTTP/2 fields (pseudo-fields taken out), made text when first asked for:
    most exchanges listed are never opened."""

    fields: list[tuple[bytes, bytes]] = field(default_factory=list)

    @property
    def headers(self) -> list[tuple[str, str]]:
        if self._headers is None:
            self._headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.fields]
        return self._headers


def _split(
    fields: list[tuple[bytes, bytes]],
) -> tuple[dict[bytes, bytes], list[tuple[bytes, bytes]]]:
    """The pseudo-fields (``:method``...) by name, and the regular fields in order."""
    pseudo: dict[bytes, bytes] = {}
    regular = []
    for name, value in fields:
        if name[:1] == b":":
            pseudo.setdefault(name, value)
        else:
            regular.append((name, value))
    return pseudo, regular


def _status(text: bytes) -> int:
    return int(text) if text.isdigit() and len(text) == 3 else 0


def _grpc_outcome(exchange: Exchange, fields: list[tuple[bytes, bytes]]) -> None:
    """A gRPC status other than 0 (OK) marks the call as failed, with its message."""
    status = message = None
    for name, value in fields:
        if name == b"grpc-status":
            status = value.strip().decode("latin-1")
        elif name == b"grpc-message":
            message = value.decode("latin-1")
    if status is not None and status != "0":
        exchange.error = f"grpc-status {status}" + (f": {message}" if message else "")
