"""HTTP/2 capture and replay at their edges: the preface and frames cut anywhere, request
trailers, streams that are not new calls, header lists that decode far larger than their
blocks, and replayed fields as HTTP/2 wants them."""

from __future__ import annotations

import contextlib
import struct
import time
from types import SimpleNamespace

import anyio
import anyio.abc
import hpack
import pytest

from ferrotunnel.core import Address
from ferrotunnel.core.h2wire import PREFACE
from ferrotunnel.observability.capture import ExchangeTap
from ferrotunnel.observability.exchange import NO_BODY, Exchange
from ferrotunnel.observability.http2 import H2Capture, H2Head
from ferrotunnel.observability.replay import Edits, ReplayError, replay
from ferrotunnel.observability.replay_h2 import build_h2_request
from ferrotunnel.observability.store import Store

from .test_http2_capture import (
    CONTINUATION,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PADDED,
    PUSH_PROMISE,
    REQUEST,
    SETTINGS,
    Peer,
    conversation,
    data,
    frame,
    listed,
    run,
)

STRIP = ("started", "duration_ms", "timing")


def _details(store: Store) -> list[dict[str, object]]:
    return [{k: v for k, v in e.detail().items() if k not in STRIP} for e in listed(store)]


def _tapped(up: bytes, down: bytes, size: int) -> Store:
    """``up`` and ``down`` through an :class:`ExchangeTap`, ``up`` in pieces of ``size``."""
    store = Store()
    tap = ExchangeTap(store, "app", 1024)
    for at in range(0, len(up), size):
        tap.to_origin(up[at : at + size])
    tap.to_visitor(down)
    tap.closed(None)
    return store


def test_the_preface_in_pieces_of_any_size_switches_to_http2() -> None:
    up, down = conversation()
    whole = _details(_tapped(PREFACE + up, down, len(PREFACE + up)))
    assert len(whole) == 3
    for size in (1, 2, 3, 5, 7, 13, 23, 25):
        assert _details(_tapped(PREFACE + up, down, size)) == whole, size


def test_an_http1_request_with_the_method_pri_stays_http1() -> None:
    request = b"PRI /x HTTP/1.1\r\nHost: app\r\n\r\n"
    answer = b"HTTP/1.1 204 No Content\r\n\r\n"
    for size in (1, 3, 14, len(request)):
        (exchange,) = listed(_tapped(request, answer, size))
        assert (exchange.method, exchange.target, exchange.status) == ("PRI", "/x", 204), size
    # nor is a request whose first line alone looks like the preface's
    lookalike = b"PRI * HTTP/2.0\r\nHost: app\r\n\r\n"
    store = Store()
    tap = ExchangeTap(store, "app", 1024)
    tap.to_origin(lookalike)
    assert tap._h2 is None


def test_an_origin_that_speaks_first_changes_nothing() -> None:
    """An HTTP/2 server may send its SETTINGS before the visitor's preface has come."""
    up, down = conversation()
    store = Store()
    tap = ExchangeTap(store, "app", 1024)
    tap.to_visitor(frame(SETTINGS, 0, 0, struct.pack("!HI", 0x3, 100)))
    for at in range(0, len(PREFACE) + len(up), 10):
        tap.to_origin((PREFACE + up)[at : at + 10])
    tap.to_visitor(down)
    tap.closed(None)
    assert _details(store) == _details(run(up, down))


def test_frames_cut_at_every_byte_change_nothing() -> None:
    up, down = conversation()
    whole = _details(run(up, down))
    for at in range(1, len(up)):
        assert _details(run(up, down, cuts=[at / len(up)])) == whole, at
    for at in range(1, len(down)):
        store = Store()
        capture = H2Capture(store, "app", 1024)
        capture.to_origin(up)
        capture.to_visitor(down[:at])
        capture.to_visitor(down[at:])
        capture.closed(None)
        assert _details(store) == whole, at


