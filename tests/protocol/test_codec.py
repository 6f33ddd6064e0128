"""Tests of the sans-IO frame codec: round trips, chunking, rejections and encoder checks."""

from __future__ import annotations

import enum
import itertools
import json
import struct
from array import array
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferrotunnel.protocol import (
    DEFAULT_LIMITS,
    HEADER_SIZE,
    MAX_PAYLOAD,
    MAX_STREAM_ID,
    MAX_WINDOW,
    Data,
    ErrorCode,
    Event,
    Fin,
    FrameDecoder,
    FrameType,
    GoAway,
    GrantedTunnel,
    Hello,
    Limits,
    Open,
    Ping,
    Pong,
    ProtocolError,
    Reject,
    RejectCode,
    Reset,
    TunnelKind,
    TunnelRequest,
    Welcome,
    WindowUpdate,
    data_header,
    encode,
    encode_window_update,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

PROPERTY = settings(max_examples=300, deadline=None)
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
SESSION_TYPES = (
    FrameType.HELLO,
    FrameType.WELCOME,
    FrameType.REJECT,
    FrameType.PING,
    FrameType.PONG,
    FrameType.GOAWAY,
)
STREAM_TYPES = (
    FrameType.OPEN,
    FrameType.DATA,
    FrameType.FIN,
    FrameType.RESET,
    FrameType.WINDOW_UPDATE,
)
JSON_TYPES = (FrameType.HELLO, FrameType.WELCOME, FrameType.REJECT, FrameType.OPEN)


# ---------------------------------------- helpers


def case_id(value: object) -> str:
    """A readable pytest id: enum members by name, everything else by str()."""
    return value.name if isinstance(value, enum.Enum) else str(value)


def header(ftype: int, length: int, stream_id: int = 0, flags: int = 0) -> bytes:
    """A frame header built by hand, independent of the codec's own packing."""
    return length.to_bytes(3, "big") + bytes([ftype, flags]) + stream_id.to_bytes(4, "big")


def raw_frame(ftype: int, payload: bytes, stream_id: int = 0, flags: int = 0) -> bytes:
    return header(ftype, len(payload), stream_id, flags) + payload


def json_frame(ftype: FrameType, obj: object, stream_id: int | None = None) -> bytes:
    sid = (1 if ftype is FrameType.OPEN else 0) if stream_id is None else stream_id
    return raw_frame(ftype, json.dumps(obj).encode(), sid)


def with_flags(frame: bytes, flags: int) -> bytes:
    return frame[:4] + bytes([flags]) + frame[5:]


def with_stream(frame: bytes, stream_id: int) -> bytes:
    return frame[:5] + stream_id.to_bytes(4, "big") + frame[HEADER_SIZE:]


def normalize(events: Iterable[Event]) -> list[Event]:
    """DATA payloads come back as memoryviews, and a DATA frame cut by the end of a read comes
    back in pieces: join consecutive pieces of one stream, as bytes, for comparison."""
    out: list[Event] = []
    for e in events:
        if isinstance(e, Data):
            last = out[-1] if out else None
            if isinstance(last, Data) and last.stream_id == e.stream_id:
                out[-1] = Data(e.stream_id, bytes(last.data) + bytes(e.data))
                continue
            e = Data(e.stream_id, bytes(e.data))
        out.append(e)
    return out


def feed_chunks(chunks: Iterable[bytes], limits: Limits = DEFAULT_LIMITS) -> list[Event]:
    """Feed every chunk to one decoder; the stream must end on a frame boundary."""
    decoder = FrameDecoder(limits)
    events: list[Event] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    assert decoder.buffered == 0
    return normalize(events)


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# Frames whose start is left dangling after the frame under test in tr().
NEXT_EVENTS: tuple[Event, ...] = (
    Data(9, b"next frame"),
    Open(11, TunnelKind.HTTP, "next", trace={"k": "v"}),
)


def tr(event: Event) -> None:
    """Round-trip ``event``: fed whole, byte by byte, and followed by a partial frame."""
    want = normalize([event])
    wire = encode(event)

    # (a) fed whole
    decoder = FrameDecoder()
    assert normalize(decoder.feed(wire)) == want
    assert decoder.buffered == 0

    # (b) one byte at a time: nothing comes out until the last byte — except that a DATA
    # frame's payload streams out as it arrives (only its header is ever buffered)
    decoder = FrameDecoder()
    pieces: list[Event] = []
    streamed = isinstance(event, Data)
    for i in range(len(wire) - 1):
        out = decoder.feed(wire[i : i + 1])
        if streamed:
            assert decoder.buffered == (i + 1 if i + 1 < HEADER_SIZE else 0)
            pieces += out
        else:
            assert out == []
            assert decoder.buffered == i + 1
    assert normalize(pieces + decoder.feed(wire[-1:])) == want
    assert decoder.buffered == 0

    # (c) fed whole with the start of another frame behind it
    for next_event in NEXT_EVENTS:
        next_wire = encode(next_event)
        for cut in (1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 1, len(next_wire) - 1):
            decoder = FrameDecoder()
            first = normalize(decoder.feed(wire + next_wire[:cut]))
            assert first[: len(want)] == want
            streamed = isinstance(next_event, Data) and cut >= HEADER_SIZE
            assert decoder.buffered == (0 if streamed else cut)
            rest = decoder.feed(next_wire[cut:])
            assert normalize(first[len(want) :] + rest) == normalize([next_event])
            assert decoder.buffered == 0


def assert_rejected(
    wire: bytes,
    code: ErrorCode = ErrorCode.PROTOCOL_ERROR,
    limits: Limits = DEFAULT_LIMITS,
) -> None:
    """``wire`` fails with ``code`` fed whole, and fed byte by byte fails on its last byte."""
    decoder = FrameDecoder(limits)
    with pytest.raises(ProtocolError) as info:
        decoder.feed(wire)
    assert info.value.code == code
    with pytest.raises(ProtocolError):  # the decoder stays broken
        decoder.feed(b"")

    decoder = FrameDecoder(limits)
    for i in range(len(wire) - 1):
        decoder.feed(wire[i : i + 1])
    with pytest.raises(ProtocolError) as info:
        decoder.feed(wire[-1:])
    assert info.value.code == code


# ---------------------------------------- sample events

HELLO_FULL = Hello(
    versions=(1, 2, 65535),
    client_id="client-ü",
    tunnels=(
        TunnelRequest("ssh", TunnelKind.TCP, remote_port=2222),
        TunnelRequest(
            "web",
            TunnelKind.HTTP,
            hostnames=("a.example", "b.example"),
            path="/api",
            options={"compress": "gzip", "ü": "✓"},
        ),
        TunnelRequest("any-port", remote_port=0),
    ),
    token="s3cret",
    window=MAX_WINDOW,
    max_frame=MAX_PAYLOAD,
    agent="ferrotunnel/0.1",
)
WELCOME_FULL = Welcome(
    version=1,
    session_id="sess-42",
    tunnels=(
        GrantedTunnel("ssh", TunnelKind.TCP, "tcp://t.example:2222", remote_port=2222),
        GrantedTunnel("web", TunnelKind.HTTP, "https://a.example", hostnames=("a.example",)),
    ),
    window=1 << 20,
    max_frame=1 << 16,
    ping_interval=15.5,
)
OPEN_FULL = Open(
    MAX_STREAM_ID,
    TunnelKind.HTTP,
    "web",
    visitor_host="203.0.113.9",
    visitor_port=54321,
    trace={"traceparent": "00-4bf92f3577b34da6-00f067aa0ba902b7-01", "x-request-id": "r1"},
    own_connection=True,
)

ROUND_TRIP_EVENTS: list[Event] = [
    Hello(versions=(1,), client_id="c1"),
    Hello(versions=(1,), client_id="c1", token=""),
    HELLO_FULL,
    Welcome(version=1, session_id="s"),
    WELCOME_FULL,
    Open(1, TunnelKind.TCP, "ssh"),
    OPEN_FULL,
    Data(1, b""),
    Data(3, b"hello"),
    Data(MAX_STREAM_ID, bytes(range(256)) * 4),
    Fin(5),
    Fin(MAX_STREAM_ID),
    Reset(7),
    Reset(7, ErrorCode.NO_ERROR),
    Reset(9, 4242),
    Reset(9, U32_MAX),
    WindowUpdate(1, 1),
    WindowUpdate(MAX_STREAM_ID, MAX_WINDOW),
    Ping(0),
    Ping(U64_MAX),
    Pong(0x0123456789ABCDEF),
    GoAway(0),
    GoAway(41, ErrorCode.SHUTDOWN, "restarting — до свидания 👋"),
    GoAway(U32_MAX, 4242, ""),
]

#: One valid event per frame type (for flag / stream id mutations).
ONE_PER_TYPE: dict[FrameType, Event] = {
    FrameType.HELLO: HELLO_FULL,
    FrameType.WELCOME: WELCOME_FULL,
    FrameType.REJECT: Reject(RejectCode.AUTH_FAILED, "bad token"),
    FrameType.OPEN: Open(1, TunnelKind.TCP, "ssh"),
    FrameType.DATA: Data(1, b"abc"),
    FrameType.FIN: Fin(1),
    FrameType.RESET: Reset(1),
    FrameType.WINDOW_UPDATE: WindowUpdate(1, 100),
    FrameType.PING: Ping(1),
    FrameType.PONG: Pong(1),
    FrameType.GOAWAY: GoAway(0, ErrorCode.NO_ERROR, "bye"),
}

#: Minimal valid JSON bodies of the control messages.
VALID_OBJECTS: dict[FrameType, dict[str, Any]] = {
    FrameType.HELLO: {"versions": [1], "client_id": "c"},
    FrameType.WELCOME: {"version": 1, "session_id": "s"},
    FrameType.REJECT: {"code": "auth_failed", "message": "m"},
    FrameType.OPEN: {"kind": "tcp", "tunnel": "t"},
}


# ---------------------------------------- 1. round trips per frame type


@pytest.mark.parametrize("event", ROUND_TRIP_EVENTS, ids=lambda e: type(e).__name__)
def test_round_trip(event: Event) -> None:
    tr(event)


@pytest.mark.parametrize("code", list(RejectCode))
def test_round_trip_reject(code: RejectCode) -> None:
    tr(Reject(code, f"refused: {code} ✗"))
    tr(Reject(code, ""))


def test_every_frame_type_is_covered() -> None:
    wire_types = {encode(e)[3] for e in ROUND_TRIP_EVENTS} | {FrameType.REJECT}
    assert wire_types == set(FrameType)
    assert {encode(e)[3] for e in ONE_PER_TYPE.values()} == set(ONE_PER_TYPE) == set(FrameType)


def test_codes_decode_to_enum_members_or_stay_ints() -> None:
    (known,) = FrameDecoder().feed(encode(Reset(1, ErrorCode.TIMEOUT)))
    (unknown,) = FrameDecoder().feed(encode(Reset(1, 4242)))
    (goaway,) = FrameDecoder().feed(encode(GoAway(3, 999, "x")))
    assert isinstance(known, Reset)
    assert isinstance(unknown, Reset)
    assert isinstance(goaway, GoAway)
    assert known.code is ErrorCode.TIMEOUT
    assert type(unknown.code) is int
    assert unknown.code == 4242
    assert type(goaway.code) is int
    assert goaway.code == 999


def test_decoded_json_fields_have_exact_types() -> None:
    (hello,) = FrameDecoder().feed(encode(HELLO_FULL))
    assert isinstance(hello, Hello)
    assert isinstance(hello.versions, tuple)
    assert isinstance(hello.tunnels, tuple)
    assert all(type(t.kind) is TunnelKind for t in hello.tunnels)
    assert isinstance(hello.tunnels[1].hostnames, tuple)
    (reject,) = FrameDecoder().feed(encode(Reject(RejectCode.NAME_TAKEN, "")))
    assert isinstance(reject, Reject)
    assert reject.code is RejectCode.NAME_TAKEN


def test_missing_optional_json_fields_take_defaults_and_unknown_keys_are_ignored() -> None:
    hello = json_frame(FrameType.HELLO, {"versions": [1], "client_id": "c", "future": {"x": 1}})
    tunnel = {"name": "t"}  # kind defaults to tcp in a request
    hello_t = json_frame(FrameType.HELLO, {"versions": [1], "client_id": "c", "tunnels": [tunnel]})
    welcome = json_frame(FrameType.WELCOME, {"version": 1, "session_id": "s", "ping_interval": 5})
    reject = json_frame(FrameType.REJECT, {"code": "server_busy"})
    assert feed_chunks([hello, hello_t, welcome, reject]) == [
        Hello(versions=(1,), client_id="c"),
        Hello(versions=(1,), client_id="c", tunnels=(TunnelRequest("t"),)),
        Welcome(version=1, session_id="s", ping_interval=5.0),
        Reject(RejectCode.SERVER_BUSY, ""),
    ]


def test_reject_code_finality() -> None:
    retryable = {RejectCode.SERVER_BUSY, RejectCode.RATE_LIMITED}
    for code in RejectCode:
        assert code.is_final is (code not in retryable)


def test_feeding_nothing_yields_nothing() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"") == []
    assert decoder.buffered == 0
    wire = encode(Ping(7))
    assert decoder.feed(wire[:3]) == []
    assert decoder.feed(b"") == []
    assert decoder.buffered == 3
    assert decoder.feed(wire[3:]) == [Ping(7)]


