"""``H2Capture``: the dashboard's record of an HTTP/2 connection's exchanges, sans IO."""

from __future__ import annotations

import itertools
import struct

import hpack
from hypothesis import given, settings
from hypothesis import strategies as st

from ferrotunnel.core.h2wire import PREFACE
from ferrotunnel.observability.capture import ExchangeTap
from ferrotunnel.observability.exchange import Exchange
from ferrotunnel.observability.http2 import H2Capture
from ferrotunnel.observability.replay_h2 import _Sender
from ferrotunnel.observability.store import Store

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, WINDOW_UPDATE = (
    0x0, 0x1, 0x2, 0x3, 0x4, 0x5, 0x6, 0x8,
)  # fmt: skip
CONTINUATION = 0x9
END_STREAM, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x4, 0x8, 0x20


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return struct.pack("!HBBBI", length >> 8, length & 0xFF, kind, flags, stream) + payload


class Peer:
    """One side's frames, its header blocks encoded by its own HPACK encoder."""

    def __init__(self) -> None:
        self.encoder = hpack.Encoder()

    def headers(
        self, stream: int, fields: list[tuple[str, str]], *, end: bool = False, flags: int = 0
    ) -> bytes:
        block = self.encoder.encode(fields)
        return frame(HEADERS, flags | END_HEADERS | (END_STREAM if end else 0), stream, block)

    def split_headers(self, stream: int, fields: list[tuple[str, str]], parts: int) -> bytes:
        """HEADERS, padded and with a priority, then CONTINUATIONs."""
        block = self.encoder.encode(fields)
        size = -(-len(block) // parts)
        pieces = [block[i : i + size] for i in range(0, len(block), size)]
        padded = bytes([3]) + b"\0\0\0\x01\x10" + pieces[0] + b"\0" * 3
        out = frame(HEADERS, PADDED | PRIORITY_FLAG, stream, padded)
        for i, piece in enumerate(pieces[1:], 1):
            out += frame(CONTINUATION, END_HEADERS if i == len(pieces) - 1 else 0, stream, piece)
        return out


def data(stream: int, payload: bytes, *, end: bool = False, pad: int = 0) -> bytes:
    flags = END_STREAM if end else 0
    if pad:
        return frame(DATA, flags | PADDED, stream, bytes([pad]) + payload + b"\0" * pad)
    return frame(DATA, flags, stream, payload)


REQUEST = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/pkg.Greeter/Hello?x=1"),
    (":authority", "app.localhost"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
]


def conversation() -> tuple[bytes, bytes]:
    """A visitor's frames and the origin's: three calls, one reset, one pushed promise."""
    visitor, origin = Peer(), Peer()
    up = frame(SETTINGS, 0, 0, struct.pack("!HI", 0x1, 65536))
    up += visitor.split_headers(1, REQUEST, parts=3)
    up += data(1, b"\0\0\0\0\x05hello", end=True, pad=4)
    up += visitor.headers(3, [*REQUEST[:2], (":path", "/b"), REQUEST[3]], end=True)
    up += visitor.headers(5, [*REQUEST[:2], (":path", "/c"), REQUEST[3]])
    up += frame(PING, 0, 0, b"12345678")
    up += frame(RST_STREAM, 0, 5, struct.pack("!I", 0x8))
    down = frame(SETTINGS, 0, 0) + frame(SETTINGS, 1, 0)
    down += origin.headers(1, [(":status", "100")])
    down += origin.headers(1, [(":status", "200"), ("content-type", "application/grpc")])
    promise = origin.encoder.encode([(":method", "GET"), (":path", "/pushed")])
    down += frame(PUSH_PROMISE, END_HEADERS, 1, struct.pack("!I", 2) + promise)
    down += data(1, b"\0\0\0\0\x0aecho:hello")
    down += origin.headers(1, [("grpc-status", "0")], end=True)
    trailers_only = [(":status", "200"), ("grpc-status", "14"), ("grpc-message", "down")]
    down += origin.headers(3, trailers_only, end=True)
    return up, down


def run(up: bytes, down: bytes, cuts: list[float] | None = None, limit: int = 1024) -> Store:
    """Feed both directions, the visitor's first, each cut at ``cuts`` (fractions)."""
    store = Store()
    capture = H2Capture(store, "app", limit)
    for payload, feed in ((up, capture.to_origin), (down, capture.to_visitor)):
        points = sorted({int(len(payload) * c) for c in cuts or []} | {0, len(payload)})
        for start, end in itertools.pairwise(points):
            feed(payload[start:end])
    capture.closed(None)
    return store


def listed(store: Store) -> list[Exchange]:
    return list(reversed(store.query(limit=100)))


def test_each_call_is_an_exchange_with_heads_bodies_and_trailers() -> None:
    first, second, third = listed(run(*conversation()))
    assert (first.method, first.target, first.http_version) == (
        "POST",
        "/pkg.Greeter/Hello?x=1",
        "HTTP/2",
    )
    assert first.request_headers[:2] == [
        ("host", "app.localhost"),
        ("content-type", "application/grpc"),
    ]
    assert bytes(first.request_body.data) == b"\0\0\0\0\x05hello"  # the padding is not data
    assert first.request_complete
    assert (first.status, first.reason) == (200, "OK")  # the 100 is skipped
    assert first.response_body is not None
    assert bytes(first.response_body.data) == b"\0\0\0\0\x0aecho:hello"
    assert first.trailers is not None
    assert first.trailers.headers == [("grpc-status", "0")]
    assert (first.state, first.error) == ("complete", None)
    assert (second.path, second.status, second.state) == ("/b", 200, "error")
    assert second.error == "grpc-status 14: down"  # a gRPC "trailers-only" failure
    assert (third.path, third.status, third.error) == ("/c", None, "stream reset (CANCEL)")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1), max_size=12))
