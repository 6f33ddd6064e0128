"""A visitor that lowers its HPACK table (SETTINGS_HEADER_TABLE_SIZE) and is answered by the
ingress: the first header block it reads after its SETTINGS are acknowledged must open with a
table size update (RFC 7541, 4.2). nghttp2 — curl's and nghttp's HTTP/2 — fails the whole
connection with COMPRESSION_ERROR otherwise."""

from __future__ import annotations

import asyncio
import shutil
import struct
import subprocess

import anyio
import anyio.to_thread
import hpack
import pytest

from ferrotunnel.core.h2wire import (
    ACK,
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PREFACE,
    SETTINGS,
    SETTINGS_HEADER_TABLE_SIZE,
    table_size_update,
)
from ferrotunnel.http.h2gate import H2Gate

from .harness import h2_frame, http_tunnel, tunnel_stack, visitor
from .test_h2gate import REQUEST, Turnstile, frames_of, h2_origin

pytestmark = pytest.mark.anyio

HOST = "h2.localhost"
NGHTTP = shutil.which("nghttp")
needs_nghttp = pytest.mark.skipif(NGHTTP is None, reason="nghttp (nghttp2-client) not installed")


def lowered(size: int) -> bytes:
    """A visitor's SETTINGS frame setting its decoder's table size."""
    return h2_frame(SETTINGS, 0, 0, struct.pack("!HI", SETTINGS_HEADER_TABLE_SIZE, size))


SETTINGS_ACK = h2_frame(SETTINGS, ACK, 0, b"")


def refusing_gate() -> tuple[H2Gate, hpack.Encoder]:
    """A gate past its first request that refuses every later one with ``:status 200``."""
    encoder = hpack.Encoder()
    gate = H2Gate(lambda stream, fields, ended: b"\x88", first_stream=1)
    gate.from_visitor(h2_frame(HEADERS, END_HEADERS, 1, encoder.encode(REQUEST)))
    return gate, encoder


def refuse(gate: H2Gate, encoder: hpack.Encoder, stream: int) -> None:
    block = encoder.encode(REQUEST)
    assert gate.from_visitor(h2_frame(HEADERS, END_HEADERS | END_STREAM, stream, block)) == b""


def answer_blocks(data: bytes | memoryview) -> list[bytes]:
    return [payload for kind, _, _, payload in frames_of(bytes(data)) if kind == HEADERS]


# ---------------------------------------------------------------------------- sans IO


def test_an_answer_after_the_origin_acknowledged_a_lowered_size_opens_with_the_update() -> None:
    gate, encoder = refusing_gate()
    gate.from_visitor(lowered(0))
    assert gate.from_origin(SETTINGS_ACK) == SETTINGS_ACK
    refuse(gate, encoder, 3)
    refuse(gate, encoder, 5)
    # once: the visitor's decoder has its update, and later ones would be noise
    assert answer_blocks(gate.ready()) == [b"\x20\x88", b"\x88"]


def test_no_update_before_the_acknowledgement_nor_after_the_origins_own_block() -> None:
    gate, encoder = refusing_gate()
    gate.from_visitor(lowered(0))
    refuse(gate, encoder, 3)
    assert answer_blocks(gate.ready()) == [b"\x88"]  # the visitor still decodes at 4096
    origin_block = h2_frame(HEADERS, END_HEADERS, 1, b"\x20\x88")  # the origin's update
    gate.from_origin(SETTINGS_ACK + origin_block)
    refuse(gate, encoder, 5)
    assert answer_blocks(gate.ready()) == [b"\x88"]


def test_the_update_follows_the_origins_frames_to_where_the_answer_goes() -> None:
    """The answer goes in at the first boundary in the origin's bytes: the ACK before it
    counts, the origin's header block after it does not."""
    gate, encoder = refusing_gate()
    gate.from_visitor(lowered(0))
    body = h2_frame(DATA, 0, 1, b"x" * 100)
    gate.from_origin(body[:50])  # inside a DATA frame: the answer must wait
    refuse(gate, encoder, 3)
    assert gate.ready() == b""
    origin_block = h2_frame(HEADERS, END_HEADERS, 1, b"\x20\x88")
    sent = bytes(gate.from_origin(body[50:] + SETTINGS_ACK + origin_block))
    assert sent.startswith(body[50:])
    # before the ACK: no update needed, and one would come before the origin may lower
    assert answer_blocks(sent[len(body) - 50 :]) == [b"\x88", b"\x20\x88"]

    gate, encoder = refusing_gate()
    gate.from_visitor(lowered(0))
    gate.from_origin(SETTINGS_ACK[:4])  # the ACK's header, split
    refuse(gate, encoder, 3)
    sent = bytes(gate.from_origin(SETTINGS_ACK[4:] + origin_block))
    assert sent.startswith(SETTINGS_ACK[4:])
    assert answer_blocks(sent[5:]) == [b"\x20\x88", b"\x20\x88"]