# ---------------------------------------- 2. every two-way split of a stream

STREAM_EVENTS: list[Event] = [
    HELLO_FULL,
    WELCOME_FULL,
    Open(1, TunnelKind.TCP, "ssh", visitor_host="::1", visitor_port=1),
    Data(1, b"x" * 40),
    Data(1, b""),
    WindowUpdate(1, 40),
    Ping(12345),
    Pong(12345),
    Fin(1),
    Reset(3, ErrorCode.REFUSED_STREAM),
    Reject(RejectCode.RATE_LIMITED, "slow down"),
    GoAway(1, ErrorCode.NO_ERROR, "done"),
]


def test_concatenation_split_at_every_point() -> None:
    wire = b"".join(encode(e) for e in STREAM_EVENTS)
    want = normalize(STREAM_EVENTS)
    assert feed_chunks([wire]) == want
    for cut in range(len(wire) + 1):
        assert feed_chunks([wire[:cut], wire[cut:]]) == want, f"cut at {cut}"


def test_byte_at_a_time_stream() -> None:
    wire = b"".join(encode(e) for e in STREAM_EVENTS)
    assert feed_chunks(wire[i : i + 1] for i in range(len(wire))) == normalize(STREAM_EVENTS)


# ---------------------------------------- 3. property: arbitrary events round-trip

