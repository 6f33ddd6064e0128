"""HTTP/2's wire facts (RFC 9113) for the parts of ferrotunnel that watch or speak it.

The server's ingress routes h2c connections and follows them for records
(``ferrotunnel.http.h2c``, ``ferrotunnel.http.h2watch``); the client's dashboard lists and
replays their calls (``ferrotunnel.observability.http2``, ``replay_h2``). None of them
terminates HTTP/2, so each reads frames itself; these are the numbers they share.
"""

from __future__ import annotations

import struct

__all__ = [
    "ACK",
    "CONTINUATION",
    "DATA",
    "END_HEADERS",
    "END_STREAM",
    "ERROR_CODES",
    "FRAME_HEADER",
    "GOAWAY",
    "HEADERS",
    "INITIAL_MAX_FRAME_SIZE",
    "INITIAL_TABLE_SIZE",
    "INITIAL_WINDOW",
    "MAX_WINDOW",
    "PADDED",
    "PING",
    "PREFACE",
    "PRIORITY",
    "PRIORITY_FLAG",
    "PUSH_PROMISE",
    "RST_STREAM",
    "SETTINGS",
    "SETTINGS_ENABLE_PUSH",
    "SETTINGS_HEADER_TABLE_SIZE",
    "SETTINGS_INITIAL_WINDOW_SIZE",
    "WINDOW_UPDATE",
    "error_name",
    "frame",
    "header_fragment",
    "header_frames",
    "hpack_integer",
    "setting",
    "table_size_update",
]

#: what a connection with prior knowledge (h2c) opens with
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: a frame's header: length (a u24 read as u16 + u8), type, flags, stream id (and a reserved bit)
FRAME_HEADER = struct.Struct("!HBBBI")

# frame types
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9

# flags (ACK is SETTINGS' and PING's; END_STREAM is DATA's and HEADERS')
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

# SETTINGS parameters
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_ENABLE_PUSH, SETTINGS_INITIAL_WINDOW_SIZE = 0x1, 0x2, 0x4

#: the frame size every peer accepts until its SETTINGS say more
INITIAL_MAX_FRAME_SIZE = 16_384
#: an HPACK dynamic table's size until SETTINGS_HEADER_TABLE_SIZE and its encoder change it
INITIAL_TABLE_SIZE = 4096
#: each flow-control window's size until SETTINGS and WINDOW_UPDATEs change it
INITIAL_WINDOW = 65_535
#: the largest a window may be
MAX_WINDOW = (1 << 31) - 1

#: the error codes of RST_STREAM and GOAWAY, by number
ERROR_CODES = (
    "NO_ERROR",
    "PROTOCOL_ERROR",
    "INTERNAL_ERROR",
    "FLOW_CONTROL_ERROR",
    "SETTINGS_TIMEOUT",
    "STREAM_CLOSED",
    "FRAME_SIZE_ERROR",
    "REFUSED_STREAM",
    "CANCEL",
    "COMPRESSION_ERROR",
    "CONNECT_ERROR",
    "ENHANCE_YOUR_CALM",
    "INADEQUATE_SECURITY",
    "HTTP_1_1_REQUIRED",
)


def error_name(code: int) -> str:
    """``CANCEL`` for 0x8; an unknown code by its number."""
    return ERROR_CODES[code] if 0 <= code < len(ERROR_CODES) else f"error code {code:#x}"


def frame(kind: int, flags: int, stream: int, payload: bytes | memoryview = b"") -> bytes:
    """One frame, as the peers write them."""
    size = len(payload)
    return FRAME_HEADER.pack(size >> 8, size & 0xFF, kind, flags, stream) + payload


def header_frames(stream: int, block: bytes, flags: int = 0) -> bytes:
    """``block`` as a HEADERS frame and CONTINUATIONs of at most the frame size every peer
    accepts (``flags``, END_STREAM say, go on the HEADERS frame)."""
    size = INITIAL_MAX_FRAME_SIZE
    pieces = [block[i : i + size] for i in range(0, len(block), size)] or [b""]
    out = bytearray()
    for i, piece in enumerate(pieces):
        last = END_HEADERS if i == len(pieces) - 1 else 0
        if i == 0:
            out += frame(HEADERS, flags | last, stream, piece)
        else:
            out += frame(CONTINUATION, last, stream, piece)
    return bytes(out)


def header_fragment(
    kind: int, flags: int, payload: bytes | bytearray | memoryview
) -> memoryview | None:
    """The header block fragment of a HEADERS or PUSH_PROMISE payload: without its pad
    length, priority fields or promised stream id, and padding. None if the padding does
    not fit (RFC 9113, 6.2: a PROTOCOL_ERROR)."""
    view = memoryview(payload)
    pad = 0
    if flags & PADDED:
        if not view:
            return None
        pad, view = view[0], view[1:]
    skip = 5 if kind == HEADERS and flags & PRIORITY_FLAG else 4 if kind == PUSH_PROMISE else 0
    if skip + pad > len(view):
        return None
    return view[skip : len(view) - pad]


def setting(payload: bytes | bytearray | memoryview, parameter: int) -> int | None:
    """The value a SETTINGS payload gives ``parameter`` (the last, if several: they apply in
    order), or None if it does not name it."""
    value = None
    for at in range(0, len(payload) - 5, 6):
        if int.from_bytes(payload[at : at + 2], "big") == parameter:
            value = int.from_bytes(payload[at + 2 : at + 6], "big")
    return value


def hpack_integer(value: int, prefix: int, first: int = 0) -> bytes:
    """``value`` as an HPACK integer with a ``prefix``-bit prefix (RFC 7541, 5.1), the
    first byte's other bits ``first``."""
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([first | value])
    out, value = bytearray([first | limit]), value - limit
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def table_size_update(size: int) -> bytes:
    """An HPACK dynamic table size update to ``size`` (RFC 7541, 6.3): what must open the
    first header block a peer decodes after lowering its SETTINGS_HEADER_TABLE_SIZE."""
    return hpack_integer(size, 5, 0x20)
