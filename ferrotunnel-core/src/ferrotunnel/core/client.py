"""The tunnel client: one session to the server, each incoming stream relayed locally.

The client keeps its session up for as long as it runs. When the connection drops it
reconnects with exponential backoff and full jitter, and its HELLO — with the same client id
— claims the same tunnels again; the server hands them back at once. A REJECT that retrying
cannot fix (a wrong token, an unsupported version, a name held by someone else) ends the
client with :class:`RejectedError` instead of a retry storm.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Self, cast

import anyio
from anyio.abc import ByteStream, TaskGroup, TaskStatus
from anyio.streams.tls import TLSAttribute, TLSStream

from ferrotunnel.protocol import (
    ALPN_PROTOCOL,
    SUPPORTED_VERSIONS,
    ErrorCode,
    GrantedTunnel,
    Hello,
    ProtocolError,
    Reject,
    TunnelKind,
    TunnelRequest,
    Welcome,
)

from .backoff import Backoff
from .errors import ConfigError, HandshakeError, RejectedError, SessionClosedError, TlsError
from .links import ProtocolLink, StreamLink
from .net import Address, running_asyncio_loop
from .relay import OriginPool, SpliceProtocol, pump
from .session import Role, Session, SessionConfig
from .stream import Stream
from .tls import tls_info

if TYPE_CHECKING:
    from .plugin.manager import PluginHost
    from .plugin.types import StreamObserver, StreamTap

__all__ = ["Client", "ClientBuilder", "ClientConfig", "ClientStatus", "Tunnel"]

log = logging.getLogger("ferrotunnel.core.client")

AGENT = "ferrotunnel-python/0.1"

StreamHandler = Callable[[Stream], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Tunnel:
    """One tunnel the client serves: streams for ``name`` go to ``local_addr`` (or ``handler``).

    ``remote_port`` asks the server for a specific public TCP port; without it the server
    chooses. HTTP tunnels are routed by ``hostnames`` (default: ``name``) and ``path`` prefix;
    ``host_header`` is the Host the origin sees (None: the visitor's). ``local_tls`` connects to
    an HTTPS origin, and ``local_tls_http2`` (a context like it, with
    ``set_alpn_protocols(["h2"])``) to the same origin for a visitor's HTTP/2 connection:
    gRPC servers refuse TLS without ALPN ``h2`` (None: ``local_tls``, no ALPN). ``handler``
    serves streams in-process instead of a local address.
    """

    name: str
    local_addr: Address | None = None
    kind: TunnelKind = TunnelKind.TCP
    remote_port: int | None = None
    hostnames: tuple[str, ...] = ()
    handler: StreamHandler | None = None
    path: str | None = None
    host_header: str | None = None
    local_tls: ssl.SSLContext | None = None
    local_tls_http2: ssl.SSLContext | None = None

    def origin_tls(self, stream: Stream) -> ssl.SSLContext | None:
        """The TLS context for ``stream``'s origin connection (None: cleartext)."""
        if stream.open_frame.own_connection and self.local_tls_http2 is not None:
            return self.local_tls_http2
        return self.local_tls

    def __post_init__(self) -> None:
        if (self.local_addr is None) == (self.handler is None):
            raise ConfigError(f"tunnel {self.name!r} needs exactly one of local_addr or handler")

    def request(self) -> TunnelRequest:
        options = {"host_header": self.host_header} if self.host_header else {}
        return TunnelRequest(
            self.name, self.kind, self.remote_port, self.hostnames, self.path, options
        )


@dataclass(frozen=True, slots=True)
class ClientConfig:
    server_addr: Address
    tunnels: tuple[Tunnel, ...]
    token: str | None = None
    #: identifies this client across reconnects, so it gets its tunnels back at once
    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    session: SessionConfig = field(default_factory=SessionConfig)
    reconnect: bool = True
    backoff: Backoff = field(default_factory=Backoff)
    drain_timeout: float = 3.0
    #: TLS to the server (None: plain TCP). ``ferrotunnel.plugins.tls`` builds one that
    #: verifies the server (system roots or a given CA) and offers ALPN ``ferrotunnel/1``.
    ssl_context: ssl.SSLContext | None = None
    #: the name the server's certificate must match (default: the host of ``server_addr``)
    server_hostname: str | None = None

    def __post_init__(self) -> None:
        if not self.tunnels:
            raise ConfigError("at least one tunnel is required")
        names = [t.name for t in self.tunnels]
        if len(set(names)) != len(names):
            raise ConfigError("tunnel names must be unique")


class ClientStatus(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


class Client:
    """A ferrotunnel client.

    ``async with Client(server_addr="host:7835", token="...", local_addr="127.0.0.1:8000",
    protocol="tcp") as client: print(client.tunnels)``; or ``await client.start()`` and later
    ``await client.shutdown()`` from the same task.

    ``plugins`` (a :class:`~ferrotunnel.core.plugin.PluginHost`) get ``ferrotunnel_startup`` /
    ``ferrotunnel_shutdown`` with this client, ``ferrotunnel_handshake_done`` for each
    connection attempt, and ``ferrotunnel_tunnel_registered`` / ``ferrotunnel_tunnel_closed``
    as its session comes and goes. ``stream_observers`` (usually what the plugins'
    ``ferrotunnel_stream_observers`` return), and those given to :meth:`observe` later, are
    shown each stream the server opens (see :class:`~ferrotunnel.core.plugin.StreamObserver`).
    """

    def __init__(
        self,
        config: ClientConfig | None = None,
        *,
        plugins: PluginHost | None = None,
        stream_observers: Sequence[StreamObserver] = (),
        **settings: object,
    ) -> None:
        if config is None:
            config = _client_config(settings)
        elif settings:
            raise TypeError("pass either a ClientConfig or keyword settings, not both")
        self.config = config
        self.status = ClientStatus.IDLE
        self.session: Session | None = None
        #: what the server granted, after :meth:`start`
        self.tunnels: tuple[GrantedTunnel, ...] = ()
        self.reconnects = 0
        self._by_name = {t.name: t for t in config.tunnels}
        self._tg: TaskGroup | None = None
        self._stopping = False
        self._connecting: set[asyncio.Task[object]] = set()
        self._connected = anyio.Event()
        self._finished = anyio.Event()
        #: idle origin connections of HTTP tunnels (asyncio), reused across visitors
        self.origin_pool = OriginPool()
        self.plugins = plugins
        #: what plugins serve for this client, name -> URL (e.g. ``"dashboard"``)
        self.endpoints: dict[str, str] = {}
        self._observers = list(stream_observers)

    def observe(self, observer: StreamObserver) -> None:
        """Show ``observer`` every stream the server opens from now on (see
        :class:`~ferrotunnel.core.plugin.StreamObserver`)."""
        self._observers.append(observer)

    def _open_tap(self, stream: Stream) -> StreamTap | None:
        """Show ``stream`` to the observers; the taps they return, as one (or None)."""
        taps: list[StreamTap] = []
        for observer in self._observers:
            try:
                tap = observer.on_stream(stream)
            except Exception:
                log.exception("stream observer %r failed", observer)
                continue
            if tap is not None:
                taps.append(tap)
        if len(taps) > 1:
            return _Taps(taps)
        return taps[0] if taps else None

    @staticmethod
    def builder() -> ClientBuilder:
        return ClientBuilder()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()

    async def start(self) -> tuple[GrantedTunnel, ...]:
        """Connect and register the tunnels; returns once the first session is up.

        Raises :class:`RejectedError` if the server refuses for good, and with
        ``reconnect=False`` any connection error of the first attempt.
        """
        if self._tg is not None:
            raise RuntimeError("client already started")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            if self.plugins is not None:
                await self.plugins.startup(self)
            await tg.start(self._run)
        except BaseException:
            try:  # (under a cancellation closing the task group raises it: see shutdown)
                await self._close_task_group()
            finally:
                self.status = ClientStatus.CLOSED
                await self._shutdown_plugins()
            raise
        return self.tunnels

    async def shutdown(self) -> None:
        """Tell the server we are going, let open streams finish briefly, disconnect."""
        if self._tg is None or self._stopping:
            return
        self._stopping = True
        with anyio.CancelScope(shield=True):
            if self.session is not None and not self.session.closed:
                await self.session.drain(self.config.drain_timeout)
        self.origin_pool.close()
        try:
            # under a cancellation (Ctrl-C, a cancelled task group) closing the task group
            # raises it: the client is closed and its plugins are told all the same
            await self._close_task_group()
        finally:
            self.status = ClientStatus.CLOSED
            await self._shutdown_plugins()

    async def _shutdown_plugins(self) -> None:
        if self.plugins is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await self.plugins.shutdown(self)
                except Exception:
                    log.exception("a plugin failed in ferrotunnel_shutdown")

    def _notify(self, hook_name: str, session: Session) -> None:
        if self.plugins is not None:
            for tunnel in self.tunnels:
                self.plugins.notify(hook_name, session=session, tunnel=tunnel)

    async def _close_task_group(self) -> None:
        tg, self._tg = self._tg, None
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)

    async def serve_forever(self) -> None:
        """Start (if needed) and run until cancelled, rejected for good, or — with
        ``reconnect=False`` — disconnected.

        A client it started is shut down when it returns; one already started (``async
        with``, ``start()``) is left to its owner, so a deadline around this call
        (``move_on_after``) ends only the wait.
        """
        if self._tg is not None:
            await self._finished.wait()
            return
        await self.start()
        try:
            await self._finished.wait()
        finally:
            await self.shutdown()

    async def wait_connected(self) -> None:
        """Wait until a session is up (again, after a reconnect)."""
        while self.status is not ClientStatus.CONNECTED:
            await self._connected.wait()

    # ------------------------------------------------------------------ connection loop

    async def _run(self, *, task_status: TaskStatus[None]) -> None:
        try:
            await self._connect_loop(task_status)
        finally:
            self._finished.set()

    async def _connect_loop(self, task_status: TaskStatus[None]) -> None:
        attempt = 0
        started = False
        self.status = ClientStatus.CONNECTING
        while True:
            try:
                session, welcome = await self._connect()
            # an error that ends the client is raised, not logged too: its caller reports it
            # (the command line once, as its exit message)
            except TlsError:
                self.status = ClientStatus.CLOSED
                raise
            except RejectedError as exc:
                if exc.code.is_final or not self.config.reconnect:
                    self.status = ClientStatus.CLOSED
                    raise
                error: BaseException = exc
            except (OSError, HandshakeError, ProtocolError, TimeoutError) as exc:
                if not started and str(exc) == _CERTIFICATE_REFUSED:
                    # on the very first attempt this is a configuration error, not an outage
                    self.status = ClientStatus.CLOSED
                    raise TlsError(str(exc)) from exc
                if not self.config.reconnect:
                    self.status = ClientStatus.CLOSED
                    raise HandshakeError(
                        f"cannot connect to {self.config.server_addr}: {_describe(exc)}"
                    ) from exc
                error = exc
            else:
                attempt = 0
                self.session = session
                self.tunnels = welcome.tunnels
                self.status = ClientStatus.CONNECTED
                self._connected.set()
                self._connected = anyio.Event()
                for tunnel in welcome.tunnels:
                    log.info("tunnel %r is public at %s", tunnel.name, tunnel.public_url)
                self._notify("ferrotunnel_tunnel_registered", session)
                if not started:
                    started = True
                    task_status.started()
                try:
                    await session.run()
                finally:
                    if self._stopping or not self.config.reconnect:
                        self.status = ClientStatus.CLOSED
                    else:
                        self.status = ClientStatus.RECONNECTING
                    self._notify("ferrotunnel_tunnel_closed", session)
                if self._stopping or not self.config.reconnect:
                    # without reconnects the client ends here: its caller reports it (the
                    # command line once, with session.close_reason), rather than a log line
                    # saying "reconnecting"
                    return
                self.reconnects += 1
                log.warning(
                    "lost the connection to %s (%s); reconnecting",
                    self.config.server_addr,
                    _describe(session.close_reason),
                )
                continue
            delay = self.config.backoff.delay(attempt)
            attempt += 1
            log.warning(
                "cannot connect to %s: %s; retrying in %.1f s",
                self.config.server_addr,
                _describe(error),
                delay,
            )
            await anyio.sleep(delay)

    async def _connect(self) -> tuple[Session, Welcome]:
        """Connect, send HELLO, return the session once WELCOME arrives."""
        cfg = self.config
        assert self._tg is not None
        session: Session | None = None
        started = time.monotonic()
        hello: Hello | None = None
        try:
            with anyio.fail_after(cfg.session.handshake_timeout):
                session = await self._open_connection()
                session.on_stream = self._on_stream
                hello = Hello(
                    versions=SUPPORTED_VERSIONS,
                    client_id=cfg.client_id,
                    tunnels=tuple(t.request() for t in cfg.tunnels),
                    token=cfg.token,
                    window=cfg.session.window,
                    max_frame=cfg.session.max_frame,
                    agent=AGENT,
                )
                session.send_hello(hello)
                reply = await session.wait_handshake()
        except TimeoutError:
            if session is not None:
                session.abort()
                self._handshake_done(session, hello, "timeout", started)
            raise HandshakeError(
                f"no answer from the server within {cfg.session.handshake_timeout:.0f} s"
            ) from None
        except SessionClosedError as exc:
            if session is not None:
                self._handshake_done(session, hello, "closed", started)
            reason = session.close_reason if session else None
            tls_failure = _ssl_error_in(reason)
            if tls_failure is not None:
                # TLS 1.3: a refused client certificate is only reported after the handshake
                raise _tls_error(tls_failure, None) from exc
            if session is not None and session.bytes_in == 0:
                if session.tls is not None:
                    # closed right after the TLS handshake, before a single frame: what a
                    # server that checks client certificates does (its alert is usually lost)
                    raise HandshakeError(_CERTIFICATE_REFUSED) from exc
                raise HandshakeError(
                    "the server closed the connection without answering HELLO "
                    "(if it uses TLS, connect with --tls)"
                ) from exc
            raise HandshakeError(str(reason or exc)) from exc
        except BaseException:
            if session is not None:
                session.abort()  # cancelled mid-handshake (shutdown): do not leave it open
            raise
        if isinstance(reply, Reject):
            self._handshake_done(session, hello, reply.code.value, started)
            raise RejectedError(reply.code, reply.message)
        assert isinstance(reply, Welcome)
        self._handshake_done(session, hello, None, started)
        return session, reply

    def _handshake_done(
        self, session: Session, hello: Hello | None, failure: str | None, started: float
    ) -> None:
        if self.plugins is not None:
            self.plugins.notify(
                "ferrotunnel_handshake_done",
                session=session,
                hello=hello,
                failure=failure,
                duration=time.monotonic() - started,
            )

    async def _open_connection(self) -> Session:
        cfg = self.config
        address = cfg.server_addr
        context = cfg.ssl_context
        hostname = (cfg.server_hostname or address.host) if context is not None else None
        try:
            loop = running_asyncio_loop()
            if loop is not None:
                _, link = await loop.create_connection(
                    lambda: ProtocolLink(Role.CLIENT, cfg.session),
                    address.host,
                    address.port,
                    ssl=context,
                    server_hostname=hostname,
                )
                session = link.session
            else:
                stream: ByteStream = await anyio.connect_tcp(address.host, address.port)
                if context is not None:
                    try:
                        stream = await TLSStream.wrap(
                            stream,
                            hostname=hostname,
                            ssl_context=context,
                            standard_compatible=False,
                        )
                    except BaseException:
                        await anyio.aclose_forcefully(stream)
                        raise
                stream_link = StreamLink(stream, cfg.session)
                tls = tls_info(stream.extra(TLSAttribute.ssl_object, None))
                session = Session(stream_link, Role.CLIENT, cfg.session, peer=None, tls=tls)
                assert self._tg is not None
                self._tg.start_soon(stream_link.run, session)
        except ssl.SSLError as exc:
            raise _tls_error(exc, hostname) from exc
        except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
            raise HandshakeError(
                "the server closed the connection during the TLS handshake"
            ) from exc
        alpn = session.tls.alpn if session.tls is not None else None
        if alpn is not None and alpn != ALPN_PROTOCOL:
            session.abort()
            raise TlsError(
                f"{address} does not speak the ferrotunnel protocol over TLS "
                f"(ALPN {alpn!r}, expected {ALPN_PROTOCOL!r})"
            )
        return session

    # ------------------------------------------------------------------ streams

    def _on_stream(self, stream: Stream) -> None:
        tunnel = self._by_name.get(stream.tunnel)
        if tunnel is None:
            log.warning("server opened a stream for unknown tunnel %r", stream.tunnel)
            stream.reset(ErrorCode.REFUSED_STREAM)
            return
        tap = self._open_tap(stream) if self._observers else None
        assert self._tg is not None
        if tunnel.handler is not None:
            self._tg.start_soon(self._serve_with_handler, tunnel.handler, stream, tap)
            return
        assert tunnel.local_addr is not None
        loop = running_asyncio_loop()
        if loop is not None:
            self._splice_local(loop, stream, tunnel, tap)
        else:
            self._tg.start_soon(self._pump_local, stream, tunnel, tap)

    def _splice_local(
        self,
        loop: asyncio.AbstractEventLoop,
        stream: Stream,
        tunnel: Tunnel,
        tap: StreamTap | None,
    ) -> None:
        """asyncio: connect to the local service (or reuse an idle connection to it, for HTTP);
        from then on bytes move in callbacks."""
        addr = tunnel.local_addr
        assert addr is not None
        pool: OriginPool | None = self.origin_pool
        if tunnel.kind is not TunnelKind.HTTP or stream.open_frame.own_connection:
            pool = None  # an HTTP/2 connection's preface must open the origin connection
        tls = tunnel.origin_tls(stream)
        if pool is not None:
            idle = pool.take(tunnel.name)
            if idle is not None:
                idle.adopt(stream, tap)
                return
        task = loop.create_task(
            loop.create_connection(
                lambda: SpliceProtocol(lambda _: stream, pool, tunnel.name, tap),
                addr.host,
                addr.port,
                ssl=tls,
                server_hostname=addr.host if tls is not None else None,
            )
        )
        self._connecting.add(task)

        def connected(task: asyncio.Task[object]) -> None:
            self._connecting.discard(task)
            if task.cancelled() or task.exception() is not None:
                exc = None if task.cancelled() else task.exception()
                _local_connect_failed(stream, addr, exc, tap)

        task.add_done_callback(connected)

    async def _pump_local(self, stream: Stream, tunnel: Tunnel, tap: StreamTap | None) -> None:
        addr = tunnel.local_addr
        assert addr is not None
        try:
            sock: anyio.abc.ByteStream
            tls = tunnel.origin_tls(stream)
            if tls is None:
                sock = await anyio.connect_tcp(addr.host, addr.port)
            else:
                # closing must not wait for a close_notify the origin may never send
                sock = await anyio.connect_tcp(
                    addr.host,
                    addr.port,
                    tls=True,
                    ssl_context=tls,
                    tls_hostname=addr.host,
                    tls_standard_compatible=False,
                )
        except OSError as exc:
            _local_connect_failed(stream, addr, exc, tap)
            return
        await pump(stream, sock, tap)

    async def _serve_with_handler(
        self, handler: StreamHandler, stream: Stream, tap: StreamTap | None
    ) -> None:
        error: str | None = None
        try:
            await handler(stream)
        except Exception as exc:
            log.exception("stream handler for tunnel %r failed", stream.tunnel)
            stream.reset(ErrorCode.INTERNAL_ERROR)
            error = f"the stream handler failed: {_describe(exc)}"
        finally:
            stream.close()
            if tap is not None:
                tap.closed(error)


class _Taps:
    """Several observers' taps on one stream."""

    def __init__(self, taps: list[StreamTap]) -> None:
        self.taps = taps

    def to_origin(self, data: bytes | memoryview) -> None:
        for tap in self.taps:
            tap.to_origin(data)

    def to_visitor(self, data: bytes) -> None:
        for tap in self.taps:
            tap.to_visitor(data)

    def closed(self, error: str | None) -> None:
        for tap in self.taps:
            tap.closed(error)


def _local_connect_failed(
    stream: Stream, addr: Address, exc: BaseException | None, tap: StreamTap | None
) -> None:
    """The local service could not be reached: reset the stream (the server's HTTP ingress
    answers the visitor 502), then show the tap what had arrived for the service — the
    visitor's request, so a dashboard lists it — and why it failed."""
    why = _connect_failure(addr, exc)
    log.warning("tunnel %r: %s", stream.tunnel, why)
    arrived = stream.peek_buffered()
    stream.reset(ErrorCode.CONNECT_ERROR)
    if tap is not None:
        for chunk in arrived:
            tap.to_origin(chunk)
        tap.closed(why)


def _connect_failure(addr: Address, exc: BaseException | None) -> str:
    if _refused(exc):
        return f"the local service at {addr} refused the connection"
    return f"cannot connect to the local service at {addr}: {_describe(exc)}"


def _refused(exc: BaseException | None) -> bool:
    """The connection was refused (by every address tried: anyio raises "All connection
    attempts failed" from the error, or from a group of them)."""
    if exc is None or isinstance(exc, ConnectionRefusedError):
        return exc is not None
    if isinstance(exc, BaseExceptionGroup):
        return all(map(_refused, exc.exceptions))
    return _refused(exc.__cause__)


_CERTIFICATE_REFUSED = (
    "TLS: the server closed the connection right after the handshake: it requires a client "
    "certificate (--tls-cert, --tls-key) issued by its CA, or does not accept this client's"
)


def _ssl_error_in(exc: BaseException | None) -> ssl.SSLError | None:
    """The TLS error behind a closed connection, if that is what closed it."""
    while exc is not None:
        if isinstance(exc, ssl.SSLError):
            return exc
        exc = exc.__cause__
    return None


#: OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH
_NAME_MISMATCH = (62, 64)


def _tls_error(exc: ssl.SSLError, hostname: str | None) -> HandshakeError:
    """A clear error for a failed TLS handshake: :class:`TlsError` (fatal) unless the
    connection merely closed under it (a restarting server), which is worth a retry."""
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError):
        return HandshakeError(f"TLS handshake interrupted: {exc}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in _NAME_MISMATCH:  # the CA is trusted: the name is the problem
            hint = "Connect to a name it carries, or give one with --tls-server-name"
        else:
            hint = "Trust the CA that issued it (--tls-ca)"
        return TlsError(
            f"TLS: cannot verify the server's certificate for {hostname}: "
            f"{exc.verify_message.rstrip('.')}. {hint}."
        )
    reason = (exc.reason or str(exc)).upper()
    if "PROTOCOL_VERSION" in reason or "UNSUPPORTED_PROTOCOL" in reason:
        return TlsError("TLS: the server and this client have no TLS version in common")
    if "CERTIFICATE_REQUIRED" in reason:
        return TlsError("TLS: the server requires a client certificate (--tls-cert, --tls-key)")
    if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason:
        return TlsError("TLS: the server does not accept this client's certificate")
    return TlsError(f"TLS handshake failed: {reason.lower().replace('_', ' ')}")


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "closed"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _client_config(settings: dict[str, object]) -> ClientConfig:
    """Keyword settings → :class:`ClientConfig`; a single tunnel may be given inline with
    ``local_addr``, ``protocol``, ``tunnel_id`` and ``remote_port``."""
    values = dict(settings)
    server = values.pop("server_addr", None)
    if not isinstance(server, str | Address):
        raise ConfigError("server_addr is required")
    values["server_addr"] = (
        Address.parse(server, what="server_addr") if isinstance(server, str) else server
    )
    inline: dict[str, object] = {
        k: values.pop(k)
        for k in ("local_addr", "protocol", "tunnel_id", "remote_port", "handler")
        if k in values
    }
    if "tunnels" in values:
        if inline:
            raise ConfigError("give either tunnels or local_addr/protocol/tunnel_id, not both")
        values["tunnels"] = tuple(cast(Sequence[Tunnel], values["tunnels"]))
    else:
        values["tunnels"] = (_inline_tunnel(inline),)
    try:
        return ClientConfig(**values)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


def _inline_tunnel(inline: dict[str, object]) -> Tunnel:
    kind = TunnelKind(str(inline.get("protocol", "tcp")))
    local = inline.get("local_addr")
    local_addr = Address.parse(local, what="local_addr") if isinstance(local, str) else local
    handler = inline.get("handler")
    name = inline.get("tunnel_id")
    if name is None:
        name = f"{kind}-{local_addr.port}" if isinstance(local_addr, Address) else str(kind)
    port = inline.get("remote_port")
    return Tunnel(
        name=str(name),
        local_addr=local_addr if isinstance(local_addr, Address) else None,
        kind=kind,
        remote_port=int(port) if isinstance(port, int) else None,
        hostnames=(str(name),) if kind is TunnelKind.HTTP else (),
        handler=handler,  # type: ignore[arg-type]
    )


class ClientBuilder:
    """``Client.builder().server_addr("host:7835").token("t").local_addr("127.0.0.1:8000").build()``"""

    def __init__(self) -> None:
        self._settings: dict[str, object] = {}

    def _set(self, key: str, value: object) -> ClientBuilder:
        self._settings[key] = value
        return self

    def server_addr(self, address: str) -> ClientBuilder:
        return self._set("server_addr", address)

    def token(self, token: str) -> ClientBuilder:
        return self._set("token", token)

    def local_addr(self, address: str) -> ClientBuilder:
        return self._set("local_addr", address)

    def protocol(self, protocol: str) -> ClientBuilder:
        return self._set("protocol", protocol)

    def tunnel_id(self, name: str) -> ClientBuilder:
        return self._set("tunnel_id", name)

    def remote_port(self, port: int) -> ClientBuilder:
        return self._set("remote_port", port)

    def tunnels(self, tunnels: Sequence[Tunnel]) -> ClientBuilder:
        return self._set("tunnels", tuple(tunnels))

    def client_id(self, client_id: str) -> ClientBuilder:
        return self._set("client_id", client_id)

    def auto_reconnect(self, enabled: bool) -> ClientBuilder:
        return self._set("reconnect", enabled)

    def backoff(self, base: float, cap: float) -> ClientBuilder:
        return self._set("backoff", Backoff(base, cap))

    def session_config(self, config: SessionConfig) -> ClientBuilder:
        return self._set("session", config)

    def tls(self, context: ssl.SSLContext, server_hostname: str | None = None) -> ClientBuilder:
        """TLS to the server, e.g. ``ferrotunnel.plugins.tls.client_context(ca="ca.pem")``."""
        self._set("server_hostname", server_hostname)
        return self._set("ssl_context", context)

    def build(self) -> Client:
        return Client(_client_config(self._settings))