stream_ids = st.integers(1, MAX_STREAM_ID)
error_codes = st.sampled_from(ErrorCode) | st.integers(0, U32_MAX)
texts = st.text(max_size=20)
text_maps = st.dictionaries(texts, texts, max_size=3)
ports = st.none() | st.integers(0, 65535)
kinds = st.sampled_from(TunnelKind)
hostnames = st.lists(texts, max_size=3).map(tuple)
windows = st.integers(0, MAX_WINDOW)
max_frames = st.integers(0, MAX_PAYLOAD)

tunnel_requests = st.builds(
    TunnelRequest,
    name=texts,
    kind=kinds,
    remote_port=ports,
    hostnames=hostnames,
    path=st.none() | texts,
    options=text_maps,
)
granted_tunnels = st.builds(
    GrantedTunnel, name=texts, kind=kinds, public_url=texts, remote_port=ports, hostnames=hostnames
)
events: st.SearchStrategy[Event] = st.one_of(
    st.builds(
        Hello,
        versions=st.lists(st.integers(1, 65535), min_size=1, max_size=4).map(tuple),
        client_id=texts,
        tunnels=st.lists(tunnel_requests, max_size=3).map(tuple),
        token=st.none() | texts,
        window=windows,
        max_frame=max_frames,
        agent=texts,
    ),
    st.builds(
        Welcome,
        version=st.integers(0, 65535),
        session_id=texts,
        tunnels=st.lists(granted_tunnels, max_size=3).map(tuple),
        window=windows,
        max_frame=max_frames,
        ping_interval=st.floats(0, 1e9, exclude_max=True),
    ),
    st.builds(Reject, code=st.sampled_from(RejectCode), message=texts),
    st.builds(
        Open,
        stream_id=stream_ids,
        kind=kinds,
        tunnel=texts,
        visitor_host=st.none() | texts,
        visitor_port=ports,
        trace=text_maps,
        own_connection=st.booleans(),
    ),
    st.builds(Data, stream_id=stream_ids, data=st.binary(max_size=300)),
    st.builds(Fin, stream_id=stream_ids),
    st.builds(Reset, stream_id=stream_ids, code=error_codes),
    st.builds(WindowUpdate, stream_id=stream_ids, increment=st.integers(1, MAX_WINDOW)),
    st.builds(Ping, opaque=st.integers(0, U64_MAX)),
    st.builds(Pong, opaque=st.integers(0, U64_MAX)),
    st.builds(GoAway, last_stream_id=st.integers(0, U32_MAX), code=error_codes, message=texts),
)


