"""Connections under a session: the asyncio fast path and the portable anyio path.

:class:`ProtocolLink` is an ``asyncio.Protocol``: the event loop calls it with each read
(up to 256 KiB) and the session writes frames into the transport. This is what runs under the
CLI, on asyncio or uvloop, TLS included (a native ``ssl=`` transport). The first write of an
event-loop iteration goes to the transport at once (a lone request or ping-pong pays no extra
latency); frames written after it in the same iteration — typically one per visitor whose
request arrived in the same batch — are gathered and written with one ``writelines`` at the
start of the next iteration: one system call instead of one per frame.
On the server, :class:`TlsAcceptor` stands in front of it while the TLS handshake runs in its
own task under a deadline, so a silent or slow handshake never holds up another accept.

:class:`StreamLink` drives the same session over any :class:`anyio.abc.ByteStream` — a trio
socket, an anyio TLS stream, an in-memory pipe — with one reader and one writer task. The
writer coalesces every frame written since its last send into a single ``send``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import cast

import anyio
from anyio.abc import ByteStream

from .session import Role, Session, SessionConfig
from .tls import tls_info

__all__ = ["ProtocolLink", "StreamLink", "TlsAcceptor", "set_nodelay"]

log = logging.getLogger("ferrotunnel.core.server")

#: gathered frames are written at once when they add up to this much (bulk data gains
#: nothing from waiting, and the transport's flow control should see it)
_FLUSH_AT = 64 << 10


def set_nodelay(sock: socket.socket | None) -> None:
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class ProtocolLink(asyncio.Protocol):
    """A session riding on an asyncio transport's callbacks."""

    session: Session

    def __init__(
        self,
        role: Role,
        config: SessionConfig,
        on_session: Callable[[Session], None] | None = None,
    ) -> None:
        self._role = role
        self._config = config
        self._on_session = on_session
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(
            asyncio.Transport, transport
        )  # uvloop's is not a subclass
        set_nodelay(transport.get_extra_info("socket"))
        high = self._config.write_high_water
        transport.set_write_buffer_limits(high=high, low=high // 4)
        self._transport_write = transport.write
        self._transport_writelines = transport.writelines
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes | memoryview] = []
        self._pending_size = 0
        self._uncorked()
        peer = transport.get_extra_info("peername")
        tls = tls_info(transport.get_extra_info("ssl_object"))
        self.session = Session(self, self._role, self._config, peer=_host_port(peer), tls=tls)
        if self._on_session is not None:
            self._on_session(self.session)

    def data_received(self, data: bytes) -> None:
        self.session.data_received(data)

    def eof_received(self) -> bool:
        return False  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.connection_lost(exc)

    def pause_writing(self) -> None:
        self.session.pause_writing()

    def resume_writing(self) -> None:
        self.session.resume_writing()

    # the Link interface: write/writelines are rebound as the link corks and uncorks
    def write(self, data: bytes) -> None:
        raise ConnectionError("not connected")

    def writelines(self, chunks: list[bytes | memoryview]) -> None:
        raise ConnectionError("not connected")

    def close(self) -> None:
        transport, self.transport = self.transport, None
        if transport is not None:
            self._flush()
            self._closed()
            transport.close()

    def abort(self) -> None:
        transport, self.transport = self.transport, None
        if transport is not None:
            self._pending.clear()
            self._closed()
            transport.abort()

    def _closed(self) -> None:
        """Later writes go nowhere (a closed TLS transport would raise on them)."""
        self.write = _discard  # type: ignore[method-assign]
        self.writelines = _discard  # type: ignore[method-assign,assignment]

    # ---- write coalescing (see the module's docstring)

    def _uncorked(self) -> None:
        self.write = self._write_now  # type: ignore[method-assign]
        self.writelines = self._writelines_now  # type: ignore[method-assign]

    def _write_now(self, data: bytes) -> None:
        self._transport_write(data)
        self._cork()

    def _writelines_now(self, chunks: list[bytes | memoryview]) -> None:
        self._transport_writelines(chunks)
        self._cork()

    def _cork(self) -> None:
        self.write = self._write_later  # type: ignore[method-assign]
        self.writelines = self._writelines_later  # type: ignore[method-assign]
        self._loop.call_soon(self._uncork)

    def _write_later(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= _FLUSH_AT:
            self._flush()

    def _writelines_later(self, chunks: list[bytes | memoryview]) -> None:
        self._pending += chunks
        self._pending_size += sum(map(len, chunks))
        if self._pending_size >= _FLUSH_AT:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, []
            self._pending_size = 0
            self._transport_writelines(pending)

    def _uncork(self) -> None:
        if self.transport is not None:
            self._flush()
            self._uncorked()


class TlsAcceptor(asyncio.Protocol):
    """Server side: runs the TLS handshake of an accepted connection, then hands the
    encrypted transport to ``link``.

    The handshake is a task of its own with ``timeout`` (the loop's ``start_tls``, so the data
    phase gets the loop's native TLS transport), not part of the accept loop. The loop may have
    read the start of the ClientHello before ``start_tls`` takes the connection over (uvloop
    starts reading right after ``connection_made``): those bytes are handed to the TLS
    protocol once it is in place, before anything else is read. Until ``link`` takes over,
    this object is also the TLS transport's protocol: whatever arrives right behind the
    handshake (a client's HELLO often shares a packet with its Finished) is kept and
    replayed to ``link``. ``on_done(error)`` is called once: with None when ``link`` took
    over, or with the exception that ended the handshake (the connection is then closed).
    """

    def __init__(
        self,
        link: ProtocolLink,
        context: ssl.SSLContext,
        timeout: float,
        on_done: Callable[[BaseException | None], None],
    ) -> None:
        self._link = link
        self._context = context
        self._timeout = timeout
        self._on_done = on_done
        self._early: list[bytes] = []  # before start_tls: raw bytes; after: plaintext
        self._lost = False
        self._handed_over = False
        self.peer: tuple[str, int] | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.peer = _host_port(transport.get_extra_info("peername"))
        self.task = asyncio.get_running_loop().create_task(self._handshake(transport))

    def data_received(self, data: bytes) -> None:
        self._early.append(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        # the TLS protocol may have scheduled this call before the link took over
        if self._handed_over:
            self._link.connection_lost(exc)
        else:
            self._lost = True

    async def _handshake(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        start = loop.create_task(
            loop.start_tls(
                transport,
                self,
                self._context,
                server_side=True,
                ssl_handshake_timeout=self._timeout,
            )
        )
        try:
            # start_tls's first step swaps the transport's protocol and queues the TLS
            # protocol's connection_made; the bytes read before that go in right after it
            await asyncio.sleep(0)
            raw, self._early = self._early, []
            if raw:
                loop.call_soon(_feed, transport.get_protocol(), b"".join(raw))
            encrypted = await start
        except BaseException as exc:
            start.cancel()
            transport.abort()
            self._on_done(exc)
            if not isinstance(exc, Exception):
                raise
            return
        if encrypted is None or self._lost or encrypted.is_closing():
            self._on_done(ConnectionResetError("connection closed right after the TLS handshake"))
            return
        self._on_done(None)
        self._handed_over = True
        encrypted.set_protocol(self._link)
        self._link.connection_made(encrypted)
        for data in self._early:
            self._link.data_received(data)
        self._early.clear()


def _discard(data: object) -> None:
    pass


def _feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Deliver ``data`` to ``protocol`` as if the loop had just read it."""
    if hasattr(protocol, "buffer_updated"):  # asyncio's and uvloop's TLS protocols
        view = memoryview(data)
        while view:
            buffered = cast(asyncio.BufferedProtocol, protocol)
            buffer = memoryview(buffered.get_buffer(len(view)))
            n = min(len(buffer), len(view))
            buffer[:n] = view[:n]
            buffered.buffer_updated(n)
            view = view[n:]
    else:
        cast(asyncio.Protocol, protocol).data_received(data)


class StreamLink:
    """A session over any anyio byte stream; :meth:`run` pumps it until it closes."""

    def __init__(self, stream: ByteStream, config: SessionConfig) -> None:
        self._stream = stream
        self._high = config.write_high_water
        self._out: list[bytes | memoryview] = []
        self._out_size = 0
        self._wakeup = anyio.Event()
        self._paused = False
        self._closing = False
        self._aborting = False
        self._session: Session | None = None
        self._scope: anyio.CancelScope | None = None  # run()'s, while it runs

    def write(self, data: bytes) -> None:
        self._out.append(data)
        self._queued(len(data))

    def writelines(self, chunks: list[bytes | memoryview]) -> None:
        self._out += chunks
        self._queued(sum(map(len, chunks)))

    def _queued(self, n: int) -> None:
        self._out_size += n
        self._wakeup.set()
        if not self._paused and self._out_size > self._high and self._session is not None:
            self._paused = True
            self._session.pause_writing()

    def close(self) -> None:
        self._closing = True
        self._wakeup.set()

    def abort(self) -> None:
        self._closing = self._aborting = True
        self._wakeup.set()
        if self._scope is not None:
            self._scope.cancel()  # even a send the peer never takes must not hold us

    async def run(self, session: Session) -> None:
        """Read into and write out of ``session`` until either side closes."""
        self._session = session
        try:
            async with anyio.create_task_group() as tg:
                self._scope = tg.cancel_scope
                tg.start_soon(self._read_loop, session)
                await self._write_loop(session)
                tg.cancel_scope.cancel()
        finally:
            session.connection_lost(None)
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()

    async def _read_loop(self, session: Session) -> None:
        receive = self._stream.receive
        try:
            while True:
                session.data_received(await receive(256 << 10))
        except anyio.EndOfStream:
            session.connection_lost(None)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            session.connection_lost(exc)
        self.close()

    async def _write_loop(self, session: Session) -> None:
        while not self._aborting:
            if not self._out:
                if self._closing:
                    return
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
                continue
            data = b"".join(self._out)
            self._out.clear()
            self._out_size = 0
            try:
                await self._stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                session.connection_lost(exc)
                return
            if self._paused and self._out_size <= self._high // 4:
                self._paused = False
                session.resume_writing()


def _host_port(address: object) -> tuple[str, int] | None:
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None
