"""Bounded capture of the HTTP exchanges on a client's relayed streams.

The client's relay hands an :class:`ExchangeTap` every chunk it forwards (see
``ferrotunnel.core.plugin.StreamTap``). Most chunks of an HTTP tunnel hold one whole message
(a request head, a response with its whole body): those are recorded at once
(:func:`~.http1.whole_request`, :func:`~.http1.whole_response`). A direction's first chunk that
is anything else gets it an :class:`~.http1.Http1Parser`, which follows that direction from
then on. Heads are kept, bodies only up to ``limit`` bytes each, and the bytes themselves are
never held or delayed: the relay has already got them. A stream that starts with the
HTTP/2 preface (h2c, gRPC) is followed by an :class:`~.http2.H2Capture` instead. A tap that
meets something it cannot follow (a protocol switch, garbage) stops looking and lets bytes
pass.

The dashboard's taps (:class:`CaptureObserver`) go one step further: the relay calls a tap
right after forwarding a chunk, but the tunnel's writes of one event-loop iteration leave
together at its end (``ProtocolLink`` gathers them), so parsing there would still hold them
up. Their calls are only noted, and a :class:`Backlog` makes them all, in order, in one
callback after the iteration, once the bytes are on their way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ferrotunnel.core import Stream, TunnelKind
from ferrotunnel.core.h2wire import PREFACE
from ferrotunnel.core.plugin import StreamTap
from ferrotunnel.protocol import ErrorCode

from .exchange import NO_BODY, Body, Exchange
from .http1 import Head, Http1Parser, whole_request, whole_response
from .http2 import H2Capture
from .store import Store

__all__ = ["Backlog", "CaptureObserver", "ExchangeTap", "ingress_answer"]

log = logging.getLogger("ferrotunnel.observability.capture")


class ExchangeTap:
    """Turns the two byte directions of one stream into :class:`Exchange` records."""

    def __init__(
        self,
        store: Store,
        tunnel: str,
        limit: int,
        *,
        visitor: tuple[str, int] | None = None,
        traceparent: str | None = None,
        replay_of: int | None = None,
    ) -> None:
        self.store = store
        self.tunnel = tunnel
        self.limit = limit
        self.visitor = visitor
        self.traceparent = traceparent
        self.replay_of = replay_of
        self._sent: deque[Exchange] = deque()  # request head seen, response not finished
        self._request: Exchange | None = None  # whose request body is being read
        self._response_body: Body | None = None  # the response body being read
        #: the latest exchange seen on this stream
        self.last: Exchange | None = None
        # Each direction's parser is made only when a chunk is not one whole message (see
        # ``whole_request``): until then, each direction is between messages.
        self._requests: Http1Parser | None = None
        self._responses: Http1Parser | None = None
        self._closed = False
        self._h2: H2Capture | None = None  # an HTTP/2 connection's capture
        self._opening = b""  # the visitor's first bytes, while they may be the HTTP/2 preface

    @property
    def idle(self) -> bool:
        """Every request seen has had its whole response."""
        return not self._sent if self._h2 is None else self._h2.idle

    # ---- StreamTap

    def to_origin(self, data: bytes | memoryview) -> None:
        try:
            if self._h2 is not None:
                self._h2.to_origin(data)
                self.last = self._h2.last
                return
            if self._requests is None:
                if self.last is None:  # the stream's first bytes
                    opening = self._http1_opening(data)
                    if opening is None:
                        return
                    data = opening
                if self._whole_request(data):
                    return
                self._requests = self._parser(response=False)
            self._requests.feed(data)
        except Exception:  # a tap must never break the relay
            log.exception("request capture failed; not capturing this stream further")
            if self._h2 is not None:
                self._h2.stop("capture error")
            else:
                self._stop_requests("capture error")

    def to_visitor(self, data: bytes) -> None:
        try:
            if self._h2 is not None:
                self._h2.to_visitor(data)
                return
            if self._responses is None:
                if self._sent and self._whole_response(data):
                    return
                self._responses = self._parser(response=True)
                for exchange in self._sent:  # unanswered: the parser must know their methods
                    self._responses.expect(exchange.method)
            self._responses.feed(data)
        except Exception:
            log.exception("response capture failed; not capturing this stream further")
            if self._h2 is not None:
                self._h2.stop("capture error")
                return
            self._responses = self._responses or self._parser(response=True)
            self._responses.go_opaque("capture error")

    def closed(self, error: str | None, ingress_status: int | None = None) -> None:
        """The stream is over. ``ingress_status``: what the server's ingress answered the
        visitor when the origin never answered the request waiting (see :func:`ingress_answer`)."""
        if self._closed:
            return
        self._closed = True
        if self._h2 is not None:
            self._h2.closed(error)
            return
        if self._responses is not None:
            self._responses.feed_eof()
        if self._sent and self._sent[0].response is None:
            self._sent[0].ingress_status = ingress_status
        for exchange in self._sent:
            if not exchange.complete:
                exchange.error = error or (
                    "response cut short" if exchange.response is not None else "no response"
                )
                self._finish(exchange)
        self._sent.clear()
        self._requests = self._responses = None  # they refer back to this tap

    def _http1_opening(self, data: bytes | memoryview) -> bytes | memoryview | None:
        """The visitor's first bytes, if the stream is HTTP/1; None while they may still be
        the HTTP/2 preface (it may come in pieces: they are kept, 24 bytes at most), and once
        they were (the stream is followed as HTTP/2 from then on). All 24 must match: an
        HTTP/1 request may begin with ``PRI``."""
        seen = self._opening
        start = seen + bytes(data[: len(PREFACE) - len(seen)])
        if not PREFACE.startswith(start):
            self._opening = b""
            return seen + bytes(data) if seen else data
        if len(start) < len(PREFACE):
            self._opening = start
            return None
        self._opening = b""
        self._h2 = H2Capture(
            self.store,
            self.tunnel,
            self.limit,
            visitor=self.visitor,
            traceparent=self.traceparent,
            replay_of=self.replay_of,
        )
        self._h2.to_origin(memoryview(data)[len(PREFACE) - len(seen) :])
        self.last = self._h2.last
        return None

    def _parser(self, *, response: bool) -> Http1Parser:
        if response:
            return Http1Parser(
                response=True,
                on_head=self._response_head,
                on_body=self._response_chunk,
                on_end=self._response_end,
                on_opaque=self._opaque,
            )
        return Http1Parser(
            response=False,
            on_head=self._request_head,
            on_body=self._request_chunk,
            on_end=self._request_end,
            on_opaque=self._opaque,
        )

    def _stop_requests(self, why: str) -> None:
        """Read no more requests on this stream (the fast path included: it only runs while
        there is no parser)."""
        if self._requests is None:
            self._requests = self._parser(response=False)
        self._requests.go_opaque(why)

    def _whole_request(self, data: bytes | memoryview) -> bool:
        """Record ``data`` if it is one whole request without a body."""
        found = whole_request(data)
        if found is None:
            return False
        raw, method = found
        exchange = self.last = Exchange(
            self.tunnel, raw, NO_BODY, self.visitor, self.traceparent, self.replay_of, method
        )
        exchange.request_complete = True
        self._sent.append(exchange)
        if self._responses is not None:
            self._responses.expect(method)
        self.store.add(exchange)
        return True

    def _whole_response(self, data: bytes) -> bool:
        """Record ``data`` if it is the whole response to the oldest request waiting."""
        exchange = self._sent[0]
        start = whole_response(data, exchange.method)
        if start is None:
            return False
        self._sent.popleft()
        exchange.whole_response(data, start, self.limit)
        exchange.ttfb = exchange.duration = time.monotonic() - exchange.started_mono
        exchange.complete = True
        self.store.update(exchange)
        return True

    # ---- requests

    def _request_head(self, head: Head) -> None:
        # most requests have no body: theirs is made when the first byte of it comes
        exchange = self.last = self._request = Exchange(
            self.tunnel, head, NO_BODY, self.visitor, self.traceparent, self.replay_of
        )
        self._sent.append(exchange)
        if self._responses is not None:
            self._responses.expect(head.method)
        self.store.add(exchange)

    def _request_chunk(self, chunk: memoryview) -> None:
        exchange = self._request
        if exchange is not None:
            if exchange.request_body is NO_BODY:
                exchange.request_body = Body(self.limit)
            exchange.request_body.add(chunk)

    def _request_end(self) -> None:
        if self._request is not None:
            self._request.request_complete = True
        self._request = None

    # ---- responses

    def _response_head(self, head: Head) -> None:
        if not self._sent:
            assert self._responses is not None  # the parser calling this
            self._responses.go_opaque("a response without a request")
            return
        exchange = self._sent[0]
        exchange.response = head
        exchange.response_body = self._response_body = Body(self.limit)
        exchange.ttfb = time.monotonic() - exchange.started_mono
        if head.status == 101:
            # an Upgrade accepted: the response parser stops after this head, and what the
            # visitor sends from now on is the new protocol too (a 101 is never a whole
            # message, so it always comes through the parser: both paths decide here)
            self._stop_requests("protocol switched")

    def _response_chunk(self, chunk: memoryview) -> None:
        if self._response_body is not None:
            self._response_body.add(chunk)

    def _response_end(self) -> None:
        self._response_body = None
        if self._sent:
            exchange = self._sent.popleft()
            exchange.complete = True
            self._finish(exchange)

    def _finish(self, exchange: Exchange) -> None:
        exchange.duration = time.monotonic() - exchange.started_mono
        self.store.update(exchange)

    def _opaque(self, why: str) -> None:
        log.debug("tunnel %r: not capturing the rest of a stream: %s", self.tunnel, why)


class Backlog:
    """Tap calls noted during one event-loop iteration, made in one callback after it."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: list[tuple[Callable[[Any], None], Any]] = []

    def add(self, call: Callable[[Any], None], argument: Any) -> None:
        calls = self._calls
        if not calls:
            try:
                asyncio.get_running_loop().call_soon(self.run)
            except RuntimeError:  # no event loop: make the call now
                call(argument)
                return
        calls.append((call, argument))

    def run(self) -> None:
        calls, self._calls = self._calls, []
        for call, argument in calls:
            call(argument)


