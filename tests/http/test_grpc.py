"""gRPC (HTTP/2 cleartext, prior knowledge) through the ingress: routed by the :authority of
the first request, then passed through untouched — so trailers (grpc-status) survive.

Messages are raw bytes (no protoc): identity serializers on both ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
import grpc  # type: ignore[import-untyped]
import hpack
import pytest

from ferrotunnel.core import Stream
from ferrotunnel.core.plugin import ExchangeRecord, HttpRequest, RequestContext
from ferrotunnel.http.h2c import EMPTY_SETTINGS, PREFACE

from .harness import (
    HOST,
    RawOrigin,
    Stack,
    h2_frame,
    http_tunnel,
    read_until_close,
    tunnel_stack,
    visitor,
    wait_until,
)

NOT_FOUND = grpc.StatusCode.NOT_FOUND

pytestmark = pytest.mark.anyio

AUTHORITY = "grpc.localhost"
SERVICE = "test.Echo"


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b"echo:" + request


def _stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for i in range(int(request)):
        yield b"item %d" % i


def _missing(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.NOT_FOUND, f"no record named {request.decode()!r}")
    raise AssertionError("abort() raises")


def _authority(request: bytes, context: grpc.ServicerContext) -> bytes:
    metadata = dict(context.invocation_metadata())
    return str(metadata.get(":authority", "")).encode()


@asynccontextmanager
async def grpc_origin(
    name: bytes = b"echo", options: Sequence[tuple[str, object]] = ()
) -> AsyncIterator[int]:
    """A gRPC server on 127.0.0.1 (its port) serving the test.Echo methods above; its Unary
    answers ``name:`` and the request."""
    server = grpc.server(ThreadPoolExecutor(max_workers=4), options=options)
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(lambda r, _: name + b":" + r),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        "Missing": grpc.unary_unary_rpc_method_handler(_missing),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port(f"{HOST}:0")
    server.start()
    try:
        yield port
    finally:
        await anyio.to_thread.run_sync(lambda: server.stop(grace=None).wait(5))


@pytest.fixture
async def grpc_stack() -> AsyncIterator[Stack]:
    async with grpc_origin() as port, tunnel_stack([http_tunnel(AUTHORITY, port)]) as stack:
        yield stack


def channel(stack: Stack) -> grpc.Channel:
    return grpc.insecure_channel(
        f"{HOST}:{stack.port}", options=[("grpc.default_authority", AUTHORITY)]
    )


async def in_thread(stack: Stack, call: str, request: bytes) -> object:
    """Run one RPC (blocking grpcio) in a worker thread, with a deadline."""

    def run() -> object:
        with channel(stack) as ch:
            if call == "Stream":
                method = ch.unary_stream(f"/{SERVICE}/Stream")
                return list(method(request, timeout=10))
            return ch.unary_unary(f"/{SERVICE}/{call}")(request, timeout=10)

    with anyio.fail_after(20):
        return await anyio.to_thread.run_sync(run)


async def test_unary(grpc_stack: Stack) -> None:
    assert await in_thread(grpc_stack, "Unary", b"hello") == b"echo:hello"


async def test_many_calls_on_one_channel(grpc_stack: Stack) -> None:
    def run() -> list[bytes]:
        with channel(grpc_stack) as ch:
            method = ch.unary_unary(f"/{SERVICE}/Unary")
            return [method(b"%d" % i, timeout=10) for i in range(50)]

    with anyio.fail_after(20):
        replies = await anyio.to_thread.run_sync(run)
    assert replies == [b"echo:%d" % i for i in range(50)]


async def test_server_streaming(grpc_stack: Stack) -> None:
    items = await in_thread(grpc_stack, "Stream", b"100")
    assert items == [b"item %d" % i for i in range(100)]


async def test_error_status_and_details_survive(grpc_stack: Stack) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        await in_thread(grpc_stack, "Missing", b"widget-7")
    error = caught.value
    assert isinstance(error, grpc.Call)
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert error.details() == "no record named 'widget-7'"


async def test_each_call_is_an_exchange_record() -> None:
    """The connection passes through undecoded, yet each call on it reaches ``on_complete``
    (so the access log and the metrics see gRPC): its method, path, status, and the
    grpc-status of a failed call. Each call's context is the one ``on_request`` saw for it
    (every call is put to the middlewares: see h2gate.py)."""
    records: list[tuple[ExchangeRecord, dict[str, object]]] = []

    class Recorder:
        def on_request(self, request: HttpRequest, ctx: RequestContext) -> None:
            ctx.state["seen"] = request.path

        def on_complete(self, record: ExchangeRecord, ctx: RequestContext) -> None:
            records.append((record, dict(ctx.state)))

    def run(stack: Stack) -> list[object]:
        with channel(stack) as ch:
            unary = ch.unary_unary(f"/{SERVICE}/Unary")
            answers: list[object] = [unary(b"a", timeout=10), unary(b"b", timeout=10)]
            answers.append(list(ch.unary_stream(f"/{SERVICE}/Stream")(b"3", timeout=10)))
            try:
                ch.unary_unary(f"/{SERVICE}/Missing")(b"w", timeout=10)
            except grpc.RpcError as error:
                answers.append(error.code())
            return answers

    async with (
        grpc_origin() as port,
        tunnel_stack([http_tunnel(AUTHORITY, port)], middlewares=[Recorder()]) as stack,
    ):
        with anyio.fail_after(20):
            answers = await anyio.to_thread.run_sync(run, stack)
        assert answers == [b"echo:a", b"echo:b", [b"item 0", b"item 1", b"item 2"], NOT_FOUND]
        await wait_until(lambda: len(records) == 4, what="a record per call")
    calls = [(r.method, r.path, r.status, r.error, r.tunnel, r.host) for r, _ in records]
    unary = ("POST", f"/{SERVICE}/Unary", 200, None, AUTHORITY, AUTHORITY)
    assert calls == [
        unary,
        unary,
        ("POST", f"/{SERVICE}/Stream", 200, None, AUTHORITY, AUTHORITY),
        ("POST", f"/{SERVICE}/Missing", 200, "grpc-status 5", AUTHORITY, AUTHORITY),
    ]
    assert [state.get("seen") for _, state in records] == [r.path for r, _ in records]
    assert len({r.request_id for r, _ in records}) == 4
    assert all(r.bytes_in > 0 and r.bytes_out > 0 and r.duration >= 0 for r, _ in records)
    assert all(r.replied_by == "origin" for r, _ in records)


async def test_a_connection_is_routed_by_its_first_requests_path_too() -> None:
    """Path-prefix routes hold for HTTP/2 as for HTTP/1.1: the connection goes to the tunnel
    its first request's host *and path* choose. A later call on the connection that another
    tunnel should serve cannot go there (the connection is not decoded): it is answered
    421 Misdirected Request, UNAVAILABLE to gRPC, and never reaches the first tunnel's
    origin, which would not know it."""
    records: list[tuple[ExchangeRecord, str]] = []

    class Recorder:
        def on_complete(self, record: ExchangeRecord, ctx: RequestContext) -> None:
            records.append((record, record.replied_by))

    def run(stack: Stack) -> list[object]:
        with channel(stack) as ch:
            answers: list[object] = [ch.unary_unary(f"/{SERVICE}/Unary")(b"x", timeout=10)]
            try:
                ch.unary_unary("/other.Service/Unary")(b"y", timeout=10)
            except grpc.RpcError as error:
                answers.append((error.code(), error.details()))
            answers.append(ch.unary_unary(f"/{SERVICE}/Unary")(b"z", timeout=10))
            return answers

    async with (
        grpc_origin(b"echo-service") as echo_port,
        grpc_origin(b"everything-else") as other_port,
        tunnel_stack(
            [
                http_tunnel(AUTHORITY, echo_port, name="echo", path=f"/{SERVICE}"),
                http_tunnel(AUTHORITY, other_port, name="rest"),
            ],
            middlewares=[Recorder()],
        ) as stack,
    ):
        with anyio.fail_after(20):
            answers = await anyio.to_thread.run_sync(run, stack)
        await wait_until(lambda: len(records) == 3, what="a record per call")
    misdirected = (
        grpc.StatusCode.UNAVAILABLE,
        f"{AUTHORITY}/other.Service/Unary is not served by this HTTP/2 connection's tunnel "
        "(echo): send it on a new connection",
    )
    assert answers == [b"echo-service:x", misdirected, b"echo-service:z"]
    assert sorted((r.path, r.status, by) for r, by in records) == [
        ("/other.Service/Unary", 421, "ingress"),
        (f"/{SERVICE}/Unary", 200, "origin"),
        (f"/{SERVICE}/Unary", 200, "origin"),
    ]


async def test_calls_are_recorded_with_a_table_larger_than_64_kib() -> None:
    """grpcio's peers may agree on an hpack table larger than the 4096 bytes HTTP/2 starts
    with (here 1 MiB): the ingress follows the SETTINGS that allow it, so every call is still
    recorded (a fixed limit ended the watch at the first header block using the table)."""
    records: list[ExchangeRecord] = []

    class Recorder:
        def on_complete(self, record: ExchangeRecord, ctx: RequestContext) -> None:
            records.append(record)

    table = [
        ("grpc.http2.hpack_table_size.decoder", 1 << 20),
        ("grpc.http2.hpack_table_size.encoder", 1 << 20),
    ]

    def run(stack: Stack) -> list[object]:
        options = [("grpc.default_authority", AUTHORITY), *table]
        with grpc.insecure_channel(f"{HOST}:{stack.port}", options=options) as ch:
            unary = ch.unary_unary(f"/{SERVICE}/Unary")
            return [unary(b"%d" % i, timeout=10, metadata=[("x-n", str(i))]) for i in range(3)]

    async with (
        grpc_origin(options=table) as port,
        tunnel_stack([http_tunnel(AUTHORITY, port)], middlewares=[Recorder()]) as stack,
    ):
        with anyio.fail_after(20):
            answers = await anyio.to_thread.run_sync(run, stack)
        assert answers == [b"echo:0", b"echo:1", b"echo:2"]
        await wait_until(lambda: len(records) == 3, what="a record per call")
    assert [(r.path, r.status, r.error) for r in records] == [(f"/{SERVICE}/Unary", 200, None)] * 3


def _h2_request(path: str = "/") -> bytes:
    """A client's frames after the preface: its SETTINGS and one GET (END_STREAM)."""
    fields = [(":method", "GET"), (":scheme", "http"), (":path", path), (":authority", AUTHORITY)]
    return h2_frame(0x4, 0x0, 0, b"") + h2_frame(0x1, 0x5, 1, hpack.Encoder().encode(fields))


