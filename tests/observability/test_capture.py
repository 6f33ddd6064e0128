"""The capture tap and body rendering, fed by hand: several exchanges on one stream, failures,
and bodies of every kind."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferrotunnel.core import TunnelKind
from ferrotunnel.observability.capture import CaptureObserver, ExchangeTap, ingress_answer
from ferrotunnel.observability.exchange import Body, render_body
from ferrotunnel.observability.replay import Edits, ReplayError, build_request
from ferrotunnel.observability.store import Store, TunnelState
from ferrotunnel.protocol import ErrorCode

TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_two_exchanges_on_one_stream_with_a_trace_from_the_open_frame() -> None:
    store = Store()
    tap = ExchangeTap(store, "app", 8, visitor=("203.0.113.7", 5555), traceparent=TRACE)
    tap.to_origin(memoryview(b"POST /a HTTP/1.1\r\nContent-Length: 12\r\n\r\nhello world!"))
    tap.to_visitor(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
    tap.to_origin(b"GET /b?q=1 HTTP/1.1\r\n\r\n")
    assert not tap.idle
    tap.to_visitor(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert tap.idle
    tap.closed(None)
    first, second = reversed(store.query())
    assert (first.method, first.target, first.status, first.state) == (
        "POST",
        "/a",
        201,
        "complete",
    )
    assert bytes(first.request_body.data) == b"hello wo"  # the first 8 bytes
    assert (first.request_body.size, first.request_body.truncated) == (12, True)
    assert first.visitor_ip == "203.0.113.7"
    assert first.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert (second.target, second.status) == ("/b?q=1", 200)
    assert second.response_body is not None
    assert bytes(second.response_body.data) == b"abc"
    assert second.duration is not None
    assert second.ttfb is not None
    assert second.duration >= second.ttfb


def test_a_request_whose_body_never_ended_is_not_replayed_as_it_is() -> None:
    """The stream ended inside the body (the local service refused, say, or the visitor went
    away): what arrived is shown, marked incomplete, and replay asks for an edited body rather
    than sending the part with a Content-Length that says it is whole."""
    store = Store()
    tap = ExchangeTap(store, "app", 1024)
    tap.to_origin(memoryview(b"POST /up HTTP/1.1\r\nContent-Length: 10\r\n\r\nabcd"))
    tap.closed("the local service at 127.0.0.1:3000 refused the connection", 502)
    [cut] = store.query()
    assert cut.request_body.size == 4
    assert cut.detail()["request"]["complete"] is False
    with pytest.raises(ReplayError) as refused:
        build_request(cut, Edits())
    assert (refused.value.code, refused.value.status) == ("REQUEST_INCOMPLETE", 409)
    wire = build_request(cut, Edits(body=b"edited"))[2]
    assert wire.endswith(b"\r\n\r\nedited")
    # a whole one is complete, also when its response never came
    tap = ExchangeTap(store, "app", 1024)
    tap.to_origin(memoryview(b"POST /up HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd"))
    tap.closed("no answer", 502)
    whole = store.query()[0]
    assert whole.request_complete
    assert build_request(whole, Edits())[2].endswith(b"\r\n\r\nabcd")


def test_a_stream_that_ends_early_marks_its_exchanges() -> None:
    store = Store()
    tap = ExchangeTap(store, "app", 1024)
    tap.to_origin(b"GET /slow HTTP/1.1\r\n\r\n")
    tap.closed("stream reset (CANCEL)")
    (only,) = store.query()
    assert (only.state, only.error, only.status) == ("error", "stream reset (CANCEL)", None)

    tap = ExchangeTap(store, "app", 1024)
    tap.to_origin(b"GET /cut HTTP/1.1\r\n\r\n")
    tap.to_visitor(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
    tap.closed(None)
    cut = store.query()[0]
    assert (cut.status, cut.error) == (200, "response cut short")

    tap = ExchangeTap(store, "app", 1024)
    tap.to_origin(b"GET /until-close HTTP/1.1\r\n\r\n")
    tap.to_visitor(b"HTTP/1.1 200 OK\r\n\r\nall of it")
    tap.closed(None)
    whole = store.query()[0]
    assert whole.state == "complete"
    assert whole.response_body is not None
    assert bytes(whole.response_body.data) == b"all of it"


def test_the_ingress_answer_is_the_status_of_a_request_the_origin_never_answered() -> None:
    store = Store()
    tap = ExchangeTap(store, "app", 1024)
    tap.to_origin(b"GET /a HTTP/1.1\r\n\r\n")
    tap.to_visitor(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    tap.to_origin(b"GET /b HTTP/1.1\r\n\r\n")
    tap.closed("the local service at 127.0.0.1:3000 refused the connection", 502)
    unanswered, answered = store.query()
    assert (answered.status, answered.state) == (200, "complete")
    assert (unanswered.status, unanswered.reason, unanswered.state) == (502, "Bad Gateway", "error")
    assert unanswered.response is None  # the origin said nothing: the 502 is the ingress's
    assert unanswered.summary()["status"] == 502

    tap = ExchangeTap(store, "app", 1024)
    tap.to_origin(b"GET /cut HTTP/1.1\r\n\r\n")
    tap.to_visitor(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
    tap.closed("[Errno 104] Connection reset by peer", 502)
    cut = store.query()[0]
    assert (cut.status, cut.error) == (200, "[Errno 104] Connection reset by peer")
    assert cut.ingress_status is None  # its head reached the visitor: no 502 came after it


@pytest.mark.parametrize(
    ("reset_code", "done", "answer"),
    [
        (ErrorCode.CONNECT_ERROR, True, 502),  # refused, or broken by the origin
        (None, True, 502),  # the origin closed its connection (FIN both ways)
        (ErrorCode.TIMEOUT, True, 504),  # the ingress gave up waiting
        (ErrorCode.CANCEL, True, None),  # the visitor left
        (ErrorCode.NO_ERROR, True, None),  # released between exchanges
        (None, False, None),
    ],
)
def test_how_a_stream_ended_tells_what_the_ingress_answered(
    reset_code: ErrorCode | None, done: bool, answer: int | None
) -> None:
    assert ingress_answer(SimpleNamespace(reset_code=reset_code, done=done)) == answer  # type: ignore[arg-type]


def test_a_response_without_a_request_is_not_made_up() -> None:
    store = Store()
    tap = ExchangeTap(store, "app", 1024)
    tap.to_visitor(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    tap.closed(None)
    assert store.query() == []


H2C_UPGRADE = (
    b"GET /a HTTP/1.1\r\nHost: app\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
)


def test_a_declined_upgrade_keeps_capturing_the_connection() -> None:
    """``curl --http2`` asks for h2c; an HTTP/1.1-only origin answers 200 and the connection
    stays HTTP/1.1: the requests after it are captured too."""
    store = Store()
    tap = ExchangeTap(store, "app", 1024)
    tap.to_origin(H2C_UPGRADE)
    tap.to_visitor(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
    tap.to_origin(b"GET /b HTTP/1.1\r\nHost: app\r\n\r\n")
    tap.to_visitor(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
    tap.closed(None)
    assert [(e.target, e.state) for e in reversed(store.query())] == [
        ("/a", "complete"),
        ("/b", "complete"),
    ]


def test_a_101_stops_the_capture_both_ways() -> None:
    """After ``101 Switching Protocols`` neither direction is HTTP/1 any more, even where the
    new protocol's bytes happen to look like it."""
    store = Store()
    tap = ExchangeTap(store, "app", 1024)
    tap.to_origin(H2C_UPGRADE)
    tap.to_visitor(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n")
    tap.to_origin(b"GET /b HTTP/1.1\r\nHost: app\r\n\r\n")
    tap.to_visitor(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
    tap.closed(None)
    (only,) = store.query()
    assert (only.target, only.status, only.state) == ("/a", 101, "complete")


def _body(data: bytes, limit: int = 1 << 20) -> Body:
    body = Body(limit)
    body.add(memoryview(data))
    return body


def test_render_body_kinds() -> None:
    assert render_body(_body(b""), None, None)["kind"] == "empty"
    shown = render_body(_body(b'{"a": [1, 2]}'), "application/json; charset=utf-8", None)
    assert shown["kind"] == "json"
    assert shown["text"] == json.dumps({"a": [1, 2]}, indent=2)
    assert render_body(_body(b"{not json"), "application/json", None)["kind"] == "text"
    assert render_body(_body(b"plain words"), "text/plain", None)["text"] == "plain words"
    binary = render_body(_body(b"\x00\x01\xffabc"), "application/octet-stream", None)
    assert binary["kind"] == "binary"
    assert binary["text"].startswith("00000000  00 01 ff 61 62 63")
    packed = render_body(_body(gzip.compress(b"inflated!")), "text/plain", "gzip")
    assert (packed["text"], packed["decoded_from"]) == ("inflated!", "gzip")
    # a capture limit that cuts a character in two still shows text
    cut = render_body(_body("héllo".encode(), limit=2), "text/plain", None)
    assert (cut["kind"], cut["text"], cut["truncated"]) == ("text", "h", True)


def test_a_grpc_body_is_shown_message_by_message() -> None:
    def message(payload: bytes, compressed: int = 0) -> bytes:
        return bytes([compressed]) + len(payload).to_bytes(4, "big") + payload

    data = message(b"first") + message(b"\x08\x96\x01") + message(b"zz", compressed=1)
    shown = render_body(_body(data), "application/grpc+proto", None)
    assert shown["kind"] == "grpc"
    assert shown["messages"] == [
        {"size": 5, "compressed": False},
        {"size": 3, "compressed": False},
        {"size": 2, "compressed": True},
    ]
    first, protobuf, packed = shown["text"].split("\n\n")
    assert first == "message 1 · 5 bytes\nfirst"
    assert protobuf.startswith("message 2 · 3 bytes\n00000000  08 96 01")
    assert packed.startswith("message 3 · 2 bytes · compressed\n")
    # the capture limit cuts a message: what was kept is shown, and said so
    cut = render_body(_body(message(b"a" * 100), limit=20), "application/grpc", None)
    assert cut["text"] == "message 1 · 100 bytes · first 15 captured\n" + "a" * 15
    # not gRPC framing after all: a hex dump, as any binary body
    odd = render_body(_body(b"\x07nonsense"), "application/grpc", None)
    assert odd["kind"] == "binary"


def test_the_store_forgets_the_oldest_and_lagging_subscribers() -> None:
    store = Store(keep=3, queue_size=2)
    with store.subscribe() as slow:
        for i in range(5):
            tap = ExchangeTap(store, "app", 16)
            tap.to_origin(b"GET /%d HTTP/1.1\r\n\r\n" % i)
        assert [e.target for e in store.query()] == ["/4", "/3", "/2"]
        assert store.get(1) is None
        assert slow.lagged  # it could not keep up: dropped, never waited for


# ---------------------------------------------------------------------------- chunking


def recorded(
    chunks: list[tuple[bool, bytes]],
    *,
    tap_class: type[ExchangeTap] = ExchangeTap,
    limit: int = 8,
    traceparent: str | None = TRACE,
) -> list[dict[str, Any]]:
    """Feed a tap ``chunks`` (to the origin if the flag is set, else to the visitor); the
    details the API shows of what it recorded (but the ids and times), oldest first."""
    store = Store()
    tap = tap_class(store, "app", limit, visitor=("192.0.2.1", 1234), traceparent=traceparent)
    for to_origin, chunk in chunks:
        if to_origin:
            tap.to_origin(memoryview(chunk))
        else:
            tap.to_visitor(chunk)
    tap.closed(None)
    shown = []
    for exchange in reversed(store.query(limit=500)):
        detail = exchange.detail()
        for volatile in ("id", "started", "duration_ms", "timing"):
            del detail[volatile]
        shown.append(detail)
    return shown


def exchanges_of(
    requests: list[bytes], responses: list[bytes], limit: int = 8
) -> list[dict[str, Any]]:
    """All the requests' chunks first, then all the responses'."""
    chunks = [(True, chunk) for chunk in requests] + [(False, chunk) for chunk in responses]
    return recorded(chunks, limit=limit)


PIPELINED_REQUESTS = (
    b"POST /form HTTP/1.1\r\nHost: app\r\nContent-Length: 11\r\n\r\nhello world"
    b"GET /items?page=2 HTTP/1.1\r\nHost: app\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736"
    b"-00f067aa0ba902b7-01\r\n\r\n"
    b"PUT /up HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    b"HEAD /h HTTP/1.1\r\nHost: app\r\n\r\n"
)
PIPELINED_RESPONSES = (
    b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nfirst\r\n6\r\nsecond\r\n0\r\nX-Trailer: t\r\n\r\n"
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"
)


def test_several_exchanges_in_one_chunk_each_way() -> None:
    post, get, put, head = exchanges_of([PIPELINED_REQUESTS], [PIPELINED_RESPONSES])
    assert [
        (e["method"], e["target"], e["status"], e["state"]) for e in (post, get, put, head)
    ] == [
        ("POST", "/form", 201, "complete"),
        ("GET", "/items?page=2", 200, "complete"),
        ("PUT", "/up", 204, "complete"),
        ("HEAD", "/h", 200, "complete"),
    ]
    assert post["request"]["headers"] == [["Host", "app"], ["Content-Length", "11"]]
    assert (post["request"]["body"]["text"], post["request"]["body"]["size"]) == ("hello wo", 11)
    assert post["response"]["body"]["text"] == "ok"
    assert (get["response"]["body"]["text"], get["response"]["body"]["size"]) == ("firstsec", 11)
    assert put["request"]["body"]["text"] == "abc"
    assert head["response"]["body"]["size"] == 0  # whatever its Content-Length says
    assert get["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"  # its own
    assert post["trace_id"] == "0af7651916cd43dd8448eb211c80319c"  # the stream's


def test_every_split_of_both_directions_records_the_same() -> None:
    whole = exchanges_of([PIPELINED_REQUESTS], [PIPELINED_RESPONSES])
    for cut in range(1, max(len(PIPELINED_REQUESTS), len(PIPELINED_RESPONSES))):
        split = exchanges_of(
            [PIPELINED_REQUESTS[:cut], PIPELINED_REQUESTS[cut:]],
            [PIPELINED_RESPONSES[:cut], PIPELINED_RESPONSES[cut:]],
        )
        assert split == whole, cut


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds) if end > start]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    request_cuts=st.lists(st.integers(1, len(PIPELINED_REQUESTS) - 1), max_size=12),
    response_cuts=st.lists(st.integers(1, len(PIPELINED_RESPONSES) - 1), max_size=12),
)
def test_random_chunkings_record_what_whole_chunks_do(
    request_cuts: list[int], response_cuts: list[int]
) -> None:
    assert exchanges_of(
        pieces(PIPELINED_REQUESTS, request_cuts), pieces(PIPELINED_RESPONSES, response_cuts)
    ) == exchanges_of([PIPELINED_REQUESTS], [PIPELINED_RESPONSES])


