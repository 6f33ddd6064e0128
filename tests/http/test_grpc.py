"""gRPC (HTTP/2 cleartext, prior knowledge) through the ingress: routed by the :authority of
the first request, then passed through untouched — so trailers (grpc-status) survive.

Messages are raw bytes (no protoc): identity serializers on both ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import anyio
import anyio.to_thread
import grpc  # type: ignore[import-untyped]
import hpack
import pytest

from ferrotunnel.http.h2c import EMPTY_SETTINGS, PREFACE

from .harness import HOST, RawOrigin, Stack, h2_frame, http_tunnel, tunnel_stack, visitor

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


@pytest.fixture
async def grpc_stack() -> AsyncIterator[Stack]:
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        "Missing": grpc.unary_unary_rpc_method_handler(_missing),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port(f"{HOST}:0")
    server.start()
    try:
        async with tunnel_stack([http_tunnel(AUTHORITY, port)]) as stack:
            yield stack
    finally:
        await anyio.to_thread.run_sync(lambda: server.stop(grace=None).wait(5))


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
