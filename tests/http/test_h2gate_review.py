"""What a hostile visitor may try against the gate (``h2gate.py``): requests that would reach
the origin undecided, memory it would make the gate hold, frames it would make it send."""

from __future__ import annotations

import asyncio
import struct

import anyio
import hpack
import pytest

from ferrotunnel.core.h2wire import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PREFACE,
    SETTINGS,
    WINDOW_UPDATE,
)
from ferrotunnel.http.h1 import HttpError
from ferrotunnel.http.h2c import first_request
from ferrotunnel.http.h2gate import H2Gate

from .harness import h2_frame, http_tunnel, tunnel_stack, visitor
from .test_grpc import AUTHORITY
from .test_h2gate import REQUEST, Turnstile, frames_of, h2_origin


class Refuser:
    """Refuses the streams named (every stream, if none are), and remembers what it saw."""

    def __init__(self, refuse: set[int] | None = None) -> None:
        self.refuse = refuse
        self.decided: list[int] = []

    def __call__(self, stream: int, fields: list[tuple[bytes, bytes]], ended: bool) -> bytes | None:
        self.decided.append(stream)
        if self.refuse is None or stream in self.refuse:
            return b"\x88"  # :status 200
        return None


def opened(refuser: Refuser, max_block: int = 64 << 10) -> tuple[H2Gate, hpack.Encoder]:
    """A gate past its first request (stream 1, decided before the gate existed)."""
    encoder = hpack.Encoder()
    gate = H2Gate(refuser, first_stream=1, max_block=max_block)
    first = h2_frame(HEADERS, END_HEADERS, 1, encoder.encode(REQUEST))
    assert gate.from_visitor(first) == first
    return gate, encoder


def streams_in(data: bytes) -> set[int]:
    return {stream for _, _, stream, _ in frames_of(data)}


def test_a_lower_stream_after_a_refused_higher_one_is_still_decided() -> None:
    """The origin never saw the refused stream 101: for it, 51 is a new stream. Were 51
    taken for an old one (below the highest decided), it would reach the origin undecided."""
    refuser = Refuser()
    gate, encoder = opened(refuser)
    gate.from_visitor(h2_frame(HEADERS, END_HEADERS | END_STREAM, 101, encoder.encode(REQUEST)))
    lower = h2_frame(HEADERS, END_HEADERS | END_STREAM, 51, encoder.encode(REQUEST))
    assert gate.from_visitor(lower) == b""
    assert refuser.decided == [101, 51]


def test_a_lower_stream_let_through_then_its_trailers_pass() -> None:
    refuser = Refuser(refuse={101})
    gate, encoder = opened(refuser)
    gate.from_visitor(h2_frame(HEADERS, END_HEADERS | END_STREAM, 101, encoder.encode(REQUEST)))
    lower = h2_frame(HEADERS, END_HEADERS, 51, encoder.encode(REQUEST))
    assert gate.from_visitor(lower) == lower
    trailers = h2_frame(HEADERS, END_HEADERS | END_STREAM, 51, encoder.encode([("x-t", "1")]))
    assert gate.from_visitor(trailers) == trailers
    assert refuser.decided == [101, 51]


def test_a_block_larger_than_the_limit_does_not_reach_the_origin_undecided() -> None:
    """The origin may well accept a block larger than the ingress reads (gRPC servers take
    megabytes): the request must not pass without the middlewares."""
    refuser = Refuser()
    gate, encoder = opened(refuser, max_block=1024)
    big = encoder.encode([*REQUEST, ("x-pad", "p" * 4000)])
    request = h2_frame(HEADERS, 0, 3, big[:900]) + h2_frame(CONTINUATION, END_HEADERS, 3, big[900:])
    later = h2_frame(HEADERS, END_HEADERS | END_STREAM, 5, encoder.encode(REQUEST))
    out = gate.from_visitor(request) + gate.from_visitor(later)
    assert not {3, 5} & streams_in(out)
    assert gate.closing


def test_a_block_it_cannot_read_is_not_passed_undecided() -> None:
    """Our reader failing where the origin's decoder succeeds would be a way around the
    middlewares; where both fail, the origin would end the connection anyway."""
    refuser = Refuser()
    gate, _ = opened(refuser)
    garbage = h2_frame(HEADERS, END_HEADERS, 3, b"\xff\xff\xff\xff\xff")
    later = h2_frame(HEADERS, END_HEADERS, 5, b"\x82")
    assert gate.from_visitor(garbage + later) == b""
    assert gate.closing


