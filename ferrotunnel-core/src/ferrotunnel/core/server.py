"""The tunnel server: control listener, handshakes, tunnel registry, TCP ingress.

Each control connection is a :class:`Session`. Its handshake — TLS first, if configured, then
HELLO — runs in its own task under a deadline, so a silent or slow client never delays anyone
else's accept; connections still in their handshake are capped (``max_unauthenticated``) and
the excess is closed at accept, before a byte is read. A HELLO is checked (protocol version,
credentials — the token in constant time; an address with too many recent failures is refused
without a look at them), then its tunnels are *claimed*: a claim names a
public resource (a TCP port) and is owned by an *owner* — the authenticated identity plus the
client id the client sends. A claim held by a different owner is refused; one held by the
same owner is taken over at once and its stale session closed, so a client that crashed or
lost its network gets its names back on reconnect without waiting for timeouts. When a
session ends its claims are released and its dynamically bound ports closed.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import socket
import ssl
import time
import uuid
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Self, cast

import anyio
from anyio.abc import ByteStream, SocketStream, TaskGroup
from anyio.streams.tls import TLSAttribute, TLSStream

from ferrotunnel.protocol import (
    SUPPORTED_VERSIONS,
    GrantedTunnel,
    Hello,
    Reject,
    RejectCode,
    TunnelKind,
    TunnelRequest,
    Welcome,
)

from .errors import ConfigError, SessionClosedError, StreamLimitError
from .ingress import Ingress
from .links import ProtocolLink, StreamLink, TlsAcceptor
from .net import Address, Listener, listen, listening_as
from .plugin.manager import PluginHost
from .plugin.types import Authenticator, Identity, Peer, TcpConnection, TcpMiddleware
from .relay import SpliceProtocol, pump
from .session import Role, Session, SessionConfig
from .stream import Stream
from .throttle import FailureThrottle
from .tls import tls_info

__all__ = ["Refused", "Server", "ServerBuilder", "ServerConfig"]

log = logging.getLogger("ferrotunnel.core.server")


class Refused(Exception):
    """Raised by an authenticator (or the registry) to answer a HELLO with REJECT."""

    def __init__(self, code: RejectCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything a :class:`Server` needs. Addresses accept ``"host:port"`` strings."""

    token: str | None = None
    bind: Address = Address("0.0.0.0", 7835)  # noqa: RUF009 (frozen, so safe to share)
    tcp_bind: Address | None = None
    tcp_port_range: tuple[int, int] | None = None
    #: host name shown in public URLs (default: the ingress bind address, or this host's name)
    public_host: str | None = None
    session: SessionConfig = field(default_factory=SessionConfig)
    #: TLS for the control plane (None: plain TCP). ``ferrotunnel.plugins.tls`` builds one
    #: (TLS 1.3 only, ALPN ``ferrotunnel/1``, optional client certificates).
    ssl_context: ssl.SSLContext | None = None
    #: authenticated client sessions at once (handshakes in progress are not counted)
    max_sessions: int = 1000
    #: connections still in their handshake (TLS and HELLO) at once; more are closed at accept
    max_unauthenticated: int = 256
    #: most tunnels one client session may register
    max_tunnels: int = 64
    #: an address with this many failed authentications within ``auth_failure_window``
    #: seconds is refused (``rate_limited``) until the window has passed
    auth_failure_limit: int = 10
    auth_failure_window: float = 60.0
    #: on shutdown, how long open streams may take to finish
    drain_timeout: float = 3.0

    def __post_init__(self) -> None:
        if self.token is not None and not self.token:
            raise ConfigError("token must not be empty")
        for name in ("max_sessions", "max_unauthenticated", "max_tunnels", "auth_failure_limit"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.tcp_port_range is not None:
            low, high = self.tcp_port_range
            if not 1 <= low <= high <= 65535:
                raise ConfigError(f"tcp_port_range {low}-{high} is not a valid port range")


@dataclass(eq=False, slots=True)
class _TcpIngress:
    """A public TCP listener and the tunnel it currently feeds."""

    listener: Listener
    dynamic: bool  # bound for one claim: closed when the claim is released
    session: Session | None = None
    tunnel: str = ""  # as the client named it: streams are opened for this name
    label: str = ""  # as the server names it (Identity.tunnel_name): what plugins see


@dataclass(frozen=True, slots=True)
class _Owner:
    identity: str
    client_id: str


class Server:
    """A ferrotunnel server. ``async with Server(token=...) as server: ...``"""

    def __init__(
        self,
        config: ServerConfig | None = None,
        *,
        authenticators: Sequence[Authenticator] = (),
        ingresses: Sequence[Ingress] = (),
        tcp_middlewares: Sequence[TcpMiddleware] = (),
        plugins: PluginHost | None = None,
        **settings: object,
    ) -> None:
        if config is None:
            config = _server_config(settings)
        elif settings:
            raise TypeError("pass either a ServerConfig or keyword settings, not both")
        client_certs = (
            config.ssl_context is not None and config.ssl_context.verify_mode is ssl.CERT_REQUIRED
        )
        if config.token is None and not authenticators and not client_certs:
            raise ConfigError(
                "token is required (or pass authenticators, or require client certificates)"
            )
        self.config = config
        self._authenticators = tuple(authenticators)
        self._tcp_middlewares = tuple(tcp_middlewares)
        self.plugins = plugins
        self._granted: dict[Session, list[GrantedTunnel]] = {}
        self._tg: TaskGroup | None = None
        self._control: Listener | None = None
        self._fixed_ingress: _TcpIngress | None = None
        self._ingress: dict[int, _TcpIngress] = {}
        self._claims: dict[int, _Owner] = {}  # TCP port -> owner
        self._ingresses = {ingress.kind: ingress for ingress in ingresses}
        #: keys claimed through an Ingress -> (owner, session holding it)
        self._ingress_claims: dict[Hashable, tuple[_Owner, Session]] = {}
        self._remembered_ports: dict[tuple[_Owner, str], int] = {}
        self._sessions: dict[Session, _Owner] = {}
        #: accepted connections whose handshake has not ended (TLS included)
        self._unauthenticated = 0
        self._tls_handshakes: set[TlsAcceptor] = set()
        self._last_busy_warning = -math.inf
        self._auth_failures = FailureThrottle(config.auth_failure_limit, config.auth_failure_window)
        # claiming awaits (binding a port): concurrent handshakes must claim one at a time
        self._claim_lock = anyio.Lock()
        self._stopping = False

    @staticmethod
    def builder() -> ServerBuilder:
        return ServerBuilder()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()

    async def start(self) -> None:
        """Bind the listeners and start serving. Call :meth:`shutdown` from the same task."""
        if self._tg is not None:
            raise RuntimeError("server already started")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            with listening_as("control plane", self.config.bind):
                self._control = await listen(
                    self.config.bind,
                    tg,
                    protocol_factory=self._accept,
                    handler=self._handle_portable_connection,
                )
            if self.config.tcp_bind is not None:
                with listening_as("TCP ingress", self.config.tcp_bind):
                    self._fixed_ingress = await self._open_ingress(self.config.tcp_bind, False)
            for ingress in self._ingresses.values():
                await ingress.start(tg)
            if self.plugins is not None:
                await self.plugins.startup(self)
        except BaseException:
            await self._close_task_group()
            raise
        log.info("control plane listening on %s", self._control.address)
        if self._fixed_ingress is not None:
            log.info("TCP ingress listening on %s", self._fixed_ingress.listener.address)

    async def shutdown(self) -> None:
        """Stop accepting, let open streams drain (``drain_timeout``), close everything."""
        if self._tg is None or self._stopping:
            return
        self._stopping = True
        with anyio.CancelScope(shield=True):
            if self.plugins is not None:
                try:
                    await self.plugins.shutdown(self)
                except Exception:
                    log.exception("a plugin failed in ferrotunnel_shutdown")
            if self._control is not None:
                await self._control.aclose()
            for handshake in list(self._tls_handshakes):
                if handshake.task is not None:
                    handshake.task.cancel()
            for ingress in {id(i): i for i in self._all_ingress()}.values():
                await ingress.listener.aclose()
            for extension in self._ingresses.values():
                await extension.aclose()
            async with anyio.create_task_group() as tg:
                for session in list(self._sessions):
                    tg.start_soon(session.drain, self.config.drain_timeout)
            for session in list(self._sessions):
                session.abort()
        await self._close_task_group()

    async def _close_task_group(self) -> None:
        tg, self._tg = self._tg, None
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)

    async def serve_forever(self) -> None:
        """Start (if needed) and serve until cancelled.

        A server it started is shut down when it is cancelled; one already started (``async
        with``, ``start()``) is left to its owner, so a deadline around this call
        (``move_on_after``) ends only the wait.
        """
        if self._tg is not None:
            await anyio.sleep_forever()
        await self.start()
        try:
            await anyio.sleep_forever()
        finally:
            await self.shutdown()

    # ------------------------------------------------------------------ introspection

    @property
    def control_address(self) -> Address:
        if self._control is None:
            raise RuntimeError("server not started")
        return self._control.address

    @property
    def tcp_address(self) -> Address | None:
        return self._fixed_ingress.listener.address if self._fixed_ingress else None

    @property
    def ingresses(self) -> list[Ingress]:
        return list(self._ingresses.values())

    @property
    def sessions(self) -> list[Session]:
        return list(self._sessions)

    def _all_ingress(self) -> list[_TcpIngress]:
        extra = [self._fixed_ingress] if self._fixed_ingress else []
        return [*self._ingress.values(), *extra]

    # ------------------------------------------------------------------ sessions

    def _accept(self) -> asyncio.Protocol:
        """asyncio: the protocol for a connection just accepted (nothing read yet)."""
        if not self._admit_connection():
            return _Refuse()
        link = ProtocolLink(Role.SERVER, self.config.session, self._on_fast_session)
        context = self.config.ssl_context
        if context is None:
            return link

        def done(error: BaseException | None) -> None:
            self._tls_handshakes.discard(acceptor)
            if error is not None:
                self._unauthenticated -= 1
                _log_tls_failure(acceptor.peer, error)

        acceptor = TlsAcceptor(link, context, self.config.session.handshake_timeout, done)
        self._tls_handshakes.add(acceptor)
        return acceptor

    def _admit_connection(self) -> bool:
        """Count a new connection as unauthenticated, unless too many already are."""
        if self._unauthenticated >= self.config.max_unauthenticated:
            now = time.monotonic()
            if now - self._last_busy_warning >= 10:  # a flood must not flood the log too
                self._last_busy_warning = now
                log.warning(
                    "closing new connections: %d are still in their handshake "
                    "(max_unauthenticated)",
                    self._unauthenticated,
                )
            return False
        self._unauthenticated += 1
        return True

    def _on_fast_session(self, session: Session) -> None:
        assert self._tg is not None
        self._tg.start_soon(self._serve_session, session)

    async def _handle_portable_connection(self, sock: SocketStream) -> None:
        if not self._admit_connection():
            await sock.aclose()
            return
        peer = _pair(sock.extra(anyio.abc.SocketAttribute.remote_address))
        stream: ByteStream = sock
        context = self.config.ssl_context
        if context is not None:
            try:
                with anyio.fail_after(self.config.session.handshake_timeout):
                    stream = await TLSStream.wrap(
                        sock, server_side=True, ssl_context=context, standard_compatible=False
                    )
            except BaseException as exc:
                self._unauthenticated -= 1
                _log_tls_failure(peer, exc)
                await anyio.aclose_forcefully(sock)
                if isinstance(exc, Exception):
                    return
                raise
        link = StreamLink(stream, self.config.session)
        tls = tls_info(stream.extra(TLSAttribute.ssl_object, None))
        session = Session(link, Role.SERVER, self.config.session, peer=peer, tls=tls)
        async with anyio.create_task_group() as tg:
            tg.start_soon(link.run, session)
            await self._serve_session(session)

    async def _serve_session(self, session: Session) -> None:
        try:
            owner = await self._handshake(session)
        finally:
            self._unauthenticated -= 1
        if owner is None:
            return
        try:
            await session.run()
        finally:
            self._release(session)
            for tunnel in self._granted.pop(session, ()):
                self._notify("ferrotunnel_tunnel_closed", session=session, tunnel=tunnel)
            self._notify("ferrotunnel_session_closed", session=session)
            reason = session.close_reason
            log.info(
                "session %s from %s closed%s",
                session.session_id,
                _fmt(session.peer),
                f": {reason}" if reason else "",
            )

    async def _handshake(self, session: Session) -> _Owner | None:
        # this connection is one of the unauthenticated ones (max_sessions is checked once
        # it has authenticated: connections that never do must not take sessions' places)
        started = time.monotonic()
        try:
            hello = await self._receive_hello(session, started)
            if hello is None:
                return None
            return await self._admit(session, hello, started)
        except BaseException:
            session.abort()  # cancelled mid-handshake (shutdown): do not leave it open
            raise

    async def _receive_hello(self, session: Session, started: float) -> Hello | None:
        timeout = self.config.session.handshake_timeout
        try:
            with anyio.fail_after(timeout):
                hello = await session.wait_handshake()
        except TimeoutError:
            log.info("handshake from %s timed out after %.1f s", _fmt(session.peer), timeout)
            session.abort()
            self._handshake_done(session, None, "timeout", started)
            return None
        except SessionClosedError as exc:
            log.info(
                "connection from %s closed during the handshake: %s",
                _fmt(session.peer),
                session.close_reason or exc,
            )
            self._handshake_done(session, None, "closed", started)
            return None
        assert isinstance(hello, Hello)
        return hello

    async def _admit(self, session: Session, hello: Hello, started: float) -> _Owner | None:
        """Authenticate, negotiate and claim: WELCOME, or REJECT with the reason."""
        peer = Peer(*(session.peer or ("", 0)), tls=session.tls)
        try:
            versions = set(hello.versions) & set(SUPPORTED_VERSIONS)
            if not versions:
                raise Refused(
                    RejectCode.UNSUPPORTED_VERSION,
                    f"no common protocol version: client speaks {list(hello.versions)}, "
                    f"server {list(SUPPORTED_VERSIONS)}",
                )
            wait = self._auth_failures.retry_after(peer.host) if peer.host else 0
            if wait:
                raise Refused(
                    RejectCode.RATE_LIMITED,
                    f"too many failed authentications from {peer.host}; "
                    f"retry in {math.ceil(wait)} s",
                )
            if len(hello.tunnels) > self.config.max_tunnels:
                raise Refused(
                    RejectCode.BAD_REQUEST,
                    f"{len(hello.tunnels)} tunnels requested; this server allows "
                    f"{self.config.max_tunnels} per client",
                )
            try:
                identity = await self._authenticate(hello, peer)
            except Refused:
                raise
            except Exception as exc:  # a broken authenticator must not take the server down
                log.exception("authenticator failed for %s", _fmt(session.peer))
                raise Refused(RejectCode.SERVER_BUSY, "cannot check credentials now") from exc
            if peer.host:
                self._auth_failures.succeeded(peer.host)
            owner = _Owner(identity.name, hello.client_id)
            async with self._claim_lock:
                # a reconnecting client replaces its own sessions: they do not count
                others = sum(1 for o in self._sessions.values() if o != owner)
                if others >= self.config.max_sessions:
                    raise Refused(
                        RejectCode.SERVER_BUSY,
                        f"server is at its session limit ({self.config.max_sessions})",
                    )
                granted, stale = await self._claim(session, owner, identity, hello.tunnels)
        except Refused as refusal:
            if refusal.code is RejectCode.AUTH_FAILED and peer.host:
                self._auth_failures.failed(peer.host)
            log.warning("rejected %s (client %r): %s", _fmt(session.peer), hello.client_id, refusal)
            session.reject(Reject(refusal.code, str(refusal)))
            self._handshake_done(session, hello, refusal.code.value, started)
            return None
        for old in stale:
            log.info(
                "client %r reconnected: closing its stale session %s",
                owner.client_id,
                old.session_id,
            )
            old.abort(SessionClosedError("replaced by a new session of the same client"))
            self._sessions.pop(old, None)
        session.on_stream = None  # clients do not open streams towards the server
        self._sessions[session] = owner
        # the client knows its tunnels by the names it chose (see Identity.tunnel_name)
        chosen = {identity.tunnel_name(t.name): t.name for t in hello.tunnels}
        session.accept(
            Welcome(
                version=max(versions),
                session_id=uuid.uuid4().hex,
                tunnels=tuple(replace(t, name=chosen[t.name]) for t in granted),
                window=self.config.session.window,
                max_frame=self.config.session.max_frame,
                ping_interval=self.config.session.ping_interval,
            ),
            hello,
        )
        log.info(
            "session %s from %s (client %r, identity %r): %s",
            session.session_id,
            _fmt(session.peer),
            hello.client_id,
            identity.name,
            ", ".join(t.public_url for t in granted) or "no tunnels",
        )
        self._granted[session] = granted
        self._handshake_done(session, hello, None, started)
        self._notify("ferrotunnel_session_opened", session=session, identity=identity)
        for tunnel in granted:
            self._notify("ferrotunnel_tunnel_registered", session=session, tunnel=tunnel)
        return owner

    def _handshake_done(
        self, session: Session, hello: Hello | None, failure: str | None, started: float
    ) -> None:
        self._notify(
            "ferrotunnel_handshake_done",
            session=session,
            hello=hello,
            failure=failure,
            duration=time.monotonic() - started,
        )

    def _notify(self, hook_name: str, **kwargs: object) -> None:
        if self.plugins is not None:
            self.plugins.notify(hook_name, **kwargs)

    async def _authenticate(self, hello: Hello, peer: Peer) -> Identity:
        """The first authenticator's identity; then the configured token; else refused.

        A verified client certificate is a credential on its own only when nothing else is
        configured (no token, no authenticator): then every certificate of the CA is a client.
        Once credentials are configured, a certificate must be listed by one (the ``auth``
        plugin's ``subject`` entries) or come with a valid token — else one unlisted
        certificate would get the unscoped access the listed ones are denied.
        """
        for authenticator in self._authenticators:
            identity = await authenticator.authenticate(hello, peer)
            if identity is not None:
                return identity
        tls = peer.tls
        certificate = tls.peer_subject if tls is not None else None
        if self.config.token is not None:
            expected = self.config.token.encode()
            offered = (hello.token or "").encode()
            if hmac.compare_digest(expected, offered):
                return Identity("token")
        elif certificate is not None and not self._authenticators:
            # mutual TLS only: the certificate was verified against the configured CA. Its
            # own namespace: a certificate named like a token's identity must not own its
            # tunnels
            assert tls is not None
            return Identity(f"cert:{tls.peer_common_name or certificate}")
        if certificate is not None and not hello.token:
            raise Refused(
                RejectCode.AUTH_FAILED,
                "this server also requires a token, or a client certificate listed by subject",
            )
        raise Refused(RejectCode.AUTH_FAILED, "invalid token")

    # ------------------------------------------------------------------ claims

    async def _claim(
        self,
        session: Session,
        owner: _Owner,
        identity: Identity,
        requests: tuple[TunnelRequest, ...],
    ) -> tuple[list[GrantedTunnel], set[Session]]:
        names = [t.name for t in requests]
        if len(set(names)) != len(names):
            raise Refused(RejectCode.BAD_REQUEST, "tunnel names must be unique")
        plan: list[tuple[TunnelRequest, int]] = []
        taken_now: set[int] = set()
        stale: set[Session] = set()
        extension_plan: list[tuple[Ingress, TunnelRequest, list[Hashable]]] = []
        keys_now: set[Hashable] = set()
        for request in requests:
            if request.kind is not TunnelKind.TCP:
                extension = self._ingresses.get(request.kind)
                if extension is None:
                    raise Refused(
                        RejectCode.BAD_REQUEST,
                        f"tunnel {request.name!r}: this server has no {request.kind} ingress",
                    )
                keys = extension.claim_keys(request, identity)
                for key in keys:
                    if key in keys_now:
                        raise Refused(RejectCode.BAD_REQUEST, f"{_key_text(key)} requested twice")
                    held = self._ingress_claims.get(key)
                    if held is not None:
                        if held[0] != owner:
                            raise Refused(
                                RejectCode.NAME_TAKEN, f"{_key_text(key)} is held by another client"
                            )
                        if held[1] is not session:
                            stale.add(held[1])
                keys_now.update(keys)
                extension_plan.append((extension, request, keys))
                continue
            port = self._choose_port(owner, identity, request, taken_now)
            holder = self._claims.get(port)
            if holder is not None:
                if holder != owner:
                    raise Refused(
                        RejectCode.PORT_UNAVAILABLE, f"port {port} is held by another client"
                    )
                stale.update(s for s, o in self._sessions.items() if o == owner)
            taken_now.add(port)
            plan.append((request, port))
        granted = []
        opened: list[_TcpIngress] = []
        try:
            for request, port in plan:
                ingress = self._ingress_for(port)
                if ingress is None:
                    ingress = await self._open_ingress(Address(self._ingress_host(), port), True)
                    opened.append(ingress)
                granted.append((request, ingress))
        except OSError as exc:
            for ingress in opened:
                await ingress.listener.aclose()
            raise Refused(RejectCode.PORT_UNAVAILABLE, f"cannot listen: {exc.strerror}") from exc
        result = []
        for request, ingress in granted:
            port = ingress.listener.address.port
            # a stale session's listener passes to the new session as it is (no rebind race);
            # its other ports are released when it closes
            self._claims[port] = owner
            self._remembered_ports[owner, request.name] = port
            ingress.session, ingress.tunnel = session, request.name
            ingress.label = identity.tunnel_name(request.name)
            if ingress.dynamic:
                self._ingress[port] = ingress
            result.append(
                GrantedTunnel(
                    ingress.label,
                    TunnelKind.TCP,
                    f"tcp://{self._public_host(ingress)}:{port}",
                    remote_port=port,
                )
            )
        for extension, request, keys in extension_plan:
            for key in keys:
                self._ingress_claims[key] = (owner, session)
            result.append(extension.grant(request, session, identity))
        order = {identity.tunnel_name(request.name): i for i, request in enumerate(requests)}
        result.sort(key=lambda granted: order[granted.name])
        return result, stale

    def _choose_port(
        self, owner: _Owner, identity: Identity, request: TunnelRequest, taken_now: set[int]
    ) -> int:
        fixed = self._fixed_ingress
        fixed_port = fixed.listener.address.port if fixed else None
        if request.remote_port:
            port = request.remote_port
            if port != fixed_port and not self._in_range(port):
                raise Refused(
                    RejectCode.PORT_UNAVAILABLE,
                    f"port {port} is outside this server's TCP port range ({self._range_text()})",
                )
            if port in taken_now:
                raise Refused(RejectCode.BAD_REQUEST, f"port {port} requested twice")
            if not identity.may_claim_port(port):
                raise Refused(RejectCode.FORBIDDEN, f"{identity.name!r} may not claim port {port}")
            return port
        remembered = self._remembered_ports.get((owner, request.name))
        candidates = [remembered] if remembered is not None else []
        if fixed_port is not None:
            candidates.append(fixed_port)
        if self.config.tcp_port_range is not None:
            low, high = self.config.tcp_port_range
            candidates.extend(range(low, high + 1))
        for port in candidates:
            if port in taken_now or (port != fixed_port and not self._in_range(port)):
                continue
            if not identity.may_claim_port(port):
                continue
            holder = self._claims.get(port)
            if holder is None or holder == owner:
                return port
        if fixed_port is None and self.config.tcp_port_range is None:
            raise Refused(
                RejectCode.PORT_UNAVAILABLE,
                "this server has no TCP ingress (start it with --tcp-bind or --tcp-port-range)",
            )
        raise Refused(
            RejectCode.PORT_UNAVAILABLE,
            f"no free TCP port on this server that {identity.name!r} may claim",
        )

    def _in_range(self, port: int) -> bool:
        span = self.config.tcp_port_range
        return span is not None and span[0] <= port <= span[1]

    def _range_text(self) -> str:
        span = self.config.tcp_port_range
        return f"{span[0]}-{span[1]}" if span else "none configured"

    def _ingress_for(self, port: int) -> _TcpIngress | None:
        fixed = self._fixed_ingress
        if fixed is not None and fixed.listener.address.port == port:
            return fixed
        return self._ingress.get(port)

    def _ingress_host(self) -> str:
        tcp_bind = self.config.tcp_bind
        return tcp_bind.host if tcp_bind is not None else self.config.bind.host

    def _public_host(self, ingress: _TcpIngress) -> str:
        if self.config.public_host:
            return self.config.public_host
        host = ingress.listener.address.host
        if host in ("", "0.0.0.0", "::"):
            return socket.gethostname()
        return f"[{host}]" if ":" in host else host

    def _release(self, session: Session) -> None:
        self._sessions.pop(session, None)
        self._drop_claims_of(session)
        for key in [k for k, (_, holder) in self._ingress_claims.items() if holder is session]:
            del self._ingress_claims[key]
        for extension in self._ingresses.values():
            extension.revoke(session)

    def _drop_claims_of(self, session: Session) -> None:
        for ingress in self._all_ingress():
            if ingress.session is not session:
                continue
            ingress.session = None
            port = ingress.listener.address.port
            self._claims.pop(port, None)
            if ingress.dynamic:
                self._ingress.pop(port, None)
                if self._tg is not None:
                    self._tg.start_soon(ingress.listener.aclose)

    # ------------------------------------------------------------------ TCP ingress

    async def _open_ingress(self, address: Address, dynamic: bool) -> _TcpIngress:
        assert self._tg is not None
        ingress = _TcpIngress(Listener(address, _nothing), dynamic)

        def open_visitor_stream(visitor: tuple[str, int] | None) -> Stream | None:
            session = ingress.session
            if session is None or session.closed or session.going_away:
                return None
            if self._tcp_middlewares and not self._tcp_allowed(ingress, visitor):
                return None
            try:
                return session.open_stream(ingress.tunnel, TunnelKind.TCP, visitor=visitor)
            except SessionClosedError:
                return None
            except StreamLimitError:
                log.info(
                    "TCP visitor %s refused: tunnel %r is at max_streams",
                    _fmt(visitor),
                    ingress.label,
                )
                return None

        async def handle(sock: SocketStream) -> None:
            visitor = _pair(sock.extra(anyio.abc.SocketAttribute.remote_address))
            stream = open_visitor_stream(visitor)
            if stream is None:
                await sock.aclose()
                return
            await pump(stream, sock)

        ingress.listener = await listen(
            address,
            self._tg,
            protocol_factory=lambda: SpliceProtocol(open_visitor_stream),
            handler=handle,
        )
        return ingress

    def _tcp_allowed(self, ingress: _TcpIngress, visitor: tuple[str, int] | None) -> bool:
        conn = TcpConnection(ingress.label, ingress.listener.address.port, *(visitor or ("", 0)))
        for middleware in self._tcp_middlewares:
            try:
                if not middleware.on_connect(conn):
                    return False
            except Exception:
                log.exception("TCP middleware %r failed; refusing the connection", middleware)
                return False
        return True


