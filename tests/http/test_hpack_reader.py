"""The HTTP/2 watches' HPACK reader against the hpack library's decoder: header blocks from
hpack's encoder — indexed, literal, never-indexed, Huffman or not, table size changes — must
give the same wanted fields (or all of them), block after block (the tables stay in step);
and no input makes it raise anything but HpackError."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferrotunnel.core.hpack_reader import EVERY_FIELD, HeaderReader, HpackError

NAMES = [":method", ":path", ":authority", ":status", "grpc-status", "content-type", "x-a", "x-b"]
WANTED = frozenset({b":method", b":path", b":authority", b":status", b"grpc-status"})

values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
fields = st.tuples(
    st.sampled_from(NAMES) | st.from_regex(r"x-[a-z]{1,12}", fullmatch=True),
    values,
    st.booleans(),  # never indexed
)
blocks = st.tuples(
    st.lists(fields, max_size=12),
    st.booleans(),  # Huffman
    st.none() | st.sampled_from([0, 64, 256, 4096, 16384]),  # a table size change first
)


@settings(max_examples=300, deadline=None)
@given(st.lists(blocks, min_size=1, max_size=12))
def test_the_reader_reads_what_hpack_decodes(
    sequence: list[tuple[list[tuple[str, str, bool]], bool, int | None]],
) -> None:
    encoder = hpack.Encoder()
    decoder = hpack.Decoder()
    decoder.max_allowed_table_size = 16384
    reader, every = HeaderReader(16384), HeaderReader(16384)
    for headers, huffman, resize in sequence:
        if resize is not None:
            encoder.header_table_size = resize
        tuples = [
            hpack.NeverIndexedHeaderTuple(n, v) if never else hpack.HeaderTuple(n, v)
            for n, v, never in headers
        ]
        block = encoder.encode(tuples, huffman=huffman)
        decoded = [(bytes(n), bytes(v)) for n, v in decoder.decode(block, raw=True)]
        assert reader.read(block, WANTED) == [(n, v) for n, v in decoded if n in WANTED]
        assert every.read(block, EVERY_FIELD) == decoded  # the dashboard's reading


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_raises_only_hpack_error(block: bytes) -> None:
    try:
        reader = HeaderReader()
        reader.read(block, WANTED)
        reader.read(block, ())
        HeaderReader().read(block, EVERY_FIELD)
    except HpackError:
        pass


def test_a_table_size_above_the_allowed_is_refused() -> None:
    encoder = hpack.Encoder()
    encoder.header_table_size = 8192
    with pytest.raises(HpackError, match="table size 8192 above the 4096"):
        HeaderReader(4096).read(encoder.encode([(":status", "200")]), WANTED)


def test_an_index_beyond_the_tables_is_refused() -> None:
    with pytest.raises(HpackError, match="beyond the tables"):
        HeaderReader().read(b"\xbe", WANTED)  # index 62: the dynamic table is empty