def test_raising_the_size_needs_no_update_and_the_smallest_of_several_is_given() -> None:
    gate, encoder = refusing_gate()
    gate.from_visitor(lowered(8192))
    gate.from_origin(SETTINGS_ACK)
    refuse(gate, encoder, 3)
    assert answer_blocks(gate.ready()) == [b"\x88"]

    gate, encoder = refusing_gate()
    gate.from_visitor(lowered(100) + h2_frame(SETTINGS, 0, 0, b"") + lowered(300))
    gate.from_origin(SETTINGS_ACK * 3)
    refuse(gate, encoder, 3)
    # 100, then 300: the smallest since the last block is what the decoder must see
    assert answer_blocks(gate.ready()) == [table_size_update(100) + b"\x88"]


def test_a_settings_flood_the_origin_never_acknowledges_fails_closed() -> None:
    gate, _ = refusing_gate()
    assert gate.from_visitor(lowered(0) * 64)
    assert not gate.closing
    gate.from_visitor(lowered(0))
    assert gate.closing
    assert "SETTINGS" in (gate.stopped or "")


def test_table_size_updates_encode_as_hpack_integers() -> None:
    for size in (0, 30, 31, 100, 4096, 1 << 20):
        decoder = hpack.Decoder(max_header_list_size=1 << 16)
        decoder.max_allowed_table_size = 1 << 20
        decoder.decode(table_size_update(size) + b"\x88")
        assert decoder.header_table_size == size


# ---------------------------------------------------------------------------- the ingress


async def test_a_refusal_after_the_acknowledgement_reaches_a_strict_decoder_whole() -> None:
    """Through a real tunnel: the visitor (raw frames) lowers its table to 0, waits for the
    origin's ACK, then opens a call the middlewares refuse: the answer opens with the update,
    and the origin's own answer to the first call still decodes."""
    turnstile = Turnstile(allow=1)
    encoder = hpack.Encoder()
    request = [(":method", "POST"), (":scheme", "http"), (":path", "/a"), (":authority", HOST)]
    async with (
        h2_origin() as port,
        tunnel_stack([http_tunnel(HOST, port)], middlewares=[turnstile]) as stack,
        visitor(stack.port) as (reader, writer),
    ):
        # the first call's body is not ended: the origin does not answer it yet
        writer.write(
            PREFACE + lowered(0) + h2_frame(HEADERS, END_HEADERS, 1, encoder.encode(request))
        )
        frames = Frames(reader)
        with anyio.fail_after(10):
            await frames.until(lambda kind, flags, stream: kind == SETTINGS and flags & ACK)
            writer.write(SETTINGS_ACK)  # to the ingress's and the origin's SETTINGS
            third = h2_frame(HEADERS, END_HEADERS | END_STREAM, 3, encoder.encode(request))
            writer.write(third)
            answer = await frames.until(lambda kind, flags, stream: stream == 3)
            writer.write(h2_frame(DATA, END_STREAM, 1, b""))
            response = await frames.until(lambda kind, flags, stream: kind == HEADERS)
    assert answer[3][:1] == b"\x20"  # a size update to 0 first
    decoder = StrictDecoder(0)
    assert (":status", "429") in decoder.decode(answer[3])
    assert (":status", "200") in decoder.decode(response[3])
    assert turnstile.seen == ["/a", "/a"]