def test_a_continuation_flood_does_not_grow_the_held_block() -> None:
    """Empty CONTINUATIONs add nothing to the block, but each one's header was held."""
    gate, encoder = opened(Refuser())
    block = encoder.encode(REQUEST)
    gate.from_visitor(h2_frame(HEADERS, 0, 3, block))
    empty = h2_frame(CONTINUATION, 0, 3, b"") * 1000
    for _ in range(100):
        assert gate.from_visitor(empty) == b""
        if gate.closing:
            break
    assert gate.closing
    assert len(gate._held) < 64 << 10


def test_a_frame_inside_a_header_block_ends_the_connection() -> None:
    """A header block is one piece (RFC 9113, 4.3): a HEADERS of another stream inside a
    held one would reach the origin with the held one, which was never decided on."""
    refuser = Refuser(refuse=set())
    gate, encoder = opened(refuser)
    held = h2_frame(HEADERS, 0, 3, encoder.encode([*REQUEST, ("x-a", "1")]))
    other = h2_frame(HEADERS, END_HEADERS | END_STREAM, 5, encoder.encode(REQUEST))
    out = gate.from_visitor(held + other)
    assert 3 not in streams_in(out)
    assert gate.closing


def test_credit_for_dropped_data_is_coalesced_while_the_origin_is_inside_a_frame() -> None:
    """Thousands of tiny DATA frames of a refused stream, while the answer cannot go out:
    what waits for the visitor stays small (one WINDOW_UPDATE per window, not per frame)."""
    gate, encoder = opened(Refuser(refuse={3}))
    big = h2_frame(DATA, 0, 1, b"d" * 100)
    gate.from_origin(big[:50])
    gate.from_visitor(h2_frame(HEADERS, END_HEADERS, 3, encoder.encode(REQUEST)))
    tiny = h2_frame(DATA, 0, 3, b"x") * 10_000
    assert gate.from_visitor(tiny) == b""
    assert len(gate._pending) < 1000
    out = bytes(gate.from_origin(big[50:]))
    sent = list(frames_of(out[len(big) - 50 :]))
    assert [(k, s) for k, _, s, _ in sent] == [(HEADERS, 3), (WINDOW_UPDATE, 0), (WINDOW_UPDATE, 3)]
    assert struct.unpack("!I", sent[1][3])[0] == struct.unpack("!I", sent[2][3])[0] == 10_000


def test_zero_length_data_of_a_refused_stream_earns_no_credit() -> None:
    gate, encoder = opened(Refuser(refuse={3}))
    gate.from_visitor(h2_frame(HEADERS, END_HEADERS, 3, encoder.encode(REQUEST)))
    assert gate.from_visitor(h2_frame(DATA, END_STREAM, 3, b"")) == b""
    assert [k for k, _, _, _ in frames_of(gate.ready())] == [HEADERS]


def test_a_violation_while_draining_sends_no_second_goaway() -> None:
    """GOAWAY's last stream may not grow; one GOAWAY is enough."""
    gate, encoder = opened(Refuser(refuse={3}))
    new_field = encoder.encode([*REQUEST, ("x-new", "indexed")])
    gate.from_visitor(h2_frame(HEADERS, END_HEADERS | END_STREAM, 3, new_field))
    assert gate.draining
    gate.from_visitor(h2_frame(HEADERS, END_HEADERS, 5, b"\xff\xff\xff"))
    assert gate.closing
    kinds = [k for k, _, _, _ in frames_of(gate.ready())]
    assert kinds.count(GOAWAY) == 1


def test_frames_between_header_blocks_still_pass() -> None:
    gate, encoder = opened(Refuser(refuse=set()))
    ping = h2_frame(PING, 0, 0, b"12345678")
    request = h2_frame(HEADERS, END_HEADERS | END_STREAM, 3, encoder.encode(REQUEST))
    assert gate.from_visitor(ping + request + ping) == ping + request + ping
    assert not gate.closing


