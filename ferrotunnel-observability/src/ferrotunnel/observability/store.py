"""The dashboard's memory: the last N exchanges, the tunnels' state, and live subscribers.

Everything here runs on the event loop thread, so there is no lock. Publishing never waits:
each subscriber (an open ``/api/v1/events`` stream) has a bounded queue, and one that falls
that far behind is dropped — its browser reconnects and reloads the list — rather than
slowing the tunnel or growing without bound.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from .exchange import Exchange

__all__ = ["Store", "Subscriber", "TunnelState", "valid_status_filter"]

#: seconds of per-second traffic kept for each tunnel's chart
TRAFFIC_WINDOW = 60
#: a ``status`` filter, stripped and lower-cased: a code, a class, or no response yet
STATUS_FILTER = re.compile(r"[1-5][0-9][0-9]|[1-5]xx|pending|none")


@dataclass(slots=True)
class TunnelState:
    name: str
    kind: str
    local_addr: str | None
    public_url: str | None = None
    status: str = "connecting"
    requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    #: (second, requests, bytes) as they stood when each of the last TRAFFIC_WINDOW seconds
    #: with traffic began: counting adds to the totals only, the chart takes differences
    _marks: deque[tuple[int, int, int]] = field(
        default_factory=lambda: deque(maxlen=TRAFFIC_WINDOW), repr=False
    )
    _next_second: float = 0.0  # when the current second ends

    def count(self, size_in: int, size_out: int) -> None:
        """One more exchange, finished now."""
        now = time.time()
        if now >= self._next_second:
            second = int(now)
            self._next_second = second + 1
            self._marks.append((second, self.requests, self.bytes_in + self.bytes_out))
        self.requests += 1
        self.bytes_in += size_in
        self.bytes_out += size_out

    @property
    def traffic(self) -> list[list[int]]:
        """[second, requests, bytes] for each of the last TRAFFIC_WINDOW seconds with traffic."""
        now = (0, self.requests, self.bytes_in + self.bytes_out)
        return [
            [second, requests - before, size - size_before]
            for (second, before, size_before), (_, requests, size) in pairwise([*self._marks, now])
        ]

    def as_json(self) -> dict[str, Any]:
        now = int(time.time())
        return {
            "name": self.name,
            "kind": self.kind,
            "local_addr": self.local_addr,
            "public_url": self.public_url,
            "status": self.status,
            "requests": self.requests,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "traffic": [row for row in self.traffic if row[0] > now - TRAFFIC_WINDOW],
        }


class Subscriber:
    """One live event stream: a bounded queue of encoded SSE messages."""

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(size)
        #: set when the queue overflowed: the stream ends, the browser reconnects
        self.lagged = False


class Store:
    """The last ``keep`` exchanges, newest last, by id."""

    def __init__(self, keep: int = 200, queue_size: int = 1000) -> None:
        self.keep = keep
        self.queue_size = queue_size
        self.tunnels: dict[str, TunnelState] = {}
        self._exchanges: dict[int, Exchange] = {}  # in id order
        self._next_id = 1
        self._subscribers: set[Subscriber] = set()

    def __len__(self) -> int:
        return len(self._exchanges)

    # ------------------------------------------------------------------ exchanges

    def add(self, exchange: Exchange) -> None:
        exchange.id = self._next_id
        self._next_id += 1
        self._exchanges[exchange.id] = exchange
        self._exchanges.pop(exchange.id - self.keep, None)  # ids are consecutive
        if self._subscribers:  # a summary is worth building only for someone to read it
            self.publish("request", exchange.summary())

    def update(self, exchange: Exchange) -> None:
        if exchange.complete or exchange.error is not None:
            tunnel = self.tunnels.get(exchange.tunnel)
            if tunnel is not None:
                tunnel.count(exchange.request_body.size, exchange.response_size or 0)
        if self._subscribers and exchange.id in self._exchanges:
            self.publish("request", exchange.summary())

    def get(self, exchange_id: int) -> Exchange | None:
        return self._exchanges.get(exchange_id)

    def clear(self) -> None:
        self._exchanges.clear()
        self.publish("clear", {})

    def query(
        self,
        *,
        limit: int = 50,
        before: int | None = None,
        tunnel: str | None = None,
        method: str | None = None,
        status: str | None = None,
        path: str | None = None,
    ) -> list[Exchange]:
        """Newest first; ``before`` pages back (ids below it); ``status`` is ``404`` or
        ``4xx``; ``path`` is a substring of the target (query string included)."""
        found: list[Exchange] = []
        for exchange in reversed(self._exchanges.values()):
            if before is not None and exchange.id >= before:
                continue
            if tunnel and exchange.tunnel != tunnel:
                continue
            if method and exchange.method.upper() != method.upper():
                continue
            if status and not _status_matches(exchange.status, status):
                continue
            if path and path.lower() not in exchange.target.lower():
                continue
            found.append(exchange)
            if len(found) >= limit:
                break
        return found

    # ------------------------------------------------------------------ tunnels

    def set_tunnel(self, state: TunnelState) -> None:
        self.tunnels[state.name] = state
        self.publish("tunnel", state.as_json())

    def tunnel_status(self, name: str, status: str, public_url: str | None = None) -> None:
        state = self.tunnels.get(name)
        if state is None:
            return
        state.status = status
        if public_url is not None:
            state.public_url = public_url
        self.publish("tunnel", state.as_json())

    # ------------------------------------------------------------------ live events

    @contextmanager
    def subscribe(self) -> Iterator[Subscriber]:
        subscriber = Subscriber(self.queue_size)
        self._subscribers.add(subscriber)
        try:
            yield subscriber
        finally:
            self._subscribers.discard(subscriber)

    def publish(self, event: str, data: dict[str, Any]) -> None:
        if not self._subscribers:
            return
        message = sse_message(event, data)
        for subscriber in list(self._subscribers):
            try:
                subscriber.queue.put_nowait(message)
            except asyncio.QueueFull:
                subscriber.lagged = True
                self._subscribers.discard(subscriber)

    def close_subscribers(self) -> None:
        """Shutting down: every open event stream ends."""
        for subscriber in self._subscribers:
            subscriber.lagged = True
            if not subscriber.queue.full():
                subscriber.queue.put_nowait(b"")
        self._subscribers.clear()


def sse_message(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def valid_status_filter(wanted: str) -> bool:
    """``404``, ``4xx`` or ``pending``, in any case; the API refuses anything else rather
    than answering an empty list that looks like "no such requests"."""
    return STATUS_FILTER.fullmatch(wanted.strip().lower()) is not None


def _status_matches(status: int | None, wanted: str) -> bool:
    wanted = wanted.strip().lower()
    if wanted in ("pending", "none"):
        return status is None
    if status is None:
        return False
    if len(wanted) == 3 and wanted.endswith("xx"):
        return str(status // 100) == wanted[0]  # not int(wanted[0]): "²".isdigit() is true
    return str(status) == wanted