def cuts_for(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(data)), max_size=12)


@PROPERTY
@given(st.lists(events, max_size=8), st.data())
def test_property_round_trip_in_random_chunks(evs: list[Event], data: st.DataObject) -> None:
    wire = b"".join(encode(e) for e in evs)
    chunks = split_at(wire, data.draw(cuts_for(wire), label="cuts"))
    assert feed_chunks(chunks) == normalize(evs)


@PROPERTY
@given(events)
def test_property_single_event_round_trip(event: Event) -> None:
    tr(event)


# ---------------------------------------- 4. property: garbage only ever raises ProtocolError


def feed_garbage(wire: bytes, cuts: Sequence[int], limits: Limits = DEFAULT_LIMITS) -> list[Event]:
    """Feed ``wire`` in chunks; on ProtocolError, check the decoder stays broken."""
    decoder = FrameDecoder(limits)
    out: list[Event] = []
    error: ProtocolError | None = None
    try:
        for chunk in split_at(wire, cuts):
            out += decoder.feed(chunk)
    except ProtocolError as exc:
        error = exc
    if error is not None:
        assert isinstance(error.code, ErrorCode)
        for after in (b"", encode(Ping(1)), wire):
            with pytest.raises(ProtocolError):
                decoder.feed(after)
    return out


@PROPERTY
@given(st.binary(max_size=2000), st.data())
def test_property_random_bytes(wire: bytes, data: st.DataObject) -> None:
    feed_garbage(wire, data.draw(cuts_for(wire), label="cuts"))


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from([0, 1, -1, 65535, 65536, 70000, MAX_WINDOW + 1, "tcp", "http", "udp"])
    | st.sampled_from([str(c) for c in RejectCode])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
#: Keys each JSON message reads; a valid object with a few of them replaced by junk.
MESSAGE_KEYS: dict[FrameType, tuple[str, ...]] = {
    FrameType.HELLO: ("versions", "client_id", "tunnels", "token", "window", "max_frame", "agent"),
    FrameType.WELCOME: ("version", "session_id", "tunnels", "window", "max_frame", "ping_interval"),
    FrameType.REJECT: ("code", "message"),
    FrameType.OPEN: ("kind", "tunnel", "visitor_host", "visitor_port", "trace", "own_connection"),
}
TUNNEL_KEYS = ("name", "kind", "remote_port", "hostnames", "path", "options", "public_url")
VALID_TUNNEL = {"name": "t", "kind": "http", "public_url": "https://t.example"}


def corrupted(valid: dict[str, Any], keys: Sequence[str]) -> st.SearchStrategy[dict[str, Any]]:
    junk = st.dictionaries(st.sampled_from(keys), json_values, max_size=2)
    return junk.map(lambda j: {**valid, **j})


tunnel_objects = corrupted(VALID_TUNNEL, TUNNEL_KEYS)


@st.composite
def message_objects(draw: st.DrawFn, ftype: FrameType) -> dict[str, Any]:
    obj = draw(corrupted(VALID_OBJECTS[ftype], MESSAGE_KEYS[ftype]))
    if ftype in (FrameType.HELLO, FrameType.WELCOME) and draw(st.booleans()):
        obj["tunnels"] = draw(st.lists(tunnel_objects, max_size=3))
    return obj


FIXED_SIZES = {FrameType.FIN: 0, FrameType.RESET: 4, FrameType.WINDOW_UPDATE: 4, FrameType.PING: 8,
               FrameType.PONG: 8}  # fmt: skip


@st.composite
def plausible_frames(draw: st.DrawFn) -> bytes:
    """A well-formed header (known type, no flags, legal stream id) with a random payload."""
    ftype = draw(st.sampled_from(FrameType))
    stream_id = 0 if ftype in SESSION_TYPES else draw(stream_ids)
    if ftype in JSON_TYPES:
        payload = draw(
            st.binary(max_size=200)
            | json_values.map(lambda v: json.dumps(v).encode())
            | message_objects(ftype).map(lambda v: json.dumps(v).encode())
        )
    else:
        size = FIXED_SIZES.get(ftype, 8)  # GOAWAY: at least 8
        payload = draw(st.binary(max_size=20) | st.binary(min_size=size, max_size=size))
    return raw_frame(ftype, payload, stream_id)


