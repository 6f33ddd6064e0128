"""``tracing``: OpenTelemetry spans for handshakes and HTTP exchanges, exported over OTLP/HTTP.

::

    [tracing]
    enabled = true                                   # or --tracing
    endpoint = "http://collector:4318/v1/traces"     # or --otlp-endpoint
    # service_name = "edge-1"

Without a table or flags, tracing is on when the standard variables ask for it
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, or
``OTEL_TRACES_EXPORTER=otlp``), and off with ``OTEL_SDK_DISABLED=true``. The exporter, the
sampler (``OTEL_TRACES_SAMPLER``) and the resource (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``) read the other ``OTEL_*`` variables as usual.

Theory of operation
-------------------
One span per exchange, none per chunk, and no SDK work on the request path. When a request
head arrives, the HTTP middleware only decides the exchange's trace context: it continues the
visitor's ``traceparent`` (or starts a trace), picks the span id, takes the sampling decision
(for the SDK's own samplers, from the trace id and the parent's flag alone: ``_sampling.py``),
and writes the result into the head the origin will see. The same context goes into
``ctx.trace``, which the ingress puts in the OPEN of the stream it opens for the request, and
the trace id into ``ctx.state["trace_id"]`` (the access log prints it). The span itself is
made only for a sampled exchange, finished, when its record arrives (after the batch of
responses that completed it), with the exchange's own start and duration.

How it is made depends on the provider. With the one :func:`otlp_provider` builds (what the
CLI uses), whose only span processor is its :class:`~._batch.BatchExporter`, the span is
encoded at once as OTLP protobuf by a hand-written encoder (``_otlp.py``, no span object;
its string attributes, which repeat, kept encoded by their values) and queued; the
exporter's thread joins each batch into one request and posts it (``_otlp_http.py``).
With another SDK provider the span is a finished ``ReadableSpan`` handed to its span
processors; with another API implementation, its tracer's ``start_span``/``end``. On the
client, a stream observer starts a span for each stream the server opens, as a child of
the context in its OPEN, and ends it when the stream is over; these and the handshake
spans take the SDK's usual path (and the same exporter).

A kept-alive visitor connection carries later requests on the stream its first request
opened: each request still gets its server span and its own ``traceparent`` at the origin,
but only the first is the parent of the client's proxy span. HTTP/2 connections are passed
through undecoded, so they get no request span.

With tracing off the plugin returns no middleware and no observer: nothing is added to the
request path. With a sampler that never samples (``always_off``) the middleware only sets the
trace context: it has no ``on_complete``, so the ingress delivers no exchange records for it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import click
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import Decision, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ferrotunnel.core import Role, Session, Stream
from ferrotunnel.core.plugin import (
    Config,
    ConfigSchema,
    ExchangeRecord,
    HttpRequest,
    RequestContext,
    hookimpl,
)
from ferrotunnel.protocol import ErrorCode, Hello

from ._batch import BatchExporter, BatchSettings
from ._context import (
    RANDOM_TRACE_ID,
    SAMPLED,
    new_ids,
    new_span_id,
    parse_traceparent,
    traceparent_of,
)
from ._options import add_options
from ._otlp_http import OtlpHttpSender, OtlpHttpSettings, standard_exporter_reason
from ._sampling import fast_sampler

if TYPE_CHECKING:
    from ._otlp import SpanEncoder

__all__ = [
    "OtlpTracerProvider",
    "Tracing",
    "TracingPlugin",
    "TracingSettings",
    "otlp_provider",
    "plugin",
    "tracing_wanted",
]

log = logging.getLogger("ferrotunnel.observability.tracing")

TABLE = "tracing"
OWNER = "ferrotunnel-observability"

#: ``ctx.state`` keys: what a sampled exchange's span will need; the trace id (which the
#: access log reads)
SPAN_KEY = "tracing.span"
TRACE_ID_KEY = "trace_id"

SCOPE = InstrumentationScope("ferrotunnel")

_PROPAGATOR = TraceContextTextMapPropagator()


@dataclass(frozen=True)
class TracingSettings:
    """``[tracing]``: OpenTelemetry spans, exported with OTLP over HTTP."""

    #: unset: on when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT or OTEL_TRACES_EXPORTER=otlp is set
    enabled: bool | None = None
    #: the OTLP/HTTP traces URL (``http://host:4318/v1/traces``); unset: from ``OTEL_*``
    endpoint: str | None = None
    #: unset: OTEL_SERVICE_NAME, else "ferrotunnel"
    service_name: str | None = None


def tracing_wanted(settings: TracingSettings, env: Mapping[str, str] = os.environ) -> bool:
    """Whether ``settings`` and the ``OTEL_*`` variables in ``env`` turn tracing on."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if settings.enabled is not None:
        return settings.enabled
    if settings.endpoint:
        return True
    exporters = env.get("OTEL_TRACES_EXPORTER", "")
    return "otlp" in exporters.split(",") or any(
        env.get(name)
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


#: what ``on_request`` keeps for a sampled exchange: ``trace_id << 64 | span_id``, then the
#: visitor's span as its id, trace flags and ``tracestate`` header (0, None, None for a root)
_Sampled = tuple[int, int, int | None, str | None]

#: an exchange span's first attributes, all strings
_TEXT_KEYS = (
    "http.request.method",
    "url.path",
    "server.address",
    "client.address",
    "ferrotunnel.tunnel",
)
_UNSET = Status(StatusCode.UNSET)
_UNSET_CODE, _ERROR = StatusCode.UNSET.value, StatusCode.ERROR.value
_ROOT = Context()


class OtlpTracerProvider(TracerProvider):
    """What :func:`otlp_provider` builds: a provider whose span processor is a
    :class:`~._batch.BatchExporter` posting hand-encoded OTLP/HTTP requests.

    While that exporter is its only processor (``direct``), :class:`Tracing` gives it an
    exchange's span already encoded, without an SDK span object; a processor added later
    must see every span, so from then on the spans take the SDK's path.
    """

    def __init__(
        self,
        resource: Resource,
        http: OtlpHttpSettings,
        batch: BatchSettings | None = None,
        sampler: Sampler | None = None,
    ) -> None:
        # here, not at the top: the OTLP protobuf modules take ~50 ms to import, which every
        # ferrotunnel command would pay whether it traces or not
        from ._otlp import SpanEncoder

        super().__init__(sampler=sampler, resource=resource)
        sender = OtlpHttpSender(http)
        self.encoder = SpanEncoder(resource, SCOPE)
        self.exporter = BatchExporter(self.encoder.encode, sender.send, batch, sender.close)
        super().add_span_processor(self.exporter)
        self.direct: BatchExporter | None = self.exporter

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        self.direct = None
        super().add_span_processor(span_processor)


def otlp_provider(settings: TracingSettings) -> TracerProvider:
    """A provider exporting in batches to the OTLP/HTTP endpoint of ``settings`` (or
    ``OTEL_*``): an :class:`OtlpTracerProvider`, or, for what only the SDK's exporter does
    (a proxy, a credential provider), the SDK's ``BatchSpanProcessor`` and exporter."""
    attributes: dict[str, Any] = {}
    if settings.service_name:
        attributes[SERVICE_NAME] = settings.service_name
    elif not os.environ.get("OTEL_SERVICE_NAME"):
        attributes[SERVICE_NAME] = "ferrotunnel"
    resource = Resource.create(attributes)
    http = OtlpHttpSettings.from_env(settings.endpoint)
    reason = standard_exporter_reason(http)
    provider: TracerProvider
    if reason is None:
        provider = OtlpTracerProvider(resource, http)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        log.info("spans are exported by the OpenTelemetry SDK's exporter: %s", reason)
        provider = TracerProvider(resource=resource)
        exporter = OTLPSpanExporter(endpoint=settings.endpoint)
        provider.add_span_processor(BatchSpanProcessor(exporter))
    # said at start, as metrics say where they are: else the first sign of a wrong endpoint
    # is a warning when the first batch fails
    log.info("traces to %s (OTLP/HTTP, %s)", http.endpoint, provider.sampler.get_description())
    return provider


class Tracing:
    """The spans: an HTTP middleware for the server's ingress, a stream observer for the
    client, and the handshake hook for both. Give it any ``TracerProvider``::

        tracing = Tracing(provider)
        host = PluginHost.with_plugins([tracing])
    """

    def __init__(self, provider: trace.TracerProvider) -> None:
        self.provider = provider
        self.tracer = tracer = provider.get_tracer("ferrotunnel")
        # With the SDK's tracer, a sampled exchange's span is handed to the span processors
        # directly, as the finished ReadableSpan it is (12 µs less than the start_span/end
        # lifecycle, measured: see docs/benchmark.md, Issue 7), or, to the exporter of an
        # OtlpTracerProvider, encoded (no span object); other tracers get start_span.
        self._sampler: Sampler | None = None
        self._on_end: Callable[[ReadableSpan], None] | None = None
        self._otlp = provider if isinstance(provider, OtlpTracerProvider) else None
        if isinstance(tracer, SdkTracer):
            self._sampler = tracer.sampler
            self._on_end = tracer.span_processor.on_end
            self._resource = tracer.resource
        self._fast = fast_sampler(self._sampler) if self._sampler is not None else None
        #: an exchange span's string attributes (``_TEXT_KEYS``), encoded, by their values
        self._texts: dict[tuple[str, ...], bytes] = {}
        #: the HTTP middleware: this object, or only its ``on_request`` when no exchange can
        #: be sampled (then the ingress needs no exchange records for it)
        self.middleware: Tracing | ContextOnly = (
            ContextOnly(self) if self._fast is not None and self._fast.never else self
        )

    # ---- server: the HTTP ingress

    def on_request(self, request: HttpRequest, ctx: RequestContext) -> None:
        """Choose the exchange's ids and sampling now, and tell the origin; build no span
        yet (see the theory of operation)."""
        incoming = request.header("traceparent")
        state = request.header("tracestate")
        found = parse_traceparent(incoming) if incoming is not None else None
        if found is None:
            ids, parent_id, parent_flags = new_ids(), 0, None
            flags = RANDOM_TRACE_ID
            if state is not None:
                request.remove_header("tracestate")  # it belonged to no valid trace
                state = None
        else:
            trace_id, parent_id, parent_flags = found
            ids = trace_id << 64 | new_span_id()
            flags = parent_flags & RANDOM_TRACE_ID
        fast = self._fast
        if (
            fast.sampled(ids >> 64, parent_flags)
            if fast is not None
            else self._sampled(ids >> 64, parent_id, parent_flags, state, request.method_text)
        ):
            flags |= SAMPLED
            ctx.state[SPAN_KEY] = (ids, parent_id, parent_flags, state)
        traceparent = traceparent_of(ids, flags)
        if incoming is None:
            request.add_header("traceparent", traceparent)  # cheaper: nothing to replace
        else:
            request.set_header("traceparent", traceparent)
        ctx.trace = {"traceparent": traceparent}
        if state is not None:
            ctx.trace["tracestate"] = state
        ctx.state[TRACE_ID_KEY] = traceparent[3:35]

    def _sampled(
        self, trace_id: int, parent_id: int, parent_flags: int | None, state: str | None, name: str
    ) -> bool:
        """Ask the sampler (one :func:`fast_sampler` does not know)."""
        sampler = self._sampler
        if sampler is None:
            return True
        parent = _parent(trace_id, parent_id, parent_flags, state)
        # an explicit context, empty for a root: the sampler must not look at the current one
        context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent else _ROOT
        result = sampler.should_sample(context, trace_id, name, SpanKind.SERVER)
        return result.decision is Decision.RECORD_AND_SAMPLE

    def on_complete(self, record: ExchangeRecord, ctx: RequestContext) -> None:
        """A sampled exchange ended: its span, built finished, with the times the exchange
        really had."""
        facts = ctx.state.pop(SPAN_KEY, None)
        if facts is None:
            return
        ids, parent_id, parent_flags, state = cast(_Sampled, facts)
        status = record.status
        method = record.method
        path = record.path.partition("?")[0]
        texts = (method, path, record.host, record.visitor_ip, record.tunnel)
        numbers: dict[str, str | int] = {
            "ferrotunnel.bytes_in": record.bytes_in,
            "ferrotunnel.bytes_out": record.bytes_out,
        }
        if status:
            numbers["http.response.status_code"] = status
        if record.error is not None:
            numbers["error.type"] = record.error
        failed = status >= 500 or not status
        started = int(record.time * 1e9)
        ended = started + int(record.duration * 1e9)
        otlp = self._otlp
        if otlp is not None and (exporter := otlp.direct) is not None:
            exporter.add(  # encoded now: see _batch.py for why not in the export thread
                otlp.encoder.span(
                    ids,
                    parent_id,
                    _trace_state_text(state) if state is not None else "",
                    method,
                    SpanKind.SERVER,
                    started,
                    ended,
                    numbers,
                    _ERROR if failed else _UNSET_CODE,
                    record.error if failed else None,
                    self._texts.get(texts) or self._encode_texts(otlp.encoder, texts),
                )
            )
            return
        attributes: dict[str, str | int] = dict(zip(_TEXT_KEYS, texts, strict=True))
        attributes.update(numbers)
        trace_id = ids >> 64
        parent = _parent(trace_id, parent_id, parent_flags, state)
        on_end = self._on_end
        if on_end is None:  # not the SDK: its own lifecycle, its own ids
            span = self.tracer.start_span(
                method,
                context=trace.set_span_in_context(NonRecordingSpan(parent)) if parent else None,
                kind=SpanKind.SERVER,
                attributes=attributes,
                start_time=started,
            )
            if failed:
                span.set_status(Status(StatusCode.ERROR, record.error))
            span.end(end_time=ended)
            return
        on_end(
            ReadableSpan(
                name=method,
                context=SpanContext(
                    trace_id,
                    ids & 0xFFFF_FFFF_FFFF_FFFF,
                    is_remote=False,
                    trace_flags=TraceFlags(_flags(parent_flags)),
                    trace_state=parent.trace_state if parent is not None else None,
                ),
                parent=parent,
                resource=self._resource,
                attributes=attributes,
                kind=SpanKind.SERVER,
                status=Status(StatusCode.ERROR, record.error) if failed else _UNSET,
                start_time=started,
                end_time=ended,
                instrumentation_scope=SCOPE,
            )
        )

    def _encode_texts(self, encoder: SpanEncoder, texts: tuple[str, ...]) -> bytes:
        """An exchange span's string attributes, encoded and kept: they repeat (the same
        method, path, host, visitor and tunnel), and the cache spares five look-ups."""
        encoded = encoder.attributes(dict(zip(_TEXT_KEYS, texts, strict=True)))
        if len(self._texts) >= encoder.MAX_STRINGS:
            self._texts.clear()
        self._texts[texts] = encoded
        return encoded

    @hookimpl(tryfirst=True)
    def ferrotunnel_http_middlewares(self, config: Config) -> list[Tracing | ContextOnly]:
        return [self.middleware]  # first, so that the span covers the other middlewares

    # ---- client: the proxy

    def on_stream(self, stream: Stream) -> None:
        frame = stream.open_frame
        parent = _PROPAGATOR.extract(frame.trace) if frame.trace else None
        attributes: dict[str, str | int] = {
            "ferrotunnel.tunnel": frame.tunnel,
            "ferrotunnel.kind": frame.kind.value,
            "ferrotunnel.stream_id": frame.stream_id,
        }
        if frame.visitor_host is not None:
            attributes["client.address"] = frame.visitor_host
        span = self.tracer.start_span(
            f"proxy {frame.tunnel}", context=parent, kind=SpanKind.CLIENT, attributes=attributes
        )
        stream.add_done_callback(lambda done: _end_proxy_span(span, done))

    @hookimpl
    def ferrotunnel_stream_observers(self, config: Config) -> list[Tracing]:
        return [self]

    # ---- both: handshakes

    @hookimpl
    def ferrotunnel_handshake_done(
        self, session: Session, hello: Hello | None, failure: str | None, duration: float
    ) -> None:
        now = time.time_ns()
        server = session.role is Role.SERVER
        attributes: dict[str, str] = {"ferrotunnel.role": session.role.value}
        if hello is not None:
            attributes["ferrotunnel.client_id"] = hello.client_id
            attributes["ferrotunnel.agent"] = hello.agent
        if session.session_id:
            attributes["ferrotunnel.session_id"] = session.session_id
        if server and session.peer is not None:
            attributes["client.address"] = session.peer[0]
        span = self.tracer.start_span(
            "ferrotunnel.handshake",
            kind=SpanKind.SERVER if server else SpanKind.CLIENT,
            attributes=attributes,
            start_time=now - int(duration * 1e9),
        )
        if failure is not None:
            span.set_attribute("ferrotunnel.handshake.failure", failure)
            span.set_status(Status(StatusCode.ERROR, failure))
        span.end(end_time=now)


class ContextOnly:
    """The HTTP middleware of a :class:`Tracing` whose sampler never samples: it sets each
    request's trace context and has no ``on_complete`` (so no exchange records are delivered)."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing
        #: the tracing's own method (no extra call per request)
        self.on_request: Callable[[HttpRequest, RequestContext], None] = tracing.on_request


def _parent(
    trace_id: int, parent_id: int, parent_flags: int | None, state: str | None
) -> SpanContext | None:
    """The visitor's span, as the SDK's samplers and spans want it (None for a root)."""
    if parent_flags is None:
        return None
    return SpanContext(
        trace_id,
        parent_id,
        is_remote=True,
        trace_flags=TraceFlags(parent_flags),
        trace_state=TraceState.from_header([state]) if state is not None else None,
    )


def _flags(parent_flags: int | None) -> int:
    """The trace flags of a sampled exchange's span."""
    random_id = RANDOM_TRACE_ID if parent_flags is None else parent_flags & RANDOM_TRACE_ID
    return random_id | SAMPLED


def _trace_state_text(header: str) -> str:
    """A visitor's ``tracestate`` as the SDK keeps and exports it (invalid entries dropped)."""
    return ",".join(f"{key}={value}" for key, value in TraceState.from_header([header]).items())


def _end_proxy_span(span: Span, stream: Stream) -> None:
    code = stream.reset_code
    if code is not None and code != ErrorCode.NO_ERROR:
        name = code.name if isinstance(code, ErrorCode) else str(code)
        span.set_attribute("ferrotunnel.reset", name)
        if code == ErrorCode.CONNECT_ERROR:
            span.set_status(Status(StatusCode.ERROR, "the local service refused the connection"))
    span.end()


class TracingPlugin:
    """The ``tracing`` entry point: :class:`Tracing` with an OTLP/HTTP exporter, when the
    configuration, the flags or the ``OTEL_*`` variables ask for it."""

    def __init__(self) -> None:
        self.tracing: Tracing | None = None
        self._provider: TracerProvider | None = None

    @hookimpl
    def ferrotunnel_add_config(self, schema: ConfigSchema) -> None:
        schema.add_table(
            TABLE,
            TracingSettings,
            owner=OWNER,
            help="OpenTelemetry traces",
            example={
                "enabled": True,
                "endpoint": "http://127.0.0.1:4318/v1/traces",
                "service_name": "ferrotunnel",
            },
        )

    @hookimpl
    def ferrotunnel_configure(self, config: Config) -> None:
        settings = config.table(TABLE)
        assert isinstance(settings, TracingSettings)
        if tracing_wanted(settings) and self.tracing is None:
            self._provider = otlp_provider(settings)
            self.tracing = Tracing(self._provider)

    @hookimpl
    def ferrotunnel_register_commands(self, cli: Any) -> None:
        add_options(
            cli,
            ("server", "client"),
            [
                click.Option(
                    ["--tracing/--no-tracing", "tracing__enabled"],
                    default=None,
                    envvar="FERROTUNNEL_TRACING",
                    help="OpenTelemetry spans over OTLP/HTTP [default: on if OTEL_EXPORTER_"
                    "OTLP_(TRACES_)ENDPOINT is set or OTEL_TRACES_EXPORTER=otlp].",
                ),
                click.Option(
                    ["--otlp-endpoint", "tracing__endpoint"],
                    metavar="URL",
                    envvar="FERROTUNNEL_OTLP_ENDPOINT",
                    help="OTLP/HTTP traces URL, e.g. http://127.0.0.1:4318/v1/traces "
                    "(turns tracing on).",
                ),
            ],
        )

    @hookimpl(tryfirst=True)
    def ferrotunnel_http_middlewares(self, config: Config) -> list[Tracing | ContextOnly]:
        return [self.tracing.middleware] if self.tracing is not None else []

    @hookimpl
    def ferrotunnel_stream_observers(self, config: Config) -> list[Tracing]:
        return [self.tracing] if self.tracing is not None else []

    @hookimpl
    def ferrotunnel_handshake_done(
        self, session: Session, hello: Hello | None, failure: str | None, duration: float
    ) -> None:
        if self.tracing is not None:
            self.tracing.ferrotunnel_handshake_done(session, hello, failure, duration)

    @hookimpl
    def ferrotunnel_shutdown(self, app: object) -> None:
        if self._provider is not None:
            self._provider.force_flush(timeout_millis=5000)


#: the instance the ``ferrotunnel`` entry point names
plugin = TracingPlugin()
