"""Just enough HPACK (RFC 7541) to follow the header blocks of a connection one does not serve.

Two parts of ferrotunnel watch HTTP/2 connections they pass through: the server's ingress
(``ferrotunnel.http.h2watch``, for records) and the client's dashboard
(``ferrotunnel.observability.http2``). Each must read every header block of a connection, in
order, so that its copy of each peer's dynamic table stays in step with the peer's. The
ingress wants only a few fields (``:method``, ``:path``, ``:status``...): a general decoder
builds and Huffman-decodes every field of every block, while this one decodes a field's value
only when the field is wanted or enters the table (whose size counts decoded lengths), and
skips the rest — a literal that changes per request, such as ``grpc-timeout``, is stepped
over. The dashboard wants them all (:data:`EVERY_FIELD`): this is still several times faster
than the ``hpack`` library's decoder, which builds an object and logs a line per field.
Everything it keeps is bounded: the table by the size the peer may use, a field by its block.

Anything malformed raises :class:`HpackError`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container

from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

from .h2wire import INITIAL_TABLE_SIZE

__all__ = ["EVERY_FIELD", "HeaderReader", "HpackError"]

_STATIC: tuple[tuple[bytes, bytes], ...] = HeaderTable.STATIC_TABLE
_STATIC_SIZE = len(_STATIC)
_ENTRY_OVERHEAD = 32  # RFC 7541, section 4.1
_MAX_INT = 1 << 32  # no valid integer in a block is larger
_MAX_SEEN, _MAX_SEEN_BLOCK = 16, 256  # blocks remembered (see HeaderReader._seen), bytes each


class HpackError(ValueError):
    """A header block that does not decode."""


class _EveryField:
    def __contains__(self, name: object) -> bool:
        return True


#: ``read(block, EVERY_FIELD)``: every field of the block
EVERY_FIELD: Container[bytes] = _EveryField()


class HeaderReader:
    """One peer's header blocks, read in the order it sent them."""

    __slots__ = (
        "_entries",
        "_max_size",
        "_seen",
        "_seen_at",
        "_size",
        "changes",
        "max_allowed_table_size",
    )

    def __init__(self, max_allowed_table_size: int = INITIAL_TABLE_SIZE) -> None:
        #: how large the peer may make its table (what the other peer's SETTINGS allow)
        self.max_allowed_table_size = max_allowed_table_size
        self._max_size = INITIAL_TABLE_SIZE  # the size the peer's encoder last chose
        self._size = 0
        self._entries: deque[tuple[bytes, bytes]] = deque()  # newest first
        #: how many table changes (entries added, size updates) the blocks read have made:
        #: a block that made none may be dropped without the peers' tables parting ways
        self.changes = 0
        # blocks read since the table last changed that changed nothing (a client repeating
        # a call sends the same bytes): block -> (wanted, fields), good until it changes
        self._seen: dict[bytes, tuple[Container[bytes], list[tuple[bytes, bytes]]]] = {}
        self._seen_at = 0

    def allow(self, size: int, most: int) -> None:
        """The other peer's SETTINGS_HEADER_TABLE_SIZE said ``size``: the largest allowed so
        far is kept (a reader learns of a lowered limit before the encoder can act on it,
        and the encoder may use the old one until then), never more than ``most``."""
        self.max_allowed_table_size = max(self.max_allowed_table_size, min(size, most))

    def read(self, block: bytes, wanted: Container[bytes]) -> list[tuple[bytes, bytes]]:
        """The fields of ``block`` whose names are in ``wanted``, in order."""
        if self._seen_at != self.changes:
            self._seen.clear()
            self._seen_at = self.changes
        seen = self._seen.get(block)
        if seen is not None and seen[0] is wanted:
            return list(seen[1])
        found: list[tuple[bytes, bytes]] = []
        entries = self._entries
        every = wanted is EVERY_FIELD  # (its membership test is a Python call: skipped)
        pos, end = 0, len(block)
        while pos < end:
            first = block[pos]
            if first & 0x80:  # an indexed field: most of them, most often a one-byte one
                index = first & 0x7F
                if index < 0x7F:
                    pos += 1
                else:
                    index, pos = _integer(block, pos, 7)
                if 0 < index <= _STATIC_SIZE:
                    field = _STATIC[index - 1]
                elif _STATIC_SIZE < index <= _STATIC_SIZE + len(entries):  # (no call: hot)
                    field = entries[index - _STATIC_SIZE - 1]
                else:
                    raise HpackError("a field index beyond the tables")
                if every or field[0] in wanted:
                    found.append(field)
            elif first & 0x40:  # a literal that enters the table
                index, pos = _integer(block, pos, 6)
                if index:
                    name = self._entry(index)[0]
                else:
                    name, pos = _string(block, pos)
                value, pos = _string(block, pos)
                self._add(name, value)
                if every or name in wanted:
                    found.append((name, value))
            elif first & 0x20:  # a table size update
                size, pos = _integer(block, pos, 5)
                if size > self.max_allowed_table_size:
                    raise HpackError(f"table size {size} above the {self.max_allowed_table_size}")
                self._max_size = size
                self.changes += 1
                self._evict()
            else:  # a literal kept out of the table (never-indexed or not)
                index, pos = _integer(block, pos, 4)
                if index:
                    name = self._entry(index)[0]
                else:
                    name, pos = _string(block, pos)
                if every or name in wanted:
                    value, pos = _string(block, pos)
                    found.append((name, value))
                else:
                    pos = _skip_string(block, pos)
        if self.changes == self._seen_at and len(block) <= _MAX_SEEN_BLOCK:
            if len(self._seen) >= _MAX_SEEN:
                self._seen.clear()
            self._seen[block] = (wanted, list(found))
        return found

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= len(_STATIC):
            return _STATIC[index - 1]
        index -= len(_STATIC) + 1
        if 0 <= index < len(self._entries):
            return self._entries[index]
        raise HpackError("a field index beyond the tables")

    def _add(self, name: bytes, value: bytes) -> None:
        self.changes += 1
        size = len(name) + len(value) + _ENTRY_OVERHEAD
        if size > self._max_size:  # larger than the table: it empties it (section 4.4)
            self._entries.clear()
            self._size = 0
            return
        self._entries.appendleft((name, value))
        self._size += size
        self._evict()

    def _evict(self) -> None:
        entries = self._entries
        while self._size > self._max_size:
            name, value = entries.pop()
            self._size -= len(name) + len(value) + _ENTRY_OVERHEAD


def _integer(block: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """The integer with a ``prefix``-bit prefix at ``pos``, and the position after it."""
    if pos >= len(block):
        raise HpackError("a truncated field")
    mask = (1 << prefix) - 1
    value = block[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        if pos >= len(block):
            raise HpackError("a truncated integer")
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if value > _MAX_INT:
            raise HpackError("an integer too large")
        if not byte & 0x80:
            return value, pos
        shift += 7


def _string(block: bytes, pos: int) -> tuple[bytes, int]:
    length, start = _integer(block, pos, 7)
    huffman, pos = block[pos] & 0x80, start
    end = pos + length
    if end > len(block):
        raise HpackError("a truncated string")
    data = block[pos:end]
    if huffman:
        try:
            data = decode_huffman(data)
        except Exception as exc:  # hpack's own error family
            raise HpackError("an invalid Huffman string") from exc
    return data, end


def _skip_string(block: bytes, pos: int) -> int:
    length, pos = _integer(block, pos, 7)
    end = pos + length
    if end > len(block):
        raise HpackError("a truncated string")
    return end