@PROPERTY
@given(st.lists(plausible_frames(), min_size=1, max_size=4), st.binary(max_size=12), st.data())
def test_property_plausible_frames(frames: list[bytes], tail: bytes, data: st.DataObject) -> None:
    wire = b"".join(frames) + tail
    got = feed_garbage(wire, data.draw(cuts_for(wire), label="cuts"))
    # whatever the decoder accepted must survive a re-encode unchanged
    for event in got:
        (again,) = FrameDecoder().feed(encode(event))
        assert normalize([again]) == normalize([event])


@PROPERTY
@given(st.binary(max_size=64), st.data())
def test_property_small_limits(wire: bytes, data: st.DataObject) -> None:
    feed_garbage(wire, data.draw(cuts_for(wire), label="cuts"), Limits(1, 1))


# ---------------------------------------- 5. rejections: framing


@pytest.mark.parametrize("ftype", [0, 12, 99, 255])
def test_unknown_frame_type(ftype: int) -> None:
    assert_rejected(raw_frame(ftype, b""))
    assert_rejected(raw_frame(ftype, b"abc", stream_id=1))


@pytest.mark.parametrize("flags", [0x01, 0x80, 0xFF])
@pytest.mark.parametrize("ftype", list(FrameType), ids=case_id)
def test_nonzero_flags(ftype: FrameType, flags: int) -> None:
    assert_rejected(with_flags(encode(ONE_PER_TYPE[ftype]), flags))


@pytest.mark.parametrize("stream_id", [1, MAX_STREAM_ID, MAX_STREAM_ID + 1, U32_MAX])
@pytest.mark.parametrize("ftype", SESSION_TYPES, ids=case_id)
def test_session_frame_on_a_stream(ftype: FrameType, stream_id: int) -> None:
    assert_rejected(with_stream(encode(ONE_PER_TYPE[ftype]), stream_id))


@pytest.mark.parametrize("stream_id", [0, MAX_STREAM_ID + 1, U32_MAX])
@pytest.mark.parametrize("ftype", STREAM_TYPES, ids=case_id)
def test_stream_frame_on_invalid_stream(ftype: FrameType, stream_id: int) -> None:
    assert_rejected(with_stream(encode(ONE_PER_TYPE[ftype]), stream_id))


@pytest.mark.parametrize("stream_id", [0, 1, MAX_STREAM_ID + 1])
def test_oversized_data_rejected_from_header_alone(stream_id: int) -> None:
    too_big = header(FrameType.DATA, DEFAULT_LIMITS.max_frame_size + 1, stream_id)
    assert_rejected(too_big, ErrorCode.FRAME_SIZE_ERROR)
    assert_rejected(header(FrameType.DATA, MAX_PAYLOAD, stream_id), ErrorCode.FRAME_SIZE_ERROR)
    # also when the header arrives behind a complete frame, or completes a partial one
    assert_rejected(encode(Ping(1)) + too_big, ErrorCode.FRAME_SIZE_ERROR)
    decoder = FrameDecoder()
    assert decoder.feed(encode(Ping(1)) + too_big[:4]) == [Ping(1)]
    with pytest.raises(ProtocolError) as info:
        decoder.feed(too_big[4:])
    assert info.value.code == ErrorCode.FRAME_SIZE_ERROR


def test_data_size_limit_is_inclusive() -> None:
    limits = Limits(max_frame_size=16, max_control_size=16)
    ok = encode(Data(1, b"x" * 16), limits)
    assert feed_chunks([ok], limits) == [Data(1, b"x" * 16)]
    assert_rejected(header(FrameType.DATA, 17, 1), ErrorCode.FRAME_SIZE_ERROR, limits)
    big = b"y" * DEFAULT_LIMITS.max_frame_size  # the default limit itself is accepted
    assert feed_chunks([encode(Data(1, big))]) == [Data(1, big)]


@pytest.mark.parametrize("ftype", [*SESSION_TYPES, FrameType.OPEN, 99], ids=case_id)
def test_oversized_control_frame_rejected_from_header_alone(ftype: int) -> None:
    stream_id = 1 if ftype == FrameType.OPEN else 0
    too_big = header(ftype, DEFAULT_LIMITS.max_control_size + 1, stream_id)
    assert_rejected(too_big, ErrorCode.FRAME_SIZE_ERROR)
    # a control frame is bounded by max_control_size even when DATA may be bigger
    limits = Limits(max_frame_size=1000, max_control_size=10)
    assert_rejected(header(ftype, 11, stream_id), ErrorCode.FRAME_SIZE_ERROR, limits)


@pytest.mark.parametrize(
    ("ftype", "size"),
    [
        (FrameType.FIN, 1),
        (FrameType.FIN, 4),
        (FrameType.RESET, 0),
        (FrameType.RESET, 3),
        (FrameType.RESET, 5),
        (FrameType.WINDOW_UPDATE, 3),
        (FrameType.WINDOW_UPDATE, 8),
        (FrameType.PING, 0),
        (FrameType.PING, 7),
        (FrameType.PING, 9),
        (FrameType.PONG, 4),
        (FrameType.PONG, 16),
        (FrameType.GOAWAY, 0),
        (FrameType.GOAWAY, 7),
    ],
    ids=case_id,
)
def test_wrong_fixed_size(ftype: FrameType, size: int) -> None:
    stream_id = 0 if ftype in SESSION_TYPES else 1
    assert_rejected(raw_frame(ftype, b"\x01" * size, stream_id), ErrorCode.FRAME_SIZE_ERROR)