def test_the_visitor_and_header_fields_are_worked_out_when_asked() -> None:
    store = Store()
    tap = ExchangeTap(store, "app", 64, visitor=("198.51.100.4", 4711))
    tap.to_origin(b"GET / HTTP/1.1\r\nHost: app\r\nAccept: */*\r\n\r\n")
    tap.to_visitor(
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n"
    )
    (exchange,) = store.query()
    assert (exchange.visitor_ip, exchange.visitor_port, exchange.trace_id) == (
        "198.51.100.4",
        4711,
        None,
    )
    assert exchange.request_headers == [("Host", "app"), ("Accept", "*/*")]
    assert exchange.response_headers == [("Content-Type", "text/plain"), ("Content-Length", "0")]
    assert exchange.header("content-type", response=True) == "text/plain"
    assert (exchange.status, exchange.reason, exchange.http_version) == (
        404,
        "Not Found",
        "HTTP/1.1",
    )
    assert exchange.detail()["response"]["headers"] == [
        ["Content-Type", "text/plain"],
        ["Content-Length", "0"],
    ]


def _http_stream(frame_visitor: tuple[str, int] | None = None) -> Any:
    """Just enough of a client-side stream for CaptureObserver.on_stream."""
    host, port = frame_visitor or (None, None)
    frame = SimpleNamespace(
        kind=TunnelKind.HTTP, tunnel="app", visitor_host=host, visitor_port=port, trace={}
    )
    return SimpleNamespace(open_frame=frame, reset_code=None, done=False)


