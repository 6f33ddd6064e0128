"""Encoding and decoding of frames. No I/O: bytes in, events out (and the reverse).

Theory of operation
-------------------
:class:`FrameDecoder.feed` takes whatever a socket read returned and returns every complete
frame in it as an event. It is the hot path of the tunnel, so:

* Frames are parsed in place: a DATA event's payload is a ``memoryview`` slice of the
  (immutable) ``bytes`` object just read, never a copy.
* A DATA frame cut by the end of a read is not reassembled: what arrived is delivered at
  once as a Data event, and the rest of its payload as further Data events from the next
  reads. (Large frames rarely fit one read, so reassembling them would copy nearly every
  byte.) A consumer therefore sees a stream's bytes in order, in pieces of any size.
* Only a cut header, or a cut control frame (small: it holds JSON or a few integers), is
  copied into a buffer and completed from the front of the next read.
* Lengths are checked against :class:`Limits` as soon as the header is seen, before any
  payload is buffered, so a hostile length can never make the decoder allocate.

Any malformed input raises :class:`ProtocolError` and nothing else; after that the decoder
is unusable (the session must close).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ._errors import ErrorCode, ProtocolError
from ._frames import (
    Data,
    Event,
    Fin,
    FrameType,
    GoAway,
    GrantedTunnel,
    Hello,
    Open,
    Ping,
    Pong,
    Reject,
    RejectCode,
    Reset,
    TunnelKind,
    TunnelRequest,
    Welcome,
    WindowUpdate,
)

HEADER = struct.Struct("!IBI")  # (length << 8 | type), flags, stream id
HEADER_SIZE = HEADER.size
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_GOAWAY = struct.Struct("!II")

MAX_PAYLOAD = (1 << 24) - 1  # what the u24 length field can carry
MAX_STREAM_ID = (1 << 31) - 1
MAX_WINDOW = (1 << 31) - 1

_DATA = int(FrameType.DATA)
_WINDOW_UPDATE = int(FrameType.WINDOW_UPDATE)
_SESSION_FRAMES = frozenset(
    {
        FrameType.HELLO,
        FrameType.WELCOME,
        FrameType.REJECT,
        FrameType.PING,
        FrameType.PONG,
        FrameType.GOAWAY,
    }
)


@dataclass(frozen=True, slots=True)
class Limits:
    """Sizes the codec enforces on what it receives (and refuses to send).

    ``max_frame_size`` bounds DATA payloads; ``max_control_size`` bounds the JSON of
    HELLO/WELCOME/REJECT/OPEN and the GOAWAY message, which is where stream metadata lives.
    """

    max_frame_size: int = 256 * 1024
    max_control_size: int = 64 * 1024

    def __post_init__(self) -> None:
        for name in ("max_frame_size", "max_control_size"):
            value = getattr(self, name)
            if not 1 <= value <= MAX_PAYLOAD:
                raise ValueError(f"{name} must be within 1..{MAX_PAYLOAD}, not {value}")


DEFAULT_LIMITS = Limits()


# --------------------------------------------------------------------------- encoding


def data_header(stream_id: int, length: int) -> bytes:
    """The header of a DATA frame; send it followed by the payload (no join needed)."""
    return HEADER.pack(length << 8 | _DATA, 0, stream_id)


def encode_window_update(stream_id: int, increment: int) -> bytes:
    return HEADER.pack(4 << 8 | _WINDOW_UPDATE, 0, stream_id) + _U32.pack(increment)


def encode(event: Event, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Serialise one event to a whole frame."""
    payload: bytes | memoryview
    match event:
        case Data(stream_id, data):
            payload = bytes(data)  # len() of a memoryview counts items, not bytes
            if len(payload) > limits.max_frame_size:
                raise ProtocolError(
                    "DATA payload exceeds max_frame_size", ErrorCode.FRAME_SIZE_ERROR
                )
            return data_header(_check_stream(stream_id), len(payload)) + payload
        case WindowUpdate(stream_id, increment):
            if not 1 <= increment <= MAX_WINDOW:
                raise ProtocolError(f"window increment {increment} out of range")
            return encode_window_update(_check_stream(stream_id), increment)
        case Fin(stream_id):
            return _frame(FrameType.FIN, _check_stream(stream_id), b"")
        case Reset(stream_id, code):
            return _frame(FrameType.RESET, _check_stream(stream_id), _U32.pack(code))
        case Ping(opaque):
            return _frame(FrameType.PING, 0, _U64.pack(opaque))
        case Pong(opaque):
            return _frame(FrameType.PONG, 0, _U64.pack(opaque))
        case GoAway(last, code, message):
            payload = _GOAWAY.pack(last, code) + message.encode()
            return _frame(FrameType.GOAWAY, 0, _check_control(payload, limits))
        case Open():
            obj: dict[str, Any] = {"kind": str(event.kind), "tunnel": event.tunnel}
            if event.visitor_host is not None:
                obj["visitor_host"] = event.visitor_host
            if event.visitor_port is not None:
                obj["visitor_port"] = event.visitor_port
            if event.trace:
                obj["trace"] = event.trace
            if event.own_connection:
                obj["own_connection"] = True
            return _frame(FrameType.OPEN, _check_stream(event.stream_id), _json(obj, limits))
        case Hello():
            obj = {
                "versions": list(event.versions),
                "client_id": event.client_id,
                "tunnels": [_tunnel_request_obj(t) for t in event.tunnels],
                "window": event.window,
                "max_frame": event.max_frame,
                "agent": event.agent,
            }
            if event.token is not None:
                obj["token"] = event.token
            return _frame(FrameType.HELLO, 0, _json(obj, limits))
        case Welcome():
            obj = {
                "version": event.version,
                "session_id": event.session_id,
                "tunnels": [_granted_obj(t) for t in event.tunnels],
                "window": event.window,
                "max_frame": event.max_frame,
                "ping_interval": event.ping_interval,
            }
            return _frame(FrameType.WELCOME, 0, _json(obj, limits))
        case Reject(code, message):
            return _frame(
                FrameType.REJECT, 0, _json({"code": str(code), "message": message}, limits)
            )
    raise TypeError(f"not a frame event: {event!r}")