class Frames:
    """The frames a raw visitor reads, one at a time."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader

    async def until(self, wanted: object) -> tuple[int, int, int, bytes]:
        assert callable(wanted)
        while True:
            head = await self.reader.readexactly(9)
            size = int.from_bytes(head[:3], "big")
            kind, flags, stream = head[3], head[4], struct.unpack("!I", head[5:])[0]
            payload = await self.reader.readexactly(size)
            if wanted(kind, flags, stream):
                return kind, flags, stream, payload


class StrictDecoder:
    """An HPACK decoder holding its encoder to RFC 7541 4.2 as nghttp2 does: after its table
    was lowered, the next block must open with a size update no larger."""

    def __init__(self, lowered_to: int) -> None:
        self.due: int | None = lowered_to
        self.decoder = hpack.Decoder()
        self.decoder.max_allowed_table_size = lowered_to

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        if self.due is not None:
            assert block[:1] != b"", "an empty block"
            assert block[0] & 0xE0 == 0x20, "the size update is missing"
            self.due = None
        return [(str(name), str(value)) for name, value in self.decoder.decode(block)]


@needs_nghttp
@pytest.mark.parametrize("grpc", [False, True], ids=["http", "grpc"])
async def test_nghttp_with_no_table_reads_a_first_call_refusal(grpc: bool) -> None:
    """The first call is answered by the ingress itself, which acknowledges the client's
    SETTINGS: its answer must open with the update (nghttp2 failed the connection)."""
    turnstile = Turnstile(allow=0)
    async with (
        h2_origin() as port,
        tunnel_stack([http_tunnel(HOST, port)], middlewares=[turnstile]) as stack,
    ):
        extra = ["-H", "content-type: application/grpc"] if grpc else []
        result = await run_nghttp(stack.port, "/a", extra)
    assert "COMPRESSION_ERROR" not in result.stdout
    if grpc:
        assert "grpc-status: 8" in result.stdout  # RESOURCE_EXHAUSTED
    else:
        assert ":status: 429" in result.stdout
    assert turnstile.seen == ["/a"]


@needs_nghttp
async def test_nghttp_with_no_table_gets_the_origins_answer_and_a_later_refusal() -> None:
    turnstile = Turnstile(allow=1)
    async with (
        h2_origin() as port,
        tunnel_stack([http_tunnel(HOST, port)], middlewares=[turnstile]) as stack,
    ):
        result = await run_nghttp(stack.port, "/a", [], "/b")
    assert "COMPRESSION_ERROR" not in result.stdout
    assert result.stdout.count(":status: 200") == 1
    assert result.stdout.count(":status: 429") == 1
    assert sorted(turnstile.seen) == ["/a", "/b"]


async def run_nghttp(
    port: int, path: str, extra: list[str], *more: str
) -> subprocess.CompletedProcess[str]:
    assert NGHTTP is not None
    urls = [f"http://127.0.0.1:{port}{p}" for p in (path, *more)]
    command = [NGHTTP, "-v", "-n", "--header-table-size=0", "-H", f":authority: {HOST}"]

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([*command, *extra, *urls], capture_output=True, text=True, timeout=20)

    return await anyio.to_thread.run_sync(run)


# ---------------------------------------------------------------------------- the visitor's encoder


def passing_gate() -> H2Gate:
    return H2Gate(lambda stream, fields, ended: None, first_stream=1)


def grown_to(size: int) -> bytes:
    """A new request whose block makes the visitor's table ``size`` bytes large."""
    return h2_frame(HEADERS, END_HEADERS | END_STREAM, 3, table_size_update(size) + b"\x82")


def test_the_visitors_table_may_grow_only_as_far_as_the_origin_allows() -> None:
    """The gate keeps a copy of the table the origin decodes with: no larger than the
    origin's SETTINGS allow (4096 bytes until they say more), nor than 1 MiB."""
    gate = passing_gate()
    assert gate.from_visitor(grown_to(8192)) == b""
    assert "8192" in (gate.stopped or "")  # the origin would have failed it too

    gate = passing_gate()
    gate.from_origin(lowered(65536))  # the origin's SETTINGS: the same frame both ways
    assert gate.from_visitor(grown_to(65536)) == grown_to(65536)

    gate = passing_gate()
    gate.from_origin(lowered(1 << 30))
    assert gate.from_visitor(grown_to(1 << 30)) == b""
    assert gate.stopped is not None


def test_origin_settings_in_pieces_allow_the_most_the_gate_keeps() -> None:
    gate = passing_gate()
    settings = lowered(65536)
    gate.from_origin(settings[:5])
    gate.from_origin(settings[5:])
    assert gate.from_visitor(grown_to(1 << 20)) == grown_to(1 << 20)
