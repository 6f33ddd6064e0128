"""The HTTP/2 watch, sans IO: frames built with hpack, fed whole and in every split, must give
the same exchanges — and a watch that cannot follow must say so without losing the streams
it knew."""

from __future__ import annotations

import hpack
import pytest

from ferrotunnel.http.h2watch import H2Exchange, H2Watch

from .harness import h2_frame

DATA, HEADERS, RST_STREAM, SETTINGS, PUSH_PROMISE, CONTINUATION = 0x0, 0x1, 0x3, 0x4, 0x5, 0x9
END_STREAM, END_HEADERS, PADDED, PRIORITY = 0x1, 0x4, 0x8, 0x20


class Peer:
    """One side's hpack encoder: blocks must be decoded in order, as a real peer sends them."""

    def __init__(self) -> None:
        self.encoder = hpack.Encoder()

    def headers(
        self, stream: int, fields: list[tuple[str, str]], flags: int = END_HEADERS
    ) -> bytes:
        return h2_frame(HEADERS, flags, stream, self.encoder.encode(fields))


def request(method: str = "POST", path: str = "/svc/Call") -> list[tuple[str, str]]:
    return [
        (":method", method),
        (":scheme", "http"),
        (":path", path),
        (":authority", "App.localhost:8080"),
    ]


def summary(exchanges: list[H2Exchange]) -> list[tuple[object, ...]]:
    return [
        (e.stream_id, e.method, e.target, e.authority, e.status, e.bytes_in, e.bytes_out, e.error)
        for e in exchanges
    ]


def feed_in_pieces(
    chunks: list[tuple[str, bytes]], size: int, watch: H2Watch | None = None
) -> list[H2Exchange]:
    """Feed each (direction, bytes) in pieces of ``size`` bytes; every exchange completed."""
    watch = watch or H2Watch()
    done: list[H2Exchange] = []
    for direction, data in chunks:
        feed = watch.from_visitor if direction == "in" else watch.from_origin
        for i in range(0, len(data), size):
            done += feed(data[i : i + size])
    return done


def conversation() -> list[tuple[str, bytes]]:
    """Two interleaved streams: 1 with a body each way and gRPC trailers saying NOT_FOUND; 3
    a GET whose header block spans a CONTINUATION and whose answer follows a 103."""
    client, origin = Peer(), Peer()
    # (encoded in the order they are sent: the decoder's table follows the encoder's)
    padded = b"\x02" + b"\x00\x00\x00\x00\x10" + client.encoder.encode(request()) + b"\x00\x00"
    block3 = client.encoder.encode([*request("GET", "/three?x=1"), ("x-long", "v" * 40)])
    return [
        ("in", h2_frame(SETTINGS, 0, 0, b"")),
        ("in", h2_frame(HEADERS, END_HEADERS | PADDED | PRIORITY, 1, padded)),
        (
            "in",
            h2_frame(HEADERS, END_STREAM, 3, block3[:10])
            + h2_frame(CONTINUATION, END_HEADERS, 3, block3[10:]),
        ),
        ("in", h2_frame(DATA, END_STREAM, 1, b"\x00\x00\x00\x00\x05hello")),
        (
            "out",
            h2_frame(SETTINGS, 0, 0, b"")
            + origin.headers(3, [(":status", "103"), ("link", "</a>")]),
        ),
        ("out", origin.headers(1, [(":status", "200"), ("content-type", "application/grpc")])),
        ("out", origin.headers(3, [(":status", "204")], END_HEADERS | END_STREAM)),
        ("out", h2_frame(DATA, 0, 1, b"\x00\x00\x00\x00\x02ok")),
        (
            "out",
            origin.headers(
                1, [("grpc-status", "5"), ("grpc-message", "no")], END_HEADERS | END_STREAM
            ),
        ),
    ]


def expected() -> list[tuple[object, ...]]:
    chunks = conversation()
    size = {i: len(data) for i, (_, data) in enumerate(chunks)}
    return [
        # stream 3 ends first: its request ended with its headers, its 204 with END_STREAM
        (3, b"GET", b"/three?x=1", "app.localhost", 204, size[2], size[4] - 9 + size[6], None),
        (
            1,
            b"POST",
            b"/svc/Call",
            "app.localhost",
            200,
            size[1] + size[3],
            size[5] + size[7] + size[8],
            "grpc-status 5",
        ),
    ]