def _frame(ftype: FrameType, stream_id: int, payload: bytes) -> bytes:
    return HEADER.pack(len(payload) << 8 | ftype, 0, stream_id) + payload


def _check_stream(stream_id: int) -> int:
    if not 1 <= stream_id <= MAX_STREAM_ID:
        raise ProtocolError(f"stream id {stream_id} out of range")
    return stream_id


def _check_control(payload: bytes, limits: Limits) -> bytes:
    if len(payload) > limits.max_control_size:
        raise ProtocolError("control payload exceeds max_control_size", ErrorCode.FRAME_SIZE_ERROR)
    return payload


def _json(obj: dict[str, Any], limits: Limits) -> bytes:
    return _check_control(json.dumps(obj, separators=(",", ":")).encode(), limits)


def _tunnel_request_obj(t: TunnelRequest) -> dict[str, Any]:
    obj: dict[str, Any] = {"name": t.name, "kind": str(t.kind)}
    if t.remote_port is not None:
        obj["remote_port"] = t.remote_port
    if t.hostnames:
        obj["hostnames"] = list(t.hostnames)
    if t.path is not None:
        obj["path"] = t.path
    if t.options:
        obj["options"] = t.options
    return obj


def _granted_obj(t: GrantedTunnel) -> dict[str, Any]:
    obj: dict[str, Any] = {"name": t.name, "kind": str(t.kind), "public_url": t.public_url}
    if t.remote_port is not None:
        obj["remote_port"] = t.remote_port
    if t.hostnames:
        obj["hostnames"] = list(t.hostnames)
    return obj


# --------------------------------------------------------------------------- decoding