@pytest.mark.parametrize("increment", [0, MAX_WINDOW + 1, U32_MAX])
def test_window_update_increment_out_of_range(increment: int) -> None:
    wire = raw_frame(FrameType.WINDOW_UPDATE, increment.to_bytes(4, "big"), 1)
    assert_rejected(wire, ErrorCode.FLOW_CONTROL_ERROR)


def test_goaway_message_must_be_utf8() -> None:
    assert_rejected(raw_frame(FrameType.GOAWAY, bytes(8) + b"\xff\xfe"))
    assert_rejected(raw_frame(FrameType.GOAWAY, bytes(8) + b"\xed\xa0\x80"))  # a surrogate
    assert feed_chunks([raw_frame(FrameType.GOAWAY, bytes(8))]) == [GoAway(0)]


# ---------------------------------------- 5. rejections: JSON control messages


@pytest.mark.parametrize("ftype", JSON_TYPES, ids=case_id)
def test_valid_base_objects_decode(ftype: FrameType) -> None:
    (event,) = feed_chunks([json_frame(ftype, VALID_OBJECTS[ftype])])
    assert encode(event)[3] == ftype


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff",
        b'{"client_id": "\xc3"}',
        b"\xed\xa0\x80",  # an encoded surrogate is not UTF-8
        b"{",
        b"{'a': 1}",
        b'{"a": 1} x',
        b"[]",
        b"1",
        b'"text"',
        b"null",
        b"true",
        b"NaN",
        b"[" * 60_000,
        b'{"a":' * 12_000,
        b'{"versions": [' + b"9" * 5000 + b"]}",  # beyond int()'s digit limit
    ],
    ids=lambda p: repr(p[:20]),
)
@pytest.mark.parametrize("ftype", JSON_TYPES, ids=case_id)
def test_json_payload_not_an_object(ftype: FrameType, payload: bytes) -> None:
    stream_id = 1 if ftype is FrameType.OPEN else 0
    wire = raw_frame(ftype, payload, stream_id)
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError) as info:
        decoder.feed(wire)
    assert info.value.code == ErrorCode.PROTOCOL_ERROR


def test_deep_nesting_beyond_default_control_limit() -> None:
    deep = raw_frame(FrameType.HELLO, b"[" * 100_000)
    with pytest.raises(ProtocolError) as info:  # the default limit stops it at the header
        FrameDecoder().feed(deep)
    assert info.value.code == ErrorCode.FRAME_SIZE_ERROR
    limits = Limits(max_control_size=200_000)
    for payload in (b"[" * 100_000, b'{"a":' * 40_000, b"[" * 100_000 + b"]" * 100_000):
        with pytest.raises(ProtocolError) as info:  # a parse error, not RecursionError
            FrameDecoder(limits).feed(raw_frame(FrameType.HELLO, payload))
        assert info.value.code == ErrorCode.PROTOCOL_ERROR


BAD_TUNNELS: list[Any] = [
    {},
    [1],
    ["ssh"],
    [{"kind": "tcp"}],
    [{"name": 1}],
    [{"name": "a", "kind": "udp"}],
    [{"name": "a", "kind": 1}],
    [{"name": "a", "remote_port": 70000}],
    [{"name": "a", "remote_port": -1}],
    [{"name": "a", "remote_port": 80.0}],
    [{"name": "a", "remote_port": True}],
    [{"name": "a", "hostnames": "a.example"}],
    [{"name": "a", "hostnames": [1]}],
    [{"name": "a", "path": 1}],
    [{"name": "a", "options": []}],
    [{"name": "a", "options": {"k": 1}}],
]
BAD_FIELDS: list[tuple[FrameType, dict[str, Any]]] = [
    (FrameType.HELLO, {"versions": []}),
    (FrameType.HELLO, {"versions": ["1"]}),
    (FrameType.HELLO, {"versions": [True]}),
    (FrameType.HELLO, {"versions": [1.0]}),
    (FrameType.HELLO, {"versions": [0]}),
    (FrameType.HELLO, {"versions": [65536]}),
    (FrameType.HELLO, {"versions": 1}),
    (FrameType.HELLO, {"versions": None}),
    (FrameType.HELLO, {"client_id": 5}),
    (FrameType.HELLO, {"client_id": None}),
    (FrameType.HELLO, {"token": 5}),
    (FrameType.HELLO, {"window": -1}),
    (FrameType.HELLO, {"window": MAX_WINDOW + 1}),
    (FrameType.HELLO, {"window": "1"}),
    (FrameType.HELLO, {"window": False}),
    (FrameType.HELLO, {"max_frame": MAX_PAYLOAD + 1}),
    (FrameType.HELLO, {"agent": None}),
    *[(FrameType.HELLO, {"tunnels": t}) for t in BAD_TUNNELS],
    (FrameType.WELCOME, {"version": "1"}),
    (FrameType.WELCOME, {"version": 65536}),
    (FrameType.WELCOME, {"version": -1}),
    (FrameType.WELCOME, {"session_id": 1}),
    (FrameType.WELCOME, {"window": -1}),
    (FrameType.WELCOME, {"max_frame": 1.5}),
    (FrameType.WELCOME, {"ping_interval": float("nan")}),
    (FrameType.WELCOME, {"ping_interval": float("inf")}),
    (FrameType.WELCOME, {"ping_interval": -1}),
    (FrameType.WELCOME, {"ping_interval": 1e9}),
    (FrameType.WELCOME, {"ping_interval": "5"}),
    (FrameType.WELCOME, {"ping_interval": True}),
    (FrameType.WELCOME, {"tunnels": [{"name": "a", "kind": "tcp"}]}),  # no public_url
    (FrameType.WELCOME, {"tunnels": [{"name": "a", "public_url": "u"}]}),  # no kind
    (FrameType.WELCOME, {"tunnels": [{"name": "a", "kind": "x", "public_url": "u"}]}),
    (FrameType.WELCOME, {"tunnels": [{"name": "a", "kind": "tcp", "public_url": 1}]}),
    (
        FrameType.WELCOME,
        {"tunnels": [{"name": "a", "kind": "tcp", "public_url": "u", "remote_port": 70000}]},
    ),
    (FrameType.WELCOME, {"tunnels": "x"}),
    (FrameType.REJECT, {"code": "nope"}),
    (FrameType.REJECT, {"code": 1}),
    (FrameType.REJECT, {"code": None}),
    (FrameType.REJECT, {"code": "AUTH_FAILED"}),
    (FrameType.REJECT, {"message": 1}),
    (FrameType.OPEN, {"kind": "udp"}),
    (FrameType.OPEN, {"kind": None}),
    (FrameType.OPEN, {"tunnel": 1}),
    (FrameType.OPEN, {"visitor_host": 1}),
    (FrameType.OPEN, {"visitor_port": 70000}),
    (FrameType.OPEN, {"visitor_port": -1}),
    (FrameType.OPEN, {"visitor_port": "80"}),
    (FrameType.OPEN, {"trace": {"traceparent": 1}}),
    (FrameType.OPEN, {"trace": {"a": None}}),
    (FrameType.OPEN, {"own_connection": 1}),
    (FrameType.OPEN, {"own_connection": "true"}),
    (FrameType.OPEN, {"trace": {"a": ["b"]}}),
    (FrameType.OPEN, {"trace": ["a"]}),
    (FrameType.OPEN, {"trace": "a=b"}),
]
MISSING_FIELDS = [
    (FrameType.HELLO, "versions"),
    (FrameType.HELLO, "client_id"),
    (FrameType.WELCOME, "version"),
    (FrameType.WELCOME, "session_id"),
    (FrameType.REJECT, "code"),
    (FrameType.OPEN, "kind"),
    (FrameType.OPEN, "tunnel"),
]