def test_how_the_bytes_are_cut_changes_nothing(cuts: list[float]) -> None:
    whole = [e.detail() for e in listed(run(*conversation()))]
    pieces = [e.detail() for e in listed(run(*conversation(), cuts=cuts))]
    strip = ("started", "duration_ms", "timing")
    assert [{k: v for k, v in d.items() if k not in strip} for d in pieces] == [
        {k: v for k, v in d.items() if k not in strip} for d in whole
    ]


def test_bodies_keep_their_first_bytes_and_count_all() -> None:
    visitor, origin = Peer(), Peer()
    up = visitor.headers(1, REQUEST) + data(1, b"a" * 3000) + data(1, b"b" * 3000, end=True)
    down = origin.headers(1, [(":status", "200")]) + data(1, b"c" * 5000, end=True)
    (exchange,) = listed(run(up, down, limit=100))
    assert (exchange.request_body.size, bytes(exchange.request_body.data)) == (6000, b"a" * 100)
    assert exchange.response_body is not None
    assert exchange.response_body.size == 5000
    assert exchange.response_body.truncated


def test_a_connection_that_ends_early_leaves_its_calls_unanswered() -> None:
    visitor, origin = Peer(), Peer()
    up = visitor.headers(1, REQUEST, end=True) + visitor.headers(3, REQUEST, end=True)
    down = origin.headers(1, [(":status", "200")]) + data(1, b"partial")
    first, second = listed(run(up, down))
    assert (first.status, first.error) == (200, "response cut short")
    assert (second.status, second.error) == (None, "no response")


def test_what_it_cannot_follow_stops_the_capture_not_the_caller() -> None:
    visitor = Peer()
    store = Store()
    capture = H2Capture(store, "app", 1024, max_block=4096)
    capture.to_origin(visitor.headers(1, REQUEST))
    capture.to_origin(frame(HEADERS, END_HEADERS, 3, b"\xff\xff\xff\xff\xff"))  # no such index
    assert capture.failed is not None
    assert "did not decode" in capture.failed
    capture.to_origin(visitor.headers(5, REQUEST))  # ignored from now on
    (exchange,) = listed(store)
    assert exchange.error is not None
    assert exchange.error.startswith("capture stopped:")

    big = H2Capture(Store(), "app", 1024, max_block=4096)
    big.to_origin(frame(HEADERS, 0, 1, b"\0" * 3000) + frame(CONTINUATION, 0, 1, b"\0" * 3000))
    assert big.failed == "a header block larger than 4096 bytes"


def test_the_tap_switches_to_http2_on_the_preface_even_cut_in_two() -> None:
    store = Store()
    tap = ExchangeTap(store, "app", 1024, visitor=("203.0.113.9", 5000))
    up, down = conversation()
    stream = PREFACE + up
    tap.to_origin(stream[:16])
    tap.to_origin(stream[16:])
    tap.to_visitor(down)
    assert tap.idle  # all three calls ended: answered, failed, reset
    tap.closed(None)
    first, _, _ = listed(store)
    assert first.visitor_ip == "203.0.113.9"
    assert first.status == 200


def _data_frames(wire: bytes) -> list[tuple[int, int]]:
    """(payload size, flags) of each frame in ``wire`` (all DATA here)."""
    out, at = [], 0
    while at < len(wire):
        high, low, kind, flags, _ = struct.unpack_from("!HBBBI", wire, at)
        assert kind == DATA
        size = high << 8 | low
        out.append((size, flags))
        at += 9 + size
    return out


def test_a_replay_sends_its_body_as_the_origins_windows_open() -> None:
    sender = _Sender(b"x" * 200_000)
    first = _data_frames(sender.frames())
    assert sum(size for size, _ in first) == 65_535  # the windows before any SETTINGS
    assert all(size <= 16_384 for size, _ in first)
    assert sender.frames() == b""
    settings_ack = sender.control(SETTINGS, 0, 0, struct.pack("!HI", 0x4, 1_000_000))
    assert settings_ack == frame(SETTINGS, 0x1, 0)
    assert sender.frames() == b""  # the stream's window grew, the connection's did not
    assert sender.control(WINDOW_UPDATE, 0, 0, struct.pack("!I", 100_000)) == b""
    assert sum(size for size, _ in _data_frames(sender.frames())) == 100_000
    sender.control(WINDOW_UPDATE, 0, 0, struct.pack("!I", 1 << 20))
    rest = _data_frames(sender.frames())
    assert sum(size for size, _ in rest) == 200_000 - 165_535
    assert [flags for _, flags in rest][-1] == END_STREAM
    assert sender.control(PING, 0, 0, b"12345678") == frame(PING, 0x1, 0, b"12345678")


def test_no_more_calls_are_followed_at_once_than_the_list_keeps() -> None:
    visitor = Peer()
    store = Store(keep=3)
    capture = H2Capture(store, "app", 1024)
    for stream in range(1, 12, 2):  # six calls, none answered
        capture.to_origin(visitor.headers(stream, REQUEST) + data(stream, b"x" * 100))
    assert len(store) == 3
    assert len(capture._streams) == 3  # the three others were decoded, not held
