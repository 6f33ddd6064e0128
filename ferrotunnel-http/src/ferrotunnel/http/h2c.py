"""Routing HTTP/2 cleartext (prior knowledge) by the ``:authority`` and ``:path`` of its first
request.

The ingress does not terminate HTTP/2: it reads just far enough to learn where the
connection is going — the connection preface, then frames up to the end of the first header
block — decodes that block with hpack, and from then on passes the connection's bytes
through untouched (so gRPC trailers and flow control are the origin's business). Every
request on one HTTP/2 connection therefore goes to the tunnel of its first request; a later
one that routes elsewhere is answered 421 by the gate (``h2gate.py``), never passed on.

Some clients (gRPC's C core among them) send no request until the server's SETTINGS frame has
arrived. So the ingress answers the preface with an empty SETTINGS frame of its own (it
changes nothing: every setting keeps its initial value) and removes the client's
acknowledgement of it — the first SETTINGS ACK the client sends — from what it passes on,
so the origin never sees an ACK for a frame it did not send.

HTTP middlewares see that first request (:func:`first_request`) before the connection is
handed over, so that a visitor they refuse never reaches the origin: their answer is sent as
an HTTP/2 response (:func:`reply_frames`), and the connection closed. Header edits cannot be
applied to bytes that are passed through untouched.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from ferrotunnel.core.h2wire import (
    ACK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER,
    GOAWAY,
    HEADERS,
    INITIAL_MAX_FRAME_SIZE,
    INITIAL_TABLE_SIZE,
    PREFACE,
    RST_STREAM,
    SETTINGS,
    SETTINGS_HEADER_TABLE_SIZE,
    frame,
    header_fragment,
    header_frames,
    hpack_integer,
    setting,
    table_size_update,
)

from .h1 import HttpError, RequestHead, normalize_host

__all__ = [
    "EMPTY_SETTINGS",
    "PREFACE",
    "SettingsAckFilter",
    "answer_block",
    "decoder_table_size",
    "first_request",
    "is_grpc",
    "reply_frames",
    "request_head",
]

#: a SETTINGS frame with no parameters, on stream 0
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def first_request(data: bytes | bytearray) -> tuple[int, RequestHead] | None:
    """The stream id and head of the first request in ``data`` (which starts with the
    preface) as middlewares see a request — its ``host`` the normalised ``:authority`` (or
    ``host`` field), which routes the connection — or None while more bytes are needed."""
    found = _first_header_block(data)
    if found is None:
        return None
    stream_id, block = found
    return stream_id, request_head(_decode(block))


def request_head(fields: list[tuple[bytes, bytes]]) -> RequestHead:
    """An HTTP/2 request's header fields as the head middlewares see: ``:method`` and
    ``:path`` its request line, ``host`` the normalised ``:authority`` (or ``host`` field)."""
    pseudo = {name: value for name, value in fields if name.startswith(b":")}
    if len(pseudo) != sum(name.startswith(b":") for name, _ in fields):
        # malformed (RFC 9113, 8.3): the middlewares would judge one value, an origin that
        # takes the other might serve another path
        raise HttpError(400, "HTTP/2 request with a repeated pseudo-header field")
    authority = _authority(fields)
    headers = [(b"host", authority.encode("latin-1"))]
    headers += [(name, value) for name, value in fields if not name.startswith(b":")]
    return RequestHead(
        method=pseudo.get(b":method", b"GET"),
        target=pseudo.get(b":path", b"/"),
        minor=1,
        headers=headers,
        host=authority,
    )


def _frames(data: bytes | bytearray) -> Iterator[tuple[int, int, int, bytes]]:
    """The whole frames of ``data`` after the preface: type, flags, stream id, payload (a
    copy: ``data`` is the connection's buffer, which a view would keep from growing)."""
    pos = len(PREFACE)
    while len(data) - pos >= 9:
        high, low, ftype, flags, stream = FRAME_HEADER.unpack_from(data, pos)
        end = pos + 9 + (high << 8 | low)
        if end > len(data):
            return
        yield ftype, flags, stream & 0x7FFFFFFF, bytes(data[pos + 9 : end])
        pos = end


def _first_header_block(data: bytes | bytearray) -> tuple[int, bytes] | None:
    """The stream id and header block of the first request, or None if incomplete."""
    block = b""
    in_headers = False
    stream_id = 0
    for ftype, flags, stream, payload in _frames(data):
        if ftype == HEADERS:
            fragment = header_fragment(ftype, flags, payload)
            if fragment is None:
                raise HttpError(400, "HTTP/2 HEADERS frame with impossible padding")
            block, in_headers, stream_id = bytes(fragment), True, stream
        elif ftype == CONTINUATION and in_headers:
            block += payload
        elif in_headers:
            raise HttpError(400, "HTTP/2 header block interrupted")
        else:
            continue  # SETTINGS, WINDOW_UPDATE, PRIORITY... before the first request
        if flags & END_HEADERS:
            return stream_id, block
    return None


def _decode(block: bytes) -> list[tuple[bytes, bytes]]:
    # hpack is imported on first use: its Huffman table takes some
    # 30 ms to import, which every ferrotunnel command would pay; only HTTP/2 needs it
    import hpack

    try:
        return [(bytes(k), bytes(v)) for k, v in hpack.Decoder().decode(block, raw=True)]
    except Exception as exc:  # hpack raises a family of its own errors
        raise HttpError(400, "undecodable HTTP/2 header block") from exc


def _authority(fields: list[tuple[bytes, bytes]]) -> str:
    values = dict(fields)
    authority = values.get(b":authority") or values.get(b"host")
    if not authority:
        raise HttpError(400, "HTTP/2 request without :authority")
    return normalize_host(authority)


#: header fields HTTP/2 forbids (RFC 9113, section 8.2.2)
_CONNECTION_SPECIFIC = frozenset(
    [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"]
)


def reply_frames(
    stream_id: int,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    head_only: bool = False,
    grpc: bool = False,
    table_size: int | None = None,
) -> bytes:
    """A whole HTTP/2 response on ``stream_id`` (HEADERS, DATA), then a GOAWAY that tells
    the client no other stream of the connection was processed. A gRPC call gets the answer
    a gRPC client understands (see :func:`answer_block`). ``table_size``: the client's
    SETTINGS_HEADER_TABLE_SIZE (:func:`decoder_table_size`)."""
    goaway = frame(GOAWAY, 0, 0, struct.pack("!II", stream_id, 0))  # NO_ERROR
    # no origin saw this connection: its SETTINGS are acknowledged here (a gRPC client may
    # otherwise drop the answer when the connection closes). Once it has the ACK, a client
    # that lowered its table size expects the next header block to say it was (RFC 7541,
    # 4.2: nghttp2 fails the connection otherwise)
    out = bytearray(frame(SETTINGS, ACK, 0, b""))
    block = b""
    if table_size is not None and table_size < INITIAL_TABLE_SIZE:
        block = table_size_update(table_size)
    if grpc:
        block += answer_block(status, headers, body, grpc=True)
        out += header_frames(stream_id, block, END_STREAM)
        # a call whose request is still coming (a body beyond the first window) is told to
        # stop sending, without error (RFC 9113, 8.1), as gRPC servers do: else the closing
        # connection fails its send, and grpc-core may report that (UNAVAILABLE, "Socket
        # closed") instead of the answer it has
        out += frame(RST_STREAM, 0, stream_id, struct.pack("!I", 0))
        return bytes(out + goaway)
    fields = [(b":status", b"%d" % status)]
    fields += [(k.lower(), v) for k, v in headers if k.lower() not in _CONNECTION_SPECIFIC]
    block += b"".join(_literal(name, value) for name, value in fields)
    no_body = head_only or not body
    out += header_frames(stream_id, block, END_STREAM if no_body else 0)
    if not no_body:
        for i in range(0, len(body), INITIAL_MAX_FRAME_SIZE):
            last = i + INITIAL_MAX_FRAME_SIZE >= len(body)
            out += frame(
                DATA, END_STREAM if last else 0, stream_id, body[i : i + INITIAL_MAX_FRAME_SIZE]
            )
    out += goaway
    return bytes(out)


def decoder_table_size(data: bytes | bytearray) -> int | None:
    """The SETTINGS_HEADER_TABLE_SIZE of the client's first SETTINGS frame in ``data`` (which
    starts with the preface), if it names one before the first request."""
    for ftype, flags, _, payload in _frames(data):
        if ftype == HEADERS:
            return None
        if ftype == SETTINGS and not flags & ACK:
            return setting(payload, SETTINGS_HEADER_TABLE_SIZE)
    return None


def is_grpc(fields: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request's fields say gRPC (``content-type: application/grpc...``)."""
    return any(
        name.lower() == b"content-type" and value.startswith(b"application/grpc")
        for name, value in fields
    )


#: a refusal's HTTP status as a gRPC status (the reverse of gRPC's HTTP-to-status mapping)
_GRPC_STATUS = {
    401: b"16",  # UNAUTHENTICATED
    403: b"7",  # PERMISSION_DENIED
    404: b"12",  # UNIMPLEMENTED
    421: b"14",  # UNAVAILABLE: misdirected, worth a retry on another connection
    429: b"8",  # RESOURCE_EXHAUSTED
    502: b"14",
    503: b"14",
    504: b"14",
}


def answer_block(
    status: int,
    headers: list[tuple[bytes, bytes]],
    message: bytes,
    grpc: bool,
) -> bytes:
    """The header block of a refusal on a connection that goes on, to be sent alone, ending
    its stream: every field a literal kept out of the table (the visitor's HPACK table is
    shared with the origin's encoder and must not change). A gRPC call gets a
    "trailers-only" answer (``grpc-status`` from the HTTP status: 429 is
    RESOURCE_EXHAUSTED, 401 UNAUTHENTICATED...; ``grpc-message`` the refusal's text), others
    the status and the reply's fields, without the body: DATA would take flow-control credit
    the origin does not know was used."""
    if grpc:
        fields = [
            (b":status", b"200"),
            (b"content-type", b"application/grpc"),
            (b"grpc-status", _GRPC_STATUS.get(status, b"2")),  # UNKNOWN
            (b"grpc-message", _percent_encoded(message.strip())),
        ]
        fields += [(k.lower(), v) for k, v in headers if k.lower() == b"retry-after"]
    else:
        fields = [(b":status", b"%d" % status)]
        fields += [
            (k.lower(), v)
            for k, v in headers
            if k.lower() not in _CONNECTION_SPECIFIC and k.lower() != b"content-length"
        ]
        fields.append((b"content-length", b"0"))
    return b"".join(_literal(name, value) for name, value in fields)


def _literal(name: bytes, value: bytes) -> bytes:
    """A literal field without indexing, its name a literal too, no Huffman coding."""
    return b"\x00" + _hpack_string(name) + _hpack_string(value)


def _hpack_string(data: bytes) -> bytes:
    return hpack_integer(len(data), 7) + data  # its length, then itself (no Huffman coding)


def _percent_encoded(message: bytes) -> bytes:
    """gRPC's percent-encoding of ``grpc-message`` (all but printable ASCII and ``%``)."""
    return b"".join(
        bytes([b]) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in message[:512]
    )


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
            high, low, ftype, flags, _stream = FRAME_HEADER.unpack(header)
            if ftype == SETTINGS and flags & ACK:
                self.done = True
                out += data[pos:]
                break
            out += header
            self._skip = high << 8 | low
        return bytes(out)
