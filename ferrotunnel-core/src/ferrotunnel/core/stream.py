"""One multiplexed stream: an anyio byte stream with per-stream credit flow control.

Theory of operation
-------------------
Each direction of a stream has a *window*: the number of bytes the sender may still send
before the receiver grants more with WINDOW_UPDATE. The receiver grants credit only for bytes
that have left its hands, so what a stream can buffer is bounded by its window, and a stream
whose reader stops simply runs out of credit while every other stream keeps flowing. Windows
auto-tune: a stream starts with ``SessionConfig.window`` and its window doubles with each grant
while its consumer keeps up, up to ``max_window`` — the real bound on what it can buffer.

A stream is consumed in one of two ways:

* **pull** — the :class:`anyio.abc.ByteStream` API (``receive`` / ``send``), for library
  users and the portable (trio) relay. Received DATA is queued; credit is returned as
  ``receive()`` takes it.
* **splice** — on asyncio, the kernel attaches a :class:`Sink` (the protocol of the local or
  visitor socket) and bytes move between transports in callbacks: DATA is written straight to
  the socket, credit is returned while that socket's write buffer is below its high-water mark
  and held back while it is paused. Bytes read from the socket go straight into DATA frames;
  when the window is spent the socket's reading is paused until credit arrives.

No task, queue or event is involved per chunk on the splice path.

A stream is forgotten by its session once both directions have ended (FIN sent and received)
or it was reset.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.lowlevel
from anyio import TypedAttributeSet, typed_attribute
from anyio.abc import ByteStream

from ferrotunnel.protocol import ErrorCode, Open, ProtocolError, TunnelKind

from .errors import SessionClosedError, StreamResetError

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Sink", "Stream", "StreamAttribute"]


class StreamAttribute(TypedAttributeSet):
    """Typed attributes of a tunneled stream: ``stream.extra(StreamAttribute.tunnel)``."""

    stream_id: int = typed_attribute()
    tunnel: str = typed_attribute()
    kind: TunnelKind = typed_attribute()
    #: (host, port) of the visitor who opened this stream at the public ingress
    visitor_address: tuple[str, int] = typed_attribute()
    #: W3C trace context (``traceparent``...) carried in the OPEN frame
    trace: Mapping[str, str] = typed_attribute()


class Sink(Protocol):
    """What a spliced socket offers its stream (implemented by the asyncio relay)."""

    def write(self, data: bytes | memoryview) -> None: ...
    def write_eof(self) -> None: ...
    def pause_reading(self, reason: int) -> None: ...
    def resume_reading(self, reason: int) -> None: ...
    def abort(self) -> None: ...
    def close_if_done(self) -> None: ...


#: reasons a spliced socket's reading is paused (a bitmask: it reads only when none is set)
PAUSED_BY_WINDOW = 1
PAUSED_BY_SESSION = 2


class Stream(ByteStream):
    """A bidirectional byte stream inside a session. Use it like a socket."""

    __slots__ = (
        "_closed_locally",
        "_done_callbacks",
        "_fin_pending",
        "_fin_received",
        "_fin_sent",
        "_held",
        "_max_window",
        "_pending",
        "_queue",
        "_queued",
        "_readable",
        "_recv_limit",
        "_recv_window",
        "_reset_code",
        "_send_window",
        "_session",
        "_sink",
        "_sink_paused",
        "_unacked",
        "_update_threshold",
        "_writable",
        "id",
        "open_frame",
    )

    def __init__(self, session: Session, open_frame: Open, send_window: int, recv_window: int):
        self.id = open_frame.stream_id
        self.open_frame = open_frame
        self._session = session
        self._send_window = send_window
        self._recv_window = recv_window  # how much the peer may still send us
        self._unacked = 0  # consumed, not yet granted back
        self._held = 0  # written to a paused sink: granted back when it drains
        self._recv_limit = recv_window  # the window the peer has now (grows, see _consumed)
        self._max_window = max(recv_window, session.config.max_window)
        self._update_threshold = max(1, recv_window // 4)
        self._queue: deque[bytes | memoryview] | None = None  # pull mode receive queue
        self._queued = 0
        self._pending: deque[memoryview] | None = None  # splice mode bytes awaiting credit
        self._fin_pending = False
        self._fin_sent = False
        self._fin_received = False
        self._reset_code: ErrorCode | int | None = None
        self._closed_locally = False
        self._readable: anyio.Event | None = None
        self._writable: anyio.Event | None = None
        self._sink: Sink | None = None
        self._sink_paused = False
        self._done_callbacks: list[Callable[[Stream], None]] | None = None

    def __repr__(self) -> str:
        return f"<Stream {self.id} {self.open_frame.kind} {self.open_frame.tunnel!r}>"

    # ------------------------------------------------------------------ public state

    @property
    def tunnel(self) -> str:
        return self.open_frame.tunnel

    @property
    def buffered(self) -> int:
        """Received bytes waiting to be read (bounded by the window)."""
        return self._queued

    def peek_buffered(self) -> tuple[bytes | memoryview, ...]:
        """The received bytes waiting to be read, oldest first, left where they are (so a
        relay that could not reach its local service can still show what arrived for it)."""
        return tuple(self._queue or ())

    @property
    def reset_code(self) -> ErrorCode | int | None:
        """Why the stream was reset (by either side), or None."""
        return self._reset_code

    @property
    def done(self) -> bool:
        """Both directions have ended, or the stream was reset."""
        return self._reset_code is not None or (self._fin_sent and self._fin_received)

    def add_done_callback(self, callback: Callable[[Stream], None]) -> None:
        """Call ``callback(stream)`` once, when the stream is over (both FINs, or a reset).

        For observers (spans, counters): it runs inside the session's frame handling, so it
        must be quick and must not raise. Called at once if the stream is already over.
        """
        if self.done:
            callback(self)
        elif self._done_callbacks is None:
            self._done_callbacks = [callback]
        else:
            self._done_callbacks.append(callback)

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        frame = self.open_frame
        attrs: dict[Any, Callable[[], Any]] = {
            StreamAttribute.stream_id: lambda: frame.stream_id,
            StreamAttribute.tunnel: lambda: frame.tunnel,
            StreamAttribute.kind: lambda: frame.kind,
            StreamAttribute.trace: lambda: frame.trace,
        }
        if frame.visitor_host is not None and frame.visitor_port is not None:
            address = (frame.visitor_host, frame.visitor_port)
            attrs[StreamAttribute.visitor_address] = lambda: address
        return attrs

    # ------------------------------------------------------------------ pull API

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await anyio.lowlevel.checkpoint_if_cancelled()
        while not self._queued:
            self._raise_if_unreadable()
            if self._readable is None:  # shared by every waiting task: none is lost
                self._readable = anyio.Event()
            await self._readable.wait()
        queue = self._queue
        assert queue is not None
        chunk = queue[0]
        if len(chunk) <= max_bytes:
            queue.popleft()
        else:
            view = memoryview(chunk)
            queue[0] = view[max_bytes:]
            chunk = view[:max_bytes]
        n = len(chunk)
        self._queued -= n
        self._consumed(n)
        return bytes(chunk)

    def _raise_if_unreadable(self) -> None:
        if self._reset_code is not None:
            raise StreamResetError(self._reset_code)
        if self._closed_locally:
            raise anyio.ClosedResourceError
        if self._fin_received:
            raise anyio.EndOfStream
        if self._session.closed:
            raise SessionClosedError("the tunnel session closed")

    async def send(self, item: bytes) -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()
        view = memoryview(item if isinstance(item, bytes) else bytes(item))
        session = self._session
        while view:
            self._raise_if_unwritable()
            if self._send_window <= 0 or session.write_paused:
                if self._writable is None:  # shared by every waiting task: none is lost
                    self._writable = anyio.Event()
                await self._writable.wait()
                continue
            n = min(len(view), self._send_window)
            self._send_window -= n
            session.send_data(self.id, view[:n])
            view = view[n:]

    def _raise_if_unwritable(self) -> None:
        if self._reset_code is not None:
            raise StreamResetError(self._reset_code)
        if self._closed_locally or self._fin_sent or self._fin_pending:
            raise anyio.ClosedResourceError
        if self._session.closed:
            raise SessionClosedError("the tunnel session closed")

    async def send_eof(self) -> None:
        """Half-close: the peer reads EOF, and may still send to us."""
        if not (self._fin_sent or self._fin_pending) and self._reset_code is None:
            self._send_fin()
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Close both directions: FIN if still writable; later DATA from the peer resets it."""
        self.close()
        await anyio.lowlevel.checkpoint()

    def close(self) -> None:
        """Synchronous :meth:`aclose`."""
        if self._closed_locally:
            return
        self._closed_locally = True
        if self._reset_code is None:
            if self._queued:
                # like a socket closed with unread data: the peer learns it was not read
                self.reset(ErrorCode.CANCEL)
            elif not (self._fin_sent or self._fin_pending):
                self._send_fin()
        self._queue = None
        self._queued = 0
        self._wake()

    def reset(self, code: ErrorCode | int = ErrorCode.CANCEL) -> None:
        """Abort both directions now; the peer sees :class:`StreamResetError`."""
        if self._reset_code is not None or self.done:
            return
        self._reset_code = code
        self._session.send_reset(self.id, code, self._recv_window)
        self._finish()

    # ------------------------------------------------------------------ splice API

    def attach(self, sink: Sink) -> None:
        """Hand the stream to a socket: queued and future DATA go straight to ``sink``."""
        self._sink = sink
        if self._queue:
            for chunk in self._queue:
                sink.write(chunk)
            self._consumed(self._queued)
            self._queue = None
            self._queued = 0
        if self._fin_received:
            sink.write_eof()
        if self._reset_code is not None:
            sink.abort()
        elif self._session.write_paused:
            sink.pause_reading(PAUSED_BY_SESSION)

    def feed(self, data: bytes) -> None:
        """Bytes read from the spliced socket: send them, within the window."""
        if self._pending:
            self._pending.append(memoryview(data))
            return
        if self._reset_code is not None or self._fin_sent or self._fin_pending:
            return
        window = self._send_window
        n = len(data)
        if n <= window:
            self._send_window = window - n
            self._session.send_data(self.id, data)
            return
        view = memoryview(data)
        if window > 0:
            self._send_window = 0
            self._session.send_data(self.id, view[:window])
            view = view[window:]
        self._pending = deque((view,))
        assert self._sink is not None
        self._sink.pause_reading(PAUSED_BY_WINDOW)

    def feed_eof(self) -> None:
        """The spliced socket reached EOF: FIN once pending bytes have been sent."""
        if self._pending:
            self._fin_pending = True
        elif not self._fin_sent and self._reset_code is None:
            self._send_fin()

    def sink_paused(self) -> None:
        self._sink_paused = True

    def sink_resumed(self) -> None:
        self._sink_paused = False
        held, self._held = self._held, 0
        if held:
            self._consumed(held)

    # ------------------------------------------------------------------ called by the session

    def _on_data(self, data: memoryview, rest: int = 0) -> None:
        """``data`` arrived, with ``rest`` more bytes of its frame still to come."""
        n = len(data)
        if n + rest > self._recv_window:  # checked for the whole frame, on its first piece
            raise ProtocolError(
                f"stream {self.id}: peer sent beyond its window", ErrorCode.FLOW_CONTROL_ERROR
            )
        self._recv_window -= n
        if self._fin_received:
            raise ProtocolError(f"stream {self.id}: DATA after FIN", ErrorCode.STREAM_CLOSED)
        if self._closed_locally:
            self.reset(ErrorCode.STREAM_CLOSED)
            return
        sink = self._sink
        if sink is not None:
            sink.write(data)
            if self._sink_paused:
                self._held += n
            else:
                self._consumed(n)
            return
        if self._queue is None:
            self._queue = deque()
        # a copy: a slice would keep the whole chunk read from the connection alive (other
        # streams' bytes too), so memory would no longer be bounded by the window. receive()
        # then returns it without another copy.
        self._queue.append(bytes(data))
        self._queued += n
        if self._readable is not None:
            self._readable.set()
            self._readable = None

    def _on_fin(self) -> None:
        if self._fin_received:
            raise ProtocolError(f"stream {self.id}: second FIN", ErrorCode.STREAM_CLOSED)
        self._fin_received = True
        if self._sink is not None:
            self._sink.write_eof()
        self._wake()
        if self._fin_sent:
            self._finish()

    def _on_reset(self, code: ErrorCode | int) -> None:
        if self._reset_code is None:
            self._reset_code = code
            self._finish()

    def _on_window_update(self, increment: int) -> None:
        self._send_window += increment
        if self._send_window > (1 << 31) - 1:
            raise ProtocolError(f"stream {self.id}: window overflow", ErrorCode.FLOW_CONTROL_ERROR)
        if self._pending:
            self._flush_pending()
        if self._writable is not None:
            self._writable.set()
            self._writable = None

    def _on_session_writable(self, writable: bool) -> None:
        sink = self._sink
        if sink is not None:
            if writable:
                sink.resume_reading(PAUSED_BY_SESSION)
            else:
                sink.pause_reading(PAUSED_BY_SESSION)
        elif writable and self._writable is not None:
            self._writable.set()
            self._writable = None

    def _on_session_closed(self) -> None:
        if self._reset_code is None and not self.done:
            self._reset_code = ErrorCode.CONNECT_ERROR
            if self._sink is not None:
                self._sink.abort()
        self._wake()
        self._run_done_callbacks()

    # ------------------------------------------------------------------ internals

    def _flush_pending(self) -> None:
        pending = self._pending
        assert pending is not None
        session = self._session
        while pending and self._send_window > 0:
            view = pending[0]
            n = min(len(view), self._send_window)
            self._send_window -= n
            session.send_data(self.id, view[:n])
            if n == len(view):
                pending.popleft()
            else:
                pending[0] = view[n:]
        if not pending:
            self._pending = None
            if self._fin_pending:
                self._send_fin()
            if self._sink is not None:
                self._sink.resume_reading(PAUSED_BY_WINDOW)

    def _consumed(self, n: int) -> None:
        """``n`` received bytes left our hands: grant them back, in batches of a quarter
        window. A stream whose consumer keeps up (its socket is not write-paused) gets its
        window doubled with the grant, up to ``max_window``: a bulk transfer is not held
        back by round trips for credit, while a stream that stalls stops growing, so what
        it can make us buffer stays bounded by ``max_window``."""
        unacked = self._unacked + n
        if unacked >= self._update_threshold and not self._fin_received:
            grant = unacked
            limit = self._recv_limit
            if limit < self._max_window and not self._sink_paused:
                extra = min(limit, self._max_window - limit)
                self._recv_limit = limit + extra
                self._update_threshold = self._recv_limit // 4
                grant += extra
            self._recv_window += grant
            self._unacked = 0
            self._session.send_window_update(self.id, grant)
        else:
            self._unacked = unacked

    def _send_fin(self) -> None:
        self._fin_pending = False
        self._fin_sent = True
        self._session.send_fin(self.id)
        if self._fin_received:
            self._finish()

    def _finish(self) -> None:
        """The stream is over: the session forgets it, waiters and the sink learn of it."""
        self._pending = None
        self._session.forget(self)
        sink = self._sink
        if sink is not None:
            if self._reset_code is not None:
                sink.abort()
            else:
                sink.close_if_done()
        self._wake()
        if self._done_callbacks is not None:
            self._run_done_callbacks()

    def _run_done_callbacks(self) -> None:
        callbacks, self._done_callbacks = self._done_callbacks, None
        for callback in callbacks or ():
            callback(self)

    def _wake(self) -> None:
        if self._readable is not None:
            self._readable.set()
            self._readable = None
        if self._writable is not None:
            self._writable.set()
            self._writable = None