def ingress_answer(stream: Stream) -> int | None:
    """What the HTTP ingress answers a visitor whose request the origin left unanswered,
    judging by how ``stream`` ended: the client reset it because the local service refused
    the connection or broke it (CONNECT_ERROR), or ended it because the service closed its
    connection (both FINs: the ingress never ends a stream first) — a 502; the ingress
    gave up waiting (TIMEOUT) — a 504. None when the ingress ended it for another reason
    (the visitor left: nobody got an answer)."""
    code = stream.reset_code
    if code == ErrorCode.CONNECT_ERROR or (code is None and stream.done):
        return 502
    if code == ErrorCode.TIMEOUT:
        return 504
    return None


class _DeferredTap:
    """A tap whose calls wait in a :class:`Backlog` (see the module's docstring)."""

    __slots__ = ("_backlog", "_stream", "_tap", "_to_origin", "_to_visitor")

    def __init__(self, tap: ExchangeTap, backlog: Backlog, stream: Stream) -> None:
        self._tap = tap
        self._backlog = backlog
        self._stream = stream
        self._to_origin = tap.to_origin  # bound once, not for every chunk
        self._to_visitor = tap.to_visitor

    def to_origin(self, data: bytes | memoryview) -> None:
        self._backlog.add(self._to_origin, data)

    def to_visitor(self, data: bytes) -> None:
        self._backlog.add(self._to_visitor, data)

    def closed(self, error: str | None) -> None:
        self._backlog.add(self._closed, error)

    def _closed(self, error: str | None) -> None:
        # run after the loop iteration: by then the stream has ended however it was going to
        self._tap.closed(error, ingress_answer(self._stream))


class CaptureObserver:
    """The :class:`~ferrotunnel.core.plugin.StreamObserver` a dashboard gives its client:
    a tap on each stream of an HTTP tunnel, its calls made after each loop iteration."""

    def __init__(self, store: Store, limit: int) -> None:
        self.store = store
        self.limit = limit
        self.backlog = Backlog()

    def on_stream(self, stream: Stream) -> StreamTap | None:
        frame = stream.open_frame
        if frame.kind is not TunnelKind.HTTP:
            return None
        visitor = None
        if frame.visitor_host is not None and frame.visitor_port is not None:
            visitor = (frame.visitor_host, frame.visitor_port)
        tap = ExchangeTap(
            self.store,
            frame.tunnel,
            self.limit,
            visitor=visitor,
            traceparent=frame.trace.get("traceparent"),
        )
        return _DeferredTap(tap, self.backlog, stream)
