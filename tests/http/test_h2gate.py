"""Every call of an HTTP/2 connection is put to the middlewares (``h2gate.py``): a refusal
answers that call alone, and the connection — its HPACK tables, its flow control — goes on."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
import grpc  # type: ignore[import-untyped]
import hpack
import httpx
import pytest
from anyio.abc import SocketAttribute, SocketStream
from hypothesis import given, settings
from hypothesis import strategies as st

from ferrotunnel.core.h2wire import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PRIORITY_FLAG,
    RST_STREAM,
    WINDOW_UPDATE,
)
from ferrotunnel.core.plugin import ExchangeRecord, HttpRequest, Reply, RequestContext
from ferrotunnel.http.h2gate import H2Gate

from .harness import HOST, Stack, h2_frame, http_tunnel, tunnel_stack, wait_until
from .test_grpc import AUTHORITY, SERVICE, channel, grpc_origin

pytestmark = pytest.mark.anyio


class Turnstile:
    """Lets ``allow`` requests through, then answers 429 until given more."""

    def __init__(self, allow: int) -> None:
        self.allow = allow
        self.seen: list[str] = []
        self.ports: list[int] = []  # the visitor's: one per connection
        self.records: list[ExchangeRecord] = []

    def on_request(self, request: HttpRequest, ctx: RequestContext) -> Reply | None:
        self.seen.append(request.path)
        self.ports.append(ctx.visitor_port)
        if self.allow <= 0:
            return Reply(429, "slow down", headers=[("Retry-After", "1")])
        self.allow -= 1
        return None

    def on_complete(self, record: ExchangeRecord, ctx: RequestContext) -> None:
        self.records.append(record)


async def test_a_refused_grpc_call_fails_alone_and_the_connection_goes_on() -> None:
    turnstile = Turnstile(allow=2)

    def run(stack: Stack) -> list[object]:
        outcomes: list[object] = []
        with channel(stack) as ch:
            unary = ch.unary_unary(f"/{SERVICE}/Unary")
            for i in range(5):
                if i == 4:
                    turnstile.allow = 1  # refilled: the same channel is let through again
                try:
                    outcomes.append(unary(b"x" * 70_000, timeout=10))  # over one window
                except grpc.RpcError as error:
                    outcomes.append((error.code(), error.details()))
        return outcomes

    async with (
        grpc_origin() as port,
        tunnel_stack([http_tunnel(AUTHORITY, port)], middlewares=[turnstile]) as stack,
    ):
        with anyio.fail_after(30):
            outcomes = await anyio.to_thread.run_sync(run, stack)
        await wait_until(lambda: len(turnstile.records) == 5, what="a record per call")
    echo = b"echo:" + b"x" * 70_000
    refused = (grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down")
    assert outcomes == [echo, echo, refused, refused, echo]
    assert turnstile.seen == [f"/{SERVICE}/Unary"] * 5
    statuses = [(r.status, r.replied_by) for r in turnstile.records]
    assert sorted(statuses, key=str) == sorted(
        [(200, "origin")] * 3 + [(429, "Turnstile")] * 2, key=str
    )
    # (whether the channel stayed on one connection depends on grpc's HPACK encoder: a call
    # whose header block changed the table moves it on; the plain client's test checks it)


@asynccontextmanager
async def h2_origin() -> AsyncIterator[int]:
    """An h2c web service (the h2 library) answering every request ``200 ok``."""
    import h2.config
    import h2.connection
    import h2.events

    async def serve(sock: SocketStream) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        async with sock:
            await sock.send(conn.data_to_send())
            while True:
                try:
                    data = await sock.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, h2.events.StreamEnded):
                        answer = [(":status", "200"), ("content-length", "2")]
                        conn.send_headers(event.stream_id, answer)
                        conn.send_data(event.stream_id, b"ok", end_stream=True)
                await sock.send(conn.data_to_send())

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, serve)
        yield listener.extra(SocketAttribute.local_port)
        tasks.cancel_scope.cancel()


async def test_a_plain_http2_client_gets_the_status_and_fields() -> None:
    """Not gRPC: the middleware's status and fields (its body cannot be sent: see
    ``answer_frames``); the refused upload's bytes are given back, so the connection's
    flow-control window does not shrink (70 KB refused ten times is more than it holds);
    the next requests on the same connection go through."""
    turnstile = Turnstile(allow=1)
    headers = {"host": AUTHORITY, "content-type": "application/octet-stream"}
    async with (
        h2_origin() as port,
        tunnel_stack([http_tunnel(AUTHORITY, port)], middlewares=[turnstile]) as stack,
        httpx.AsyncClient(
            http1=False, http2=True, base_url=f"http://127.0.0.1:{stack.port}"
        ) as client,
    ):
        with anyio.fail_after(20):
            first = await client.post("/up", headers=headers, content=b"x" * 70_000)
            refused = [
                await client.post("/up", headers=headers, content=b"x" * 70_000) for _ in range(10)
            ]
            turnstile.allow = 1
            again = await client.post("/up", headers=headers, content=b"x" * 70_000)
    assert {r.status_code for r in refused} == {429}
    assert refused[0].headers["retry-after"] == "1"
    assert refused[0].content == b""
    assert (first.status_code, first.content) == (again.status_code, again.content) == (200, b"ok")
    assert len(set(turnstile.ports)) == 1  # one connection throughout


async def test_an_httpx_client_reads_a_refusal_that_ends_its_connection() -> None:
    """A refused request with a path new on the connection changes the HPACK table, so the
    connection drains: the answer comes before the GOAWAY (the h2 library under httpx takes
    any frame after a GOAWAY for a protocol error), and the next request goes on a new
    connection."""
    turnstile = Turnstile(allow=1)
    async with (
        h2_origin() as port,
        tunnel_stack([http_tunnel(AUTHORITY, port)], middlewares=[turnstile]) as stack,
        httpx.AsyncClient(
            http1=False, http2=True, base_url=f"http://127.0.0.1:{stack.port}"
        ) as client,
    ):
        with anyio.fail_after(20):
            first = await client.get("/a", headers={"host": AUTHORITY})
            refused = [await client.get(f"/new-{i}", headers={"host": AUTHORITY}) for i in range(3)]
    assert first.status_code == 200
    assert [r.status_code for r in refused] == [429, 429, 429]
    assert len(set(turnstile.ports)) > 1  # drained: later requests on new connections


async def test_a_refused_grpc_call_on_a_new_connection_is_a_grpc_failure_too() -> None:
    """Whatever connection a refused call comes on — the first call of a connection is
    decided before the connection is opened (and the connection then closed), a later one
    by the gate (the connection drains when the call's header block changed the table,
    which depends on the client's HPACK encoder) — the client gets RESOURCE_EXHAUSTED."""
    turnstile = Turnstile(allow=1)

    def run(stack: Stack) -> list[object]:
        outcomes: list[object] = []
        for _ in range(2):  # a fresh channel: a new connection each time
            with channel(stack) as ch:
                unary = ch.unary_unary(f"/{SERVICE}/Unary")
                for metadata in ([], [("x-new", "indexed from now on")]):
                    try:
                        outcomes.append(unary(b"a", timeout=10, metadata=metadata))
                    except grpc.RpcError as error:
                        outcomes.append((error.code(), error.details()))
        return outcomes

    async with (
        grpc_origin() as port,
        tunnel_stack([http_tunnel(AUTHORITY, port)], middlewares=[turnstile]) as stack,
    ):
        with anyio.fail_after(30):
            outcomes = await anyio.to_thread.run_sync(run, stack)
    refused = (grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down")
    assert outcomes == [b"echo:a", refused, refused, refused]


# ---------------------------------------------------------------------------- sans IO


def frames_of(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    at = 0
    while at < len(data):
        size = int.from_bytes(data[at : at + 3], "big")
        kind, flags, stream = data[at + 3], data[at + 4], struct.unpack_from("!I", data, at + 5)[0]
        yield kind, flags, stream, data[at + 9 : at + 9 + size]
        at += 9 + size


REQUEST = [(":method", "POST"), (":scheme", "http"), (":path", "/a"), (":authority", "h")]


def gate(refuse: set[int]) -> H2Gate:
    def decide(stream: int, fields: list[tuple[bytes, bytes]], ended: bool) -> bytes | None:
        if stream in refuse:
            return b"\x88"  # :status 200
        return None

    return H2Gate(decide, first_stream=1)


def test_a_refused_stream_is_dropped_and_its_data_given_back() -> None:
    encoder = hpack.Encoder()
    first = h2_frame(HEADERS, END_HEADERS, 1, encoder.encode(REQUEST))
    h = gate(refuse={3})
    assert h.from_visitor(first) == first
    # the same fields again: all indexed now, so the block changes no table
    refused = h2_frame(HEADERS, END_HEADERS, 3, encoder.encode(REQUEST))
    body = h2_frame(DATA, END_STREAM, 3, b"z" * 1000)
    allowed = h2_frame(HEADERS, END_HEADERS | END_STREAM, 5, encoder.encode(REQUEST))
    assert h.from_visitor(refused + body + allowed) == allowed
    answer = list(frames_of(h.ready()))
    assert [(k, s) for k, _, s, _ in answer] == [
        (HEADERS, 3), (WINDOW_UPDATE, 0), (WINDOW_UPDATE, 3),
    ]  # fmt: skip
    assert struct.unpack("!I", answer[1][3])[0] == struct.unpack("!I", answer[2][3])[0] == 1000
    assert not h.closing


def test_a_refusal_whose_block_changed_the_table_drains_the_connection() -> None:
    encoder = hpack.Encoder()
    h = gate(refuse={3})
    h.from_visitor(h2_frame(HEADERS, END_HEADERS, 1, encoder.encode(REQUEST)))
    new_field = encoder.encode([*REQUEST, ("x-new", "indexed from now on")])
    assert h.from_visitor(h2_frame(HEADERS, END_HEADERS | END_STREAM, 3, new_field)) == b""
    assert h.draining
    assert not h.closing
    kinds = [(k, s, p) for k, _, s, p in frames_of(h.ready())]
    assert kinds[0][:2] == (HEADERS, 3)  # the answer, then (in the same write) the GOAWAY
    assert kinds[1] == (GOAWAY, 0, struct.pack("!II", 3, 0))  # 3, answered, was the last
    # the call in flight goes on; a stream opened anyway is refused, to be retried elsewhere
    late = h2_frame(DATA, END_STREAM, 1, b"the rest of call 1")
    assert h.from_visitor(late) == late
    opened = h2_frame(HEADERS, END_HEADERS | END_STREAM, 5, encoder.encode(REQUEST))
    assert h.from_visitor(opened) == b""
    assert [(k, s, p) for k, _, s, p in frames_of(h.ready())] == [
        (RST_STREAM, 5, struct.pack("!I", 7))  # REFUSED_STREAM
    ]
    # a header block for the origin (call 1's trailers) can no longer be passed on
    trailers = h2_frame(HEADERS, END_HEADERS | END_STREAM, 1, encoder.encode([("x-t", "1")]))
    h.from_visitor(trailers)
    assert h.closing


def test_answers_wait_for_the_end_of_the_origins_frame() -> None:
    encoder = hpack.Encoder()
    h = gate(refuse={3})
    h.from_visitor(h2_frame(HEADERS, END_HEADERS | END_STREAM, 1, encoder.encode(REQUEST)))
    big = h2_frame(DATA, 0, 1, b"d" * 100)
    assert h.from_origin(big[:50]) == big[:50]  # the origin is inside a frame now
    h.from_visitor(h2_frame(HEADERS, END_HEADERS | END_STREAM, 3, encoder.encode(REQUEST)))
    assert h.ready() == b""
    spliced = h.from_origin(big[50:] + big)
    assert spliced[: len(big) - 50] == big[50:]  # the rest of the frame first
    after = bytes(spliced[len(big) - 50 :])
    assert after.endswith(big)
    assert next(frames_of(after))[:3] == (HEADERS, END_HEADERS | END_STREAM, 3)


def test_a_block_split_across_continuations_is_held_whole_then_passed() -> None:
    encoder = hpack.Encoder()
    h = gate(refuse=set())
    frames = h2_frame(HEADERS, END_HEADERS, 1, encoder.encode(REQUEST))
    assert h.from_visitor(frames) == frames
    block = encoder.encode([*REQUEST, ("x-long", "v" * 300)])  # encoded in the order sent
    split = h2_frame(HEADERS, 0, 3, block[:100]) + h2_frame(
        CONTINUATION, END_HEADERS, 3, block[100:]
    )
    out = b"".join(h.from_visitor(split[i : i + 7]) for i in range(0, len(split), 7))
    assert out == split
    assert not h.closing


def conversation() -> bytes:
    """A visitor's frames: an admitted first request, a refused one (padded, with a priority,
    its block continued, its body padded), an admitted one whose block is continued, and
    frames for no stream in between."""
    encoder = hpack.Encoder()
    out = h2_frame(HEADERS, END_HEADERS, 1, encoder.encode(REQUEST))
    out += h2_frame(DATA, END_STREAM, 1, b"first body")
    block = encoder.encode(REQUEST)  # all indexed by now: dropping it changes no table
    padded = bytes([4]) + b"\0\0\0\x01\x10" + block[:2] + b"\0" * 4
    out += h2_frame(HEADERS, PADDED | PRIORITY_FLAG, 3, padded)
    out += h2_frame(CONTINUATION, END_HEADERS, 3, block[2:])
    out += h2_frame(DATA, PADDED | END_STREAM, 3, bytes([3]) + b"refused" + b"\0" * 3)
    out += h2_frame(PING, 0, 0, b"12345678")
    block = encoder.encode([*REQUEST, ("x-later", "v" * 40)])
    out += h2_frame(HEADERS, 0, 5, block[:10])
    out += h2_frame(CONTINUATION, END_HEADERS | END_STREAM, 5, block[10:])
    return out


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=64), max_size=40))
def test_how_the_visitors_bytes_are_cut_changes_nothing(sizes: list[int]) -> None:
    data = conversation()
    whole = gate(refuse={3})
    expected, answers = whole.from_visitor(data), whole.ready()
    cut = gate(refuse={3})
    out, at = bytearray(), 0
    for size in sizes:
        out += cut.from_visitor(data[at : at + size])
        at += size
    out += cut.from_visitor(data[at:])
    assert bytes(out) == expected
    assert cut.ready() == answers
    kinds = [(k, s) for k, _, s, _ in frames_of(expected)]
    assert 3 not in {s for _, s in kinds}  # nothing of the refused stream went on
    assert (PING, 0) in kinds
    assert [(k, s) for k, _, s, _ in frames_of(answers)] == [
        (HEADERS, 3), (WINDOW_UPDATE, 0), (WINDOW_UPDATE, 3),
    ]  # fmt: skip


