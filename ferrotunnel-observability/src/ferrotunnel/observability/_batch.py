"""Finished spans, exported in batches by one worker thread, in bounded memory.

The SDK's ``BatchSpanProcessor`` with the OTLP exporter, minus what made it expensive: the
event loop appends a span already encoded (``_otlp.SpanEncoder.span``, a few µs) to a deque;
the worker joins a batch of them into one request and posts it. (Encoding in the worker, as
the SDK does, cost more CPU per request, measured live: +21 µs against +12 µs per sampled
request. Each batch held the GIL for milliseconds while the event loop waited for it, and
the spans' data went from one core to the other.)

The behaviour and the ``OTEL_BSP_*`` settings are the SDK's: a batch goes out when
``max_export_batch_size`` spans are waiting or ``schedule_delay`` has passed; at most
``max_queue_size`` spans wait, and while the queue is full new spans are dropped and counted
(memory stays bounded when the collector is slow or down); ``force_flush`` and ``shutdown``
export everything still queued.

It is also an SDK ``SpanProcessor``: spans of the SDK's own lifecycle (handshakes, the
client's proxy spans, another library's) reach it through ``on_end`` and share its batches.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

__all__ = ["BatchExporter", "BatchSettings"]

log = logging.getLogger("ferrotunnel.observability.tracing")

#: a span encoded by ``SpanEncoder.span``, or one from the SDK's lifecycle
Item = bytes | ReadableSpan


@dataclass(frozen=True)
class BatchSettings:
    """The SDK's batch span processor settings (and defaults)."""

    schedule_delay: float = 5.0  # seconds
    max_queue_size: int = 2048
    max_export_batch_size: int = 512
    export_timeout: float = 30.0  # seconds: the longest shutdown waits for the worker

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> BatchSettings:
        """``OTEL_BSP_SCHEDULE_DELAY``, ``_MAX_QUEUE_SIZE``, ``_MAX_EXPORT_BATCH_SIZE``,
        ``_EXPORT_TIMEOUT`` (milliseconds and counts); an invalid value is logged and the
        default kept, and a batch size above the queue size is lowered to it."""
        default = cls()

        def number(name: str, fallback: float) -> float:
            text = env.get(f"OTEL_BSP_{name}", "").strip()
            if not text:
                return fallback
            try:
                value = int(text)
            except ValueError:
                value = 0
            if value <= 0:
                log.warning("OTEL_BSP_%s=%r is not a positive integer: %s", name, text, fallback)
                return fallback
            return value

        queue = int(number("MAX_QUEUE_SIZE", default.max_queue_size))
        batch = int(number("MAX_EXPORT_BATCH_SIZE", default.max_export_batch_size))
        if batch > queue:
            log.warning("OTEL_BSP_MAX_EXPORT_BATCH_SIZE=%d exceeds the queue: %d", batch, queue)
            batch = queue
        return cls(
            schedule_delay=number("SCHEDULE_DELAY", default.schedule_delay * 1000) / 1000,
            max_queue_size=queue,
            max_export_batch_size=batch,
            export_timeout=number("EXPORT_TIMEOUT", default.export_timeout * 1000) / 1000,
        )


class BatchExporter(SpanProcessor):
    """Queues spans; a worker thread ``encode``\\ s each batch into one request (joining
    encoded spans, encoding SDK ones) and ``send``\\ s it (``send`` returns whether the
    collector took it)."""

    def __init__(
        self,
        encode: Callable[[list[Item]], bytes],
        send: Callable[[bytes], bool],
        settings: BatchSettings | None = None,
        close: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings = settings or BatchSettings.from_env()
        self._encode = encode
        self._send = send
        self._close = close
        self._queue: collections.deque[Item] = collections.deque()
        self._max_queue = settings.max_queue_size
        self._batch_size = settings.max_export_batch_size
        #: spans dropped because the queue was full, and how many of them were logged
        self.dropped = 0
        self._reported = 0
        self._stopping = False
        self._start_worker()
        # a forked child has the queue but not the thread: start its own (as the SDK does)
        restart = weakref.WeakMethod(self._start_worker)

        def after_fork() -> None:
            method = restart()
            if method is not None:
                method()

        os.register_at_fork(after_in_child=after_fork)

    def _start_worker(self) -> None:
        self._queue.clear()  # a child does not export its parent's spans
        self._wake = threading.Event()
        self._export_lock = threading.Lock()  # the worker or a flush: one batch at a time
        self._worker = threading.Thread(
            target=self._run, name="ferrotunnel-otlp-export", daemon=True
        )
        self._worker.start()

    # ---- the event loop's side

    def add(self, item: Item) -> None:
        """Queue a finished, sampled span (or drop it, counted, if the queue is full)."""
        queue = self._queue
        if len(queue) >= self._max_queue or self._stopping:
            self.dropped += 1
            return
        queue.append(item)
        if len(queue) >= self._batch_size and not self._wake.is_set():
            self._wake.set()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is not None and context.trace_flags.sampled:
            self.add(span)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Export every queued span now, in the caller's thread (as the SDK does; the sender's
        own timeout bounds each request)."""
        self._export(everything=True)
        return True

    def shutdown(self) -> None:
        """Export what is queued, stop the worker (waiting at most ``export_timeout``)."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._worker.join(self.settings.export_timeout)
        if self._close is not None:
            self._close()

    # ---- the worker

    def _run(self) -> None:
        while not self._stopping:
            woken = self._wake.wait(self.settings.schedule_delay)
            self._wake.clear()  # before exporting: a batch filling meanwhile wakes us again
            # a full batch woke us: send full batches; the delay passed: send everything
            self._export(everything=not woken or self._stopping)
        self._export(everything=True)

    def _export(self, *, everything: bool) -> None:
        with self._export_lock:
            queue, size = self._queue, self._batch_size
            while len(queue) >= size or (everything and queue):
                batch = [queue.popleft() for _ in range(min(size, len(queue)))]
                try:
                    self._send(self._encode(batch))
                except Exception:
                    log.exception("exporting %d spans failed", len(batch))
            dropped = self.dropped
            if dropped != self._reported:
                log.warning(
                    "%d spans dropped: the export queue was full (OTEL_BSP_MAX_QUEUE_SIZE=%d)",
                    dropped - self._reported,
                    self._max_queue,
                )
                self._reported = dropped
