"""One captured HTTP exchange, and how the API shows it."""

from __future__ import annotations

import base64
import json
import re
import time
import zlib
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from .http1 import Head, request_head, response_head

__all__ = ["NO_BODY", "Body", "Exchange", "render_body"]

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
#: how much of a captured body the detail view shows as a hex dump
HEX_LIMIT = 4096
#: a compressed body is shown inflated up to this size
INFLATE_LIMIT = 1 << 20


@dataclass(slots=True)
class Body:
    """The first ``limit`` bytes of a body, and its real size."""

    limit: int
    data: bytearray = field(default_factory=bytearray)
    size: int = 0

    @property
    def truncated(self) -> bool:
        return self.size > len(self.data)

    def add(self, chunk: memoryview) -> None:
        self.size += len(chunk)
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]


#: the body of a message that has none (yet): shared, so never added to
NO_BODY = Body(0)


class Exchange:
    """A request and (once it came) its response, as the origin saw and sent them.

    Most exchanges relayed are never looked at, so the capture records them raw: a request
    head as its bytes (``request`` may be given as them, with its ``method``), a response that
    came whole as its message (:meth:`whole_response`). The heads (:class:`~.http1.Head`) and
    that response's :class:`Body` are made when first asked for; header fields, the trace id
    and the visitor's address likewise, when the API asks.
    """

    # What most exchanges keep as they were made is a class attribute (no __slots__): making
    # one, for every exchange relayed, sets only what differs.
    id: int = 0
    _response: Head | None = None
    _response_body: Body | None = None
    #: a response that came whole, until asked for: (message, body start, body size)
    _message: tuple[bytes, int, int] | None = None
    #: seconds from the request head to the response head, and to the response's end
    ttfb: float | None = None
    duration: float | None = None
    complete: bool = False
    #: the request ended (head, and body to its framing's end) before the stream did
    request_complete: bool = False
    error: str | None = None
    #: what the server's ingress answered the visitor instead, when the origin never answered
    #: (502: the local service refused the connection or closed it; 504: it took too long)
    ingress_status: int | None = None
    #: the response's trailer fields (HTTP/2: a gRPC call's ``grpc-status``), if it had any
    trailers: Head | None = None

    def __init__(
        self,
        tunnel: str,
        request: Head | bytes,
        request_body: Body = NO_BODY,
        visitor: tuple[str, int] | None = None,
        stream_traceparent: str | None = None,
        replay_of: int | None = None,
        method: str = "",
    ) -> None:
        self.tunnel = tunnel
        self._request = request
        self.method = request.method if isinstance(request, Head) else method
        self.request_body = request_body
        #: the visitor's address, from the stream's OPEN frame
        self.visitor = visitor
        #: the stream's ``traceparent`` (OPEN metadata), for a request that carries none
        self.stream_traceparent = stream_traceparent
        #: the exchange this one replays (None: real traffic)
        self.replay_of = replay_of
        self.started = time.time()
        self.started_mono = time.monotonic()

    @property
    def request(self) -> Head:
        request = self._request
        if isinstance(request, bytes):
            request = self._request = request_head(request)
        return request

    @property
    def response(self) -> Head | None:
        if self._message is not None:
            self._unpack()
        return self._response

    @response.setter
    def response(self, head: Head | None) -> None:
        self._response = head

    @property
    def response_body(self) -> Body | None:
        if self._message is not None:
            self._unpack()
        return self._response_body

    @response_body.setter
    def response_body(self, body: Body | None) -> None:
        self._response_body = body

    @property
    def response_size(self) -> int | None:
        """The response body's size (None before the response's head came)."""
        if self._message is not None:
            return self._message[2]
        return None if self._response_body is None else self._response_body.size

    def whole_response(self, message: bytes, body_start: int, limit: int) -> None:
        """The response came whole, as ``message`` (its body from ``body_start``, of which
        the first ``limit`` bytes are kept)."""
        size = len(message) - body_start
        kept = message if size <= limit else message[: body_start + limit]
        self._message = (kept, body_start, size)

    def _unpack(self) -> None:
        assert self._message is not None
        message, start, size = self._message
        self._message = None
        self._response = response_head(message, start)
        kept = bytearray(message[start:])
        self._response_body = Body(len(kept), kept, size)  # complete: never added to

    @property
    def target(self) -> str:
        return self.request.target

    @property
    def http_version(self) -> str:
        return self.request.version

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def status(self) -> int | None:
        """The status the visitor got: the origin's, else the ingress's answer (if known)."""
        return self.ingress_status if self.response is None else self.response.status

    @property
    def reason(self) -> str:
        if self.response is None:
            return "" if self.ingress_status is None else reason_phrase(self.ingress_status)
        return self.response.reason

    @property
    def request_headers(self) -> list[tuple[str, str]]:
        return self.request.headers

    @property
    def response_headers(self) -> list[tuple[str, str]]:
        return [] if self.response is None else self.response.headers

    @property
    def visitor_ip(self) -> str | None:
        return None if self.visitor is None else self.visitor[0]

    @property
    def visitor_port(self) -> int | None:
        return None if self.visitor is None else self.visitor[1]

    @property
    def trace_id(self) -> str | None:
        """From the request's ``traceparent``, else from the stream's."""
        return trace_id_of(self.request.header("traceparent") or self.stream_traceparent)

    @property
    def state(self) -> str:
        if self.error is not None:
            return "error"
        return "complete" if self.complete else "pending"

    def header(self, name: str, *, response: bool = False) -> str | None:
        head = self.response if response else self.request
        return None if head is None else head.header(name)

    def summary(self) -> dict[str, Any]:
        """What the request list shows (and the SSE ``request`` event carries)."""
        return {
            "id": self.id,
            "tunnel": self.tunnel,
            "method": self.method,
            "path": self.path,
            "target": self.target,
            "status": self.status,
            "state": self.state,
            "error": self.error,
            "started": self.started,
            "duration_ms": None if self.duration is None else round(self.duration * 1000, 3),
            "request_size": self.request_body.size,
            "response_size": self.response_size,
            "visitor_ip": self.visitor_ip,
            "trace_id": self.trace_id,
            "replay_of": self.replay_of,
        }

    def detail(self) -> dict[str, Any]:
        """Everything, bodies rendered for display."""
        request_type = self.header("content-type")
        response_type = self.header("content-type", response=True)
        encoding = self.header("content-encoding", response=True)
        return {
            **self.summary(),
            "http_version": self.http_version,
            "visitor_port": self.visitor_port,
            "reason": self.reason,
            "request": {
                "complete": self.request_complete,
                "headers": [list(h) for h in self.request_headers],
                "body": render_body(self.request_body, request_type, None),
            },
            "response": None
            if self.response_body is None
            else {
                "headers": [list(h) for h in self.response_headers],
                "body": render_body(self.response_body, response_type, encoding),
                "trailers": None
                if self.trailers is None
                else [list(h) for h in self.trailers.headers],
            },
            "timing": {
                "started": self.started,
                "ttfb_ms": None if self.ttfb is None else round(self.ttfb * 1000, 3),
                "duration_ms": None if self.duration is None else round(self.duration * 1000, 3),
            },
        }