def test_a_padded_header_frame_is_judged_alike_whole_or_cut() -> None:
    """Padding is not part of the header block: a frame whose payload is above
    ``max_block`` only by its padding is followed however it is cut."""
    target = "/" + "a" * 200
    block = hpack.Encoder().encode([(":method", "GET"), (":path", target)], huffman=False)
    padding = bytes([250]) + block + b"\0" * 250
    padded = frame(HEADERS, PADDED | END_HEADERS | END_STREAM, 1, padding)
    assert len(block) < 300 < len(padding)
    for cut in (len(padded), 20):
        capture = H2Capture(Store(), "app", 1024, max_block=300)
        capture.to_origin(padded[:cut])
        capture.to_origin(padded[cut:])
        assert capture.failed is None, cut
        assert capture.last is not None
        assert capture.last.target == target


def test_request_trailers_end_the_request() -> None:
    visitor, origin = Peer(), Peer()
    up = visitor.headers(1, REQUEST) + data(1, b"\0\0\0\0\x01x")
    up += visitor.headers(1, [("x-checksum", "abc")], end=True)  # trailers
    down = origin.headers(1, [(":status", "200")]) + origin.headers(1, [("grpc-status", "0")])
    down += frame(HEADERS, END_HEADERS | END_STREAM, 1, b"")
    (exchange,) = listed(run(up, down))
    assert exchange.request_complete  # so it can be replayed
    assert bytes(exchange.request_body.data) == b"\0\0\0\0\x01x"


def test_a_stream_already_seen_is_not_a_new_call() -> None:
    visitor, origin = Peer(), Peer()
    store = Store()
    capture = H2Capture(store, "app", 1024)
    capture.to_origin(visitor.headers(1, REQUEST))
    capture.to_visitor(origin.headers(1, [(":status", "200")], end=True))  # answered, over
    capture.to_origin(visitor.headers(1, [("x-late", "trailer")], end=True))  # late trailers
    capture.to_origin(visitor.headers(7, REQUEST, end=True))
    capture.to_origin(visitor.headers(5, REQUEST, end=True))  # lower than 7: not a new stream
    capture.to_origin(visitor.headers(7, REQUEST, end=True))  # 7 again
    assert [e.target for e in listed(store)] == [REQUEST[2][1]] * 2
    assert capture.failed is None


def _bomb(encoder: hpack.Encoder, first: list[tuple[str, str]]) -> bytes:
    """A block of ``first``, a 4,000-byte field entering the table, then 60,000 one-byte
    references to it: 64 KB that decode to 240 MB."""
    block = encoder.encode([*first, ("x-big", "v" * 4000)], huffman=False)
    return block + b"\xbe" * 60_000


def test_a_header_list_decoding_far_larger_than_its_block_stops_the_capture() -> None:
    visitor = Peer()
    store = Store()
    capture = H2Capture(store, "app", 1024)  # max_block: 256 KiB
    capture.to_origin(visitor.headers(1, REQUEST))
    block = _bomb(visitor.encoder, REQUEST)
    capture.to_origin(frame(HEADERS, END_HEADERS, 3, block))
    assert capture.failed is not None
    assert "header list" in capture.failed
    (first,) = listed(store)  # not the second: its fields are never held
    assert first.error is not None

    origin = Peer()
    answers = H2Capture(Store(), "app", 1024)
    answers.to_origin(visitor.headers(1, REQUEST))
    answers.to_visitor(origin.headers(1, [(":status", "200")]))
    answers.to_visitor(frame(HEADERS, END_HEADERS | END_STREAM, 1, _bomb(origin.encoder, [])))
    assert answers.failed is not None
    assert answers.last is not None
    assert answers.last.trailers is None


def _request_fields(opening: bytes) -> list[tuple[bytes, bytes]]:
    """The fields of the HEADERS (and CONTINUATIONs) in a replay's opening."""
    at, block = len(PREFACE), b""
    while at < len(opening):
        high, low, kind, _, _ = struct.unpack_from("!HBBBI", opening, at)
        size = high << 8 | low
        if kind in (HEADERS, CONTINUATION):
            block += opening[at + 9 : at + 9 + size]
        at += 9 + size
    return [(bytes(n), bytes(v)) for n, v in hpack.Decoder().decode(block, raw=True)]