def test_an_answer_waits_for_the_end_of_the_origins_header_block() -> None:
    """Between an origin's HEADERS and its CONTINUATION no other frame may come (RFC 9113,
    6.10): the visitor would end the connection with a PROTOCOL_ERROR."""
    gate, encoder = opened(Refuser(refuse={3}))
    origin_block = hpack.Encoder().encode([(":status", "200"), ("x-big", "b" * 100)])
    begun = h2_frame(HEADERS, 0, 1, origin_block[:20])
    assert gate.from_origin(begun) == begun
    gate.from_visitor(h2_frame(HEADERS, END_HEADERS | END_STREAM, 3, encoder.encode(REQUEST)))
    assert gate.ready() == b""
    rest = h2_frame(CONTINUATION, END_HEADERS, 1, origin_block[20:])
    out = bytes(gate.from_origin(rest))
    assert out.startswith(rest)
    assert [(k, s) for k, _, s, _ in frames_of(out[len(rest) :])] == [(HEADERS, 3)]


def test_an_answer_waits_for_a_continuation_cut_across_reads() -> None:
    gate, encoder = opened(Refuser(refuse={3}))
    begun = h2_frame(HEADERS, 0, 1, b"\x88")
    rest = h2_frame(CONTINUATION, END_HEADERS, 1, b"\x88")
    gate.from_origin(begun)
    gate.from_visitor(h2_frame(HEADERS, END_HEADERS | END_STREAM, 3, encoder.encode(REQUEST)))
    assert gate.ready() == b""
    assert gate.from_origin(rest[:4]) == rest[:4]
    out = bytes(gate.from_origin(rest[4:]))
    assert out.startswith(rest[4:])
    assert [(k, s) for k, _, s, _ in frames_of(out[len(rest) - 4 :])] == [(HEADERS, 3)]


def test_a_first_request_with_impossible_padding_is_a_bad_request() -> None:
    """Not an IndexError out of ``data_received``: an HttpError the ingress answers by
    closing, as for any first request it cannot read."""
    for payload in (b"", b"\x05abc"):
        with pytest.raises(HttpError):
            first_request(PREFACE + h2_frame(HEADERS, PADDED | END_HEADERS, 1, payload))


# ---------------------------------------------------------------------------- end to end


async def _statuses(
    reader: asyncio.StreamReader, want: set[int], decoder: hpack.Decoder
) -> dict[int, bytes]:
    """The ``:status`` of each stream the visitor is answered on, until ``want`` are."""
    buf, block = bytearray(), bytearray()
    statuses: dict[int, bytes] = {}
    while not want <= statuses.keys():
        data = await reader.read(65536)
        assert data, f"the connection closed with only {statuses} answered"
        buf += data
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
            size = int.from_bytes(buf[:3], "big")
            kind, flags, stream = buf[3], buf[4], int.from_bytes(buf[5:9], "big")
            payload, buf[:] = bytes(buf[9 : 9 + size]), buf[9 + size :]
            if kind in (HEADERS, CONTINUATION):
                block += payload  # (neither side pads or prioritises here)
                if flags & END_HEADERS:
                    fields = dict(decoder.decode(bytes(block), raw=True))
                    block.clear()
                    if b":status" in fields:
                        statuses.setdefault(stream, fields[b":status"])
    return statuses


@pytest.mark.anyio
async def test_a_lower_stream_cannot_slip_past_the_middlewares() -> None:
    """End to end: refused on stream 101, the visitor opens 51 (new to the origin)."""
    turnstile = Turnstile(allow=1)
    encoder, decoder = hpack.Encoder(), hpack.Decoder()
    fields = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", AUTHORITY)]

    def request(stream: int) -> bytes:
        return h2_frame(HEADERS, END_HEADERS | END_STREAM, stream, encoder.encode(fields))

    async with (
        h2_origin() as port,
        tunnel_stack([http_tunnel(AUTHORITY, port)], middlewares=[turnstile]) as stack,
        visitor(stack.port) as (reader, writer),
    ):
        writer.write(PREFACE + h2_frame(SETTINGS, 0, 0, b"") + request(1))
        with anyio.fail_after(10):
            assert (await _statuses(reader, {1}, decoder))[1] == b"200"
            writer.write(request(101) + request(51))
            statuses = await _statuses(reader, {101, 51}, decoder)
    assert (statuses[101], statuses[51]) == (b"429", b"429")
    assert turnstile.seen == ["/", "/", "/"]