def reason_phrase(status: int) -> str:
    """The standard reason phrase of ``status`` ("" for a code without one)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` value (None if absent or malformed)."""
    if traceparent is None:
        return None
    match = _TRACEPARENT.match(traceparent.strip().lower())
    return match.group(1) if match and match.group(1) != "0" * 32 else None


def render_body(body: Body, content_type: str | None, encoding: str | None) -> dict[str, Any]:
    """A captured body for display: JSON pretty-printed, text as text, binary as hex."""
    data = bytes(body.data)
    shown: dict[str, Any] = {
        "size": body.size,
        "captured": len(data),
        "truncated": body.truncated,
        "content_type": content_type,
        "base64": base64.b64encode(data).decode(),
    }
    if encoding and not body.truncated:
        inflated = _inflate(data, encoding.strip().lower())
        if inflated is not None:
            data = inflated
            shown["decoded_from"] = encoding
    if not data:
        return {**shown, "kind": "empty", "text": ""}
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media.startswith("application/grpc"):
        messages = _grpc_messages(data, body.truncated)
        if messages is not None:
            return {**shown, **messages}
    text = _as_text(data, body.truncated)
    if text is not None and not body.truncated and _looks_json(content_type, text):
        try:
            pretty = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except ValueError:
            pass
        else:
            return {**shown, "kind": "json", "text": pretty}
    if text is not None:
        return {**shown, "kind": "text", "text": text}
    return {**shown, "kind": "binary", "text": hexdump(data[:HEX_LIMIT])}


def _grpc_messages(data: bytes, truncated: bool) -> dict[str, Any] | None:
    """A gRPC body as its messages (each a 5-byte prefix: compressed flag, length), each
    shown as text or a hex dump; None if the bytes are not gRPC framing."""
    messages: list[dict[str, Any]] = []
    parts: list[str] = []
    at = 0
    while at < len(data):
        if len(data) - at < 5:
            if not truncated:
                return None
            break
        compressed, size = data[at], int.from_bytes(data[at + 1 : at + 5], "big")
        if compressed > 1:
            return None
        payload = data[at + 5 : at + 5 + size]
        cut = len(payload) < size
        if cut and not truncated:
            return None
        messages.append({"size": size, "compressed": bool(compressed)})
        notes = [f"message {len(messages)}", f"{size} bytes"]
        notes += ["compressed"] if compressed else []
        notes += [f"first {len(payload)} captured"] if cut else []
        text = None if compressed else _as_text(payload, cut)
        parts.append(
            " · ".join(notes) + "\n" + (text if text is not None else hexdump(payload[:HEX_LIMIT]))
        )
        at += 5 + size
    return {"kind": "grpc", "text": "\n\n".join(parts), "messages": messages}


def _looks_json(content_type: str | None, text: str) -> bool:
    if content_type is not None:
        media = content_type.split(";", 1)[0].strip().lower()
        return media == "application/json" or media.endswith("+json")
    return text[:1] in ("{", "[")


def _as_text(data: bytes, truncated: bool) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a body cut by the capture limit may end inside a character
        if not (truncated and exc.start >= len(data) - 3):
            return None
        text = data[: exc.start].decode("utf-8")
    if any(ch < " " and ch not in "\t\r\n\f" for ch in text[:4096]):
        return None
    return text


def _inflate(data: bytes, encoding: str) -> bytes | None:
    wbits = {"gzip": 31, "x-gzip": 31, "deflate": 15}.get(encoding)
    if wbits is None:
        return None
    try:
        inflater = zlib.decompressobj(wbits)
        out = inflater.decompress(data, INFLATE_LIMIT)
    except zlib.error:
        return None
    return out


def hexdump(data: bytes) -> str:
    """``offset  hex bytes  |ascii|`` lines, 16 bytes each."""
    lines = []
    for offset in range(0, len(data), 16):
        row = data[offset : offset + 16]
        hexes = " ".join(f"{b:02x}" for b in row)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        lines.append(f"{offset:08x}  {hexes:<47}  |{text}|")
    return "\n".join(lines)
