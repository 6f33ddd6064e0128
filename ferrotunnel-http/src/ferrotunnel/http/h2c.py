"""Routing HTTP/2 cleartext (prior knowledge) by the ``:authority`` of its first request.

The ingress does not terminate HTTP/2: it reads just far enough to learn where the
connection is going — the connection preface, then frames up to the end of the first header
block — decodes that block with hpack, and from then on passes the connection's bytes
through untouched (so gRPC trailers and flow control are the origin's business). Every
request on one HTTP/2 connection therefore goes to the tunnel of its first request.

Some clients (gRPC's C core among them) send no request until the server's SETTINGS frame has
arrived. So the ingress answers the preface with an empty SETTINGS frame of its own (it
changes nothing: every setting keeps its initial value) and removes the client's
acknowledgement of it — the first SETTINGS ACK the client sends — from what it passes on,
so the origin never sees an ACK for a frame it did not send.
"""

from __future__ import annotations

import struct

import hpack

from .h1 import HttpError, normalize_host

__all__ = ["EMPTY_SETTINGS", "PREFACE", "SettingsAckFilter", "first_authority"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_FRAME = struct.Struct("!HBBBI")  # length (u24 as u16+u8), type, flags, stream id
_HEADERS, _SETTINGS, _CONTINUATION = 0x1, 0x4, 0x9
_END_HEADERS, _PADDED, _PRIORITY = 0x4, 0x8, 0x20
_ACK = 0x1
#: a SETTINGS frame with no parameters, on stream 0
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


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


class SettingsAckFilter:
    """Passes a client's frames (after the preface) through, minus its first SETTINGS ACK.

    It follows frame boundaries only until that ACK has gone by (:attr:`done`); a partial
    frame header is held back until the rest of it arrives.
    """

    __slots__ = ("_held", "_skip", "done")

    def __init__(self) -> None:
        self._held = b""  # the start of a frame header
        self._skip = 0  # payload bytes of the current frame still to pass through
        self.done = False

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return data
        data = self._held + data
        self._held = b""
        out = bytearray()
        pos = 0
        while pos < len(data):
            if self._skip:
                n = min(self._skip, len(data) - pos)
                out += data[pos : pos + n]
                pos += n
                self._skip -= n
                continue
            if len(data) - pos < 9:
                self._held = data[pos:]
                break
            header = data[pos : pos + 9]
            pos += 9
            high, low, ftype, flags, _stream = _FRAME.unpack(header)
            if ftype == _SETTINGS and flags & _ACK:
                self.done = True
                out += data[pos:]
                break
            out += header
            self._skip = high << 8 | low
        return bytes(out)
