"""Moving bytes between a tunneled stream and a real socket.

On asyncio, :class:`SpliceProtocol` is the socket's protocol and is attached to the stream as
its sink: both directions run in event-loop callbacks with no task per connection (see the
theory of operation in ``stream.py``). Everywhere else, :func:`pump` copies both ways with
two tasks over the anyio byte-stream API. Both pass half-close (EOF) and resets through.

Either can be given a :class:`~ferrotunnel.core.plugin.StreamTap` that sees each chunk as it
is forwarded (the dashboard's capture). Without one, the splice path has no extra call per
chunk: ``write`` is the transport's own, and ``data_received`` tests one attribute.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import anyio
from anyio.abc import ByteStream

from ferrotunnel.protocol import ErrorCode

from .links import set_nodelay
from .stream import Stream

if TYPE_CHECKING:
    from .plugin.types import StreamTap

__all__ = ["OriginPool", "SpliceProtocol", "pump"]

_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


class SpliceProtocol(asyncio.Protocol):
    """A socket spliced to a stream. ``make_stream`` supplies the stream when it connects
    (the server opens one per visitor; the client already has one) or None to refuse."""

    __slots__ = (
        "_closing",
        "_eof_in",
        "_make_stream",
        "_paused",
        "_pool",
        "_pool_key",
        "idle_since",
        "stream",
        "tap",
        "transport",
        "write",
    )

    def __init__(
        self,
        make_stream: Callable[[tuple[str, int] | None], Stream | None],
        pool: OriginPool | None = None,
        pool_key: str = "",
        tap: StreamTap | None = None,
    ) -> None:
        self._make_stream = make_stream
        self._pool = pool  # where to park the connection when its stream is released
        self._pool_key = pool_key
        self.idle_since = 0.0
        self._paused = 0  # PAUSED_BY_* reasons
        self._eof_in = False
        self._closing = False
        self.stream: Stream | None = None
        #: sees the bytes of the current stream (None: nobody watches)
        self.tap = tap
        self.transport: asyncio.Transport | None = None
        #: the Sink's write: the transport's own ``write`` once connected
        self.write: Callable[[bytes | memoryview], None] = _not_connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(
            asyncio.Transport, transport
        )  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        set_nodelay(sock)
        peer = transport.get_extra_info("peername")
        address = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        stream = self._make_stream(address)
        self._make_stream = _no_stream  # drop the reference to the session/closure
        if stream is None:
            self._closing = True
            transport.abort()
            return
        self.stream = stream
        self.write = transport.write if self.tap is None else self._tapped_write
        stream.attach(self)

    # ---- socket → stream

    def data_received(self, data: bytes) -> None:
        stream = self.stream
        if stream is not None:
            tap = self.tap
            stream.feed(data)
            if tap is not None and tap is self.tap:  # forwarded first: a tap never delays it
                tap.to_visitor(data)
        elif self._pool is not None:
            self._leave_pool()  # an idle origin connection must not talk: drop it

    def eof_received(self) -> bool:
        self._eof_in = True
        if self.stream is None and self._pool is not None:
            self._leave_pool()
            return False
        if self.stream is not None:
            self.stream.feed_eof()
        self.close_if_done()
        return True  # keep our sending side open: this is a half-close

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._pool is not None:
            self._pool.discard(self)
        self._untap(None if exc is None else str(exc) or type(exc).__name__)
        stream = self.stream
        if stream is not None and not stream.done:
            stream.reset(ErrorCode.CANCEL if exc is None else ErrorCode.CONNECT_ERROR)
        self.stream = None

    def pause_writing(self) -> None:
        if self.stream is not None:
            self.stream.sink_paused()

    def resume_writing(self) -> None:
        if self.stream is not None:
            self.stream.sink_resumed()

    # ---- the Sink interface: stream → socket (and ``write``, set in connection_made)

    def _tapped_write(self, data: bytes | memoryview) -> None:
        assert self.transport is not None
        self.transport.write(data)
        if self.tap is not None:
            self.tap.to_origin(data)

    def _untap(self, error: str | None) -> None:
        tap, self.tap = self.tap, None
        if tap is not None:
            tap.closed(error)

    def write_eof(self) -> None:
        transport = self.transport
        if transport is not None and not self._closing:
            if transport.can_write_eof():
                try:
                    transport.write_eof()
                except OSError:  # the service reset the connection meanwhile (ENOTCONN):
                    transport.abort()  # raising here would end the whole session
                    return
            self.close_if_done()

    def pause_reading(self, reason: int) -> None:
        if not self._paused and self.transport is not None and not self._closing:
            self.transport.pause_reading()
        self._paused |= reason

    def resume_reading(self, reason: int) -> None:
        was_paused = self._paused
        self._paused &= ~reason
        if was_paused and not self._paused and self.transport is not None and not self._closing:
            self.transport.resume_reading()

    def abort(self) -> None:
        """The stream was reset: reset the socket too (RST, not FIN) — unless the peer
        released it (NO_ERROR) at a point where the connection can serve another stream."""
        transport = self.transport
        stream = self.stream
        if stream is not None and stream.reset_code == ErrorCode.NO_ERROR:
            self._untap(None)
            self.stream = None
            if self._pool is None or self._eof_in or not self._pool.put(self._pool_key, self):
                self._close_now()
            return
        code = stream.reset_code if stream is not None else None
        self._untap(f"stream reset ({_code_name(code)})")
        if transport is not None and not self._closing:
            self._closing = True
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            transport.abort()

    def adopt(self, stream: Stream, tap: StreamTap | None = None) -> None:
        """Serve ``stream`` on this pooled connection."""
        self.stream = stream
        self.tap = tap
        if self.transport is not None:
            self.write = self.transport.write if tap is None else self._tapped_write
        if self._paused and self.transport is not None:
            self.transport.resume_reading()
        self._paused = 0
        stream.attach(self)

    def _leave_pool(self) -> None:
        assert self._pool is not None
        self._pool.discard(self)
        self._close_now()

    def _close_now(self) -> None:
        if self.transport is not None and not self._closing:
            self._closing = True
            self.transport.close()

    def close_if_done(self) -> None:
        """Close the socket once both directions have ended."""
        stream = self.stream
        transport = self.transport
        done = stream is not None and stream.done and self._eof_in
        if done:
            self._untap(None)
        if done and transport is not None and not self._closing:
            self._closing = True
            transport.close()


class OriginPool:
    """Idle origin connections, per tunnel, that released streams left behind.

    The HTTP ingress releases a stream with RESET(NO_ERROR) only between exchanges and only
    if the origin connection may serve another request; the client then parks that
    connection here instead of closing it, and the next stream of the same tunnel reuses it
    (LIFO: the most recently used connection is the least likely to have been closed by the
    origin). A connection that the origin closes, or that sends anything while idle, leaves
    the pool; so does one idle for longer than ``idle_timeout``.
    """

    def __init__(self, max_idle: int = 32, idle_timeout: float = 60.0) -> None:
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: dict[str, list[SpliceProtocol]] = {}

    def __len__(self) -> int:
        return sum(map(len, self._idle.values()))

    def put(self, key: str, conn: SpliceProtocol) -> bool:
        idle = self._idle.setdefault(key, [])
        if len(idle) >= self.max_idle:
            return False
        conn.idle_since = asyncio.get_running_loop().time()
        idle.append(conn)
        return True

    def take(self, key: str) -> SpliceProtocol | None:
        idle = self._idle.get(key)
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if transport is None or transport.is_closing():
                continue
            if now - conn.idle_since > self.idle_timeout:
                conn._close_now()
                continue
            return conn
        return None

    def discard(self, conn: SpliceProtocol) -> None:
        idle = self._idle.get(conn._pool_key)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn._close_now()
        self._idle.clear()


def _code_name(code: ErrorCode | int | None) -> str:
    return code.name if isinstance(code, ErrorCode) else str(code)


def _not_connected(data: bytes | memoryview) -> None:
    raise ConnectionError("not connected")


def _no_stream(address: tuple[str, int] | None) -> Stream | None:
    return None


async def pump(stream: Stream, sock: ByteStream, tap: StreamTap | None = None) -> None:
    """Copy both ways between ``stream`` and ``sock`` until both directions end."""
    error: str | None = None
    async with sock, anyio.create_task_group() as tg:

        async def copy(
            source: ByteStream, sink: ByteStream, seen: Callable[[bytes], None] | None
        ) -> None:
            nonlocal error
            try:
                async for chunk in source:
                    if seen is not None:
                        seen(chunk)
                    await sink.send(chunk)
                await sink.send_eof()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                error = error or str(exc) or type(exc).__name__
                stream.reset(ErrorCode.CONNECT_ERROR)
                tg.cancel_scope.cancel()

        tg.start_soon(copy, stream, sock, tap.to_origin if tap is not None else None)
        tg.start_soon(copy, sock, stream, tap.to_visitor if tap is not None else None)
    stream.close()
    if tap is not None:
        tap.closed(error)