@pytest.mark.parametrize("size", [1, 2, 9, 10, 17, 1 << 20])
def test_exchanges_are_the_same_however_the_bytes_are_split(size: int) -> None:
    assert summary(feed_in_pieces(conversation(), size)) == expected()


def test_a_reset_ends_an_exchange_with_the_reason() -> None:
    client, origin = Peer(), Peer()
    watch = H2Watch()
    assert watch.from_visitor(client.headers(1, request())) == []
    assert watch.from_origin(origin.headers(1, [(":status", "200")])) == []
    [reset] = watch.from_visitor(h2_frame(RST_STREAM, 0, 1, (8).to_bytes(4, "big")))
    assert (reset.status, reset.error) == (200, "stream reset by the visitor (CANCEL)")
    assert watch.from_visitor(client.headers(3, request())) == []
    [refused] = watch.from_origin(h2_frame(RST_STREAM, 0, 3, (7).to_bytes(4, "big")))
    assert (refused.status, refused.error) == (0, "stream reset by the origin (REFUSED_STREAM)")


def test_unfinished_exchanges_end_with_the_connection() -> None:
    client = Peer()
    watch = H2Watch()
    watch.from_visitor(client.headers(1, request()) + client.headers(3, request("GET", "/b")))
    ended = watch.close("the connection closed")
    assert [(e.stream_id, e.status, e.error) for e in ended] == [
        (1, 0, "the connection closed"),
        (3, 0, "the connection closed"),
    ]
    assert watch.close("again") == []


def test_a_push_promise_keeps_the_decoder_in_step() -> None:
    """A PUSH_PROMISE's block adds to the origin's dynamic table: the watch must decode it,
    or the next response head would be read against a table that lacks its entries."""
    client, origin = Peer(), Peer()
    watch = H2Watch()
    watch.from_visitor(client.headers(1, request("GET", "/"), END_HEADERS | END_STREAM))
    promised = (2).to_bytes(4, "big") + origin.encoder.encode(
        [(":status", "299"), ("x-pushed", "1")]
    )
    watch.from_origin(h2_frame(PUSH_PROMISE, END_HEADERS, 1, promised))
    [done] = watch.from_origin(
        origin.headers(1, [(":status", "299"), ("x-pushed", "1")], END_HEADERS | END_STREAM)
    )
    assert (done.status, done.error) == (299, None)
    assert watch.failed is None


def test_an_undecodable_block_stops_the_watch_without_losing_streams() -> None:
    client = Peer()
    watch = H2Watch()
    watch.from_visitor(client.headers(1, request()))
    [lost] = watch.from_visitor(h2_frame(HEADERS, END_HEADERS, 3, b"\xff\xff\xff\xff"))
    assert lost.stream_id == 1
    assert lost.error is not None
    assert lost.error.startswith("the ingress stopped following the connection: an undecodable")
    assert watch.failed is not None
    # from then on, nothing is recorded (and nothing raises)
    assert watch.from_visitor(client.headers(5, request(), END_HEADERS | END_STREAM)) == []
    assert watch.from_origin(b"\x00" * 100) == []
    assert watch.close("closed") == []


def test_an_oversized_block_stops_the_watch() -> None:
    client = Peer()
    watch = H2Watch(max_block=64)
    assert watch.from_visitor(client.headers(1, [*request(), ("x-big", "v" * 200)])) == []
    assert watch.failed is not None
    assert "more than the watch reads" in watch.failed


def test_at_most_max_streams_unfinished_streams_are_tracked() -> None:
    client, origin = Peer(), Peer()
    watch = H2Watch(max_streams=2)
    for stream in (1, 3, 5):
        watch.from_visitor(client.headers(stream, request(), END_HEADERS | END_STREAM))
    done: list[H2Exchange] = []
    for stream in (1, 3, 5):
        done += watch.from_origin(
            origin.headers(stream, [(":status", "200")], END_HEADERS | END_STREAM)
        )
    assert [e.stream_id for e in done] == [1, 3]


