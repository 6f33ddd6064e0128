"""Running the plugins' HTTP middlewares on each exchange.

The middlewares are composed once, at start-up, into three lists of bound methods — request,
response, completion — holding only the methods each middleware defines. An exchange then
costs a loop over short lists and no pluggy call. Plain ``on_request`` methods run inline in
the connection's callback; the first ``async`` one hands the rest of the request phase to a
task (the connection stops reading meanwhile).

``on_complete`` (and the ``exchange_complete`` hook) run just *after* the batch of events
that completed the exchange: an exchange usually completes while the session is delivering a
batch of response frames for many visitor connections, and work done there delays every
response behind it — measured, 3 µs per exchange there cost 16 % of req/s against 2 % when
done elsewhere. So the connection notes the outcome in the exchange's context (which is its
record) and queues it, and one callback per batch calls the middlewares. That callback first
lets the event loop poll once more: requests that arrived meanwhile (the visitors answered by
this batch send their next ones at once) are forwarded first, and the records are delivered
while the tunnel waits for their answers (measured with all five built-ins: about 5 points
of req/s).

A middleware that raises is contained: the exchange gets a 500 (or, once the response is on
its way, just the log line), the error is logged with the plugin's name and distribution, and
everything else carries on. A :class:`Reply` that cannot be sent as it is (a header value with
CR/LF, which would split the response, or one that is not a ``str``) counts as such a failure.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from ferrotunnel.core.plugin import (
    REPLIED_BY,
    HttpMiddleware,
    HttpRequest,
    HttpResponse,
    PluginHost,
    Reply,
    RequestContext,
)

from .h1 import _field
from .pages import REASONS

__all__ = ["MiddlewareChain", "reply_bytes", "reply_parts"]

log = logging.getLogger("ferrotunnel.http.middleware")

PLUGIN_FAILED = Reply(500, "a plugin failed while handling this request")

Step = tuple[str, Callable[..., Any]]


class MiddlewareChain:
    def __init__(self, middlewares: Sequence[HttpMiddleware], plugins: PluginHost | None) -> None:
        def label(m: object) -> str:
            return plugins.label_of(m) if plugins is not None else type(m).__name__

        steps = [(label(m), m.on_request) for m in middlewares if hasattr(m, "on_request")]
        first_async = next(
            (i for i, (_, step) in enumerate(steps) if inspect.iscoroutinefunction(step)),
            len(steps),
        )
        self.request_steps: list[Step] = steps
        #: the plain steps before the first async one run inline; the rest in a task
        self._inline_steps, self._async_steps = steps[:first_async], steps[first_async:]
        #: every ``on_request`` answers at once (an HTTP/2 connection's later requests can be
        #: decided on as they pass: see h2gate.py)
        self.decides_inline = not self._async_steps
        self.response_steps = [
            (label(m), m.on_response) for m in middlewares if hasattr(m, "on_response")
        ]
        self.complete_steps = [
            (label(m), m.on_complete) for m in middlewares if hasattr(m, "on_complete")
        ]
        listening = plugins is not None and plugins.listens("ferrotunnel_exchange_complete")
        self.notify = plugins.exchange_complete if plugins is not None and listening else None
        #: whether exchanges need a context at all, and a record when they end
        self.wants_records = bool(self.complete_steps or self.notify)
        #: whether a middleware sees an exchange after its request went on (else the
        #: ingress lets go of its context then)
        self.after_request = bool(self.response_steps or self.wants_records)
        self._pending: list[RequestContext] = []
        self.active = bool(self.request_steps or self.response_steps or self.wants_records)

    def on_request(
        self, request: HttpRequest, ctx: RequestContext
    ) -> Reply | Awaitable[Reply | None] | None:
        """None to forward the request, a Reply to answer it, or an awaitable of either."""
        label = ""
        try:
            for label, step in self._inline_steps:
                reply = step(request, ctx)
                if reply is not None:
                    reply_parts(cast(Reply, reply))  # raises for a Reply that cannot be sent
                    ctx.state.setdefault(REPLIED_BY, label)
                    return reply
        except Exception:
            return _failed(ctx, label, "on_request")
        return self._on_request_async(request, ctx) if self._async_steps else None

    async def _on_request_async(self, request: HttpRequest, ctx: RequestContext) -> Reply | None:
        for label, step in self._async_steps:
            try:
                reply = step(request, ctx)
                if inspect.isawaitable(reply):
                    reply = await reply
                if reply is not None:
                    reply_parts(reply)
            except Exception:
                return _failed(ctx, label, "on_request")
            if reply is not None:
                ctx.state.setdefault(REPLIED_BY, label)
                return reply
        return None

    def on_response(self, response: HttpResponse, ctx: RequestContext) -> bool:
        """Let middlewares edit the response head; False if one of them failed."""
        for label, step in self.response_steps:
            try:
                step(response, ctx)
            except Exception:
                _failed(ctx, label, "on_response")
                return False
        return True

    def complete_later(self, ctx: RequestContext) -> None:
        """Queue an exchange that ended (its outcome already in ``ctx``) for :meth:`_flush`:
        one callback per batch."""
        if not self._pending:
            loop = asyncio.get_running_loop()
            loop.call_soon(loop.call_soon, self._flush)  # after one more poll: see above
        self._pending.append(ctx)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        steps, notify = self.complete_steps, self.notify
        for ctx in pending:
            by = ctx.state.get(REPLIED_BY)
            if by:  # a middleware answered (or failed): it says so, not the ingress
                ctx.replied_by = str(by)
            for label, step in steps:
                try:
                    step(ctx, ctx)
                except Exception:
                    log.exception("plugin %s failed in on_complete", label)
            if notify is not None:
                try:
                    notify(ctx)
                except Exception:
                    log.exception("a plugin failed in ferrotunnel_exchange_complete")


def _failed(ctx: RequestContext, label: str, method: str) -> Reply:
    """Log a middleware's exception; the exchange is its to account for, not the origin's."""
    log.exception("plugin %s failed in %s", label, method)
    ctx.state[REPLIED_BY] = label
    return PLUGIN_FAILED


def reply_parts(reply: Reply) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A :class:`Reply`'s body and header lines, checked as ``set_header`` checks a plugin's
    header: a value with CR/LF would let it add headers of its own (response splitting).
    Raises ``ValueError`` or ``TypeError`` for a Reply that cannot be sent."""
    if not isinstance(reply.status, int) or not 200 <= reply.status <= 599:
        raise ValueError(f"Reply status {reply.status!r} is not a final status (200-599)")
    if not isinstance(reply.body, (bytes, bytearray, memoryview, str)):
        raise TypeError(f"Reply body {reply.body!r} is neither bytes nor str")
    body = reply.body.encode() if isinstance(reply.body, str) else bytes(reply.body)
    headers = [_field("content-type", _text(reply.content_type))]
    headers.append((b"content-length", b"%d" % len(body)))
    headers += [_field(_text(name), _text(value)) for name, value in reply.headers]
    return body, headers


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"Reply header {value!r} is not a str")
    return value


def reply_bytes(reply: Reply, *, close: bool, head_only: bool = False) -> bytes:
    """A middleware's :class:`Reply` (checked by the chain) as a whole HTTP/1.1 response."""
    body, headers = reply_parts(reply)
    reason = REASONS.get(reply.status, "Status").encode()
    if close:
        headers.append((b"connection", b"close"))
    head = b"HTTP/1.1 %d %s\r\n" % (reply.status, reason)
    head += b"".join(b"%s: %s\r\n" % pair for pair in headers) + b"\r\n"
    return head if head_only else head + body
