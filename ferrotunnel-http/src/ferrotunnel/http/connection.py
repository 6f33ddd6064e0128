"""One visitor connection on the HTTP ingress.

Theory of operation
-------------------
Each visitor connection is an ``asyncio.Protocol`` that reads requests one at a time. For
each request head it:

1. answers ``/health`` itself, or a 404 naming the host if no tunnel serves it;
2. picks the tunnel by host and longest path prefix, and reuses the connection's current
   stream if it leads to that tunnel (the client splices each stream to one origin
   connection, so a kept-alive visitor keeps a kept-alive origin connection), else opens one;
3. forwards the head — Host as the tunnel asks, X-Forwarded-* and Forwarded added — then
   the body, byte for byte, as far as :class:`~ferrotunnel.http.h1.BodyFramer` says it goes.

The response comes back through the stream, which calls this connection as its *sink*: the
head is parsed (to learn the framing and whether the connection may stay open), and then
head and body are written to the visitor as they arrive, unmodified. A ``101`` after an
Upgrade request, or an HTTP/2 prior-knowledge preface, turns the connection into a raw
bidirectional tunnel. Nothing is buffered beyond a head: flow control is the stream's
windows, so a 1 GiB body moves in constant memory and an event stream is delivered as the
origin produces it.

Failures are answered where they happen: 400/431/408 for a bad, huge or slow head (and the
connection closed), 502 when the tunnel is offline or the origin refuses or breaks the
exchange before answering, 504 when the origin does not answer in time (counted from the
end of the request: an upload counts only while it stalls). Once part of a response has been
written, the only honest signal left is to abort the connection.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast

from ferrotunnel.core import SessionClosedError, Stream, StreamLimitError
from ferrotunnel.core.plugin import REPLIED_BY, Reply, RequestContext
from ferrotunnel.protocol import ErrorCode, TunnelKind

from .forwarded import add_forwarding_headers
from .h1 import (
    BodyFramer,
    Framing,
    HttpError,
    RequestHead,
    find_head_end,
    parse_request_head,
    parse_response_head,
)
from .h2c import (
    EMPTY_SETTINGS,
    PREFACE,
    SettingsAckFilter,
    answer_block,
    decoder_table_size,
    first_request,
    is_grpc,
    reply_frames,
    request_head,
)
from .h2gate import H2Gate
from .h2watch import H2Exchange, H2Watch
from .middleware import PLUGIN_FAILED, reply_bytes, reply_parts
from .pages import error_response
from .routes import Route

if TYPE_CHECKING:
    from .ingress import HttpIngress

__all__ = ["IngressConnection"]

log = logging.getLogger("ferrotunnel.http.ingress")


class _Phase(enum.Enum):
    HEAD = 1  # waiting for (the rest of) a request head
    BODY = 2  # forwarding the request body
    SENT = 3  # request forwarded; waiting for the response to finish
    PLUGIN = 6  # an async middleware is deciding about the request
    TUNNEL = 4  # upgraded or HTTP/2: raw bytes both ways
    CLOSED = 5


class _Response(enum.Enum):
    IDLE = 1
    HEAD = 2
    BODY = 3


class _Sink:
    """The stream's view of the connection; events from a stream no longer current are
    ignored (it is only being closed)."""

    __slots__ = ("conn", "stream")

    def __init__(self, conn: IngressConnection, stream: Stream) -> None:
        self.conn = conn
        self.stream = stream

    def write(self, data: bytes | memoryview) -> None:
        if self.conn._stream is self.stream:
            self.conn._on_response_data(data)

    def write_eof(self) -> None:
        if self.conn._stream is self.stream:
            self.conn._on_stream_end(None)
        else:
            self.stream.feed_eof()

    def abort(self) -> None:
        if self.conn._stream is self.stream:
            self.conn._on_stream_end(self.stream)

    def pause_reading(self, reason: int) -> None:
        if self.conn._stream is self.stream:
            self.conn._pause_reading(reason)

    def resume_reading(self, reason: int) -> None:
        self.conn._resume_reading(reason)

    def close_if_done(self) -> None:
        if self.conn._stream is self.stream:
            self.conn._close_tunnel_if_done()


#: request ids: a random prefix per process and a counter (no system call per request,
#: unlike ``os.urandom``, which showed as 12 % of the ingress's CPU under load), written as
#: ten hex digits: ``hex()`` of the counter plus 16**10, without its "0x1" (half the cost of
#: formatting with "010x"; they repeat after 16**10, a trillion requests)
_REQUEST_ID_PREFIX = os.urandom(3).hex()
_request_counter = itertools.count((1 << 40) + 1)


def _write_eof(transport: asyncio.Transport | None) -> bool:
    """End our side of a visitor's connection; False if its socket is already gone.

    ``write_eof`` shuts the socket down at once when nothing is buffered, which raises when
    the visitor has just reset the connection (ENOTCONN). This runs while the session
    delivers a stream's frames: an exception here would end the whole session, every
    tunnel of the client with it."""
    if transport is None or not transport.can_write_eof():
        return transport is not None
    try:
        transport.write_eof()
    except OSError:
        return False
    return True


def _withdraw_h2c_offer(request: RequestHead) -> None:
    """An offer to upgrade to HTTP/2 (``Upgrade: h2c``, deprecated by RFC 9113, 3.1) does
    not reach the origin, which answers in HTTP/1.1: a connection upgraded so would be
    HTTP/2 that no gate reads, its later requests passing around the middlewares and the
    routing (HTTP/2 with prior knowledge goes through the gate, see h2gate.py)."""
    offers = [o.strip() for value in request.header_values("upgrade") for o in value.split(",")]
    if not any(offer.lower() == "h2c" for offer in offers):
        return
    request.remove_header("http2-settings")
    others = [offer for offer in offers if offer and offer.lower() != "h2c"]
    if others:  # websocket, say: still on offer
        request.set_header("upgrade", ", ".join(others))
    else:
        request.remove_header("upgrade")
        request.upgrade = False


#: later requests of one HTTP/2 connection whose contexts wait for their records, at most
_MAX_H2_CONTEXTS = 1024
#: what the gate decodes when only routing matters: a request's route, and what its record
#: and a refusal need (content-type: gRPC is answered in gRPC's terms)
_ROUTING_FIELDS = frozenset([b":authority", b"host", b":path", b":method", b"content-type"])


def _next_request_id() -> str:
    return _REQUEST_ID_PREFIX + hex(next(_request_counter))[3:]


def _context(route: Route, request: RequestHead, visitor: tuple[str, int]) -> RequestContext:
    """A new exchange's context, for a request the middlewares are to see: with its start
    and its method and path, which ``on_request`` may read too (whether or not a record will
    be delivered)."""
    ctx = RequestContext(route.label, request.host, visitor[0], visitor[1], _next_request_id())
    ctx.time = time.time()
    ctx.method = request.method.decode("latin-1")
    ctx.path = request.target.decode("latin-1")
    return ctx


def _ended(
    ctx: RequestContext,
    status: int,
    bytes_in: int,
    bytes_out: int,
    error: str | None,
    replied_by: str | None,
) -> None:
    """Note an exchange's outcome in its context (a middleware's word on who answered,
    ``state[REPLIED_BY]``, is added when the record is delivered)."""
    ctx.status = status
    ctx.bytes_in = bytes_in
    ctx.bytes_out = bytes_out
    ctx.duration = time.monotonic() - ctx.started
    ctx.error = error
    if replied_by is not None:
        ctx.replied_by = replied_by


#: a body piece up to this size is joined to its response head for one write; a larger one
#: goes with it through ``writelines`` (no copy)
_JOIN_BODY = 16 << 10
_PAUSED_BY_PIPELINE = 4
_PAUSED_BY_PLUGIN = 8
#: seconds a connection closed after our own answer keeps reading (and dropping) what the
#: visitor still sends, so that the answer is read rather than lost to a reset
_LINGER = 2.0


class IngressConnection(asyncio.Protocol):
    def __init__(self, ingress: HttpIngress, scheme: bytes = b"http") -> None:
        self._ingress = ingress
        self._config = ingress.config
        self._scheme = scheme  # b"https" on the HTTPS listener
        self.transport: asyncio.Transport | None = None
        self._visitor: tuple[str, int] = ("", 0)
        self._phase = _Phase.HEAD
        self._buf = bytearray()
        self._request: RequestHead | None = None
        self._req_framer: BodyFramer | None = None
        self._first = True
        self._stream: Stream | None = None
        self._route: Route | None = None
        self._stream_usable = False
        self._resp = _Response.IDLE
        self._resp_buf = bytearray()
        self._resp_framer: BodyFramer | None = None
        self._resp_keep_alive = True
        self._resp_started = False
        self._paused = 0
        self._visitor_eof = False
        self._stream_eof = False
        self._timer: asyncio.TimerHandle | None = None  # see _arm
        self._timer_callback: Callable[[], None] | None = None
        self._deadline = 0.0
        self._loop = asyncio.get_running_loop()
        self._h2_filter: SettingsAckFilter | None = None  # HTTP/2: see h2c.py
        self._h2_watch: H2Watch | None = None  # HTTP/2's exchanges, for records: h2watch.py
        self._h2_route: Route | None = None  # where the HTTP/2 connection goes
        self._h2_judged = False  # its later requests are put to the middlewares (else routed)
        self._h2_authority = b""  # an :authority seen to route there (with _h2_host)
        self._h2_host = ""
        self._h2_gate: H2Gate | None = None  # its later requests put to the middlewares
        #: by stream: the context of each request the middlewares saw, until it ends
        self._h2_seen: dict[int, RequestContext] = {}
        self._body_progress = 0.0  # loop time request body bytes last moved
        self._chain = ingress.chain
        self._ctx: RequestContext | None = None  # the exchange, while middlewares watch it
        self._status = 0
        self._bytes_in = 0
        self._bytes_out = 0

    # ------------------------------------------------------------------ visitor side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self._visitor = (str(peer[0]), int(peer[1]))
        self._ingress.connections.add(self)
        self._arm(self._config.idle_timeout, self._idle_expired)

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase is _Phase.TUNNEL:
            assert self._stream is not None
            h2_filter = self._h2_filter
            if h2_filter is not None:
                data = h2_filter.feed(data)
                if h2_filter.done:
                    self._h2_filter = None
            if self._h2_gate is not None:
                data = self._h2_gate.from_visitor(data)
                self._h2_answer()
                if not data:
                    return
            self._stream.feed(data)
            if self._h2_watch is not None:
                self._h2_records(self._h2_watch.from_visitor(data))
        elif phase is _Phase.BODY and not self._buf:
            self._forward_body(data)
            self._process()
        elif phase is not _Phase.CLOSED:
            self._buf += data
            self._process()

    def eof_received(self) -> bool:
        self._visitor_eof = True
        phase = self._phase
        if phase is _Phase.TUNNEL:
            assert self._stream is not None
            self._stream.feed_eof()
            self._close_tunnel_if_done()
            return True
        if phase is _Phase.SENT:
            return True  # a request then a half-close: still answer it
        if phase is _Phase.BODY:
            self._abandon_stream(ErrorCode.CANCEL)
        self._close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._phase = _Phase.CLOSED
        if self._ctx is not None:
            self._finish_record(self._status, "the visitor closed the connection", "origin")
        if self._h2_watch is not None:
            self._h2_records(self._h2_watch.close("the connection closed"))
            self._h2_watch = None
            self._h2_unseen("the connection closed")
        self._stop_timer()
        self._ingress.connections.discard(self)
        stream = self._stream
        if stream is not None and not stream.done:
            self._release(stream)
        self._stream = None

    def pause_writing(self) -> None:
        if self._stream is not None:
            self._stream.sink_paused()

    def resume_writing(self) -> None:
        if self._stream is not None:
            self._stream.sink_resumed()

    # ------------------------------------------------------------------ requests

    def _process(self) -> None:
        """Handle buffered visitor bytes as far as the current phase allows."""
        while self._buf and self._phase in (_Phase.HEAD, _Phase.BODY):
            if self._phase is _Phase.BODY:
                data = bytes(self._buf)
                self._buf.clear()
                self._forward_body(data)
                continue
            if self._first and self._buf[:3] == PREFACE[:3]:
                self._sniff_http2()
                return
            end = find_head_end(self._buf)
            if end < 0 or end > self._config.max_head_size:
                if end > 0 or len(self._buf) > self._config.max_head_size:
                    limit = self._config.max_head_size
                    self._reply_and_close(
                        431, f"the request head is larger than this server accepts ({limit} bytes)"
                    )
                else:
                    self._await_head()
                return
            head = bytes(self._buf[:end])
            del self._buf[:end]
            self._first = False
            try:
                request = parse_request_head(head)
            except HttpError as exc:
                self._reply_and_close(exc.status, str(exc))
                return
            self._start_exchange(request)
        if self._phase is _Phase.SENT and len(self._buf) > self._config.max_head_size:
            self._pause_reading(_PAUSED_BY_PIPELINE)

    def _start_exchange(self, request: RequestHead) -> None:
        self._cancel_timer()
        if request.upgrade:
            _withdraw_h2c_offer(request)
        config = self._config
        accept = request.get(b"accept")
        close = request.framing is not Framing.NONE or not request.keep_alive
        head_only = request.method == b"HEAD"
        if config.health_path and request.path == config.health_path:
            self._reply(
                200, "OK", accept=None, close=close, head_only=head_only, plain_body=b"OK\n"
            )
            return
        route = self._ingress.routes.lookup(request.host, request.path)
        if route is None:
            self._reply(
                404,
                self._ingress.not_found_text(request.host),
                accept=accept,
                close=close,
                head_only=head_only,
            )
            return
        chain = self._chain
        if chain.active:
            ctx = self._begin_record(request, route)
            decision = chain.on_request(request, ctx) if chain.request_steps else None
            if isinstance(decision, Reply):
                self._plugin_reply(decision, request)
                return
            if decision is not None:
                self._await_plugins(
                    decision,
                    lambda reply: self._plugin_reply(reply, request),
                    lambda: self._forward_request(request, route),
                )
                return
        self._forward_request(request, route)

    def _await_plugins(
        self,
        decision: Awaitable[Reply | None],
        on_reply: Callable[[Reply], None],
        on_pass: Callable[[], None],
    ) -> None:
        """An async middleware decides: stop reading until it has."""
        self._phase = _Phase.PLUGIN
        self._pause_reading(_PAUSED_BY_PLUGIN)
        task = asyncio.ensure_future(decision)
        self._ingress.tasks.add(task)

        def decided(task: asyncio.Future[Reply | None]) -> None:
            self._ingress.tasks.discard(task)
            if self._phase is not _Phase.PLUGIN:
                return  # the connection went away meanwhile
            self._phase = _Phase.HEAD
            self._resume_reading(_PAUSED_BY_PLUGIN)
            reply = PLUGIN_FAILED if task.cancelled() or task.exception() else task.result()
            if reply is not None:
                on_reply(reply)
            else:
                on_pass()
            self._process()

        task.add_done_callback(decided)

    def _plugin_reply(self, reply: Reply, request: RequestHead) -> None:
        """A middleware answered the request itself."""
        transport = self.transport
        assert transport is not None
        close = request.framing is not Framing.NONE or not request.keep_alive
        data = reply_bytes(reply, close=close, head_only=request.method == b"HEAD")
        transport.write(data)
        self._bytes_out += len(data)
        self._finish_record(reply.status, None)
        if close:
            self._linger_close()
        else:
            self._arm(self._config.idle_timeout, self._idle_expired)

    def _forward_request(self, request: RequestHead, route: Route) -> None:
        config = self._config
        accept = request.get(b"accept")
        close = request.framing is not Framing.NONE or not request.keep_alive
        head_only = request.method == b"HEAD"
        try:
            stream = self._stream_for(route)
        except StreamLimitError:
            self._reply(
                503,
                f"the tunnel for {request.host} is serving as many requests as it may; "
                "try again shortly",
                accept=accept,
                close=close,
                head_only=head_only,
            )
            if self._ctx is not None:  # the origin never saw it: not its outcome to count
                self._ctx.state.setdefault(REPLIED_BY, "ingress")
            self._finish_record(503, "tunnel at its stream limit", "ingress")
            return
        if stream is None:
            self._reply(
                502,
                f"the tunnel for {request.host} is offline",
                accept=accept,
                close=close,
                head_only=head_only,
            )
            self._finish_record(502, "tunnel offline", "ingress")
            return
        headers = request.headers
        if route.host_header is not None:
            headers = [(k, v) for k, v in headers if k.lower() != b"host"]
            headers.insert(0, (b"Host", route.host_header))
        request.headers = add_forwarding_headers(
            headers,
            self._visitor[0],
            request.get(b"host"),
            self._scheme,
            self._visitor[0] in self._ingress.trusted,
        )
        self._request = request
        self._resp = _Response.HEAD
        self._resp_started = False
        head = request.serialize()
        self._bytes_in += len(head)
        stream.feed(head)
        self._req_framer = framer = BodyFramer(request.framing, request.length)
        self._phase = _Phase.SENT if framer.done else _Phase.BODY
        self._body_progress = self._loop.time()
        self._arm(config.response_timeout, self._response_expired)
        if self._ctx is not None and not self._chain.after_request:
            self._ctx = None  # nothing follows the exchange from here (no response steps, records)

    def _forward_body(self, data: bytes) -> None:
        framer = self._req_framer
        assert framer is not None
        assert self._stream is not None
        try:
            n = framer.feed(data)
        except HttpError as exc:
            self._abandon_stream(ErrorCode.CANCEL)
            if self._resp is _Response.BODY:
                self._abort()  # the response is under way: a 400 now would be read as its body
            else:
                self._reply_and_close(exc.status, str(exc))
            return
        if n:
            self._stream.feed(data if n == len(data) else data[:n])
            self._body_progress = self._loop.time()
            self._bytes_in += n
        if framer.done:
            self._phase = _Phase.SENT
            if self._resp is _Response.HEAD:  # the origin's time to answer starts now
                self._arm(self._config.response_timeout, self._response_expired)
            if n < len(data):
                self._buf[:0] = data[n:]

    def _stream_for(self, route: Route, *, own_connection: bool = False) -> Stream | None:
        current = self._stream
        if current is not None:
            if route.same_tunnel(self._route) and self._stream_usable and not current.done:
                return current
            self._stream = None
            self._release(current)
        session = route.session
        if session.closed or session.going_away:
            return None
        ctx = self._ctx
        trace = ctx.trace if ctx is not None else None  # a tracing plugin's context
        try:
            stream = session.open_stream(
                route.tunnel,
                TunnelKind.HTTP,
                visitor=self._visitor,
                trace=trace,
                own_connection=own_connection,
            )
        except SessionClosedError:
            return None
        self._stream, self._route = stream, route
        self._stream_usable = True
        self._stream_eof = False
        stream.attach(_Sink(self, stream))
        return stream

    def _sniff_http2(self) -> None:
        buf = self._buf
        if len(buf) < len(PREFACE):
            if not PREFACE.startswith(bytes(buf)):
                self._first = False
                self._process()
            else:
                self._await_head()
            return
        if not buf.startswith(PREFACE):
            self._first = False
            self._process()
            return
        if self._h2_filter is None:
            # some clients wait for the server's SETTINGS before their first request
            assert self.transport is not None
            self.transport.write(EMPTY_SETTINGS)
            self._h2_filter = SettingsAckFilter()
        try:
            found = first_request(buf)
        except HttpError as exc:
            log.info("HTTP/2 connection from %s refused: %s", self._visitor[0], exc)
            self._close()
            return
        if found is None:
            if len(buf) > self._config.max_head_size:
                self._close()
            else:
                self._await_head()
            return
        stream_id, request = found
        authority = request.host
        # routed as an HTTP/1.1 request is, by host and path: the first request's
        route = self._ingress.routes.lookup(authority, request.path)
        if route is None:
            log.info("HTTP/2 connection for unknown host %r closed", authority)
            self._close()
            return
        if self._chain.request_steps:
            # the connection is passed through undecoded: the middlewares decide on its first
            # request (their header edits cannot be applied), and a refused visitor gets their
            # answer without the origin seeing any of the connection
            ctx = self._begin_record(request, route)
            decision = self._chain.on_request(request, ctx)
            if isinstance(decision, Reply):
                self._h2_refuse(decision, stream_id, request)
            elif decision is not None:
                self._await_plugins(
                    decision,
                    lambda reply: self._h2_refuse(reply, stream_id, request),
                    lambda: self._h2_open(route, stream_id),
                )
            else:
                self._h2_open(route, stream_id)
            return
        self._h2_open(route, stream_id)

    def _h2_open(self, route: Route, first_stream: int) -> None:
        """Pass the HTTP/2 connection through to ``route``'s tunnel (``first_stream``: the
        stream of its first request, which routed it)."""
        try:
            # with the first request's trace, if any; the preface opens an origin connection
            stream = self._stream_for(route, own_connection=True)
        except StreamLimitError:
            if self._ctx is not None:  # the origin never saw it: not its outcome to count
                self._ctx.state.setdefault(REPLIED_BY, "ingress")
            stream, why = None, "tunnel at its stream limit"
        else:
            why = "tunnel offline"
        if stream is None:
            self._h2_unavailable(route, why)
            return
        first = self._ctx
        self._ctx = self._request = None  # a connection, not one exchange: see _h2_records
        buf = self._buf
        self._cancel_timer()
        self._phase = _Phase.TUNNEL
        h2_filter = self._h2_filter
        assert h2_filter is not None
        frames = h2_filter.feed(bytes(buf[len(PREFACE) :]))
        if h2_filter.done:
            self._h2_filter = None
        buf.clear()
        self._h2_route = route
        # every later request is routed (and put to the middlewares) before the origin sees it
        chain = self._chain
        self._h2_judged = bool(chain.request_steps and chain.decides_inline)
        self._h2_gate = H2Gate(
            self._h2_decide,
            first_stream=first_stream,
            max_block=self._config.max_head_size,
            wanted=None if self._h2_judged else _ROUTING_FIELDS,
        )
        frames = self._h2_gate.from_visitor(frames)
        stream.feed(PREFACE + frames)
        self._h2_answer()
        if self._chain.wants_records:
            self._h2_watch = H2Watch(max_block=self._config.max_head_size)
            if first is not None:
                self._h2_seen[first_stream] = first
            self._h2_records(self._h2_watch.from_visitor(frames))

    def _h2_unavailable(self, route: Route, why: str) -> None:
        """No stream for the HTTP/2 connection: close it, and end the record of the request
        the middlewares saw (the visitor got no answer: status 0, as when it leaves)."""
        log.info("HTTP/2 connection for host %r closed: %s", route.host, why)
        self._finish_record(0, why, "ingress")
        self._close()

    def _h2_records(self, exchanges: list[H2Exchange]) -> None:
        """Hand the middlewares the records of the HTTP/2 exchanges that ended, each with the
        context its middlewares saw in ``on_request`` (a circuit breaker's probe, say, learns
        its outcome); a request no middleware saw gets a new one."""
        route = self._h2_route
        assert route is not None
        for exchange in exchanges:
            ctx = self._h2_seen.pop(exchange.stream_id, None)
            if ctx is None:
                visitor_ip, visitor_port = self._visitor
                ctx = RequestContext(
                    route.label,
                    exchange.authority,
                    visitor_ip,
                    visitor_port,
                    _next_request_id(),
                    started=exchange.started,
                )
                ctx.method = exchange.method.decode("latin-1")
                ctx.path = exchange.target.decode("latin-1")
            ctx.time = exchange.wall  # the stream's start, as the watch saw it
            _ended(
                ctx,
                exchange.status,
                exchange.bytes_in,
                exchange.bytes_out,
                exchange.error,
                None,
            )
            self._chain.complete_later(ctx)
        watch = self._h2_watch
        if watch is not None and watch.failed is not None:
            self._h2_unseen(f"the ingress stopped following the connection: {watch.failed}")

    def _h2_unseen(self, error: str) -> None:
        """The watch will not see these requests end (it stopped following before it knew
        their streams, or the connection ended first): their records, at once."""
        seen, self._h2_seen = self._h2_seen, {}
        for ctx in seen.values():
            _ended(ctx, 0, 0, 0, error, None)
            self._chain.complete_later(ctx)

    def _h2_decide(
        self, stream_id: int, fields: list[tuple[bytes, bytes]], ended: bool
    ) -> bytes | None:
        """The word on a later request of the HTTP/2 connection (see h2gate.py): None to let
        it through, else the header block answering it. A request whose host and path route
        elsewhere than the connection's tunnel is misdirected (RFC 9110, 15.5.20: the client
        may retry it on a new connection); the others are put to the middlewares."""
        route = self._h2_route
        assert route is not None
        if not self._h2_judged and self._h2_routed_here(fields):
            return None  # the usual request, without making its head
        try:
            request = request_head(fields)
        except HttpError as exc:  # no authority: not a request anyone may pass unchecked
            body, headers = reply_parts(Reply(exc.status, str(exc)))
            return answer_block(exc.status, headers, body, is_grpc(fields))
        own = self._ingress.routes.lookup(request.host, request.path)
        misdirected = not route.same_tunnel(own)
        if not misdirected:
            self._h2_authority = next((v for k, v in fields if k == b":authority"), b"")
            self._h2_host = request.host
            if not self._h2_judged:
                return None  # (an async middleware decides the first request only)
        chain = self._chain
        ctx = _context(route, request, self._visitor)
        if misdirected:
            ctx.state[REPLIED_BY] = "ingress"
            decision: Reply | Awaitable[Reply | None] | None = Reply(
                421,
                f"{request.host}{request.path} is not served by this HTTP/2 connection's "
                f"tunnel ({route.label}): send it on a new connection",
            )
        else:
            decision = chain.on_request(request, ctx)
        if not isinstance(decision, Reply):  # None: every step is inline
            if chain.wants_records and len(self._h2_seen) < _MAX_H2_CONTEXTS:
                self._h2_seen[stream_id] = ctx
            return None
        body, headers = reply_parts(decision)
        block = answer_block(decision.status, headers, body, is_grpc(fields))
        if chain.wants_records:  # out: the block, in its HEADERS frame
            _ended(ctx, decision.status, 0, 9 + len(block), None, None)
            self._chain.complete_later(ctx)
        return block

    def _h2_routed_here(self, fields: list[tuple[bytes, bytes]]) -> bool:
        """Whether a request routes to the connection's tunnel, told quickly for the usual
        one: its ``:authority`` as one seen before (False: not known so)."""
        authority = target = None
        for name, value in fields:
            if name == b":authority":
                authority = value
            elif name == b":path":
                target = value
        if authority != self._h2_authority or target is None or not authority:
            return False
        own = self._ingress.routes.lookup(
            self._h2_host, target.partition(b"?")[0].decode("latin-1")
        )
        route = self._h2_route
        assert route is not None
        return route.same_tunnel(own)

    def _h2_answer(self) -> None:
        """Write the gate's answers to the visitor (between two of the origin's frames), and
        close once a refusal has made the connection unusable."""
        gate = self._h2_gate
        transport = self.transport
        assert gate is not None
        frames = gate.ready()
        if frames and transport is not None:
            transport.write(frames)
            self._bytes_out += len(frames)
        if gate.closing and not gate.waiting:
            why = gate.stopped or "a refused request changed its header table"
            log.info("HTTP/2 connection from %s closed: %s", self._visitor[0], why)
            self._h2_gate = None
            self._linger_close()

    def _h2_refuse(self, reply: Reply, stream_id: int, request: RequestHead) -> None:
        """A middleware answered the first request of an HTTP/2 connection: send that answer
        as an HTTP/2 response and a GOAWAY, then close (after the client has had time to read
        it: closing at once, with its next frames unread, would reset the connection)."""
        transport = self.transport
        assert transport is not None
        body, headers = reply_parts(reply)  # checked by the chain
        data = reply_frames(
            stream_id,
            reply.status,
            headers,
            body,
            head_only=request.method == b"HEAD",
            grpc=is_grpc(request.headers),
            table_size=decoder_table_size(self._buf),
        )
        transport.write(data)
        self._bytes_out += len(data)
        self._finish_record(reply.status, None)
        self._linger_close()

    # ------------------------------------------------------------------ responses

    def _on_response_data(self, data: bytes | memoryview) -> None:
        transport = self.transport
        assert transport is not None
        if self._phase is _Phase.TUNNEL:
            gate = self._h2_gate
            transport.write(data if gate is None else gate.from_origin(data))
            if self._h2_watch is not None:
                self._h2_records(self._h2_watch.from_origin(data))
            if gate is not None and gate.closing:
                self._h2_answer()
            return
        if self._resp is _Response.IDLE:
            # bytes the origin sent with no request outstanding: it broke HTTP framing
            self._abandon_stream(ErrorCode.PROTOCOL_ERROR)
            return
        if self._resp is _Response.HEAD:
            buf = self._resp_buf
            buf += data
            # informational heads (100 Continue, 103 Early Hints) come before the final one,
            # possibly in the same read; a 101 leaves what follows it in ``buf`` for the tunnel.
            # The final head goes out with the first bytes of its body: one write, not two.
            head = b""
            while self._resp is _Response.HEAD:
                end = find_head_end(buf)
                if end < 0 or end > self._config.max_head_size:
                    if end > 0 or len(buf) > self._config.max_head_size:
                        self._origin_failed("the origin's response head is too large")
                    return
                raw = bytes(buf[:end])
                del buf[:end]
                out = self._response_head(raw)
                if out is None:
                    return
                head = out
            data = memoryview(bytes(buf))
            buf.clear()
        else:
            head = b""
        framer = self._resp_framer
        assert framer is not None
        try:
            n = framer.feed(data)
        except HttpError:
            transport.abort()
            self._abandon_stream(ErrorCode.PROTOCOL_ERROR)
            return
        if n:
            body = data if n == len(data) else data[:n]
            if not head:
                transport.write(body)
            elif n <= _JOIN_BODY:
                transport.write(head + body)
            else:
                transport.writelines((head, body))
            self._bytes_out += n
        elif head:
            transport.write(head)
        if framer.done:
            if n < len(data):
                self._stream_usable = False  # extra bytes after the response
            self._response_complete()

    def _response_head(self, head: bytes) -> bytes | None:
        """Handle a whole response head: the final head to write with its body's first bytes
        (b"" for an informational one, written already), or None if nothing more should be
        read now."""
        request = self._request
        transport = self.transport
        assert request is not None
        assert transport is not None
        try:
            response = parse_response_head(head, request.method)
        except HttpError as exc:
            self._origin_failed(str(exc))
            return None
        status = response.status
        if status < 200:
            transport.write(head)
            if status == 101 and request.upgrade:
                self._cancel_timer()
                self._phase = _Phase.TUNNEL
                self._resp = _Response.IDLE
                stream = self._stream
                assert stream is not None
                if self._buf:
                    data = bytes(self._buf)
                    self._buf.clear()
                    stream.feed(data)
                rest = self._resp_buf
                if rest:
                    transport.write(bytes(rest))
                    rest.clear()
                return None
            self._resp_started = True
            return b""  # 100 Continue, 103 Early Hints: the final head is still to come
        self._cancel_timer()
        ctx = self._ctx
        if ctx is not None:
            if self._chain.response_steps:
                if not self._chain.on_response(response, ctx):
                    self._origin_failed("a plugin failed while handling the response", 500)
                    return None
                if response.modified:
                    head = response.serialize()
            self._status = status
            self._bytes_out += len(head)
        self._resp_started = True
        self._resp = _Response.BODY
        self._resp_keep_alive = response.keep_alive
        self._resp_framer = BodyFramer(response.framing, response.length)
        return head

    def _response_complete(self) -> None:
        request = self._request
        if self._ctx is not None:
            self._finish_record(self._status, None, "origin")
        self._resp = _Response.IDLE
        self._resp_framer = None
        self._request = None
        if self._phase is _Phase.BODY:
            # the origin answered before the request body ended: the rest cannot be skipped
            self._abandon_stream(ErrorCode.CANCEL)
            self._close()
            return
        keep = (
            self._resp_keep_alive
            and request is not None
            and request.keep_alive
            and not self._visitor_eof
        )
        if not self._resp_keep_alive or (request is not None and not request.keep_alive):
            self._stream_usable = False  # the origin will close its connection
        if not keep:
            self._close()
            return
        self._phase = _Phase.HEAD
        self._resume_reading(_PAUSED_BY_PIPELINE)
        self._arm(self._config.idle_timeout, self._idle_expired)
        self._process()

    def _on_stream_end(self, reset: Stream | None) -> None:
        """The stream ended from the client's side (FIN, or RESET if ``reset``)."""
        stream = self._stream
        self._stream_usable = False
        if self._phase is _Phase.TUNNEL:
            if reset is not None:
                self._abort()
            else:
                self._stream_eof = True
                if not _write_eof(self.transport):  # the visitor's socket is gone already
                    self._abort()
                    return
                self._close_tunnel_if_done()
            return
        if reset is None and stream is not None:
            stream.feed_eof()
        if self._resp is _Response.IDLE:
            return
        framer = self._resp_framer
        if self._resp is _Response.BODY and framer is not None and reset is None:
            try:
                framer.feed_eof()
            except HttpError:
                self._abort()
                return
            self._resp_keep_alive = False
            self._response_complete()
            return
        if reset is not None and reset.reset_code == ErrorCode.CONNECT_ERROR:
            # the client says CONNECT_ERROR both when it cannot connect and when the service's
            # connection breaks: the client's log and dashboard say which
            self._origin_failed(
                "the tunnel's local service refused the connection, or reset it before answering"
            )
        else:
            self._origin_failed("the origin closed the connection without a complete response")

    def _origin_failed(self, why: str, status: int = 502) -> None:
        """502 if nothing of the response was sent yet, else abort the connection."""
        self._abandon_stream(ErrorCode.CANCEL)
        if self._resp_started or self._phase is _Phase.TUNNEL:
            self._finish_record(self._status, why, "origin")
            self._abort()
        else:
            request = self._request
            self._finish_record(status, why, "ingress")
            self._reply_and_close(status, why, accept=request.get(b"accept") if request else None)

    def _release(self, stream: Stream) -> None:
        """Done with ``stream``. Between exchanges, with the origin connection still good for
        another request, RESET(NO_ERROR) tells the client it may pool that connection;
        anything else aborts it."""
        if stream.done:
            return
        idle = self._resp is _Response.IDLE and self._phase is not _Phase.TUNNEL
        stream.reset(ErrorCode.NO_ERROR if idle and self._stream_usable else ErrorCode.CANCEL)

    def _close_tunnel_if_done(self) -> None:
        if self._phase is _Phase.TUNNEL and self._visitor_eof and self._stream_eof:
            self._close()

    # ------------------------------------------------------------------ timers

    # One deadline at a time (idle, head, response, linger), kept lazily: a kept-alive
    # connection moves its deadline twice per request, so re-arming the loop's timer each
    # time (a handle and a heap push, then a cancel) would cost more than the request's own
    # bookkeeping. The loop's timer is only replaced when the deadline comes *earlier*; when
    # it fires early it re-arms for what is left.

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        deadline = self._loop.time() + delay
        self._deadline = deadline
        self._timer_callback = callback
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        callback = self._timer_callback
        if callback is None:
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        self._timer_callback = None
        callback()

    def _timer_is(self, callback: Callable[[], None]) -> bool:
        return self._timer_callback == callback

    def _cancel_timer(self) -> None:
        self._timer_callback = None

    def _stop_timer(self) -> None:
        """No deadline any more, and no timer keeping this connection alive."""
        self._timer_callback = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _idle_expired(self) -> None:
        if self._phase is _Phase.HEAD and not self._buf:
            self._close()

    def _await_head(self) -> None:
        """Part of a head (or of an HTTP/2 preface and first request) is in: the rest must
        follow within ``head_timeout``."""
        if not self._timer_is(self._head_expired):
            self._arm(self._config.head_timeout, self._head_expired)

    def _head_expired(self) -> None:
        if self._phase is _Phase.HEAD:
            if self._first and self._buf[:3] == PREFACE[:3]:
                self._close()  # an HTTP/2 client would not understand a 408
            else:
                self._reply_and_close(408, "the request head did not arrive in time")

    def _response_expired(self) -> None:
        timeout = self._config.response_timeout
        if self._phase is _Phase.BODY:
            # still uploading: only an upload that stopped moving counts against the origin
            quiet = self._loop.time() - self._body_progress
            if quiet < timeout:
                self._arm(timeout - quiet, self._response_expired)
                return
        if self._resp is _Response.HEAD and self._phase is not _Phase.TUNNEL:
            self._abandon_stream(ErrorCode.TIMEOUT)
            self._finish_record(504, "origin timed out", "ingress")
            request = self._request
            self._reply_and_close(
                504,
                f"the origin did not answer within {timeout:g} s",
                accept=request.get(b"accept") if request else None,
            )

    # ------------------------------------------------------------------ exchange records

    def _begin_record(self, request: RequestHead, route: Route) -> RequestContext:
        self._ctx = ctx = _context(route, request, self._visitor)
        self._request = request
        self._status = 0
        self._bytes_in = self._bytes_out = 0
        return ctx

    def _finish_record(self, status: int, error: str | None, replied_by: str | None = None) -> None:
        """Tell the middlewares how the exchange ended (once)."""
        ctx, self._ctx = self._ctx, None
        if ctx is None or not self._chain.wants_records:
            return
        # only the outcome is noted now; the middlewares hear of it after the batch of
        # frames being processed (see MiddlewareChain.complete_later)
        _ended(ctx, status, self._bytes_in, self._bytes_out, error, replied_by)
        self._chain.complete_later(ctx)

    # ------------------------------------------------------------------ helpers

    def _reply(
        self,
        status: int,
        detail: str,
        *,
        accept: bytes | None,
        close: bool,
        head_only: bool = False,
        plain_body: bytes | None = None,
    ) -> None:
        """Answer the visitor ourselves (no body after the head if ``head_only``: a HEAD)."""
        transport = self.transport
        assert transport is not None
        if plain_body is not None:
            connection = b"connection: close\r\n" if close else b""
            head = b"HTTP/1.1 %d OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n%s\r\n"
            body = b"" if head_only else plain_body
            transport.write(head % (status, len(plain_body), connection) + body)
        else:
            transport.write(
                error_response(status, detail, accept=accept, close=close, head_only=head_only)
            )
        if close:
            self._linger_close()
        else:
            self._arm(self._config.idle_timeout, self._idle_expired)

    def _reply_and_close(self, status: int, detail: str, accept: bytes | None = None) -> None:
        if self._phase is _Phase.CLOSED:
            return
        self._reply(status, detail, accept=accept, close=True)

    def _abandon_stream(self, code: ErrorCode) -> None:
        stream, self._stream = self._stream, None
        self._stream_usable = False
        if stream is not None and not stream.done:
            stream.reset(code)

    def _linger_close(self) -> None:
        """Close after our own answer, gently: the visitor may still be sending (a refused
        upload, an HTTP/2 client's next frames), and closing a socket with unread bytes
        resets the connection, which can destroy the answer before the visitor reads it. So
        end our side, read and drop what still comes, and close when the visitor ends its
        side or after ``_LINGER`` seconds."""
        transport = self.transport
        if transport is None or self._phase is _Phase.CLOSED or not transport.can_write_eof():
            self._close()
            return
        self._phase = _Phase.CLOSED
        self._buf.clear()
        if not _write_eof(transport):
            transport.abort()
            return
        if self._paused:
            self._paused = 0
            transport.resume_reading()
        self._arm(_LINGER, transport.close)

    def _close(self) -> None:
        # CLOSED with a timer: lingering after our own answer (see _linger_close)
        lingering = self._phase is _Phase.CLOSED and self._timer_callback is not None
        if (self._phase is not _Phase.CLOSED or lingering) and self.transport is not None:
            self._phase = _Phase.CLOSED
            self._stop_timer()
            self.transport.close()

    def _abort(self) -> None:
        if self.transport is not None:
            self._phase = _Phase.CLOSED
            self._stop_timer()
            self.transport.abort()

    def _pause_reading(self, reason: int) -> None:
        if not self._paused and self.transport is not None and self._phase is not _Phase.CLOSED:
            self.transport.pause_reading()
        self._paused |= reason

    def _resume_reading(self, reason: int) -> None:
        was = self._paused
        self._paused &= ~reason
        transport = self.transport
        if was and not self._paused and transport is not None and self._phase is not _Phase.CLOSED:
            transport.resume_reading()