def _captured(fields: list[tuple[bytes, bytes]]) -> Exchange:
    head = H2Head(b"", version="HTTP/2", method="GET", target="/", fields=fields)
    exchange = Exchange("app", head, NO_BODY)
    exchange.request_complete = True
    return exchange


def test_a_replay_sends_field_values_as_the_bytes_they_came_as() -> None:
    original = _captured([(b"host", b"app"), (b"x-name", b"caf\xe9")])
    opening, _ = build_h2_request(original, Edits(), scheme="http")
    assert (b"x-name", b"caf\xe9") in _request_fields(opening)  # not UTF-8's c3 a9
    edited = Edits(headers=[("Host", "app"), ("X-Name", "na\xefve")])
    opening, _ = build_h2_request(original, edited, scheme="http")
    assert (b"x-name", b"na\xefve") in _request_fields(opening)


def test_a_replay_sends_no_value_with_surrounding_whitespace() -> None:
    """RFC 9113, 8.2.1: an edited " v " would make the origin reset the stream."""
    edited = Edits(headers=[("Host", " app "), ("X-A", " v\t"), ("TE", " trailers ")])
    opening, _ = build_h2_request(_captured([]), edited, scheme="http")
    fields = _request_fields(opening)
    assert (b":authority", b"app") in fields
    assert (b"x-a", b"v") in fields
    assert (b"te", b"trailers") in fields


# ---- replays against a scripted origin


async def _replay_to(answer: bytes, original: Exchange, edits: Edits) -> Exchange:
    """Replays ``original`` to an origin that sends ``answer`` once it has the request head,
    then reads until the connection closes."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    address = Address("127.0.0.1", port)
    tunnel = SimpleNamespace(name="app", local_addr=address, local_tls=None, local_tls_http2=None)

    async def serve(sock: anyio.abc.SocketStream) -> None:
        async with sock:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                await sock.receive()
                await sock.send(answer)
                while True:
                    await sock.receive()

    outcome: Exchange | ReplayError
    with anyio.fail_after(10):
        async with listener, anyio.create_task_group() as tasks:
            tasks.start_soon(listener.serve, serve)
            try:
                outcome = await replay(Store(), original, tunnel, edits, limit=1024, within=5)  # type: ignore[arg-type]
            except ReplayError as exc:
                outcome = exc
            tasks.cancel_scope.cancel()
    if isinstance(outcome, ReplayError):
        raise outcome
    return outcome


@pytest.mark.anyio
async def test_a_replay_takes_interim_answers_pushes_and_trailers() -> None:
    origin = Peer()
    answer = frame(SETTINGS, 0, 0) + origin.headers(1, [(":status", "103"), ("link", "</a>")])
    promise = origin.encoder.encode([(":method", "GET"), (":path", "/pushed")])
    answer += frame(PUSH_PROMISE, END_HEADERS, 1, struct.pack("!I", 2) + promise)
    answer += origin.headers(1, [(":status", "200")]) + data(1, b"ok", pad=3)
    answer += origin.headers(2, [(":status", "200")], end=True)  # the pushed answer
    answer += origin.headers(1, [("grpc-status", "0")], end=True)
    recorded = await _replay_to(answer, _captured([(b"host", b"app")]), Edits())
    assert (recorded.status, recorded.state) == (200, "complete")
    assert recorded.response_body is not None
    assert bytes(recorded.response_body.data) == b"ok"


@pytest.mark.anyio
async def test_a_replay_the_capture_cannot_record_is_refused_not_a_crash() -> None:
    edits = Edits(headers=[("Host", "app"), ("X-Big", "a" * 300_000)])
    with pytest.raises(ReplayError) as refused:
        await _replay_to(b"", _captured([]), edits)
    assert refused.value.status == 422


def test_a_large_edited_field_is_encoded_at_once() -> None:
    """hpack's Huffman encoder is quadratic: seconds, the event loop held, for 300 KB."""
    edited = Edits(headers=[("Host", "app"), ("X-Big", "a" * 300_000)])
    started = time.monotonic()
    build_h2_request(_captured([]), edited, scheme="http")
    assert time.monotonic() - started < 0.5