async def _silent_h2_origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(h2_frame(0x4, 0x0, 0, b""))
    while await reader.read(65536):
        pass


async def test_a_first_request_whose_tunnel_went_offline_is_recorded() -> None:
    """The middlewares saw the connection's first request, then its tunnel went away before
    the connection could be handed over: the ingress closes it, and that request still
    reaches ``on_complete`` (a circuit breaker's probe waits for its outcome)."""
    records: list[tuple[ExchangeRecord, dict[str, object]]] = []
    deciding, decide = asyncio.Event(), asyncio.Event()

    class Gate:
        async def on_request(self, request: HttpRequest, ctx: RequestContext) -> None:
            deciding.set()
            await decide.wait()

        def on_complete(self, record: ExchangeRecord, ctx: RequestContext) -> None:
            records.append((record, dict(ctx.state)))

    async with (
        RawOrigin(_silent_h2_origin) as origin,
        tunnel_stack([http_tunnel(AUTHORITY, origin.port)], middlewares=[Gate()]) as stack,
        visitor(stack.port) as (reader, writer),
    ):
        writer.write(PREFACE + _h2_request("/first"))
        with anyio.fail_after(5):
            await deciding.wait()
        await stack.clients[0].shutdown()
        decide.set()
        await read_until_close(reader)
        await wait_until(lambda: len(records) == 1, what="the first request's record")
    [(record, _state)] = records
    assert (record.path, record.status, record.error) == ("/first", 0, "tunnel offline")
    assert record.replied_by == "ingress"


