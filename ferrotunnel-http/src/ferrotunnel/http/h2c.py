"""Routing HTTP/2 cleartext (prior knowledge) by the ``:authority`` of its first request.

The ingress does not terminate HTTP/2: it reads just far enough to learn where the
connection is going — the connection preface, then frames up to the end of the first header
block — decodes that block with hpack, and from then on passes the connection's bytes
through untouched (so gRPC trailers and flow control are the origin's business). Every
request on one HTTP/2 connection therefore goes to the tunnel of its first request.
"""

from __future__ import annotations

import struct

import hpack

from .h1 import HttpError, normalize_host

__all__ = ["PREFACE", "first_authority"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_FRAME = struct.Struct("!HBBBI")  # length (u24 as u16+u8), type, flags, stream id
_HEADERS, _CONTINUATION = 0x1, 0x9
_END_HEADERS, _PADDED, _PRIORITY = 0x4, 0x8, 0x20


def first_authority(data: bytes | bytearray) -> str | None:
    """The normalised ``:authority`` (or ``host``) of the first request in ``data`` (which
    starts with the preface), or None while more bytes are needed."""
    pos = len(PREFACE)
    block = b""
    in_headers = False
    while len(data) - pos >= 9:
        high, low, ftype, flags, _stream = _FRAME.unpack_from(data, pos)
        length = high << 8 | low
        start, end = pos + 9, pos + 9 + length
        if end > len(data):
            return None
        payload = bytes(data[start:end])
        pos = end
        if ftype == _HEADERS:
            if flags & _PADDED:
                pad = payload[0]
                payload = payload[1 : len(payload) - pad]
            if flags & _PRIORITY:
                payload = payload[5:]
            block, in_headers = payload, True
        elif ftype == _CONTINUATION and in_headers:
            block += payload
        elif in_headers:
            raise HttpError(400, "HTTP/2 header block interrupted")
        else:
            continue  # SETTINGS, WINDOW_UPDATE, PRIORITY... before the first request
        if flags & _END_HEADERS:
            return _authority(block)
    return None


def _authority(block: bytes) -> str:
    try:
        headers = hpack.Decoder().decode(block, raw=True)
    except Exception as exc:  # hpack raises a family of its own errors
        raise HttpError(400, "undecodable HTTP/2 header block") from exc
    values = dict(headers)
    authority = values.get(b":authority") or values.get(b"host")
    if not authority:
        raise HttpError(400, "HTTP/2 request without :authority")
    return normalize_host(authority)
