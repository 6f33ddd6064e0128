"""The session: many flow-controlled streams multiplexed over one connection.

Theory of operation
-------------------
A :class:`Session` owns one connection (through a :class:`Link`) and is driven by callbacks:
the link hands it received bytes (:meth:`Session.data_received`) and tells it when the
connection's write buffer is full or drained; the session writes frames to the link
synchronously. It never blocks and never runs a task per frame, so the same code serves
the asyncio fast path (the link is an ``asyncio.Protocol``) and the portable path (the link
pumps an anyio byte stream in two tasks).

Life of a session:

1. **Handshake.** The client sends HELLO; the server answers WELCOME or REJECT. Until then
   only those frames (and PING) are legal. :meth:`wait_handshake` returns the peer's
   message; the server calls :meth:`accept` or :meth:`reject`.
2. **Open.** Either side may :meth:`open_stream` (client ids odd, server ids even). The peer
   learns of it from OPEN, and ``on_stream`` is called with the new :class:`Stream`.
   DATA, FIN, RESET and WINDOW_UPDATE go to the stream (see ``stream.py`` for flow control).
3. **Keep-alive.** :meth:`run` wakes every ``ping_interval``: if nothing was received in the
   last interval it sends PING, and if nothing at all arrived for ``ping_timeout`` the peer is
   declared dead and the session aborted.
4. **Drain.** :meth:`goaway` tells the peer not to open more streams; open streams finish.
5. **Close.** On EOF, an I/O error, a protocol error or :meth:`close`, every stream still
   open is reset, :meth:`wait_closed` returns, and ``closed`` is True.

Write backpressure: when the link's buffer passes its high-water mark the session is
*write-paused*; spliced sockets stop reading and ``Stream.send`` waits until it drains.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import anyio

from ferrotunnel.protocol import (
    MAX_WINDOW,
    Data,
    ErrorCode,
    Event,
    Fin,
    FrameDecoder,
    GoAway,
    Hello,
    Limits,
    Open,
    Ping,
    Pong,
    ProtocolError,
    Reject,
    Reset,
    TunnelKind,
    Welcome,
    WindowUpdate,
    data_header,
    encode,
    encode_window_update,
)

from .errors import SessionClosedError, StreamLimitError
from .stream import Stream
from .tls import TlsInfo

__all__ = ["Link", "Role", "Session", "SessionConfig"]

log = logging.getLogger("ferrotunnel.core.session")

#: streams we reset recently: DATA still in flight for them is dropped, not an error
_RECENT_RESETS = 1024


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Tunables of one session. The defaults suit a LAN or the Internet alike."""

    #: receive window each stream starts with: what one stream can buffer here at first
    window: int = 1 << 20
    #: the most a stream's window grows to while its consumer keeps up (auto-tuning): the
    #: bound on what one stream can ever buffer here
    max_window: int = 4 << 20
    #: largest DATA payload we accept (and so the peer sends)
    max_frame: int = 256 << 10
    #: largest control payload (HELLO, OPEN metadata...)
    max_control: int = 64 << 10
    #: how many streams may be open at once (both directions together): further OPENs of
    #: the peer are refused, and :meth:`Session.open_stream` raises :class:`StreamLimitError`
    max_streams: int = 1000
    #: send PING after this long without receiving anything
    ping_interval: float = 15.0
    #: declare the peer dead after this long without receiving anything
    ping_timeout: float = 45.0
    #: how long the handshake may take, TCP/TLS set-up included
    handshake_timeout: float = 10.0
    #: connection write buffer above which streams stop sending
    write_high_water: int = 4 << 20
    limits: Limits = field(init=False)

    def __post_init__(self) -> None:
        if not 1024 <= self.window <= MAX_WINDOW:
            raise ValueError(f"window must be within 1024..{MAX_WINDOW}")
        if self.max_window < self.window:
            object.__setattr__(self, "max_window", self.window)  # no auto-tuning
        if self.max_window > MAX_WINDOW:
            raise ValueError(f"max_window must be at most {MAX_WINDOW}")
        object.__setattr__(self, "limits", Limits(self.max_frame, self.max_control))


class Link(Protocol):
    """The connection under a session: synchronous buffered writes, closing."""

    def write(self, data: bytes) -> None: ...
    def writelines(self, chunks: list[bytes | memoryview]) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class _State(enum.Enum):
    HANDSHAKE = 1
    OPEN = 2
    CLOSED = 3