async def test_the_first_requests_trace_goes_with_the_connections_stream() -> None:
    """A tracing plugin's context set in ``on_request`` travels with the stream opened for the
    HTTP/2 connection, as it does for HTTP/1: the client's proxy span joins the trace."""
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    opened: list[dict[str, str]] = []

    class Tracer:
        def on_request(self, request: HttpRequest, ctx: RequestContext) -> None:
            ctx.trace = {"traceparent": traceparent}

    class Observer:
        def on_stream(self, stream: Stream) -> None:
            opened.append(dict(stream.open_frame.trace))

    async with (
        RawOrigin(_silent_h2_origin) as origin,
        tunnel_stack([http_tunnel(AUTHORITY, origin.port)], middlewares=[Tracer()]) as stack,
        visitor(stack.port) as (_reader, writer),
    ):
        stack.clients[0].observe(Observer())
        writer.write(PREFACE + _h2_request())
        await wait_until(lambda: len(opened) == 1, what="the connection's stream")
    assert opened == [{"traceparent": traceparent}]


class PathsAndRecords:
    """A middleware that notes the paths ``on_request`` saw and the records it was given."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.records: list[ExchangeRecord] = []

    def on_request(self, request: HttpRequest, ctx: RequestContext) -> None:
        self.seen.append(request.path)

    def on_complete(self, record: ExchangeRecord, ctx: RequestContext) -> None:
        self.records.append(record)


async def test_a_first_request_the_watch_never_saw_is_still_recorded() -> None:
    """Routing skips frames before the first request's HEADERS; the watch decodes them all.
    A block there it cannot decode (a client's PUSH_PROMISE) stops it before it knows the
    first stream: that request — the one ``on_request`` saw, maybe a circuit breaker's probe
    — still reaches ``on_complete``, with why it was not followed."""
    recorder = PathsAndRecords()
    records, seen = recorder.records, recorder.seen

    bogus = h2_frame(0x5, 0x4, 1, (2).to_bytes(4, "big") + b"\xff\xff\xff\xff")
    async with (
        RawOrigin(_silent_h2_origin) as origin,
        tunnel_stack([http_tunnel(AUTHORITY, origin.port)], middlewares=[recorder]) as stack,
        visitor(stack.port) as (_reader, writer),
    ):
        writer.write(PREFACE + bogus + _h2_request("/first"))
        await wait_until(lambda: len(records) == 1, what="the first request's record")
    assert seen == ["/first"]
    [record] = records
    assert (record.path, record.status) == ("/first", 0)
    assert record.error is not None
    assert record.error.startswith("the ingress stopped following the connection")


async def test_unknown_authority_is_refused(grpc_stack: Stack) -> None:
    def run() -> object:
        with grpc.insecure_channel(
            f"{HOST}:{grpc_stack.port}", options=[("grpc.default_authority", "nope.localhost")]
        ) as ch:
            return ch.unary_unary(f"/{SERVICE}/Unary")(b"x", timeout=5)

    with anyio.fail_after(20), pytest.raises(grpc.RpcError) as caught:
        await anyio.to_thread.run_sync(run)
    assert isinstance(caught.value, grpc.Call)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_a_client_that_does_not_wait_for_settings() -> None:
    """A client that sends its first request at once, and acknowledges the ingress's SETTINGS
    only after the connection has been handed to the origin: the origin still sees exactly
    the client's frames minus that one ACK."""
    settings_ack = h2_frame(0x4, 0x1, 0, b"")
    origin_settings = h2_frame(0x4, 0x0, 0, b"\x00\x03\x00\x00\x00\x64")
    client_settings = h2_frame(0x4, 0x0, 0, b"\x00\x04\x00\x01\x00\x00")
    request = h2_frame(
        0x1,
        0x5,
        1,
        hpack.Encoder().encode(
            [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", AUTHORITY)]
        ),
    )
    ping = h2_frame(0x6, 0x0, 0, b"12345678")
    received = bytearray()
    got_ping = asyncio.Event()

    async def h2_origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(origin_settings)
        while data := await reader.read(65536):
            received.extend(data)
            if received.endswith(ping):
                got_ping.set()

    async with (
        RawOrigin(h2_origin) as origin,
        tunnel_stack([http_tunnel(AUTHORITY, origin.port)]) as stack,
        visitor(stack.port) as (reader, writer),
    ):
        writer.write(PREFACE + client_settings + request)
        with anyio.fail_after(5):
            assert await reader.readexactly(9) == EMPTY_SETTINGS  # the ingress's, at once
            assert await reader.readexactly(len(origin_settings)) == origin_settings
            writer.write(settings_ack + settings_ack + ping)  # one ACK each
            await got_ping.wait()
    assert bytes(received) == PREFACE + client_settings + request + settings_ack + ping


async def test_later_requests_the_watch_never_saw_end_are_still_recorded() -> None:
    """The same for a later request the middlewares saw (the gate decided it) after the
    watch stopped following: its ``ctx`` reaches ``on_complete`` too, not left behind."""
    recorder = PathsAndRecords()
    records, seen = recorder.records, recorder.seen

    encoder = hpack.Encoder()

    def get(stream: int, path: str) -> bytes:
        fields = [(":method", "GET"), (":scheme", "http"), (":path", path)]
        return h2_frame(0x1, 0x5, stream, encoder.encode([*fields, (":authority", AUTHORITY)]))

    bogus = h2_frame(0x5, 0x4, 1, (2).to_bytes(4, "big") + b"\xff\xff\xff\xff")
    async with (
        RawOrigin(_silent_h2_origin) as origin,
        tunnel_stack([http_tunnel(AUTHORITY, origin.port)], middlewares=[recorder]) as stack,
        visitor(stack.port) as (_reader, writer),
    ):
        writer.write(PREFACE + h2_frame(0x4, 0x0, 0, b"") + get(1, "/first"))
        await wait_until(lambda: seen == ["/first"], what="the first request decided")
        writer.write(bogus + get(3, "/second"))  # the watch stops; the gate goes on
        await wait_until(lambda: len(records) == 2, what="both requests' records")
    assert seen == ["/first", "/second"]
    assert sorted((r.path, r.status) for r in records) == [("/first", 0), ("/second", 0)]
    assert all(
        r.error is not None and r.error.startswith("the ingress stopped following") for r in records
    )