def test_a_table_size_the_visitor_allows_is_followed() -> None:
    """A visitor's SETTINGS_HEADER_TABLE_SIZE lets the origin's encoder use a table larger
    than hpack's 4096 (grpcio, the ``h2`` library and browsers do): the watch must accept the
    origin's table size update, or it stops following every connection of such a client."""
    client, origin = Peer(), Peer()
    origin.encoder.header_table_size = 1 << 18  # emits a table size update in its next block
    watch = H2Watch()
    table_size = (0x1).to_bytes(2, "big") + (1 << 18).to_bytes(4, "big")
    watch.from_visitor(h2_frame(SETTINGS, 0, 0, table_size))
    watch.from_visitor(client.headers(1, request(), END_HEADERS | END_STREAM))
    [done] = watch.from_origin(
        origin.headers(1, [(":status", "200"), ("x-big", "v" * 5000)], END_HEADERS | END_STREAM)
    )
    assert (done.status, done.error, watch.failed) == (200, None, None)


def test_a_table_size_nobody_allowed_stops_the_watch() -> None:
    """An encoder going past what its peer advertised (or past ``max_table``) is not followed:
    the watch ends, the connection carries on."""
    client = Peer()
    client.encoder.header_table_size = 1 << 18
    watch = H2Watch(max_table=1 << 17)
    table_size = (0x1).to_bytes(2, "big") + (1 << 18).to_bytes(4, "big")
    watch.from_origin(h2_frame(SETTINGS, 0, 0, table_size))  # capped at max_table
    watch.from_visitor(client.headers(1, request()))
    assert watch.failed is not None
    assert "table size 262144 above the 131072" in watch.failed


def test_a_malformed_status_never_raises() -> None:
    """``:status`` is the origin's text: one of thousands of digits (past Python's int limit)
    must not raise out of the watch, which would break the visitor's connection."""
    client, origin = Peer(), Peer()
    watch = H2Watch()
    watch.from_visitor(client.headers(1, request(), END_HEADERS | END_STREAM))
    [done] = watch.from_origin(
        origin.headers(1, [(":status", "2" * 5000)], END_HEADERS | END_STREAM)
    )
    assert done.status == 0


def test_an_origin_stopping_an_upload_it_answered_is_no_error() -> None:
    """A server may answer before the request's end, then reset the stream with NO_ERROR to
    stop the upload (RFC 9113, section 8.1): the exchange succeeded, and its record does not
    wait for the request's end, which may never come."""
    client, origin = Peer(), Peer()
    watch = H2Watch()
    watch.from_visitor(client.headers(1, request()) + h2_frame(DATA, 0, 1, b"part"))
    [done] = watch.from_origin(origin.headers(1, [(":status", "413")], END_HEADERS | END_STREAM))
    assert (done.status, done.error, done.request_done) == (413, None, False)
    assert watch.from_origin(h2_frame(RST_STREAM, 0, 1, (0).to_bytes(4, "big"))) == []
    # before the response ended, the same reset cuts it short
    watch.from_visitor(client.headers(3, request()))
    watch.from_origin(origin.headers(3, [(":status", "200")]))
    [cut] = watch.from_origin(h2_frame(RST_STREAM, 0, 3, (0).to_bytes(4, "big")))
    assert cut.error == "stream reset by the origin (NO_ERROR)"


def test_what_unfinished_streams_hold_is_bounded() -> None:
    """A visitor opening streams with long paths that never end (an origin answering each
    with a head and nothing more leaves them open) cannot make the watch hold more than
    ``max_held`` bytes of their paths: further streams go unrecorded."""
    client, origin = Peer(), Peer()
    watch = H2Watch(max_held=20_000)
    for stream in range(1, 100, 2):
        watch.from_visitor(client.headers(stream, request("GET", "/" + "p" * 3000)))
        watch.from_origin(origin.headers(stream, [(":status", "200")], END_HEADERS))
    ended = watch.close("the connection closed")
    assert 0 < sum(len(e.target) + len(e.authority) for e in ended) <= 20_000
    # once they end, their room is free again
    client, origin = Peer(), Peer()
    watch = H2Watch(max_held=7_000)
    for stream in range(1, 20, 2):
        watch.from_visitor(
            client.headers(stream, request("GET", "/" + "q" * 3000), END_HEADERS | END_STREAM)
        )
        [done] = watch.from_origin(
            origin.headers(stream, [(":status", "200")], END_HEADERS | END_STREAM)
        )
        assert done.stream_id == stream
