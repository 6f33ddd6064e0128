"""What plugins hand the kernel, and what the kernel hands them.

Hooks run at start-up and on session events; the request path never calls pluggy. A hook that
adds behaviour to the request path returns objects (authenticators, middlewares) whose methods
the kernel calls directly. A middleware method may be a plain function — it then runs inline,
costing a function call — or a coroutine function, which costs a task per call: use ``async``
only when the middleware really waits for something.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ferrotunnel.protocol import Hello, TunnelKind, TunnelRequest

if TYPE_CHECKING:
    from ..stream import Stream

__all__ = [
    "Authenticator",
    "ExchangeRecord",
    "HttpMiddleware",
    "HttpRequest",
    "HttpResponse",
    "Identity",
    "Reply",
    "RequestContext",
    "StreamObserver",
    "TcpConnection",
    "TcpMiddleware",
]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a client session is, as an authenticator established it.

    ``hosts`` (shell patterns like ``*.example.com``) and ``ports`` (inclusive ranges) limit
    what the session may claim; None means no limit.
    """

    name: str
    hosts: tuple[str, ...] | None = None
    ports: tuple[tuple[int, int], ...] | None = None

    def may_claim_host(self, host: str) -> bool:
        return self.hosts is None or any(fnmatch.fnmatchcase(host, p) for p in self.hosts)

    def may_claim_port(self, port: int) -> bool:
        return self.ports is None or any(low <= port <= high for low, high in self.ports)


@runtime_checkable
class Authenticator(Protocol):
    """Decides who a connecting client is.

    Return an :class:`Identity` to accept, None to leave the decision to the next
    authenticator, or raise :class:`~ferrotunnel.core.Refused` to reject. A session no
    authenticator accepts is rejected with ``auth_failed``.
    """

    async def authenticate(self, hello: Hello, peer: tuple[str, int] | None) -> Identity | None: ...


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


@dataclass(slots=True)
class RequestContext:
    """One exchange: where it goes and who asked. ``state`` is scratch space for plugins.

    ``trace`` (W3C ``traceparent``/``tracestate``), when a plugin sets it in ``on_request``,
    travels in the OPEN of the stream the ingress opens for this exchange, so the client side
    can continue the trace.
    """

    tunnel: str
    host: str
    visitor_ip: str
    visitor_port: int
    request_id: str
    kind: TunnelKind = TunnelKind.HTTP
    started: float = field(default_factory=time.monotonic)
    state: dict[str, object] = field(default_factory=dict)
    trace: dict[str, str] | None = None


@dataclass(slots=True)
class ExchangeRecord:
    """A finished request/response, for logs and metrics."""

    time: float  # wall-clock start, seconds since the epoch
    tunnel: str
    host: str
    method: str
    path: str
    status: int
    bytes_in: int
    bytes_out: int
    duration: float
    visitor_ip: str
    request_id: str
    error: str | None = None
    #: who produced the status: "origin", "ingress" (its own 404/502/504...) or the label
    #: of the plugin whose Reply answered
    replied_by: str = "origin"


class HttpMiddleware(Protocol):
    """Request-path behaviour on the HTTP ingress. Every method is optional.

    ``on_request`` returns None to continue or a :class:`Reply` to answer instead;
    it may edit the request's headers. ``on_response`` may edit the response's headers.
    ``on_complete`` learns how the exchange ended.
    """

    def on_request(
        self, request: HttpRequest, ctx: RequestContext
    ) -> Reply | Awaitable[Reply | None] | None: ...

    def on_response(self, response: HttpResponse, ctx: RequestContext) -> None: ...

    def on_complete(self, record: ExchangeRecord, ctx: RequestContext) -> None: ...


@dataclass(frozen=True, slots=True)
class TcpConnection:
    """A visitor connection arriving at a TCP ingress."""

    tunnel: str
    port: int
    visitor_ip: str
    visitor_port: int


class TcpMiddleware(Protocol):
    """Return False from ``on_connect`` to refuse the connection."""

    def on_connect(self, conn: TcpConnection) -> bool: ...


class StreamObserver(Protocol):
    """Watches each stream the server opens to a client, once, before it is relayed.

    ``on_stream`` runs inline on the client's event loop: keep it short. To learn when the
    stream ends, use :meth:`Stream.add_done_callback`.
    """

    def on_stream(self, stream: Stream) -> None: ...


def tunnel_request_hosts(request: TunnelRequest) -> tuple[str, ...]:
    return request.hostnames or ((request.name,) if request.kind is TunnelKind.HTTP else ())