class Session:
    """One multiplexed connection. Created by :class:`~ferrotunnel.core.Server` and
    :class:`~ferrotunnel.core.Client`; library users mostly meet its streams."""

    def __init__(
        self,
        link: Link,
        role: Role,
        config: SessionConfig | None = None,
        *,
        peer: tuple[str, int] | None = None,
        tls: TlsInfo | None = None,
    ) -> None:
        self.config = config = config or SessionConfig()
        self.role = role
        self.peer = peer
        #: what the TLS handshake established (None: plain TCP)
        self.tls = tls
        self.session_id = ""
        self.on_stream: Callable[[Stream], None] | None = None
        self.close_reason: BaseException | None = None
        self.bytes_in = 0
        #: streams opened so far, by either side (refused ones included)
        self.streams_opened = 0
        self._link = link
        self._decoder = FrameDecoder(config.limits)
        self._state = _State.HANDSHAKE
        self._streams: dict[int, Stream] = {}
        self._next_id = 1 if role is Role.CLIENT else 2
        self._last_peer_id = 0  # highest stream id the peer has opened
        #: streams we reset lately -> how much the peer may still send on them (its window
        #: then): DATA already in flight is dropped, but only up to that credit
        self._recent_resets: dict[int, int] = {}
        self._peer_window = 0
        self._peer_max_frame = 16 << 10
        self._handshake: Hello | Welcome | Reject | None = None
        self._handshake_event = anyio.Event()
        self._closed_event = anyio.Event()
        self._write_paused = False
        self._goaway_sent = False
        self._goaway_received: GoAway | None = None
        self._ping_seq = 0
        self._drained: anyio.Event | None = None

    def __repr__(self) -> str:
        return f"<Session {self.role.value} {self.session_id or '?'} streams={len(self._streams)}>"

    # ------------------------------------------------------------------ state

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    @property
    def streams(self) -> list[Stream]:
        return list(self._streams.values())

    @property
    def going_away(self) -> bool:
        """GOAWAY was sent or received: no new streams."""
        return self._goaway_sent or self._goaway_received is not None

    # ------------------------------------------------------------------ handshake

    def send_hello(self, hello: Hello) -> None:
        self._write(encode(hello, self.config.limits))

    async def wait_handshake(self) -> Hello | Welcome | Reject:
        """The peer's HELLO (server) or WELCOME / REJECT (client)."""
        await self._handshake_event.wait()
        if self._handshake is None:
            raise SessionClosedError(self._describe_close())
        return self._handshake

    def accept(self, welcome: Welcome, hello: Hello) -> None:
        """Server: send WELCOME; streams may flow from now on."""
        self.session_id = welcome.session_id
        self._write(encode(welcome, self.config.limits))
        self._open(hello.window, hello.max_frame)

    def reject(self, reject: Reject) -> None:
        """Server: send REJECT and close once it is written."""
        self._write(encode(reject, self.config.limits))
        self.close()

    def _open(self, window: int, max_frame: int) -> None:
        self._peer_window = window or self.config.window
        self._peer_max_frame = max_frame or self._peer_max_frame
        self._state = _State.OPEN

    # ------------------------------------------------------------------ streams

    def open_stream(
        self,
        tunnel: str,
        kind: TunnelKind = TunnelKind.TCP,
        *,
        visitor: tuple[str, int] | None = None,
        trace: dict[str, str] | None = None,
        own_connection: bool = False,
    ) -> Stream:
        """Open a stream to the peer. Data may be sent at once, within the window.
        ``own_connection``: its bytes open a connection (see :class:`Open`)."""
        if self._state is not _State.OPEN:
            raise SessionClosedError("the session is not open")
        if self.going_away:
            raise SessionClosedError("the session is going away")
        if len(self._streams) >= self.config.max_streams:
            raise StreamLimitError(
                f"{len(self._streams)} streams are open, the most this session allows"
            )
        stream_id = self._next_id
        if stream_id > (1 << 31) - 1:
            raise SessionClosedError("stream ids exhausted")
        self._next_id += 2
        self.streams_opened += 1
        frame = Open(
            stream_id,
            kind,
            tunnel,
            visitor[0] if visitor else None,
            visitor[1] if visitor else None,
            trace or {},
            own_connection,
        )
        stream = Stream(self, frame, self._peer_window, self.config.window)
        self._streams[stream_id] = stream
        self._write(encode(frame, self.config.limits))
        return stream

    def forget(self, stream: Stream) -> None:
        forgotten = self._streams.pop(stream.id, None) is not None
        if forgotten and self._drained is not None and not self._streams:
            self._drained.set()

    # ------------------------------------------------------------------ frames out

    def send_data(self, stream_id: int, data: bytes | memoryview) -> None:
        if self._state is _State.CLOSED:
            return
        n = len(data)
        max_frame = self._peer_max_frame
        if n <= max_frame:
            self._link.writelines([data_header(stream_id, n), data])
            return
        view = memoryview(data)
        chunks: list[bytes | memoryview] = []
        for start in range(0, n, max_frame):
            piece = view[start : start + max_frame]
            chunks += (data_header(stream_id, len(piece)), piece)
        self._link.writelines(chunks)

    def send_window_update(self, stream_id: int, increment: int) -> None:
        self._write(encode_window_update(stream_id, increment))

    def send_fin(self, stream_id: int) -> None:
        self._write(encode(Fin(stream_id)))

    def send_reset(self, stream_id: int, code: ErrorCode | int, credit: int = 0) -> None:
        """RESET ``stream_id``; ``credit`` is the window the peer still has on it."""
        self._recent_resets[stream_id] = credit
        if len(self._recent_resets) > _RECENT_RESETS:
            del self._recent_resets[next(iter(self._recent_resets))]
        self._write(encode(Reset(stream_id, code)))

    def _write(self, frame: bytes) -> None:
        if self._state is not _State.CLOSED:
            self._link.write(frame)

    # ------------------------------------------------------------------ frames in

    def data_received(self, data: bytes) -> None:
        """Called by the link with every chunk read from the connection."""
        if self._state is _State.CLOSED:
            return
        self.bytes_in += len(data)
        try:
            events = self._decoder.feed(data)
            streams = self._streams
            for event in events:
                if type(event) is Data:  # the hot path first
                    stream = streams.get(event.stream_id)
                    if stream is not None:
                        stream._on_data(event.data, event.rest)  # type: ignore[arg-type]
                    else:
                        self._on_late_data(event)
                else:
                    self._on_control(event)
                if self.closed:
                    return
        except ProtocolError as exc:
            self._protocol_error(exc)

    def _on_control(self, event: Event) -> None:
        if self._state is _State.HANDSHAKE:
            self._on_handshake_frame(event)
            return
        match event:
            case WindowUpdate(stream_id, increment):
                stream = self._streams.get(stream_id)
                if stream is not None:
                    stream._on_window_update(increment)
                else:
                    self._check_known(stream_id, "WINDOW_UPDATE")
            case Open():
                self._on_open(event)
            case Fin(stream_id):
                stream = self._streams.get(stream_id)
                if stream is not None:
                    stream._on_fin()
                else:
                    self._check_known(stream_id, "FIN", tolerate_reset=True)
            case Reset(stream_id, code):
                stream = self._streams.get(stream_id)
                if stream is not None:
                    stream._on_reset(code)
                else:
                    self._check_known(stream_id, "RESET", tolerate_reset=True)
            case Ping(opaque):
                self._write(encode(Pong(opaque)))
            case Pong():
                pass
            case GoAway():
                self._goaway_received = event
                log.debug("%r: peer going away: %s", self, event.message or event.code)
                if not self._streams:
                    self.close()
            case _:
                raise ProtocolError(f"unexpected {type(event).__name__} frame after handshake")

    def _on_handshake_frame(self, event: Event) -> None:
        if isinstance(event, Ping):
            self._write(encode(Pong(event.opaque)))
            return
        expected = (
            isinstance(event, Hello)
            if self.role is Role.SERVER
            else isinstance(event, Welcome | Reject)
        )
        if not (expected and isinstance(event, Hello | Welcome | Reject)) or self._handshake:
            raise ProtocolError(f"unexpected {type(event).__name__} frame during the handshake")
        self._handshake = event
        if isinstance(event, Welcome):
            self.session_id = event.session_id
            self._open(event.window, event.max_frame)
        elif isinstance(event, Reject):
            self.close()
        self._handshake_event.set()

    def _on_open(self, frame: Open) -> None:
        stream_id = frame.stream_id
        peer_parity = 1 if self.role is Role.SERVER else 0
        if stream_id % 2 != peer_parity or stream_id <= self._last_peer_id:
            raise ProtocolError(f"OPEN with invalid or reused stream id {stream_id}")
        self._last_peer_id = stream_id
        self.streams_opened += 1
        stream = Stream(self, frame, self._peer_window, self.config.window)
        if self.going_away or self.on_stream is None:
            self._streams[stream_id] = stream
            stream.reset(ErrorCode.REFUSED_STREAM)
            return
        if len(self._streams) >= self.config.max_streams:
            self._streams[stream_id] = stream
            stream.reset(ErrorCode.REFUSED_STREAM)
            return
        self._streams[stream_id] = stream
        self.on_stream(stream)

    def _on_late_data(self, event: Data) -> None:
        """DATA for a stream no longer in the table: in flight when we reset it (dropped,
        within the credit it had), else a violation."""
        credit = self._recent_resets.get(event.stream_id)
        if credit is None:
            self._check_known(event.stream_id, "DATA")
            return
        n = len(event.data)
        if n + event.rest > credit:  # the first piece carries the frame's whole length
            raise ProtocolError(
                f"stream {event.stream_id}: peer sent beyond its window after RESET",
                ErrorCode.FLOW_CONTROL_ERROR,
            )
        self._recent_resets[event.stream_id] = credit - n

    def _check_known(self, stream_id: int, what: str, *, tolerate_reset: bool = False) -> None:
        """A frame for a stream not in the table: late (fine) or never opened (violation)."""
        if tolerate_reset and stream_id in self._recent_resets:
            return
        ours = stream_id % 2 == (1 if self.role is Role.CLIENT else 0)
        opened = stream_id < self._next_id if ours else stream_id <= self._last_peer_id
        if not opened:
            raise ProtocolError(f"{what} for stream {stream_id}, which was never opened")
        if what in ("DATA", "FIN"):
            raise ProtocolError(f"{what} for closed stream {stream_id}", ErrorCode.STREAM_CLOSED)

    def _protocol_error(self, exc: ProtocolError) -> None:
        log.warning("%r: protocol error from %s: %s", self, self._peer_name(), exc)
        if self._state is not _State.CLOSED:
            self._link.write(encode(GoAway(self._last_peer_id, exc.code, str(exc)[:200])))
        self.close(exc)

    # ------------------------------------------------------------------ link events

    def pause_writing(self) -> None:
        self._write_paused = True
        for stream in list(self._streams.values()):
            stream._on_session_writable(False)

    def resume_writing(self) -> None:
        self._write_paused = False
        for stream in list(self._streams.values()):
            stream._on_session_writable(True)

    def connection_lost(self, exc: BaseException | None) -> None:
        """Called by the link when the connection is gone."""
        if self._state is not _State.CLOSED:
            self._shutdown(exc or SessionClosedError("connection closed by peer"))
            self._link.close()

    # ------------------------------------------------------------------ closing

    def goaway(self, message: str = "", code: ErrorCode = ErrorCode.NO_ERROR) -> None:
        """Tell the peer to open no more streams; open ones may finish."""
        if self._goaway_sent or self._state is _State.CLOSED:
            return
        self._goaway_sent = True
        self._write(encode(GoAway(self._last_peer_id, code, message)))

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109 (a bound, not a deadline)
        """GOAWAY, then wait up to ``timeout`` for open streams to finish, then close."""
        self.goaway("shutting down", ErrorCode.SHUTDOWN)
        if self._streams and self._state is not _State.CLOSED:
            self._drained = anyio.Event()
            with anyio.move_on_after(timeout):
                await self._drained.wait()
        self.close()

    def close(self, reason: BaseException | None = None) -> None:
        """Close the connection (after writing what is buffered); reset open streams."""
        if self._state is not _State.CLOSED:
            self._shutdown(reason)
            self._link.close()

    def abort(self, reason: BaseException | None = None) -> None:
        """Drop the connection at once."""
        if self._state is not _State.CLOSED:
            self._shutdown(reason)
            self._link.abort()

    def _shutdown(self, reason: BaseException | None) -> None:
        self._state = _State.CLOSED
        self.close_reason = reason
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream._on_session_closed()
        self._handshake_event.set()
        self._closed_event.set()
        if self._drained is not None:
            self._drained.set()

    async def wait_closed(self) -> None:
        await self._closed_event.wait()

    def _describe_close(self) -> str:
        reason = self.close_reason
        return f"the session closed: {reason}" if reason else "the session closed"

    def _peer_name(self) -> str:
        return f"{self.peer[0]}:{self.peer[1]}" if self.peer else "peer"

    # ------------------------------------------------------------------ keep-alive

    async def run(self) -> None:
        """Keep the session alive until it closes: PING when idle, abort a dead peer."""
        interval = self.config.ping_interval
        timeout = self.config.ping_timeout
        idle_ticks_allowed = max(1, math.ceil(timeout / interval))
        idle_ticks = 0
        seen = self.bytes_in
        while not self.closed:
            with anyio.move_on_after(interval):
                await self._closed_event.wait()
            if self.closed:
                break
            if self.bytes_in != seen:
                seen = self.bytes_in
                idle_ticks = 0
                continue
            idle_ticks += 1
            if idle_ticks >= idle_ticks_allowed:
                log.warning("%r: no answer from %s for %.0f s", self, self._peer_name(), timeout)
                self.abort(TimeoutError(f"peer unresponsive for {timeout:.0f} s"))
                break
            self._ping_seq += 1
            self._write(encode(Ping(self._ping_seq)))
