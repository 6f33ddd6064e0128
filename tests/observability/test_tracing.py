"""OpenTelemetry spans through a real tunnel, checked with the SDK's in-memory exporter: the
visitor's trace continues through the ingress, the OPEN metadata and the client's proxy span,
and the origin receives a ``traceparent`` in that trace."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode

from ferrotunnel.core.plugin import Config, hookimpl
from ferrotunnel.core.testing import plugin_host
from ferrotunnel.observability._context import parse_traceparent
from ferrotunnel.observability.tracing import (
    Tracing,
    TracingPlugin,
    TracingSettings,
    tracing_wanted,
)
from ferrotunnel.plugins.access_log import AccessLog
from tests.http.harness import Origin, raw_exchange, read_response, request_bytes, visitor

from .observed import APP, observed_stack

pytestmark = pytest.mark.anyio

VISITOR_TRACE = "0af7651916cd43dd8448eb211c80319c"
VISITOR_SPAN = "b7ad6b7169203331"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the HTTP ingress is asyncio-only


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> Tracing:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider)


class LogTo:
    """A plugin giving the ingress an access log written to ``stream``."""

    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    @hookimpl
    def ferrotunnel_http_middlewares(self, config: Config) -> list[Any]:
        return [AccessLog(self.stream)]


def parsed(traceparent: str | None) -> tuple[str, str, str]:
    assert traceparent is not None
    version, trace_id, span_id, flags = traceparent.split("-")
    assert (version, len(trace_id), len(span_id)) == ("00", 32, 16)
    return trace_id, span_id, flags


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


async def spans_named(exporter: InMemorySpanExporter, name: str, n: int) -> list[ReadableSpan]:
    """Wait until at least ``n`` spans called ``name`` have ended (polling: the exporter has
    no way to signal)."""
    with anyio.fail_after(5):
        while True:
            found = by_name(exporter.get_finished_spans(), name)
            if len(found) >= n:
                return found
            await anyio.sleep(0.01)


async def test_the_visitors_trace_continues_to_the_origin(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    log = io.StringIO()
    async with (
        Origin() as origin,
        observed_stack(
            origin.port, server_plugins=[tracing, LogTo(log)], client_plugins=[tracing]
        ) as stack,
    ):
        traceparent = f"00-{VISITOR_TRACE}-{VISITOR_SPAN}-01"
        request = request_bytes(
            "GET", "/status/200?q=1", APP, f"traceparent: {traceparent}", "Connection: close"
        )
        await raw_exchange(stack.port, request)
        [server_span] = await spans_named(exporter, "GET", 1)
        [proxy] = await spans_named(exporter, f"proxy {APP}", 1)
        handshakes = await spans_named(exporter, "ferrotunnel.handshake", 2)
        log_lines = log.getvalue().splitlines()  # (the ingress closes the log when it stops)

    # the server span continues the visitor's trace
    context = server_span.context
    assert context is not None
    assert f"{context.trace_id:032x}" == VISITOR_TRACE
    assert server_span.parent is not None
    assert f"{server_span.parent.span_id:016x}" == VISITOR_SPAN
    assert server_span.kind is SpanKind.SERVER
    attributes = dict(server_span.attributes or {})
    assert attributes["http.request.method"] == "GET"
    assert attributes["url.path"] == "/status/200"
    assert attributes["http.response.status_code"] == 200
    assert attributes["ferrotunnel.tunnel"] == APP
    assert attributes["client.address"] == "127.0.0.1"
    assert server_span.start_time is not None
    assert server_span.end_time is not None
    assert server_span.end_time > server_span.start_time

    # the origin got a traceparent whose parent is the server span
    trace_id, parent_id, flags = parsed(origin.requests[0].header("traceparent"))
    assert (trace_id, parent_id, flags) == (VISITOR_TRACE, f"{context.span_id:016x}", "01")
    assert len(origin.requests[0].header_all("traceparent")) == 1

    # the client's proxy span is joined through the OPEN frame's trace context
    assert proxy.context is not None
    assert proxy.parent is not None
    assert f"{proxy.context.trace_id:032x}" == VISITOR_TRACE
    assert proxy.parent.span_id == context.span_id
    assert proxy.kind is SpanKind.CLIENT
    assert dict(proxy.attributes or {})["ferrotunnel.tunnel"] == APP

    # both handshakes, one per side, succeeded
    roles = sorted(str(dict(s.attributes or {})["ferrotunnel.role"]) for s in handshakes)
    assert roles == ["client", "server"]
    assert all(s.status.status_code is StatusCode.UNSET for s in handshakes)

    # the access log line names the trace
    line = json.loads(log_lines[0])
    assert line["trace_id"] == VISITOR_TRACE


async def test_a_trace_starts_at_the_ingress_for_every_request(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    async with (
        Origin() as origin,
        observed_stack(origin.port, server_plugins=[tracing], client_plugins=[tracing]) as stack,
        visitor(stack.port) as (reader, writer),
    ):
        # two requests on one kept-alive connection (one stream), the second a failure
        writer.write(request_bytes("GET", "/status/200", APP, "tracestate: bogus=1"))
        assert (await read_response(reader)).status == 200
        writer.write(request_bytes("GET", "/status/503", APP))
        assert (await read_response(reader)).status == 503
        spans = await spans_named(exporter, "GET", 2)

    first, second = spans
    assert first.parent is None  # no traceparent from the visitor: a new trace
    assert second.parent is None
    assert first.context is not None
    assert second.context is not None
    assert first.context.trace_id != second.context.trace_id
    origin_ids = [parsed(r.header("traceparent"))[:2] for r in origin.requests]
    assert origin_ids == [
        (f"{first.context.trace_id:032x}", f"{first.context.span_id:016x}"),
        (f"{second.context.trace_id:032x}", f"{second.context.span_id:016x}"),
    ]
    for request in origin.requests:  # sampled (the SDK may set the "random" flag too)
        assert int(parsed(request.header("traceparent"))[2], 16) & 1
    assert origin.requests[0].header("tracestate") is None  # not the visitor's, unverified
    assert second.status.status_code is StatusCode.ERROR
    assert dict(second.attributes or {})["http.response.status_code"] == 503
    # one stream, so one proxy span, in the first request's trace
    [proxy] = by_name(exporter.get_finished_spans(), f"proxy {APP}")
    assert proxy.parent is not None
    assert proxy.parent.span_id == first.context.span_id


async def test_a_refused_handshake_is_an_error_span(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    async with Origin() as origin, observed_stack(origin.port, server_plugins=[tracing]) as stack:
        control = stack.server.control_address
        sock = await anyio.connect_tcp(control.host, control.port)
        await sock.aclose()
        spans = await spans_named(exporter, "ferrotunnel.handshake", 2)
    accepted, failed = sorted(spans, key=lambda s: s.status.status_code is StatusCode.ERROR)
    assert accepted.status.status_code is StatusCode.UNSET
    assert dict(accepted.attributes or {})["ferrotunnel.client_id"]
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(failed.attributes or {})["ferrotunnel.handshake.failure"] == "closed"
    assert failed.kind is SpanKind.SERVER


def test_tracing_is_off_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    host = plugin_host(TracingPlugin())
    assert host.config is not None
    # nothing on the request path: no middleware, no stream observer
    assert host.http_middlewares(host.config) == []
    assert host.stream_observers(host.config) == []

    on = plugin_host(TracingPlugin(), config={"tracing": {"endpoint": "http://127.0.0.1:1/v1"}})
    assert on.config is not None
    [middleware] = on.http_middlewares(on.config)
    assert isinstance(middleware, Tracing)


@pytest.mark.parametrize(
    ("settings", "env", "wanted"),
    [
        (TracingSettings(), {}, False),
        (TracingSettings(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True),
        (TracingSettings(), {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c/v1/traces"}, True),
        (TracingSettings(), {"OTEL_TRACES_EXPORTER": "console,otlp"}, True),
        (TracingSettings(), {"OTEL_TRACES_EXPORTER": "none"}, False),
        (TracingSettings(endpoint="http://c/v1/traces"), {}, True),
        (TracingSettings(enabled=False), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, False),
        (TracingSettings(enabled=True), {"OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_when_tracing_is_wanted(
    settings: TracingSettings, env: dict[str, str], wanted: bool
) -> None:
    assert tracing_wanted(settings, env) is wanted


async def test_unsampled_requests_carry_the_context_but_export_nothing(
    exporter: InMemorySpanExporter,
) -> None:
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)
    log = io.StringIO()
    async with (
        Origin() as origin,
        observed_stack(origin.port, server_plugins=[tracing, LogTo(log)]) as stack,
    ):
        request = request_bytes("GET", "/status/200", APP, "Connection: close")
        await raw_exchange(stack.port, request)
        with anyio.fail_after(5):
            while True:  # the record arrives after the response (and the log has no event)
                log_lines = log.getvalue().splitlines()
                if log_lines:
                    break
                await anyio.sleep(0.01)
    trace_id, _, flags = parsed(origin.requests[0].header("traceparent"))
    assert not int(flags, 16) & 1  # not sampled, and the origin is told so
    assert json.loads(log_lines[0])["trace_id"] == trace_id
    assert not by_name(exporter.get_finished_spans(), "GET")


async def test_an_invalid_traceparent_starts_a_new_trace(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    async with (
        Origin() as origin,
        observed_stack(origin.port, server_plugins=[tracing]) as stack,
    ):
        request = request_bytes(
            "GET", "/status/200", APP,
            f"traceparent: 00-{'0' * 32}-{VISITOR_SPAN}-01", "tracestate: vendor=abc",
            "Connection: close",
        )  # fmt: skip
        await raw_exchange(stack.port, request)
        [span] = await spans_named(exporter, "GET", 1)
    assert span.parent is None
    assert span.context is not None
    trace_id, parent_id, _ = parsed(origin.requests[0].header("traceparent"))
    assert (trace_id, parent_id) == (
        f"{span.context.trace_id:032x}",
        f"{span.context.span_id:016x}",
    )
    assert origin.requests[0].header("tracestate") is None


async def test_a_valid_tracestate_travels_with_the_trace(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    async with (
        Origin() as origin,
        observed_stack(origin.port, server_plugins=[tracing], client_plugins=[tracing]) as stack,
    ):
        request = request_bytes(
            "GET", "/status/200", APP,
            f"traceparent: 00-{VISITOR_TRACE}-{VISITOR_SPAN}-01", "tracestate: vendor=abc",
            "Connection: close",
        )  # fmt: skip
        await raw_exchange(stack.port, request)
        [span] = await spans_named(exporter, "GET", 1)
        [proxy] = await spans_named(exporter, f"proxy {APP}", 1)
    assert origin.requests[0].header("tracestate") == "vendor=abc"
    assert span.context is not None
    assert proxy.context is not None
    assert span.context.trace_state.to_header() == "vendor=abc"
    assert proxy.context.trace_state.to_header() == "vendor=abc"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            f"00-{VISITOR_TRACE}-{VISITOR_SPAN}-01",
            (int(VISITOR_TRACE, 16), int(VISITOR_SPAN, 16), 1),
        ),
        (
            f" 00-{VISITOR_TRACE}-{VISITOR_SPAN}-00 ",
            (int(VISITOR_TRACE, 16), int(VISITOR_SPAN, 16), 0),
        ),
        (
            f"01-{VISITOR_TRACE}-{VISITOR_SPAN}-01-future",
            (int(VISITOR_TRACE, 16), int(VISITOR_SPAN, 16), 1),
        ),
        (f"00-{VISITOR_TRACE}-{VISITOR_SPAN}-01-extra", None),  # version 00 has no more fields
        (f"ff-{VISITOR_TRACE}-{VISITOR_SPAN}-01", None),
        (f"00-{VISITOR_TRACE.upper()}-{VISITOR_SPAN}-01", None),
        (f"00-{'0' * 32}-{VISITOR_SPAN}-01", None),
        (f"00-{VISITOR_TRACE}-{'0' * 16}-01", None),
        (f"00-{VISITOR_TRACE[:-1]}-{VISITOR_SPAN}-01", None),
        ("", None),
    ],
)
def test_parse_traceparent(header: str, expected: tuple[int, int, int] | None) -> None:
    assert parse_traceparent(header) == expected
