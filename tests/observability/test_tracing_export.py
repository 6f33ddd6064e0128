"""The exporter behind ``otlp_provider``: batching in bounded memory (``_batch.py``), posting
with the OTLP exporter's settings (``_otlp_http.py``), and how ``Tracing`` hands it spans."""

from __future__ import annotations

import gzip
import http.server
import logging
import os
import random
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, DEFAULT_OFF, Sampler
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

from ferrotunnel.core.plugin import RequestContext
from ferrotunnel.core.testing import plugin_host
from ferrotunnel.http.h1 import parse_request_head
from ferrotunnel.observability._batch import BatchExporter, BatchSettings
from ferrotunnel.observability._otlp import SpanEncoder
from ferrotunnel.observability._otlp_http import (
    OtlpHttpSender,
    OtlpHttpSettings,
    standard_exporter_reason,
)
from ferrotunnel.observability.tracing import (
    SCOPE,
    ContextOnly,
    OtlpTracerProvider,
    Tracing,
    TracingPlugin,
    TracingSettings,
    otlp_provider,
)
from tests.e2e.helpers import HOST

RESOURCE = Resource.create({"service.name": "edge-test"})
QUIET = BatchSettings(schedule_delay=3600.0)  # sends only when a batch fills or on demand


# ---- the batches


@dataclass
class Collector:
    """A ``send`` that keeps the requests (decoded) and can hold the worker inside it."""

    requests: list[ExportTraceServiceRequest] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    sending: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.gate.set()

    def send(self, data: bytes) -> bool:
        self.sending.set()
        assert self.gate.wait(10)
        self.requests.append(ExportTraceServiceRequest.FromString(data))
        return True

    def sizes(self) -> list[int]:
        return [
            sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
            for request in self.requests
        ]


def exporter(collector: Collector, settings: BatchSettings = QUIET) -> BatchExporter:
    encoder = SpanEncoder(RESOURCE, SCOPE)
    return BatchExporter(encoder.encode, collector.send, settings)


def span_bytes(number: int) -> bytes:
    encoder = SpanEncoder(RESOURCE, SCOPE)
    return encoder.span(
        1 << 64 | number, 0, "", "GET", SpanKind.SERVER, 1, 2, {"n": number}, 0, None
    )


def test_a_full_queue_drops_and_counts_the_newest_spans() -> None:
    collector = Collector()
    batches = exporter(collector, BatchSettings(3600.0, max_queue_size=3, max_export_batch_size=3))
    collector.gate.clear()
    for number in range(3):  # a full batch: the worker takes it and is held in send
        batches.add(span_bytes(number))
    assert collector.sending.wait(10)
    for number in range(3, 8):  # three fit in the queue again, two do not
        batches.add(span_bytes(number))
    assert batches.dropped == 2
    assert len(batches._queue) == 3
    collector.gate.set()
    batches.shutdown()
    assert collector.sizes() == [3, 3]
    numbers = [
        span.attributes[0].value.int_value
        for request in collector.requests
        for span in request.resource_spans[0].scope_spans[0].spans
    ]
    assert numbers == [0, 1, 2, 3, 4, 5]  # the oldest kept, in order


def test_shutdown_sends_what_is_queued_and_then_nothing() -> None:
    collector = Collector()
    batches = exporter(collector)
    batches.add(span_bytes(1))
    batches.shutdown()
    assert collector.sizes() == [1]
    batches.add(span_bytes(2))
    assert batches.dropped == 1
    batches.shutdown()  # twice is harmless
    assert collector.sizes() == [1]


def test_batches_are_at_most_the_batch_size() -> None:
    collector = Collector()
    batches = exporter(collector, BatchSettings(3600.0, max_export_batch_size=3))
    collector.gate.clear()  # hold the worker on the first full batch
    for number in range(7):
        batches.add(span_bytes(number))
    collector.gate.set()
    assert batches.force_flush()
    batches.shutdown()
    assert sorted(collector.sizes(), reverse=True) == [3, 3, 1]


def test_the_schedule_delay_sends_a_partial_batch() -> None:
    collector = Collector()
    batches = exporter(collector, BatchSettings(schedule_delay=0.01))
    batches.add(span_bytes(1))
    assert collector.sending.wait(10)  # without a flush, a shutdown or a full batch
    batches.shutdown()
    assert collector.sizes() == [1]


