"""The HTTP ingress: a public HTTP/1.1 (and h2c) listener that routes by Host and path."""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from anyio.abc import TaskGroup

from ferrotunnel.core import (
    Address,
    ConfigError,
    GrantedTunnel,
    Refused,
    Session,
    TunnelKind,
    TunnelRequest,
)
from ferrotunnel.core.net import listening_as, running_asyncio_loop
from ferrotunnel.core.plugin import HttpMiddleware, Identity, PluginHost
from ferrotunnel.protocol import RejectCode

from .connection import IngressConnection
from .forwarded import TrustedProxies
from .h1 import normalize_host
from .middleware import MiddlewareChain
from .routes import Route, RouteTable, normalize_path_prefix

__all__ = ["HttpIngress", "HttpIngressConfig"]

log = logging.getLogger("ferrotunnel.http.ingress")

_HOST_LABEL = set("abcdefghijklmnopqrstuvwxyz0123456789-.")
_DEFAULT_BIND = Address("0.0.0.0", 8080)


@dataclass(frozen=True, slots=True)
class HttpIngressConfig:
    bind: Address = _DEFAULT_BIND
    #: a tunnel named ``app`` (no dot) serves ``app.<domain>``
    domain: str | None = None
    #: answered by the server itself, before routing (None: no health path)
    health_path: str | None = "/health"
    max_head_size: int = 64 * 1024
    #: a request head must arrive within this many seconds of its first byte (else 408)
    head_timeout: float = 10.0
    #: a kept-alive connection with no request for this long is closed
    idle_timeout: float = 75.0
    #: the origin must start its response within this many seconds of the end of the request
    #: (else 504); during an upload, of the last body bytes forwarded
    response_timeout: float = 60.0
    #: visitors whose X-Forwarded-* / Forwarded headers are believed (CIDRs)
    trusted_proxies: tuple[str, ...] = ()
    #: shown in public URLs (default: the bind address, or ``domain``)
    public_port: int | None = None
    #: how visitors reach the plain listener: ``b"https"`` behind a proxy that terminates TLS
    #: (public URLs and X-Forwarded-Proto then say https); the HTTPS listener is always https
    scheme: bytes = b"http"
    #: an HTTPS listener beside the HTTP one, serving the same routes (public URLs then
    #: use https); ``ferrotunnel.plugins.tls.ingress_context`` builds the context
    https_bind: Address | None = None
    https_context: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        if (self.https_bind is None) != (self.https_context is None):
            raise ConfigError("the HTTPS ingress needs both https_bind and https_context")
        if self.scheme not in (b"http", b"https"):
            raise ConfigError(f"scheme must be b'http' or b'https', not {self.scheme!r}")


