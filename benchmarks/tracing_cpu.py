"""CPU per traced request of the ``tracing`` plugin, in isolation: the code before the fast
path against the current one, in one run.

* request path: ``on_request`` on a parsed request head, then ``on_complete`` with its
  record, and the span processor's share (a ``ReadableSpan`` to the SDK's
  ``BatchSpanProcessor`` before; now the span encoded and queued): every request sampled,
  and none (``always_off``);
* encoding alone, per span: the SDK's ``encode_spans`` on a batch of 512 exchange spans
  against ``SpanEncoder.span`` on the same spans' fields;
* the export thread, per span: encoding the batch (before) or joining the encoded spans
  (now), and posting it to a sink in another process (``requests``, as the SDK's exporter
  does, before; a kept-alive ``http.client`` now).

The "before" request path is a copy of the plugin's code as it was (``_OldTracing``), so both
run against the same SDK. Each figure is the best of ``--repeat`` timings (the machine is
shared: the minimum is the least disturbed). Nothing here asserts anything.

    uv run python benchmarks/tracing_cpu.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
import time
import timeit
from collections.abc import Callable, Sequence
from typing import Any, cast

import requests
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, DEFAULT_ON, Decision, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from ferrotunnel.core.plugin import ExchangeRecord, RequestContext
from ferrotunnel.http.h1 import parse_request_head
from ferrotunnel.observability._batch import BatchSettings
from ferrotunnel.observability._context import (
    RANDOM_TRACE_ID,
    SAMPLED,
    format_traceparent,
    new_span_id,
    new_trace_id,
    parse_traceparent,
)
from ferrotunnel.observability._otlp_http import OtlpHttpSender, OtlpHttpSettings
from ferrotunnel.observability.tracing import OtlpTracerProvider, Tracing

HEAD = (
    b"GET /index.html HTTP/1.1\r\nHost: bench.localhost:8080\r\nUser-Agent: wrk\r\n"
    b"Accept: */*\r\n\r\n"
)
BATCH = 512
NEVER_SEND = BatchSettings(3600.0, max_queue_size=1 << 30, max_export_batch_size=1 << 30)


class _Null(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class _OldTracing:
    """The plugin's request path before the fast path (commit cfb8e14), SDK providers only."""

    def __init__(self, provider: TracerProvider) -> None:
        tracer = provider.get_tracer("ferrotunnel")
        self._sampler: Sampler = tracer.sampler  # type: ignore[attr-defined]
        self._on_end = tracer.span_processor.on_end  # type: ignore[attr-defined]
        self._resource = tracer.resource  # type: ignore[attr-defined]
        self._scope = InstrumentationScope("ferrotunnel")

    def on_request(self, request: Any, ctx: RequestContext) -> None:
        incoming = request.header("traceparent")
        state = request.header("tracestate")
        found = parse_traceparent(incoming) if incoming is not None else None
        parent: SpanContext | None = None
        if found is None:
            trace_id, flags = new_trace_id(), RANDOM_TRACE_ID
            if state is not None:
                request.remove_header("tracestate")
                state = None
        else:
            trace_id, parent_id, parent_flags = found
            flags = parent_flags & RANDOM_TRACE_ID
            parent = SpanContext(
                trace_id,
                parent_id,
                is_remote=True,
                trace_flags=TraceFlags(parent_flags),
                trace_state=TraceState.from_header([state]) if state is not None else None,
            )
        span_id = new_span_id()
        method = request.method_text
        context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent else Context()
        result = self._sampler.should_sample(context, trace_id, method, SpanKind.SERVER)
        if result.decision is Decision.RECORD_AND_SAMPLE:
            flags |= SAMPLED
            ctx.state["tracing.span"] = (trace_id, span_id, flags, parent, method, request.path)
        traceparent = format_traceparent(trace_id, span_id, flags)
        if incoming is None:
            request.add_header("traceparent", traceparent)
        else:
            request.set_header("traceparent", traceparent)
        ctx.trace = {"traceparent": traceparent}
        if state is not None:
            ctx.trace["tracestate"] = state
        ctx.state["trace_id"] = traceparent[3:35]

    def on_complete(self, record: ExchangeRecord, ctx: RequestContext) -> None:
        facts = ctx.state.pop("tracing.span", None)
        if facts is None:
            return
        trace_id, span_id, flags, parent, method, path = cast(
            tuple[int, int, int, SpanContext | None, str, str], facts
        )
        status = record.status
        attributes: dict[str, str | int] = {
            "http.request.method": method,
            "url.path": path.partition("?")[0],
            "server.address": record.host,
            "client.address": record.visitor_ip,
            "ferrotunnel.tunnel": record.tunnel,
            "ferrotunnel.bytes_in": record.bytes_in,
            "ferrotunnel.bytes_out": record.bytes_out,
        }
        if status:
            attributes["http.response.status_code"] = status
        if record.error is not None:
            attributes["error.type"] = record.error
        failed = status >= 500 or not status
        started = int(record.time * 1e9)
        self._on_end(
            ReadableSpan(
                name=method,
                context=SpanContext(
                    trace_id,
                    span_id,
                    is_remote=False,
                    trace_flags=TraceFlags(flags),
                    trace_state=parent.trace_state if parent is not None else None,
                ),
                parent=parent,
                resource=self._resource,
                attributes=attributes,
                kind=SpanKind.SERVER,
                status=Status(StatusCode.ERROR, record.error) if failed else Status(),
                start_time=started,
                end_time=started + int(record.duration * 1e9),
                instrumentation_scope=self._scope,
            )
        )