@pytest.mark.parametrize(("ftype", "change"), BAD_FIELDS, ids=case_id)
def test_json_field_with_wrong_type_or_range(ftype: FrameType, change: dict[str, Any]) -> None:
    assert_rejected(json_frame(ftype, {**VALID_OBJECTS[ftype], **change}))


@pytest.mark.parametrize(("ftype", "key"), MISSING_FIELDS, ids=case_id)
def test_json_required_field_missing(ftype: FrameType, key: str) -> None:
    obj = {k: v for k, v in VALID_OBJECTS[ftype].items() if k != key}
    assert_rejected(json_frame(ftype, obj))


# ---------------------------------------- 6. encoder


def test_encode_refuses_oversized_data() -> None:
    limits = Limits(max_frame_size=16)
    assert encode(Data(1, b"x" * 16), limits)
    for payload in (b"x" * 17, memoryview(b"x" * 17)):
        with pytest.raises(ProtocolError) as info:
            encode(Data(1, payload), limits)
        assert info.value.code == ErrorCode.FRAME_SIZE_ERROR
    with pytest.raises(ProtocolError) as info:
        encode(Data(1, bytes(DEFAULT_LIMITS.max_frame_size + 1)))
    assert info.value.code == ErrorCode.FRAME_SIZE_ERROR


@pytest.mark.parametrize(
    "make",
    [
        lambda n: Hello(versions=(1,), client_id="c", agent="a" * n),
        lambda n: Welcome(version=1, session_id="s" * n),
        lambda n: Reject(RejectCode.BAD_REQUEST, "m" * n),
        lambda n: Open(1, TunnelKind.TCP, "t", trace={"k": "v" * n}),
        lambda n: GoAway(0, ErrorCode.NO_ERROR, "m" * n),
    ],
    ids=["hello", "welcome", "reject", "open", "goaway"],
)
def test_encode_refuses_oversized_control(make: Any) -> None:
    limits = Limits(max_control_size=100)
    n = 0
    while len(encode(make(n + 1))) - HEADER_SIZE <= 100:  # grow to the limit exactly
        n += 1
    wire = encode(make(n), limits)
    assert len(wire) - HEADER_SIZE == 100
    assert feed_chunks([wire], limits) == [make(n)]
    with pytest.raises(ProtocolError) as info:
        encode(make(n + 1), limits)
    assert info.value.code == ErrorCode.FRAME_SIZE_ERROR
    with pytest.raises(ProtocolError) as info:
        encode(make(DEFAULT_LIMITS.max_control_size))
    assert info.value.code == ErrorCode.FRAME_SIZE_ERROR


@pytest.mark.parametrize("stream_id", [0, -1, MAX_STREAM_ID + 1])
@pytest.mark.parametrize(
    "make",
    [
        lambda s: Data(s, b"x"),
        lambda s: Fin(s),
        lambda s: Reset(s),
        lambda s: WindowUpdate(s, 1),
        lambda s: Open(s, TunnelKind.TCP, "t"),
    ],
    ids=["data", "fin", "reset", "window_update", "open"],
)
def test_encode_refuses_invalid_stream_id(make: Any, stream_id: int) -> None:
    with pytest.raises(ProtocolError):
        encode(make(stream_id))