async def _nothing() -> None:
    return None


class _Refuse(asyncio.Protocol):
    """Closes a connection accepted over the ``max_unauthenticated`` cap."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).abort()


def _log_tls_failure(peer: tuple[str, int] | None, error: BaseException) -> None:
    if not isinstance(error, anyio.get_cancelled_exc_class() | asyncio.CancelledError):
        log.info("TLS handshake from %s failed: %s", _fmt(peer), _tls_reason(error))


def _tls_reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLError) and error.reason:
        return error.reason.lower().replace("_", " ")
    if isinstance(error, TimeoutError) or "taking longer than" in str(error):
        return "timed out"
    if isinstance(error, ConnectionResetError | BrokenPipeError):
        return "the client closed the connection (does it trust this server's certificate?)"
    return str(error) or type(error).__name__


def _pair(address: object) -> tuple[str, int] | None:
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None


def _key_text(key: Hashable) -> str:
    if isinstance(key, tuple):
        return " ".join(str(part) for part in key[1:]) or str(key)
    return str(key)


def _fmt(peer: tuple[str, int] | None) -> str:
    return f"{peer[0]}:{peer[1]}" if peer else "?"


def _server_config(settings: dict[str, object]) -> ServerConfig:
    """Keyword settings (strings allowed for addresses) → :class:`ServerConfig`."""
    values = dict(settings)
    for key in ("bind", "tcp_bind"):
        value = values.get(key)
        if isinstance(value, str):
            values[key] = Address.parse(value, what=key)
    try:
        return ServerConfig(**values)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


class ServerBuilder:
    """``Server.builder().bind("0.0.0.0:7835").token("secret").build()``"""

    def __init__(self) -> None:
        self._settings: dict[str, object] = {}

    def _set(self, key: str, value: object) -> ServerBuilder:
        self._settings[key] = value
        return self

    def bind(self, address: str) -> ServerBuilder:
        return self._set("bind", address)

    def token(self, token: str) -> ServerBuilder:
        return self._set("token", token)

    def tcp_bind(self, address: str) -> ServerBuilder:
        return self._set("tcp_bind", address)

    def tcp_port_range(self, low: int, high: int) -> ServerBuilder:
        return self._set("tcp_port_range", (low, high))

    def public_host(self, host: str) -> ServerBuilder:
        return self._set("public_host", host)

    def session_config(self, config: SessionConfig) -> ServerBuilder:
        return self._set("session", config)

    def tls(self, context: ssl.SSLContext) -> ServerBuilder:
        """TLS for the control plane, e.g. ``ferrotunnel.plugins.tls.server_context(...)``."""
        return self._set("ssl_context", context)

    def build(self) -> Server:
        return Server(_server_config(self._settings))
