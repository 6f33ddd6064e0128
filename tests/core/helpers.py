"""Building blocks of the core tests: local services, a server+client tunnel, raw peers.

Everything listens on 127.0.0.1 port 0. The context managers must be entered and exited
from the same task (the test's), like :class:`~ferrotunnel.core.Server` itself.
"""

from __future__ import annotations

import contextlib
import random
import resource
import socket
import ssl
import struct
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import anyio
from anyio.abc import ByteReceiveStream, ByteStream, SocketAttribute, SocketStream, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ferrotunnel.core import Backoff, Client, Server, Session, SessionConfig, Stream
from ferrotunnel.core.links import StreamLink
from ferrotunnel.core.session import Role
from ferrotunnel.protocol import (
    SUPPORTED_VERSIONS,
    Event,
    FrameDecoder,
    Hello,
    Limits,
    Ping,
    Pong,
    TunnelRequest,
    Welcome,
    encode,
)

TOKEN = "test-token"
#: generous limits for decoding what a server sends to a raw peer (and for crafting frames)
RAW_LIMITS = Limits(max_frame_size=(1 << 24) - 1, max_control_size=(1 << 24) - 1)
#: the session settings of most tests: defaults, but no 3 s drains on teardown
FAST = SessionConfig(handshake_timeout=5.0)
_NETWORK_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)

E = TypeVar("E")
T = TypeVar("T")

Handler = Callable[[SocketStream], Awaitable[None]]


# ---------------------------------------------------------------------------- local services


async def echo_handler(sock: SocketStream) -> None:
    """Echo until EOF, then half-close; a reset peer just ends it."""
    async with sock:
        try:
            async for chunk in sock:
                await sock.send(chunk)
            await sock.send_eof()
        except _NETWORK_ERRORS:
            pass


@asynccontextmanager
async def tcp_service(handler: Handler) -> AsyncIterator[int]:
    """Serve ``handler`` on 127.0.0.1, an ephemeral port; yields the port."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handler)
        try:
            yield port
        finally:
            tg.cancel_scope.cancel()


def echo_server() -> AbstractAsyncContextManager[int]:
    """``async with echo_server() as port``: a TCP echo service."""
    return tcp_service(echo_handler)


def says(word: bytes) -> Handler:
    """A service that sends ``word`` to each connection and closes it."""

    async def handler(sock: SocketStream) -> None:
        async with sock:
            await sock.send(word)

    return handler


async def echo_stream_handler(stream: Stream) -> None:
    """A client-side :class:`Tunnel` handler that echoes the stream (pull API)."""
    async for chunk in stream:
        await stream.send(chunk)
    await stream.send_eof()


# ---------------------------------------------------------------------------- tunnels


@dataclass
class TunnelPair:
    server: Server
    client: Client

    @property
    def port(self) -> int:
        """The public TCP port of the client's (first) tunnel."""
        port = self.client.tunnels[0].remote_port
        assert port is not None
        return port


def make_server(
    session: SessionConfig = FAST, *, drain_timeout: float = 0.5, **settings: Any
) -> Server:
    """A server on 127.0.0.1: control and TCP ingress on ephemeral ports (``tcp_bind=None``
    for none), a short drain so teardown is quick; other settings as given."""
    settings.setdefault("tcp_bind", "127.0.0.1:0")
    return Server(
        token=TOKEN,
        bind=settings.pop("bind", "127.0.0.1:0"),
        session=session,
        drain_timeout=drain_timeout,
        **settings,
    )


def make_client(
    server: Server | str,
    local_port: int | None = None,
    *,
    session: SessionConfig = FAST,
    **settings: Any,
) -> Client:
    """A client of ``server`` for one TCP tunnel to ``local_port`` (or ``handler=...``)."""
    if local_port is not None:
        settings["local_addr"] = f"127.0.0.1:{local_port}"
    if "tunnels" not in settings:
        settings.setdefault("protocol", "tcp")
    settings.setdefault("token", TOKEN)
    settings.setdefault("backoff", Backoff(0.05, 0.5))
    settings.setdefault("drain_timeout", 0.5)
    address = server if isinstance(server, str) else str(server.control_address)
    return Client(server_addr=address, session=session, **settings)


@asynccontextmanager
async def tunnel(
    local_port: int | None = None,
    *,
    session: SessionConfig = FAST,
    server_session: SessionConfig | None = None,
    server_settings: dict[str, Any] | None = None,
    **client_settings: Any,
) -> AsyncIterator[TunnelPair]:
    """A started server (control and ingress on port 0) and a client tunneling to
    ``local_port`` (or to ``handler=``)."""
    async with make_server(server_session or session, **(server_settings or {})) as server:
        client = make_client(server, local_port, session=session, **client_settings)
        async with client:
            yield TunnelPair(server, client)