def test_a_block_it_cannot_read_closes_the_connection() -> None:
    """It fails closed: nothing from the unreadable block on reaches the origin (a block the
    origin reads and the gate does not would otherwise pass undecided)."""
    h = gate(refuse={3, 5})
    first = h2_frame(HEADERS, END_HEADERS, 1, hpack.Encoder().encode(REQUEST))
    garbage = h2_frame(HEADERS, END_HEADERS, 3, b"\xff\xff\xff\xff\xff")  # no such index
    later = h2_frame(HEADERS, END_HEADERS, 5, b"\x82")
    assert h.from_visitor(first + garbage + later) == first
    assert h.stopped is not None
    assert h.closing
    [(kind, _, _, payload)] = frames_of(h.ready())
    assert (kind, payload) == (GOAWAY, struct.pack("!II", 1, 9))  # COMPRESSION_ERROR


def test_a_large_answer_is_split_at_the_frame_size_every_peer_accepts() -> None:
    from ferrotunnel.http.h2c import answer_block

    headers = [(b"x-why", b"v" * 20_000), (b"x-more", b"w" * 20_000)]
    block = answer_block(403, headers, b"no", grpc=False)
    h = H2Gate(lambda stream, fields, ended: block, first_stream=1)
    encoder = hpack.Encoder()
    h.from_visitor(h2_frame(HEADERS, END_HEADERS, 1, encoder.encode(REQUEST)))
    h.from_visitor(h2_frame(HEADERS, END_HEADERS | END_STREAM, 3, encoder.encode(REQUEST)))
    frames = list(frames_of(h.ready()))
    assert [(kind, flags, stream) for kind, flags, stream, _ in frames] == [
        (HEADERS, END_STREAM, 3), (CONTINUATION, 0, 3), (CONTINUATION, END_HEADERS, 3),
    ]  # fmt: skip
    assert all(len(payload) <= 16_384 for *_, payload in frames)
    sent = b"".join(payload for *_, payload in frames)
    fields = [(str(name), str(value)) for name, value in hpack.Decoder().decode(sent)]
    assert fields[0] == (":status", "403")
    assert ("x-why", "v" * 20_000) in fields