class FrameDecoder:
    """Turns received bytes into events. One per connection and direction."""

    __slots__ = (
        "_broken",
        "_data_left",
        "_data_stream",
        "_limits",
        "_max_control",
        "_max_data",
        "_partial",
    )

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._max_data = limits.max_frame_size
        self._max_control = limits.max_control_size
        self._partial = bytearray()  # the start of a non-DATA frame (or header) cut by a read
        self._data_left = 0  # payload bytes of a cut DATA frame still to come
        self._data_stream = 0
        self._broken = False

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._partial)

    def feed(self, data: bytes) -> list[Event]:
        """Add received bytes and return their events. A DATA frame cut by the end of a read
        is delivered in pieces, as its bytes arrive (each piece a Data event)."""
        if self._broken:
            raise ProtocolError("decoder already failed")
        try:
            return self._feed(data)
        except ProtocolError:
            self._broken = True
            raise

    def _feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        view = memoryview(data)
        end_of_data = len(view)
        pos = 0
        if self._data_left:
            pos = min(self._data_left, end_of_data)
            self._data_left -= pos
            events.append(Data(self._data_stream, view[:pos], self._data_left))
            if self._data_left:
                return events
        if self._partial:
            pos = self._complete_partial(view, pos, events)
            if self._partial or self._data_left:
                return events
        unpack = HEADER.unpack_from
        while end_of_data - pos >= HEADER_SIZE:
            word, flags, stream_id = unpack(view, pos)
            length = word >> 8
            ftype = word & 0xFF
            start = pos + HEADER_SIZE
            end = start + length
            if ftype == _DATA and not flags and 0 < stream_id <= MAX_STREAM_ID:
                # the hot path, inlined: raw payload, no parsing
                if length > self._max_data:
                    raise _too_big("DATA", length, self._max_data)
                if end > end_of_data:
                    # cut by the end of the read: deliver what is here, stream the rest
                    if start < end_of_data:
                        events.append(Data(stream_id, view[start:end_of_data], end - end_of_data))
                    self._data_left = end - max(start, end_of_data)
                    self._data_stream = stream_id
                    return events
                events.append(Data(stream_id, view[start:end]))
            else:
                self._check_length(ftype, length)
                if end > end_of_data:
                    break
                events.append(self._parse(ftype, flags, stream_id, view[start:end]))
            pos = end
        if pos < end_of_data:
            self._partial += view[pos:]
        return events

    def _complete_partial(self, view: memoryview, pos: int, events: list[Event]) -> int:
        """Top up the cut frame from ``view[pos:]``; returns the new position in ``view``."""
        partial = self._partial
        if len(partial) < HEADER_SIZE:
            take = min(HEADER_SIZE - len(partial), len(view) - pos)
            partial += view[pos : pos + take]
            pos += take
            if len(partial) < HEADER_SIZE:
                return pos
        word, flags, stream_id = HEADER.unpack_from(partial)
        length: int = word >> 8
        ftype: int = word & 0xFF
        self._check_length(ftype, length)
        if (
            ftype == _DATA
            and not flags
            and 0 < stream_id <= MAX_STREAM_ID
            and len(partial) == HEADER_SIZE
        ):
            # a cut DATA header: stream its payload instead of buffering it
            partial.clear()
            take = min(length, len(view) - pos)
            if take or not length:
                events.append(Data(stream_id, view[pos : pos + take], length - take))
            self._data_left = length - take
            self._data_stream = stream_id
            return pos + take
        take = min(HEADER_SIZE + length - len(partial), len(view) - pos)
        partial += view[pos : pos + take]
        pos += take
        if len(partial) == HEADER_SIZE + length:
            payload = memoryview(bytes(partial[HEADER_SIZE:]))
            partial.clear()
            events.append(self._parse(ftype, flags, stream_id, payload))
        return pos

    def _check_length(self, ftype: int, length: int) -> None:
        limit = self._max_data if ftype == _DATA else self._max_control
        if length > limit:
            name = FrameType(ftype).name if ftype in _KNOWN_TYPES else f"type {ftype}"
            raise _too_big(name, length, limit)

    def _parse(self, ftype: int, flags: int, stream_id: int, payload: memoryview) -> Event:
        if ftype not in _KNOWN_TYPES:
            raise ProtocolError(f"unknown frame type {ftype}")
        kind = FrameType(ftype)
        if flags:
            raise ProtocolError(f"{kind.name} frame with unknown flags {flags:#x}")
        if kind in _SESSION_FRAMES:
            if stream_id != 0:
                raise ProtocolError(f"{kind.name} frame on stream {stream_id}, must be 0")
        elif not 0 < stream_id <= MAX_STREAM_ID:
            raise ProtocolError(f"{kind.name} frame on invalid stream id {stream_id}")
        return _PARSERS[kind](stream_id, payload)