class HttpIngress:
    """Plug into :class:`~ferrotunnel.core.Server` with ``ingresses=[HttpIngress(...)]``."""

    kind = TunnelKind.HTTP

    def __init__(
        self,
        config: HttpIngressConfig | None = None,
        *,
        middlewares: Sequence[HttpMiddleware] = (),
        plugins: PluginHost | None = None,
    ) -> None:
        self.config = config = config or HttpIngressConfig()
        self.middlewares = tuple(middlewares)
        self.plugins = plugins
        self.chain = MiddlewareChain(self.middlewares, plugins)
        #: tasks of async middlewares in progress
        self.tasks: set[asyncio.Future[Any]] = set()
        try:
            self.trusted = TrustedProxies(config.trusted_proxies)
        except ValueError as exc:
            raise ConfigError(f"trusted proxies: {exc}") from None
        self.routes = RouteTable()
        self.connections: set[IngressConnection] = set()
        self._servers: list[asyncio.Server] = []
        self.address: Address | None = None
        self.https_address: Address | None = None

    async def start(self, task_group: TaskGroup) -> None:
        loop = running_asyncio_loop()
        if loop is None:
            raise ConfigError("the HTTP ingress needs the asyncio backend (or uvloop)")
        config = self.config
        with listening_as("HTTP ingress", config.bind):
            self.address = await self._listen(
                loop, config.bind, lambda: IngressConnection(self, config.scheme)
            )
        if config.https_bind is not None:
            with listening_as("HTTPS ingress", config.https_bind):
                self.https_address = await self._listen(
                    loop,
                    config.https_bind,
                    lambda: IngressConnection(self, b"https"),
                    config.https_context,
                )

    async def _listen(
        self,
        loop: asyncio.AbstractEventLoop,
        bind: Address,
        factory: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext | None = None,
    ) -> Address:
        server = await loop.create_server(
            factory,
            bind.host or None,
            bind.port,
            backlog=4096,
            reuse_address=True,
            ssl=context,
            ssl_handshake_timeout=self.config.head_timeout if context else None,
        )
        self._servers.append(server)
        return Address(bind.host, server.sockets[0].getsockname()[1])

    async def aclose(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()
        for conn in list(self.connections):
            conn._close()
        for task in list(self.tasks):
            task.cancel()
        for middleware in self.middlewares:  # e.g. the access log's file
            close = getattr(middleware, "close", None)
            if callable(close):
                try:
                    result = close()
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("closing middleware %r failed", middleware)

    def describe(self) -> list[tuple[str, str]]:
        lines = [("HTTP ingress", str(self.address or self.config.bind))]
        if self.config.https_bind is not None:
            lines.append(("HTTPS ingress", str(self.https_address or self.config.https_bind)))
        return lines

    # ------------------------------------------------------------------ claims

    def hostnames(self, request: TunnelRequest) -> list[str]:
        names = request.hostnames or (request.name,)
        hosts = []
        for name in names:
            host = normalize_host(name)
            if not host or not set(host) <= _HOST_LABEL or ".." in host:
                raise Refused(RejectCode.BAD_REQUEST, f"{name!r} is not a valid host name")
            if "." not in host and self.config.domain:
                host = f"{host}.{self.config.domain}"
            hosts.append(host)
        return hosts

    def claim_keys(self, request: TunnelRequest, identity: Identity) -> list[Hashable]:
        prefix = normalize_path_prefix(request.path)
        hosts = self.hostnames(request)
        for host in hosts:
            if not identity.may_claim_host(host):
                raise Refused(RejectCode.FORBIDDEN, f"{identity.name!r} may not claim {host}")
        return [("http", host, prefix) for host in hosts]

    def grant(self, request: TunnelRequest, session: Session, identity: Identity) -> GrantedTunnel:
        prefix = normalize_path_prefix(request.path)
        host_header = request.options.get("host_header")
        header = None if host_header in (None, "", "preserve") else host_header.encode()
        hosts = self.hostnames(request)
        label = identity.tunnel_name(request.name)
        for host in hosts:
            self.routes.add(Route(host, prefix, session, request.name, header, label))
        return GrantedTunnel(
            label,
            TunnelKind.HTTP,
            self.public_url(hosts[0], prefix),
            hostnames=tuple(hosts),
        )

    def revoke(self, session: Session) -> None:
        self.routes.remove_session(session)

    def public_url(self, host: str, prefix: str = "/") -> str:
        if self.https_address is not None:
            scheme, port = "https", self.https_address.port
        else:
            scheme = self.config.scheme.decode()
            port = self.address.port if self.address else 80
        port = self.config.public_port or port
        default = 443 if scheme == "https" else 80
        authority = host if port == default else f"{host}:{port}"
        return f"{scheme}://{authority}{'' if prefix == '/' else prefix}"

    def not_found_text(self, host: str) -> str:
        if not host:
            return "the request has no Host header, so no tunnel can be chosen"
        prefixes = self.routes.prefixes(host)
        if prefixes:  # the host is served, under other paths
            return (
                f"no tunnel of the host {host!r} serves this path; "
                f"its tunnels serve the path prefixes {', '.join(prefixes)}"
            )
        # a tunnel named without a dot serves NAME.<domain>: the name a user would give
        domain = self.config.domain
        name = host.removesuffix(f".{domain}") if domain else host
        if "." in name:
            name = host
        return (
            f"no tunnel serves the host {host!r}. Start a client for it, e.g. "
            f"ferrotunnel client --protocol http --tunnel-id {name} --local-addr HOST:PORT"
        )