def test_sdk_spans_join_the_batches_when_sampled() -> None:
    collector = Collector()
    batches = exporter(collector)
    sampled = SpanContext(5, 6, False, TraceFlags(TraceFlags.SAMPLED))
    unsampled = SpanContext(5, 7, False, TraceFlags(0))
    for context in (sampled, unsampled):
        batches.on_end(ReadableSpan("handshake", context, resource=RESOURCE))
    batches.add(span_bytes(1))
    batches.shutdown()
    [request] = collector.requests
    names = {s.name for r in request.resource_spans for x in r.scope_spans for s in x.spans}
    assert names == {"handshake", "GET"}


def test_a_failing_batch_is_logged_and_the_worker_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent: list[bytes] = []

    def encode(batch: list[bytes | ReadableSpan]) -> bytes:
        if b"boom" in batch:
            raise ValueError("boom")
        return b"".join(item for item in batch if isinstance(item, bytes))

    def send(data: bytes) -> bool:
        sent.append(data)
        return True

    batches = BatchExporter(encode, send, QUIET)
    with caplog.at_level(logging.ERROR):
        batches.add(b"boom")
        batches.force_flush()
        batches.add(b"fine")
        batches.shutdown()
    assert sent == [b"fine"]
    assert "exporting 1 spans failed" in caplog.text


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, BatchSettings()),
        (
            {
                "OTEL_BSP_SCHEDULE_DELAY": "100",
                "OTEL_BSP_MAX_QUEUE_SIZE": "64",
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "16",
                "OTEL_BSP_EXPORT_TIMEOUT": "2000",
            },
            BatchSettings(0.1, 64, 16, 2.0),
        ),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "many", "OTEL_BSP_SCHEDULE_DELAY": "-5"}, BatchSettings()),
        (
            {"OTEL_BSP_MAX_QUEUE_SIZE": "100"},
            BatchSettings(max_queue_size=100, max_export_batch_size=100),
        ),
    ],
)
def test_batch_settings_from_the_otel_bsp_variables(
    env: dict[str, str], expected: BatchSettings
) -> None:
    assert BatchSettings.from_env(env) == expected


# ---- posting


@dataclass
class Receiver:
    """A collector on 127.0.0.1: answers each POST with the next of ``answers`` (then 200)."""

    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    connections: set[tuple[str, int]] = field(default_factory=set)
    url: str = ""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.bodies.append(body)
            state.headers.append({k.lower(): v for k, v in self.headers.items()})
            state.connections.add(self.client_address)
            status, extra = state.answers.pop(0) if state.answers else (200, {})
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
    server.daemon_threads = True
    state.url = f"http://{HOST}:{server.server_address[1]}/v1/traces"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_requests_are_posted_on_one_kept_alive_connection(receiver: Receiver) -> None:
    sender = OtlpHttpSender(OtlpHttpSettings(receiver.url, headers={"Authorization": "k"}))
    assert sender.send(b"one")
    assert sender.send(b"two")
    sender.close()
    assert receiver.bodies == [b"one", b"two"]
    assert len(receiver.connections) == 1
    headers = receiver.headers[0]
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["authorization"] == "k"
    assert "content-encoding" not in headers


def test_gzip_compression(receiver: Receiver) -> None:
    sender = OtlpHttpSender(OtlpHttpSettings(receiver.url, compression="gzip"))
    assert sender.send(b"spans" * 100)
    sender.close()
    assert receiver.headers[0]["content-encoding"] == "gzip"
    assert gzip.decompress(receiver.bodies[0]) == b"spans" * 100


def test_transient_answers_are_retried_and_others_are_not(receiver: Receiver) -> None:
    sender = OtlpHttpSender(OtlpHttpSettings(receiver.url))
    receiver.answers = [(503, {"Retry-After": "0"}), (429, {"Retry-After": "0"})]
    assert sender.send(b"retried")
    assert receiver.bodies == [b"retried"] * 3
    receiver.answers = [(400, {})]
    assert not sender.send(b"refused")
    assert receiver.bodies[3:] == [b"refused"]
    sender.close()


def test_a_closed_connection_is_replaced(receiver: Receiver) -> None:
    sender = OtlpHttpSender(OtlpHttpSettings(receiver.url))
    receiver.answers = [(200, {"Connection": "close"})]
    assert sender.send(b"one")
    assert sender.send(b"two")
    sender.close()
    assert receiver.bodies == [b"one", b"two"]
    assert len(receiver.connections) == 2


