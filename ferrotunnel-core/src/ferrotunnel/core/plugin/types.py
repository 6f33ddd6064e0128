"""What plugins hand the kernel, and what the kernel hands them.

Hooks run at start-up and on session events; the request path never calls pluggy. A hook that
adds behaviour to the request path returns objects (authenticators, middlewares) whose methods
the kernel calls directly. A middleware method may be a plain function — it then runs inline,
costing a function call — or a coroutine function, which costs a task per call: use ``async``
only when the middleware really waits for something.
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from time import monotonic
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ferrotunnel.protocol import Hello, TunnelKind

from ..tls import TlsInfo

if TYPE_CHECKING:
    from ..stream import Stream

__all__ = [
    "REPLIED_BY",
    "Authenticator",
    "ExchangeRecord",
    "HttpMiddleware",
    "HttpRequest",
    "HttpResponse",
    "Identity",
    "Peer",
    "Reply",
    "RequestContext",
    "StreamObserver",
    "StreamTap",
    "TcpConnection",
    "TcpMiddleware",
    "TlsOptions",
    "TlsPurpose",
]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a client session is, as an authenticator established it.

    ``hosts`` (shell patterns like ``*.example.com``) and ``ports`` (inclusive ranges) limit
    what the session may claim; None means no limit.

    A *limited* identity (either set) cannot choose how its tunnels are named on the server:
    its tunnel ``web`` is ``alice/web`` there (:meth:`tunnel_name`) — in plugin tables,
    ``RequestContext.tunnel``, logs and metrics. Tunnel names are the client's choice, so
    otherwise a confined client could name its tunnel after one an operator's rule exempts.
    """

    name: str
    hosts: tuple[str, ...] | None = None
    ports: tuple[tuple[int, int], ...] | None = None

    @property
    def limited(self) -> bool:
        return self.hosts is not None or self.ports is not None

    def tunnel_name(self, name: str) -> str:
        """The server's name for this identity's tunnel ``name``."""
        return f"{self.name}/{name}" if self.limited else name

    def may_claim_host(self, host: str) -> bool:
        return self.hosts is None or any(fnmatch.fnmatchcase(host, p) for p in self.hosts)

    def may_claim_port(self, port: int) -> bool:
        return self.ports is None or any(low <= port <= high for low, high in self.ports)


class TlsPurpose(enum.StrEnum):
    """Which connection an SSL context is for."""

    #: the server's control plane, which clients connect to
    SERVER = "server"
    #: the client's connection to the server
    CLIENT = "client"
    #: the HTTPS ingress, which visitors connect to
    INGRESS = "ingress"


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """The TLS settings a user gave (flags, environment and file merged), for the plugin
    that turns them into an :class:`ssl.SSLContext` (``ferrotunnel_ssl_context``).

    ``certificates`` are (certificate, key) PEM file pairs: the server's own, or on the
    ingress one per set of host names (chosen by SNI; the first is the default). ``ca``
    verifies the other side: client certificates on the server (with ``client_auth``), the
    server's certificate on the client (None: the system's roots).
    """

    purpose: TlsPurpose
    certificates: tuple[tuple[str, str], ...] = ()
    ca: str | None = None
    client_auth: bool = False
    skip_verify: bool = False


@dataclass(frozen=True, slots=True)
class Peer:
    """Where a client session comes from, and what its TLS handshake proved.

    ``tls.peer_subject`` is set when the client presented a certificate the server verified
    (mutual TLS): a certificate authenticates its holder as surely as a token does.
    """

    host: str
    port: int
    tls: TlsInfo | None = None


@runtime_checkable
class Authenticator(Protocol):
    """Decides who a connecting client is.

    Return an :class:`Identity` to accept, None to leave the decision to the next
    authenticator, or raise :class:`~ferrotunnel.core.Refused` to reject. A session no
    authenticator accepts is rejected with ``auth_failed``.
    """

    async def authenticate(self, hello: Hello, peer: Peer) -> Identity | None: ...