def test_encode_counts_bytes_of_a_multibyte_memoryview() -> None:
    words = memoryview(array("H", [1, 2, 3]))  # 3 items, 6 bytes
    wire = encode(Data(1, words))
    assert wire == data_header(1, 6) + words.tobytes()
    assert feed_chunks([wire + encode(Fin(1))]) == [Data(1, words.tobytes()), Fin(1)]
    with pytest.raises(ProtocolError):
        encode(Data(1, words), Limits(max_frame_size=4))


@pytest.mark.parametrize("increment", [0, -1, MAX_WINDOW + 1])
def test_encode_refuses_window_increment_out_of_range(increment: int) -> None:
    with pytest.raises(ProtocolError):
        encode(WindowUpdate(1, increment))


def test_encode_refuses_non_events() -> None:
    with pytest.raises(TypeError):
        encode("not an event")  # type: ignore[arg-type]


@PROPERTY
@given(stream_ids, st.binary(max_size=300))
def test_data_header_plus_payload_is_encode(stream_id: int, payload: bytes) -> None:
    assert data_header(stream_id, len(payload)) + payload == encode(Data(stream_id, payload))
    assert encode(Data(stream_id, memoryview(payload))) == encode(Data(stream_id, payload))


@PROPERTY
@given(stream_ids, st.integers(1, MAX_WINDOW))
def test_encode_window_update_is_encode(stream_id: int, increment: int) -> None:
    assert encode_window_update(stream_id, increment) == encode(WindowUpdate(stream_id, increment))


def test_header_layout() -> None:
    assert HEADER_SIZE == 9
    assert encode(Data(0x01020304, b"ab")) == header(FrameType.DATA, 2, 0x01020304) + b"ab"
    assert encode(WindowUpdate(5, 0x0A0B0C0D)) == (
        header(FrameType.WINDOW_UPDATE, 4, 5) + bytes([0x0A, 0x0B, 0x0C, 0x0D])
    )
    assert encode(Ping(1)) == header(FrameType.PING, 8) + (1).to_bytes(8, "big")
    assert encode(GoAway(7, ErrorCode.SHUTDOWN, "é")) == (
        header(FrameType.GOAWAY, 10) + struct.pack("!II", 7, ErrorCode.SHUTDOWN) + "é".encode()
    )


@pytest.mark.parametrize("field", ["max_frame_size", "max_control_size"])
@pytest.mark.parametrize("value", [0, -1, MAX_PAYLOAD + 1])
def test_limits_reject_out_of_range(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        Limits(**{field: value})


def test_limits_accept_bounds() -> None:
    assert Limits(1, 1) == Limits(max_frame_size=1, max_control_size=1)
    assert Limits(MAX_PAYLOAD, MAX_PAYLOAD).max_frame_size == MAX_PAYLOAD


# ---------------------------------------- 7. secrets stay out of logs


def test_hello_repr_hides_token() -> None:
    hello = Hello(versions=(1,), client_id="c", token="s3cret")
    assert "s3cret" not in repr(hello)
    assert "s3cret" not in str(hello)
    assert "s3cret" not in repr([hello])
    assert "***" in repr(hello)
    assert "token=None" in repr(Hello(versions=(1,), client_id="c"))


def test_protocol_error_repr_names_code() -> None:
    err = ProtocolError("too big", ErrorCode.FRAME_SIZE_ERROR)
    assert repr(err) == "ProtocolError('too big', code=FRAME_SIZE_ERROR)"
    assert ProtocolError("x").code is ErrorCode.PROTOCOL_ERROR


# ---------------------------------------- 8. zero copy


def test_data_fed_whole_is_a_view_of_the_input() -> None:
    wire = encode(Data(1, b"payload")) + encode(Ping(2)) + encode(Data(3, b"more"))
    first, ping, second = FrameDecoder().feed(wire)
    assert ping == Ping(2)
    for event, payload in ((first, b"payload"), (second, b"more")):
        assert isinstance(event, Data)
        assert isinstance(event.data, memoryview)
        assert event.data.obj is wire
        assert event.data.readonly
        assert bytes(event.data) == payload


def test_a_cut_data_frame_streams_out_without_copies() -> None:
    """A DATA frame cut by the end of a read comes out in pieces, each a zero-copy slice of
    the read that carried it; only a cut header is ever buffered."""
    wire = encode(Data(1, b"payload"))
    first, second = wire[:12], wire[12:]
    decoder = FrameDecoder()
    (head,) = decoder.feed(first)
    assert isinstance(head, Data)
    assert (head.stream_id, bytes(head.data)) == (1, b"pay")
    assert isinstance(head.data, memoryview)
    assert head.data.obj is first
    assert decoder.buffered == 0
    (tail,) = decoder.feed(second)
    assert isinstance(tail, Data)
    assert (tail.stream_id, bytes(tail.data)) == (1, b"load")
    assert isinstance(tail.data, memoryview)
    assert tail.data.obj is second
    # a header cut in two is buffered, then the payload streams from the next read
    decoder = FrameDecoder()
    assert decoder.feed(wire[:5]) == []
    assert decoder.buffered == 5
    (whole,) = decoder.feed(wire[5:])
    assert isinstance(whole, Data)
    assert bytes(whole.data) == b"payload"
    assert decoder.buffered == 0