@dataclass
class Background(Generic[T]):
    """An async context manager entered and exited by a task of its own (see
    :func:`background`): ``stop()`` may then be called from anywhere, under any cancel
    scope — unlike ``Server.shutdown()`` / ``Client.shutdown()``, which must run in the task
    that started them, properly nested with its other cancel scopes."""

    value: T
    _stop: anyio.Event
    _done: anyio.Event

    async def stop(self) -> None:
        """Exit the context manager (e.g. shut the server down) and wait until it has."""
        self._stop.set()
        await self._done.wait()


@asynccontextmanager
async def background(cm: AbstractAsyncContextManager[T]) -> AsyncIterator[Background[T]]:
    """Enter ``cm`` in a new task; yields a handle whose ``stop()`` exits it."""
    stop, done = anyio.Event(), anyio.Event()

    async def owner(*, task_status: TaskStatus[T]) -> None:
        try:
            async with cm as value:
                task_status.started(value)
                await stop.wait()
        finally:
            done.set()

    async with anyio.create_task_group() as tg:
        handle = Background(await tg.start(owner), stop, done)
        try:
            yield handle
        finally:
            await handle.stop()


async def connect(port: int) -> SocketStream:
    return await anyio.connect_tcp("127.0.0.1", port)


async def receive_all(sock: ByteReceiveStream, limit: int = 1 << 30) -> bytes:
    """Everything until EOF."""
    received = bytearray()
    async for chunk in sock:
        received += chunk
        assert len(received) <= limit, "received more than was sent"
    return bytes(received)


async def roundtrip(port: int, data: bytes) -> bytes:
    """Send ``data`` and EOF to ``port`` while reading the reply until EOF."""
    async with await connect(port) as sock, anyio.create_task_group() as tg:

        async def write() -> None:
            await sock.send(data)
            await sock.send_eof()

        tg.start_soon(write)
        reply = await receive_all(sock, len(data))
    return reply


async def wait_for(condition: Callable[[], bool], seconds: float = 5.0, poll: float = 0.01) -> None:
    """Poll ``condition`` until it holds: bounded in time (fail_after) and in iterations."""
    with anyio.fail_after(seconds):
        for _ in range(int(seconds / poll) + 2):
            if condition():
                return
            await anyio.sleep(poll)
    raise TimeoutError("condition never held")


async def read_until_error(sock: SocketStream, limit: int = 1 << 20) -> None:
    """Read and discard until the connection ends: raises EndOfStream (FIN) or
    BrokenResourceError (RST), or fails after ``limit`` bytes."""
    received = 0
    while received <= limit:
        received += len(await sock.receive())
    raise AssertionError(f"the connection stayed open past {limit} bytes")