def test_an_https_collector_is_verified_with_the_configured_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    bodies: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
    server.daemon_threads = True
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        url = f"https://{HOST}:{server.server_address[1]}/v1/traces"
        env = {"OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE": str(ca_file)}
        trusting = OtlpHttpSender(OtlpHttpSettings.from_env(url, env))
        assert trusting.send(b"secret spans")
        trusting.close()
        untrusting = OtlpHttpSender(OtlpHttpSettings(url, timeout=1.0))  # certifi's roots
        assert not untrusting.send(b"not for them")
        untrusting.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert bodies == [b"secret spans"]


def test_an_unreachable_collector_fails_without_raising() -> None:
    sender = OtlpHttpSender(OtlpHttpSettings("http://127.0.0.1:9/v1/traces", timeout=0.5))
    assert not sender.send(b"lost")
    sender.close()


@pytest.mark.parametrize(
    ("endpoint", "env", "expected"),
    [
        (None, {}, "http://localhost:4318/v1/traces"),
        (
            "http://flag:4318/v1/traces",
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://e"},
            "http://flag:4318/v1/traces",
        ),
        (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1/custom"}, "http://t:1/custom"),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4318/"}, "https://c:4318/v1/traces"),
    ],
)
def test_the_endpoint_is_resolved_as_the_exporter_does(
    endpoint: str | None, env: dict[str, str], expected: str
) -> None:
    assert OtlpHttpSettings.from_env(endpoint, env).endpoint == expected


def test_headers_timeout_and_compression_come_from_the_variables() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_HEADERS": "general=1",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "Api-Key=a%20b,tenant=t1",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "3",
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "GZIP",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": "/etc/ca.pem",
    }
    settings = OtlpHttpSettings.from_env(None, env)
    assert settings.headers == {"api-key": "a b", "tenant": "t1"}  # the traces variable wins
    assert (settings.timeout, settings.compression) == (3.0, "gzip")
    assert settings.certificate == "/etc/ca.pem"
    bad = OtlpHttpSettings.from_env(
        None, {"OTEL_EXPORTER_OTLP_TIMEOUT": "soon", "OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}
    )
    assert (bad.timeout, bad.compression) == (10.0, "none")


@pytest.mark.parametrize(
    ("endpoint", "env", "reason"),
    [
        ("http://collector:4318/v1/traces", {}, None),
        ("http://collector:4318/v1/traces", {"http_proxy": "http://proxy:3128"}, "proxy"),
        (
            "http://collector:4318/v1/traces",
            {"http_proxy": "http://proxy:3128", "no_proxy": "collector"},
            None,
        ),
        ("https://collector/v1/traces", {"https_proxy": "http://proxy:3128"}, "proxy"),
        (
            "http://c/v1/traces",
            {"OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER": "vault"},
            "CREDENTIAL_PROVIDER",
        ),
        ("grpc://collector:4317", {}, "not an http(s) URL"),
    ],
)
def test_what_only_the_sdk_exporter_does(
    endpoint: str, env: dict[str, str], reason: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    found = standard_exporter_reason(OtlpHttpSettings(endpoint), env)
    assert found is None if reason is None else reason in (found or "")


def test_with_a_proxy_the_sdk_exporter_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    provider = otlp_provider(TracingSettings(endpoint="http://collector.invalid/v1/traces"))
    try:
        assert not isinstance(provider, OtlpTracerProvider)
    finally:
        provider.shutdown()


# ---- from the request to the exporter


HEAD = b"GET /status/200?q=1 HTTP/1.1\r\nHost: app.localhost\r\n\r\n"


def exchange(
    tracing: Tracing, head: bytes = HEAD, status: int = 200, seed: int = 11
) -> RequestContext:
    """One exchange through the middleware, with ids from a seeded generator."""
    random.seed(seed)
    ctx = RequestContext("app", "app.localhost", "203.0.113.9", 40000, "r1")
    request = parse_request_head(head)
    tracing.on_request(request, ctx)
    ctx.time, ctx.method, ctx.path = 1_767_225_600.25, "GET", "/status/200?q=1"
    ctx.status, ctx.bytes_in, ctx.bytes_out, ctx.duration = status, len(head), 1300, 0.0125
    ctx.error = None if status < 500 else "timeout"
    tracing.on_complete(ctx, ctx)
    return ctx


def fast_provider(collector: Collector, sampler: Sampler | None = None) -> OtlpTracerProvider:
    settings = OtlpHttpSettings("http://127.0.0.1:9/")
    provider = OtlpTracerProvider(RESOURCE, settings, QUIET, sampler)
    provider.exporter._send = collector.send
    return provider


@pytest.mark.parametrize("status", [200, 503])
@pytest.mark.parametrize(
    "traceparent",
    [None, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"],
)
def test_the_fast_path_exports_what_the_sdk_path_does(status: int, traceparent: str | None) -> None:
    """The same exchange (same ids) through an OtlpTracerProvider, and through a plain SDK
    provider whose ReadableSpan is encoded by the official encoder: the same request."""
    head = HEAD
    if traceparent is not None:
        extra = f"traceparent: {traceparent}\r\ntracestate: v=1,w=2\r\n\r\n"
        head = HEAD[:-2] + extra.encode()
    collector = Collector()
    provider = fast_provider(collector)
    fast_ctx = exchange(Tracing(provider), head, status)
    provider.shutdown()

    memory = InMemorySpanExporter()
    sdk = TracerProvider(resource=RESOURCE)
    sdk.add_span_processor(SimpleSpanProcessor(memory))
    sdk_ctx = exchange(Tracing(sdk), head, status)
    [span] = memory.get_finished_spans()

    assert fast_ctx.trace == sdk_ctx.trace
    assert fast_ctx.state == sdk_ctx.state
    assert collector.requests == [encode_spans([span])]


def test_exchanges_with_the_same_strings_export_what_the_sdk_path_does() -> None:
    """The second exchange's method, path, host, visitor and tunnel come from the plugin's
    cache of encoded attributes."""
    exchanges = [(1, 200), (2, 503), (3, 200)]
    collector = Collector()
    provider = fast_provider(collector)
    fast = Tracing(provider)
    for seed, status in exchanges:
        exchange(fast, HEAD, status, seed)
    provider.shutdown()

    memory = InMemorySpanExporter()
    sdk = TracerProvider(resource=RESOURCE)
    sdk.add_span_processor(SimpleSpanProcessor(memory))
    traced = Tracing(sdk)
    for seed, status in exchanges:
        exchange(traced, HEAD, status, seed)
    assert collector.requests == [encode_spans(memory.get_finished_spans())]


def test_another_processor_takes_the_sdk_path_and_both_get_the_span() -> None:
    collector = Collector()
    provider = fast_provider(collector)
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    assert provider.direct is None
    exchange(Tracing(provider))
    provider.shutdown()
    [span] = memory.get_finished_spans()
    assert collector.requests == [encode_spans([span])]


def test_unsampled_exchanges_export_nothing() -> None:
    collector = Collector()
    provider = fast_provider(collector, sampler=DEFAULT_OFF)
    ctx = exchange(Tracing(provider))
    provider.shutdown()
    assert ctx.trace is not None
    assert ctx.trace["traceparent"].endswith("-02")  # random id, not sampled
    assert collector.requests == []


def test_a_sampler_that_never_samples_needs_no_records() -> None:
    for sampler, only_context in ((ALWAYS_OFF, True), (DEFAULT_OFF, False)):
        provider = fast_provider(Collector(), sampler=sampler)
        tracing = Tracing(provider)
        middleware = tracing.middleware
        assert isinstance(middleware, ContextOnly) is only_context
        assert hasattr(middleware, "on_complete") is not only_context
        ctx = RequestContext("app", "app.localhost", "203.0.113.9", 40000, "r1")
        middleware.on_request(parse_request_head(HEAD), ctx)
        assert ctx.trace is not None
        assert ctx.state["trace_id"] == ctx.trace["traceparent"][3:35]
        provider.shutdown()


def test_a_forked_child_exports_its_own_spans() -> None:
    collector = Collector()
    batches = exporter(collector)
    batches.add(span_bytes(1))  # the parent's: not the child's to send
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own worker, an empty queue
        try:
            batches.add(span_bytes(2))
            batches.shutdown()
            os.write(write, repr(collector.sizes()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        child_sizes = answer.read()
    os.waitpid(pid, 0)
    batches.shutdown()
    assert child_sizes == "[1]"
    assert collector.sizes() == [1]


def test_the_plugin_installs_only_the_context_when_nothing_can_be_sampled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    tracing = TracingPlugin()
    host = plugin_host(tracing, config={"tracing": {"endpoint": "http://127.0.0.1:9/v1/traces"}})
    assert host.config is not None
    try:
        [middleware] = host.http_middlewares(host.config)
        assert isinstance(middleware, ContextOnly)
        assert isinstance(tracing._provider, OtlpTracerProvider)
    finally:
        assert tracing._provider is not None
        tracing._provider.shutdown()
