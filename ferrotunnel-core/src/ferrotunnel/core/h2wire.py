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