@pytest.mark.anyio
async def test_the_dashboard_taps_work_after_the_loop_iteration_in_order() -> None:
    """What the relay hands a dashboard tap is captured in one callback after the current
    event-loop iteration (the tunnel's gathered writes leave first), in the order given."""
    store = Store()
    observer = CaptureObserver(store, 1024)
    first = observer.on_stream(_http_stream(("192.0.2.9", 4444)))
    second = observer.on_stream(_http_stream())
    assert first is not None
    assert second is not None
    first.to_origin(b"GET /one HTTP/1.1\r\n\r\n")
    second.to_origin(b"GET /two HTTP/1.1\r\n\r\n")
    first.to_visitor(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    second.closed("stream reset (CANCEL)")
    assert len(store) == 0  # nothing yet: the calls wait for the end of this iteration
    await asyncio.sleep(0)
    one, two = reversed(store.query())
    assert (one.target, one.state, one.visitor_ip) == ("/one", "complete", "192.0.2.9")
    assert (two.target, two.state, two.error) == ("/two", "error", "stream reset (CANCEL)")


# ---------------------------------------------------------------------------- whole messages


class ParserOnlyTap(ExchangeTap):
    """A tap that never takes the whole-message shortcut: every chunk goes to a parser."""

    def _whole_request(self, data: bytes | memoryview) -> bool:
        return False

    def _whole_response(self, data: bytes | memoryview) -> bool:
        return False


#: (request, response) pairs, each as a stream would carry it; the last may be read to close
EXCHANGES = [
    (b"GET / HTTP/1.1\r\nHost: app\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
    (b"GET /e HTTP/1.1\r\nHost: app\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    (b"GET /lf HTTP/1.1\nHost: app\n\n", b"HTTP/1.1 404 Not Found\nContent-Length: 2\n\nno"),
    (b"POST /f HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
     b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx"),
    (b"HEAD /h HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"),
    (b"GET /n HTTP/1.1\r\n\r\n", b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n"),
    (b"DELETE /d HTTP/1.1\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n"),
    (b"GET /c HTTP/1.1\r\n\r\n",
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    (b"GET /i HTTP/1.1\r\n\r\n",
     b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    (b"GET /bad HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
    (b"GET /x HTTP/1.1\r\nX-Long: " + b"y" * 5000 + b"\r\n\r\n",
     b"HTTP/1.1 500 Oops\r\nContent-Length: 1, 1\r\n\r\n!"),
    (H2C_UPGRADE, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno"),  # declined: goes on
    (b"POST /up HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 1"
     b"\r\n\r\nx", b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n"),
]  # fmt: skip
#: exchanges after which a stream carries no more HTTP/1 messages (each may come last)
LAST = [
    (b"GET /u HTTP/1.1\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\nthe rest"),
    (b"CONNECT db:5432 HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
     b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"),
    (b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET / HTTP/1.1\r\n\r\n",
     b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi"),
]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    picks=st.lists(st.integers(0, len(EXCHANGES) - 1), min_size=1, max_size=6),
    last=st.integers(-1, len(LAST) - 1),
    cuts=st.lists(st.one_of(st.just(0), st.just(-1), st.integers(1, 200)), max_size=8),
    ahead=st.integers(0, 2),
    join=st.booleans(),
)
def test_whole_message_chunks_record_what_the_parsers_do(
    picks: list[int], last: int, cuts: list[int], ahead: int, join: bool
) -> None:
    """The shortcut for chunks that hold one whole message (most of them, on a tunnel)
    records exactly what the parsers do, however the messages are split and interleaved:
    each message is sent whole or cut (anywhere, or where its head ends), and requests run
    up to ``ahead`` exchanges ahead of their responses (pipelining), in one chunk if
    ``join``."""
    exchanges = [EXCHANGES[i] for i in picks] + ([LAST[last]] if last >= 0 else [])

    def parts(message: bytes, i: int) -> list[bytes]:  # whole (0), or cut once
        cut = cuts[i] if i < len(cuts) else 0
        if cut == -1:
            cut = message.find(b"\n\r\n") + 3 if b"\n\r\n" in message else message.find(b"\n\n") + 2
        return pieces(message, [cut] if 0 < cut < len(message) else [])

    chunks: list[tuple[bool, bytes]] = []
    sent = 0
    for i, (_, response) in enumerate(exchanges):
        requests = []
        while sent <= min(i + ahead, len(exchanges) - 1):
            requests += parts(exchanges[sent][0], sent)
            sent += 1
        chunks += (
            [(True, b"".join(requests))]
            if join and requests
            else [(True, part) for part in requests]
        )
        chunks += [(False, part) for part in parts(response, i + 1)]
    assert recorded(chunks) == recorded(chunks, tap_class=ParserOnlyTap)


def test_a_keep_alive_stream_of_whole_messages_records_each_exchange() -> None:
    chunks = [(i % 2 == 0, m) for pair in EXCHANGES[:3] for i, m in enumerate(pair)]
    shown = recorded(chunks)
    assert [(e["method"], e["target"], e["status"], e["state"]) for e in shown] == [
        ("GET", "/", 200, "complete"),
        ("GET", "/e", 200, "complete"),
        ("GET", "/lf", 404, "complete"),
    ]
    assert shown[0]["response"]["body"]["text"] == "hello"
    assert shown == recorded(chunks, tap_class=ParserOnlyTap)


def test_a_whole_response_over_the_limit_keeps_only_the_limit() -> None:
    """A response that came whole is kept raw until asked for, but never more of its body
    than the capture limit, and it reads as the parser's record does."""
    chunks = [
        (True, b"GET / HTTP/1.1\r\n\r\n"),
        (False, b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n" + b"x" * 20),
    ]
    store = Store()
    tap = ExchangeTap(store, "app", 8)
    tap.to_origin(chunks[0][1])
    tap.to_visitor(chunks[1][1])
    (exchange,) = store.query()
    assert exchange.response_size == 20
    assert exchange._message is not None  # kept raw: the head and the limit's worth of body
    assert len(exchange._message[0]) == len(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n") + 8
    body = exchange.response_body
    assert body is not None
    assert (bytes(body.data), body.size, body.truncated) == (b"x" * 8, 20, True)
    assert recorded(chunks) == recorded(chunks, tap_class=ParserOnlyTap)


def test_a_tunnels_traffic_is_counted_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.2]
    monkeypatch.setattr("ferrotunnel.observability.store.time.time", lambda: now[0])
    tunnel = TunnelState("app", "http", None)
    for at, size_in, size_out in [
        (1000.2, 1, 10),
        (1000.9, 2, 20),
        (1003.0, 3, 30),
        (1003.5, 0, 5),
    ]:
        now[0] = at
        tunnel.count(size_in, size_out)
    assert tunnel.traffic == [[1000, 2, 33], [1003, 2, 38]]
    assert (tunnel.requests, tunnel.bytes_in, tunnel.bytes_out) == (4, 6, 65)
    now[0] = 1062.0  # a minute on: the seconds before it are no longer shown
    assert tunnel.as_json()["traffic"] == [[1003, 2, 38]]