_KNOWN_TYPES = frozenset(int(t) for t in FrameType)


def _too_big(name: str, length: int, limit: int) -> ProtocolError:
    return ProtocolError(
        f"{name} frame of {length} bytes exceeds limit {limit}", ErrorCode.FRAME_SIZE_ERROR
    )


def _fixed(payload: memoryview, size: int, name: str) -> None:
    if len(payload) != size:
        raise ProtocolError(
            f"{name} payload must be {size} bytes, got {len(payload)}", ErrorCode.FRAME_SIZE_ERROR
        )


def _parse_data(stream_id: int, payload: memoryview) -> Event:
    return Data(stream_id, payload)


def _parse_fin(stream_id: int, payload: memoryview) -> Event:
    _fixed(payload, 0, "FIN")
    return Fin(stream_id)


def _parse_reset(stream_id: int, payload: memoryview) -> Event:
    _fixed(payload, 4, "RESET")
    return Reset(stream_id, ErrorCode.parse(_U32.unpack(payload)[0]))


def _parse_window_update(stream_id: int, payload: memoryview) -> Event:
    _fixed(payload, 4, "WINDOW_UPDATE")
    increment = _U32.unpack(payload)[0]
    if not 1 <= increment <= MAX_WINDOW:
        raise ProtocolError(
            f"window increment {increment} out of range", ErrorCode.FLOW_CONTROL_ERROR
        )
    return WindowUpdate(stream_id, increment)


def _parse_ping(stream_id: int, payload: memoryview) -> Event:
    _fixed(payload, 8, "PING")
    return Ping(_U64.unpack(payload)[0])


def _parse_pong(stream_id: int, payload: memoryview) -> Event:
    _fixed(payload, 8, "PONG")
    return Pong(_U64.unpack(payload)[0])


def _parse_goaway(stream_id: int, payload: memoryview) -> Event:
    if len(payload) < _GOAWAY.size:
        raise ProtocolError("GOAWAY payload too short", ErrorCode.FRAME_SIZE_ERROR)
    last, code = _GOAWAY.unpack_from(payload)
    return GoAway(last, ErrorCode.parse(code), _text(payload[_GOAWAY.size :], "GOAWAY message"))


def _text(payload: memoryview, what: str) -> str:
    try:
        return str(payload, "utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} is not UTF-8") from exc


# ---- JSON control messages: every field is checked, so a hostile peer gets ProtocolError


_E = TypeVar("_E")


class _Obj:
    """Typed, checked access to one decoded JSON object."""

    __slots__ = ("_obj", "_what")

    def __init__(self, value: object, what: str) -> None:
        if not isinstance(value, dict):
            raise ProtocolError(f"{what} must be a JSON object")
        self._obj: dict[str, object] = value
        self._what = what

    def _get(self, key: str, default: object) -> object:
        return self._obj.get(key, default)

    def _fail(self, key: str, expected: str) -> ProtocolError:
        return ProtocolError(f"{self._what}.{key} must be {expected}")

    def text(self, key: str, default: str | None = None) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self._fail(key, "a string")
        return value

    def opt_text(self, key: str) -> str | None:
        value = self._get(key, None)
        if value is not None and not isinstance(value, str):
            raise self._fail(key, "a string")
        return value

    def integer(
        self, key: str, default: int | None = None, lo: int = 0, hi: int = MAX_WINDOW
    ) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self._fail(key, f"an integer within {lo}..{hi}")
        return value

    def opt_integer(self, key: str, lo: int = 0, hi: int = MAX_WINDOW) -> int | None:
        return None if self._get(key, None) is None else self.integer(key, lo=lo, hi=hi)

    def flag(self, key: str) -> bool:
        value = self._get(key, False)
        if not isinstance(value, bool):
            raise self._fail(key, "true or false")
        return value

    def number(self, key: str, default: float) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e9:
            raise self._fail(key, "a non-negative number")
        return float(value)

    def items(self, key: str) -> list[object]:
        value = self._get(key, [])
        if not isinstance(value, list):
            raise self._fail(key, "a list")
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        values = self.items(key)
        if not all(isinstance(v, str) for v in values):
            raise self._fail(key, "a list of strings")
        return tuple(values)  # type: ignore[arg-type]

    def text_map(self, key: str) -> dict[str, str]:
        value = self._get(key, {})
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self._fail(key, "an object of strings")
        return value

    def choice(self, key: str, factory: Callable[[str], _E], default: str | None = None) -> _E:
        try:
            return factory(self.text(key, default))
        except ValueError as exc:
            raise self._fail(key, "a known value") from exc