class HttpRequest(Protocol):
    """A request head as middlewares see it (bodies stream past, untouched)."""

    @property
    def method_text(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def host(self) -> str: ...
    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""

    def header_values(self, name: str) -> list[str]:
        """Every value of header ``name``, one per header line."""

    def set_header(self, name: str, value: str) -> None:
        """Replace every ``name`` header with one line ``name: value``."""

    def add_header(self, name: str, value: str) -> None:
        """Append one more ``name: value`` line."""

    def remove_header(self, name: str) -> None: ...


class HttpResponse(Protocol):
    """A response head on its way to the visitor."""

    @property
    def status(self) -> int: ...
    def header(self, name: str) -> str | None: ...
    def header_values(self, name: str) -> list[str]: ...
    def set_header(self, name: str, value: str) -> None: ...
    def add_header(self, name: str, value: str) -> None: ...
    def remove_header(self, name: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Reply:
    """A response a middleware sends instead of forwarding the request."""

    status: int
    body: bytes | str = b""
    headers: Sequence[tuple[str, str]] = ()
    content_type: str = "text/plain; charset=utf-8"


#: ``RequestContext.state`` key naming who answered an exchange instead of the origin: the
#: label of the middleware whose :class:`Reply` answered (or that failed), set by the kernel
#: unless the middleware set it itself
REPLIED_BY = "ferrotunnel.replied_by"


@dataclass(eq=False, slots=True)
class RequestContext:
    """One HTTP exchange, from its request to its end: what middlewares see in ``on_request``
    and ``on_response``, and, completed, what ``on_complete`` and the
    ``ferrotunnel_exchange_complete`` hook get as its record (:data:`ExchangeRecord`).

    ``tunnel`` is the server's name for the tunnel (``alice/web`` for a limited identity's:
    see :meth:`Identity.tunnel_name`). ``state`` is scratch space for plugins
    (``state[REPLIED_BY]`` says which middleware answered instead of the origin, if one did).

    ``trace`` (W3C ``traceparent``/``tracestate``), when a plugin sets it in ``on_request``,
    travels in the OPEN of the stream the ingress opens for this exchange, so the client side
    can continue the trace.

    The fields from ``time`` on describe the exchange as a whole; the ingress fills
    ``status``, ``bytes_in``, ``bytes_out``, ``duration``, ``error`` and ``replied_by`` when
    it ends. One object plays both parts: an exchange's context and its record were two
    objects per request, measurably slower (``docs/benchmark.md``, Issue 5). Until the
    ingress sets them, the outcome's fields hold their defaults (``status`` 0).
    """

    tunnel: str
    host: str
    visitor_ip: str
    visitor_port: int
    request_id: str
    kind: TunnelKind = TunnelKind.HTTP
    started: float = field(default_factory=monotonic)  # monotonic clock
    state: dict[str, object] = field(default_factory=dict)
    trace: dict[str, str] | None = None
    time: float = 0.0  # wall-clock start, seconds since the epoch
    method: str = ""
    path: str = ""  # the request target, query included
    status: int = 0  # 0: the visitor got no response
    bytes_in: int = 0
    bytes_out: int = 0
    duration: float = 0.0  # seconds
    error: str | None = None
    #: who produced the status: "origin", "ingress" (its own 404/502/504...) or the label
    #: of the plugin whose Reply answered
    replied_by: str = "origin"


#: a finished exchange, as ``on_complete`` and ``ferrotunnel_exchange_complete`` receive it:
#: the exchange's :class:`RequestContext`, with its outcome filled in
ExchangeRecord = RequestContext


class HttpMiddleware(Protocol):
    """Request-path behaviour on the HTTP ingress. Every method is optional.

    ``on_request`` returns None to continue or a :class:`Reply` to answer instead;
    it may edit the request's headers. ``on_response`` may edit the response's headers.
    ``on_complete`` learns how the exchange ended: ``record`` is ``ctx`` itself, its
    outcome filled in (two parameters, so the method reads as it always has).

    A Protocol cannot mark methods optional, so a class with only some of them does not
    type-check as ``HttpMiddleware``: annotate your hook's return with your own class
    (``-> list[Greeter]``).
    """

    def on_request(
        self, request: HttpRequest, ctx: RequestContext
    ) -> Reply | Awaitable[Reply | None] | None: ...

    def on_response(self, response: HttpResponse, ctx: RequestContext) -> None: ...

    def on_complete(self, record: ExchangeRecord, ctx: RequestContext) -> None: ...


@dataclass(frozen=True, slots=True)
class TcpConnection:
    """A visitor connection arriving at a TCP ingress (``tunnel``: the server's name for
    the tunnel, see :meth:`Identity.tunnel_name`)."""

    tunnel: str
    port: int
    visitor_ip: str
    visitor_port: int


class TcpMiddleware(Protocol):
    """Return False from ``on_connect`` to refuse the connection."""

    def on_connect(self, conn: TcpConnection) -> bool: ...


class StreamTap(Protocol):
    """Sees a copy of the bytes relayed on one client-side stream, as they pass.

    Called synchronously from the relay's callbacks with the very chunks it forwards, right
    after forwarding each (so a tap never delays the bytes): it must
    not keep references to them past the call (copy what it keeps), block, or raise. A stream
    served by a tunnel's in-process ``handler`` is not relayed: its tap only gets ``closed``.

    When the local service cannot be reached (the connection is refused, say), nothing is
    relayed: the tap is then shown what had arrived for the service by the time the connect
    failed — ``to_origin`` with those bytes (usually the visitor's request) — and ``closed``
    says why (``"the local service at 127.0.0.1:3000 refused the connection"``).
    """

    def to_origin(self, data: bytes | memoryview) -> None:
        """Bytes from the visitor, just written to the local service (or, when it could not
        be reached, that had arrived for it: ``closed`` with the reason follows)."""

    def to_visitor(self, data: bytes) -> None:
        """Bytes the local service sent, just handed to the tunnel."""

    def closed(self, error: str | None) -> None:
        """The stream is over (``error``: why it failed, or None); no more calls follow."""


class StreamObserver(Protocol):
    """Shown each stream the server opens to a client, once, before the client relays it.

    A client gets its observers from ``Client(stream_observers=...)`` (what the plugins'
    ``ferrotunnel_stream_observers`` return) and :meth:`Client.observe
    <ferrotunnel.core.Client.observe>`. ``on_stream`` runs inline on the client's event loop:
    keep it short. It may return a :class:`StreamTap` to see the bytes relayed on the stream
    (None: no tap). To learn only when the stream ends, use :meth:`Stream.add_done_callback`.
    """

    def on_stream(self, stream: Stream) -> StreamTap | None: ...