def set_reset_on_close(sock: SocketStream) -> None:
    """SO_LINGER 0: closing the socket sends RST instead of FIN."""
    raw = sock.extra(SocketAttribute.raw_socket)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def free_port_range(size: int) -> tuple[int, int]:
    """``size`` consecutive TCP ports on 127.0.0.1 that are free right now.

    Tried first below the kernel's ephemeral range, so that the connections the test itself
    makes (which get ephemeral ports) cannot take them; else around a port-0 allocation."""
    try:
        low_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low_ephemeral = 32768
    rng = random.Random()
    for attempt in range(200):
        if attempt < 150 and low_ephemeral > 10_000 + size:
            base = rng.randrange(10_000, low_ephemeral - size)
        else:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                base = probe.getsockname()[1]
            if base + size > 65536:
                continue
        if all(_bindable(port) for port in range(base, base + size)):
            return base, base + size - 1
    raise RuntimeError("no free port range found")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def raise_nofile_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = hard if hard == resource.RLIM_INFINITY else max(soft, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# ---------------------------------------------------------------------------- raw peers


_MAX_READS = 100_000


class RawPeer:
    """A hand-driven protocol peer over a TCP connection: send crafted frames, read events."""

    def __init__(self, sock: SocketStream) -> None:
        self.sock = sock
        self.decoder = FrameDecoder(RAW_LIMITS)
        self.events: deque[Event] = deque()

    async def send(self, *events: Event) -> None:
        await self.sock.send(b"".join(encode(e, RAW_LIMITS) for e in events))

    async def send_raw(self, data: bytes) -> None:
        await self.sock.send(data)

    async def next_event(self) -> Event:
        """The next frame from the server; EndOfStream / BrokenResourceError when it closes."""
        for _ in range(_MAX_READS):
            if self.events:
                return self.events.popleft()
            chunk = await self.sock.receive()
            self.events.extend(self.decoder.feed(chunk))
        raise AssertionError("no complete frame after many reads")

    async def expect(self, kind: type[E], *, skip: tuple[type, ...] = (Ping, Pong)) -> E:
        """The next event that is not in ``skip``; it must be a ``kind``."""
        for _ in range(_MAX_READS):
            event = await self.next_event()
            if isinstance(event, kind):
                return event
            assert isinstance(event, skip), f"expected {kind.__name__}, got {event!r}"
        raise AssertionError(f"no {kind.__name__} among many frames")

    async def read_until_closed(self) -> list[Event]:
        """Every event until the server closes the connection (by FIN or RST)."""
        events: list[Event] = []
        try:
            for _ in range(_MAX_READS):
                events.append(await self.next_event())
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
            return events
        raise AssertionError("the server kept the connection open")


@asynccontextmanager
async def raw_session(
    server: Server,
    *,
    client_id: str = "raw-client",
    tunnels: tuple[TunnelRequest, ...] = (),
    window: int = 0,
    max_frame: int = 0,
    token: str = TOKEN,
) -> AsyncIterator[tuple[RawPeer, Welcome]]:
    """A raw connection to ``server`` that completed the handshake by hand."""
    address = server.control_address
    async with await anyio.connect_tcp(address.host, address.port) as sock:
        peer = RawPeer(sock)
        await peer.send(
            Hello(
                versions=SUPPORTED_VERSIONS,
                client_id=client_id,
                tunnels=tunnels,
                token=token,
                window=window,
                max_frame=max_frame,
                agent="raw-test-peer",
            )
        )
        with anyio.fail_after(5):
            welcome = await peer.expect(Welcome)
        yield peer, welcome


# ---------------------------------------------------------------------------- bare sessions


class MemoryByteStream(ByteStream):
    """One end of an in-memory, unbuffered byte pipe (see :func:`memory_pipe`): a sender
    blocks until the other end reads, so an end that stops reading stalls its peer."""

    def __init__(
        self, send: MemoryObjectSendStream[bytes], receive: MemoryObjectReceiveStream[bytes]
    ) -> None:
        self._send = send
        self._receive = receive
        self._leftover = b""

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = self._leftover or await self._receive.receive()
        self._leftover = data[max_bytes:]
        return data[:max_bytes]

    async def send(self, item: bytes) -> None:
        await self._send.send(bytes(item))

    async def send_eof(self) -> None:
        await self._send.aclose()

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._receive.aclose()


def memory_pipe() -> tuple[MemoryByteStream, MemoryByteStream]:
    a_send, b_receive = anyio.create_memory_object_stream[bytes](0)
    b_send, a_receive = anyio.create_memory_object_stream[bytes](0)
    return MemoryByteStream(a_send, a_receive), MemoryByteStream(b_send, b_receive)


@dataclass
class SessionPair:
    client: Session
    server: Session
    #: streams the client opened, as the server saw them (OPEN order)
    accepted: list[Stream]


@asynccontextmanager
async def session_pair(
    client_config: SessionConfig = FAST, server_config: SessionConfig | None = None
) -> AsyncIterator[SessionPair]:
    """Two :class:`Session` objects connected over real TCP (through the portable
    :class:`StreamLink`, so the same code runs on every backend), handshake done."""
    server_config = server_config or client_config
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener:
        port = listener.extra(SocketAttribute.local_port)
        client_sock = await anyio.connect_tcp("127.0.0.1", port)
        server_sock = await listener.listeners[0].accept()  # type: ignore[attr-defined]
    client_link = StreamLink(client_sock, client_config)
    server_link = StreamLink(server_sock, server_config)
    client = Session(client_link, Role.CLIENT, client_config)
    server = Session(server_link, Role.SERVER, server_config)
    pair = SessionPair(client, server, [])
    server.on_stream = pair.accepted.append
    async with anyio.create_task_group() as tg:
        tg.start_soon(client_link.run, client)
        tg.start_soon(server_link.run, server)
        with anyio.fail_after(5):
            client.send_hello(
                Hello(
                    SUPPORTED_VERSIONS,
                    "pair",
                    window=client_config.window,
                    max_frame=client_config.max_frame,
                )
            )
            hello = await server.wait_handshake()
            assert isinstance(hello, Hello)
            server.accept(
                Welcome(
                    SUPPORTED_VERSIONS[-1],
                    "pair-session",
                    window=server_config.window,
                    max_frame=server_config.max_frame,
                ),
                hello,
            )
            assert isinstance(await client.wait_handshake(), Welcome)
        try:
            yield pair
        finally:
            client.abort()
            server.abort()


def tls_client_hello() -> bytes:
    """The first flight of a real TLS client: a ClientHello record."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="tunnel.example")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()