def _load(payload: memoryview, what: str) -> _Obj:
    text = _text(payload, what)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"{what} is not valid JSON") from exc
    if "\\ud" in text.lower() and not _encodable(value):
        # a JSON escape can smuggle in a lone surrogate, which no later .encode() survives
        raise ProtocolError(f"{what} contains an unpaired surrogate")
    return _Obj(value, what)


def _encodable(value: object) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


def _parse_open(stream_id: int, payload: memoryview) -> Event:
    obj = _load(payload, "OPEN")
    return Open(
        stream_id,
        kind=obj.choice("kind", TunnelKind),
        tunnel=obj.text("tunnel"),
        visitor_host=obj.opt_text("visitor_host"),
        visitor_port=obj.opt_integer("visitor_port", hi=65535),
        trace=obj.text_map("trace"),
        own_connection=obj.flag("own_connection"),
    )


def _parse_hello(stream_id: int, payload: memoryview) -> Event:
    obj = _load(payload, "HELLO")
    versions = obj.items("versions")
    if not versions or not all(type(v) is int and 0 < v < 1 << 16 for v in versions):
        raise ProtocolError("HELLO.versions must be a non-empty list of versions")
    return Hello(
        versions=tuple(versions),  # type: ignore[arg-type]
        client_id=obj.text("client_id"),
        tunnels=tuple(_tunnel_request(t) for t in obj.items("tunnels")),
        token=obj.opt_text("token"),
        window=obj.integer("window", 0),
        max_frame=obj.integer("max_frame", 0, hi=MAX_PAYLOAD),
        agent=obj.text("agent", ""),
    )


def _tunnel_request(value: object) -> TunnelRequest:
    obj = _Obj(value, "HELLO.tunnels[]")
    return TunnelRequest(
        name=obj.text("name"),
        kind=obj.choice("kind", TunnelKind, "tcp"),
        remote_port=obj.opt_integer("remote_port", hi=65535),
        hostnames=obj.texts("hostnames"),
        path=obj.opt_text("path"),
        options=obj.text_map("options"),
    )


def _parse_welcome(stream_id: int, payload: memoryview) -> Event:
    obj = _load(payload, "WELCOME")
    return Welcome(
        version=obj.integer("version", hi=65535),
        session_id=obj.text("session_id"),
        tunnels=tuple(_granted(t) for t in obj.items("tunnels")),
        window=obj.integer("window", 0),
        max_frame=obj.integer("max_frame", 0, hi=MAX_PAYLOAD),
        ping_interval=obj.number("ping_interval", 0.0),
    )


def _granted(value: object) -> GrantedTunnel:
    obj = _Obj(value, "WELCOME.tunnels[]")
    return GrantedTunnel(
        name=obj.text("name"),
        kind=obj.choice("kind", TunnelKind),
        public_url=obj.text("public_url"),
        remote_port=obj.opt_integer("remote_port", hi=65535),
        hostnames=obj.texts("hostnames"),
    )


def _parse_reject(stream_id: int, payload: memoryview) -> Event:
    obj = _load(payload, "REJECT")
    return Reject(code=obj.choice("code", RejectCode), message=obj.text("message", ""))


_PARSERS: dict[FrameType, Callable[[int, memoryview], Event]] = {
    FrameType.HELLO: _parse_hello,
    FrameType.WELCOME: _parse_welcome,
    FrameType.REJECT: _parse_reject,
    FrameType.OPEN: _parse_open,
    FrameType.DATA: _parse_data,
    FrameType.FIN: _parse_fin,
    FrameType.RESET: _parse_reset,
    FrameType.WINDOW_UPDATE: _parse_window_update,
    FrameType.PING: _parse_ping,
    FrameType.PONG: _parse_pong,
    FrameType.GOAWAY: _parse_goaway,
}