def _record(index: int) -> ExchangeRecord:
    return ExchangeRecord(
        "bench.localhost", "bench.localhost", "127.0.0.1", 50000, f"r{index}",
        time=time.time(), method="GET", path="/index.html", status=200, bytes_in=80,
        bytes_out=1300 + index % 7, duration=0.001,
    )  # fmt: skip


def _context() -> RequestContext:
    return RequestContext("bench.localhost", "bench.localhost", "127.0.0.1", 50000, "r1")


def best(fn: Callable[[], object], number: int, repeat: int) -> float:
    """µs per call: the best of ``repeat`` timings of ``number`` calls."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def request_path(middleware: Any, record: ExchangeRecord, repeat: int) -> float:
    """µs per request: on_request + on_complete, less the parsing and context they need
    (timed alternately, so that both minimums come from the same moments of the machine)."""

    def parse_only() -> None:
        parse_request_head(HEAD)
        _context()

    def one() -> None:
        ctx = _context()
        middleware.on_request(parse_request_head(HEAD), ctx)
        middleware.on_complete(record, ctx)

    number, with_it, without = 20000, [], []
    for _ in range(repeat):
        with_it.append(timeit.timeit(one, number=number))
        without.append(timeit.timeit(parse_only, number=number))
    return (min(with_it) - min(without)) / number * 1e6


def export_spans(
    count: int,
) -> tuple[list[ReadableSpan], list[tuple[Any, ...]], OtlpTracerProvider]:
    """``count`` exchange spans: the SDK's ReadableSpans, the arguments ``SpanEncoder.span``
    had for the same exchanges, and the provider holding them encoded in its queue."""
    resource = Resource.create({"service.name": "ferrotunnel"})
    provider = OtlpTracerProvider(resource, OtlpHttpSettings("http://127.0.0.1:9/"), NEVER_SEND)
    tracing = Tracing(provider)
    calls: list[tuple[Any, ...]] = []
    encode = provider.encoder.span

    def recorded(*args: Any) -> bytes:
        calls.append(args)
        return encode(*args)

    provider.encoder.span = recorded  # type: ignore[method-assign,assignment]
    sdk = TracerProvider(resource=resource, sampler=DEFAULT_ON)
    spans: list[ReadableSpan] = []

    class Keep(_Null):
        def export(self, batch: Sequence[ReadableSpan]) -> SpanExportResult:
            spans.extend(batch)
            return SpanExportResult.SUCCESS

    processor = BatchSpanProcessor(Keep(), max_queue_size=count, max_export_batch_size=count)
    sdk.add_span_processor(processor)
    old = _OldTracing(sdk)
    for index in range(count):
        record = _record(index)
        for middleware in (old, tracing):
            ctx = _context()
            middleware.on_request(parse_request_head(HEAD), ctx)
            middleware.on_complete(record, ctx)
    processor.force_flush()
    sdk.shutdown()
    del provider.encoder.span
    return spans, calls, provider


SINK = textwrap.dedent("""
    import http.server, sys
    class Sink(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    print(server.server_address[1], flush=True)
    server.serve_forever()
""")


def post_costs(body: bytes, repeat: int) -> tuple[float, float]:
    """CPU µs of this thread per POST of ``body``: requests (the SDK's exporter), then
    :class:`OtlpHttpSender`; to a sink in another process."""
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None
        url = f"http://127.0.0.1:{sink.stdout.readline().strip()}/v1/traces"
        session = requests.Session()
        sender = OtlpHttpSender(OtlpHttpSettings(url))

        def old() -> None:
            session.post(url, data=body, headers={"Content-Type": "application/x-protobuf"})

        def cpu(fn: Callable[[], object]) -> float:
            fn()
            timings = []
            for _ in range(repeat):
                started = time.thread_time()
                for _ in range(20):
                    fn()
                timings.append((time.thread_time() - started) / 20 * 1e6)
            return min(timings)

        costs = cpu(old), cpu(lambda: sender.send(body))
        sender.close()
        session.close()
        return costs
    finally:
        sink.kill()
        sink.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    repeat = parser.parse_args().repeat
    record = _record(0)

    rows: list[tuple[str, float, float]] = []
    for label, sampler in (
        ("every request sampled", DEFAULT_ON),
        ("none (always_off)", ALWAYS_OFF),
    ):
        sdk = TracerProvider(sampler=sampler)
        sdk.add_span_processor(BatchSpanProcessor(_Null(), max_queue_size=1 << 30))
        fast = OtlpTracerProvider(
            Resource.create({}), OtlpHttpSettings("http://127.0.0.1:9/"), NEVER_SEND, sampler
        )
        old_cost = request_path(_OldTracing(sdk), record, repeat)
        new_cost = request_path(Tracing(fast), record, repeat)
        rows.append((f"request path, {label}", old_cost, new_cost))
        fast.exporter._queue.clear()  # nothing to send at shutdown
        sdk.shutdown()
        fast.shutdown()

    spans, calls, provider = export_spans(BATCH)
    queued = list(provider.exporter._queue)  # what on_complete queued: encoded spans
    provider.exporter._queue.clear()
    encoder = provider.encoder

    def encode_each() -> None:
        for args in calls:
            encoder.span(*args)

    def old_encode() -> None:
        encode_spans(spans).SerializePartialToString()

    old_export = best(old_encode, 3, repeat) / BATCH
    rows.append(("encoding alone, per span", old_export, best(encode_each, 10, repeat) / BATCH))
    rows.append(
        (
            "export thread: encode, per span",
            old_export,
            best(lambda: encoder.encode(queued), 10, repeat) / BATCH,
        )
    )
    old_bytes = encode_spans(spans).SerializePartialToString()
    new_bytes = encoder.encode(queued)
    old_post, new_post = post_costs(new_bytes, repeat)
    rows.append(("export thread: post, per span", old_post / BATCH, new_post / BATCH))
    provider.shutdown()

    print(f"{'µs of CPU':34s} {'before':>8s} {'now':>8s}")
    for name, old, new in rows:
        print(f"{name:34s} {old:8.2f} {new:8.2f}")
    sampled = [rows[0], rows[3], rows[4]]
    print(
        f"{'a sampled request, in all':34s} {sum(r[1] for r in sampled):8.2f}"
        f" {sum(r[2] for r in sampled):8.2f}"
    )
    print(
        f"(request bytes per span: {len(old_bytes) / BATCH:.0f} and {len(new_bytes) / BATCH:.0f})"
    )


if __name__ == "__main__":
    main()