def test_a_request_with_a_repeated_pseudo_field_is_refused_not_judged_by_one_of_them() -> None:
    from ferrotunnel.http.h1 import HttpError
    from ferrotunnel.http.h2c import request_head

    fields = [(b":method", b"GET"), (b":path", b"/public"), (b":authority", b"h")]
    assert request_head(fields).path == "/public"
    with pytest.raises(HttpError, match="repeated pseudo-header"):
        request_head([*fields, (b":path", b"/admin")])


async def test_another_host_on_the_connection_is_misdirected_without_any_plugin() -> None:
    """No middleware at all: the ingress still reads each call's host (a proxy in front may
    send several hosts' requests on one connection), and one for another tunnel's host gets
    421 Misdirected Request, never reaching this connection's origin. Its fields are sent
    never-indexed (the block leaves the tables alone), so the connection goes on."""
    import h2.config
    import h2.connection
    import h2.events
    from hpack import HeaderTuple, NeverIndexedHeaderTuple

    def request(authority: str, path: str, indexed: bool = True) -> list[HeaderTuple]:
        field = HeaderTuple if indexed else NeverIndexedHeaderTuple
        pairs = [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
        ]
        return [field(name, value) for name, value in pairs]

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    statuses: dict[int, bytes] = {}
    async with (
        h2_origin() as port,
        h2_origin() as other_port,
        tunnel_stack(
            [http_tunnel(AUTHORITY, port, name="a"), http_tunnel("b.localhost", other_port)]
        ) as stack,
    ):
        sock = await anyio.connect_tcp(HOST, stack.port)
        async with sock:
            for stream, (authority, path, indexed) in zip(
                (1, 3, 5),
                [(AUTHORITY, "/x", True), ("b.localhost", "/y", False), (AUTHORITY, "/z", True)],
                strict=True,
            ):
                conn.send_headers(stream, request(authority, path, indexed), end_stream=True)
                await sock.send(conn.data_to_send())
                with anyio.fail_after(10):
                    while stream not in statuses:
                        for event in conn.receive_data(await sock.receive()):
                            if isinstance(event, h2.events.ResponseReceived):
                                statuses[event.stream_id] = dict(event.headers)[b":status"]
                        await sock.send(conn.data_to_send())
    assert statuses == {1: b"200", 3: b"421", 5: b"200"}
