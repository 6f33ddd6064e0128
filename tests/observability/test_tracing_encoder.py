"""The hand-written OTLP encoder gives the official encoder's bytes, decodable by the official
generated classes: for the exchange spans the plugin makes and for random ones."""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from ferrotunnel.observability._otlp import AttributeValue, SpanEncoder, varint

RESOURCE = Resource.create({"service.name": "edge-1", "deployment": "test"})
SCOPE = InstrumentationScope("ferrotunnel")
NOW = 1_767_225_600_123_456_789
INT64 = 2**63


def readable(
    *,
    name: str = "GET",
    trace_id: int = 0x0AF7651916CD43DD8448EB211C80319C,
    span_id: int = 0xB7AD6B7169203331,
    parent: SpanContext | None = None,
    kind: SpanKind = SpanKind.SERVER,
    attributes: Mapping[str, AttributeValue] | None = None,
    status: Status | None = None,
    start: int = NOW,
    end: int = NOW + 1_500_000,
    resource: Resource = RESOURCE,
    scope: InstrumentationScope = SCOPE,
    events: tuple[Event, ...] = (),
    links: tuple[Link, ...] = (),
) -> ReadableSpan:
    return ReadableSpan(
        name=name,
        context=SpanContext(
            trace_id,
            span_id,
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
            trace_state=parent.trace_state if parent is not None else None,
        ),
        parent=parent,
        resource=resource,
        attributes=dict(attributes or {}),
        events=events,
        links=links,
        kind=kind,
        status=status or Status(StatusCode.UNSET),
        start_time=start,
        end_time=end,
        instrumentation_scope=scope,
    )


def by_hand(encoder: SpanEncoder, spans: list[ReadableSpan], split: int = 0) -> bytes:
    """Encode through :meth:`SpanEncoder.span` (the exchange path), from the spans' fields;
    the first ``split`` attributes go in already encoded, as the plugin's strings do."""
    encoded = []
    for span in spans:
        assert span.context is not None
        assert span.start_time is not None
        assert span.end_time is not None
        state = span.context.trace_state
        attributes: Mapping[str, AttributeValue] = span.attributes or {}  # type: ignore[assignment]
        items = list(attributes.items())
        encoded.append(
            encoder.span(
                span.context.trace_id << 64 | span.context.span_id,
                span.parent.span_id if span.parent is not None else 0,
                ",".join(f"{k}={v}" for k, v in state.items()),
                span.name,
                span.kind,
                span.start_time,
                span.end_time,
                dict(items[split:]),
                span.status.status_code.value,
                span.status.description,
                encoder.attributes(dict(items[:split])),
            )
        )
    return encoder.request(encoded)


def assert_same_as_official(spans: list[ReadableSpan]) -> None:
    encoder = SpanEncoder(RESOURCE, SCOPE)
    official = encode_spans(spans)
    expected = official.SerializeToString()
    for ours in (by_hand(encoder, spans), by_hand(encoder, spans, 2), encoder.encode(spans)):
        assert ours == expected
        assert ExportTraceServiceRequest.FromString(ours) == official


VISITOR = SpanContext(
    0x4BF92F3577B34DA6A3CE929D0E0E4736,
    0x00F067AA0BA902B7,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
    trace_state=TraceState([("vendor", "abc"), ("other", "x-1")]),
)
EXCHANGE: dict[str, AttributeValue] = {
    "http.request.method": "GET",
    "url.path": "/index.html",
    "server.address": "app.example.com",
    "client.address": "203.0.113.7",
    "ferrotunnel.tunnel": "app",
    "ferrotunnel.bytes_in": 80,
    "ferrotunnel.bytes_out": 1300,
    "http.response.status_code": 200,
}


@pytest.mark.parametrize(
    "span",
    [
        readable(attributes=EXCHANGE),
        readable(attributes=EXCHANGE, parent=VISITOR),
        readable(  # an origin that failed: error status with a message, an error attribute
            attributes={**EXCHANGE, "http.response.status_code": 502, "error.type": "refused"},
            status=Status(StatusCode.ERROR, "refused"),
        ),
        readable(attributes=EXCHANGE, status=Status(StatusCode.ERROR)),  # no message
        readable(attributes=EXCHANGE, status=Status(StatusCode.OK)),
        readable(  # unicode everywhere: multi-byte UTF-8 in names, keys and values
            name="PRÜFEN ✓",
            attributes={"url.path": "/grüße/日本/🚇", "ключ": "значение", "client.address": ""},
            status=Status(StatusCode.ERROR, "échec: 接続拒否"),
        ),
        readable(  # lengths over 127 bytes take two-byte varints; big and negative ints
            name="x" * 300,
            attributes={
                "url.path": "/" + "a" * 200,
                "k" * 130: "v",
                "zero": 0,
                "one-byte": 127,
                "two-bytes": 128,
                "two-bytes-max": 0x3FFF,
                "three-bytes": 0x4000,
                "big": 2**40,
                "max": INT64 - 1,
                "negative": -1,
                "min": -INT64,
                "yes": True,
                "no": False,
                "ratio": 0.25,
                "negative-ratio": -1e300,
            },
        ),
        readable(name="proxy app", kind=SpanKind.CLIENT, parent=VISITOR, attributes={"a": 1}),
        readable(name="ferrotunnel.handshake", kind=SpanKind.INTERNAL),
    ],
    ids=[
        "root",
        "remote-parent",
        "error-with-message",
        "error-without-message",
        "ok",
        "unicode",
        "long-and-numbers",
        "client-kind",
        "internal-kind",
    ],
)
def test_spans_encode_as_the_official_encoder_does(span: ReadableSpan) -> None:
    assert_same_as_official([span])


def test_a_batch_is_one_request_with_one_resource_and_scope() -> None:
    rng = random.Random(7)
    spans = [
        readable(
            trace_id=rng.getrandbits(128) or 1,
            span_id=rng.getrandbits(64) or 1,
            parent=VISITOR if i % 3 == 0 else None,
            attributes={**EXCHANGE, "ferrotunnel.bytes_out": rng.randrange(1 << 20)},
            end=NOW + rng.randrange(1, 10**9),
        )
        for i in range(50)
    ]
    assert_same_as_official(spans)
    request = ExportTraceServiceRequest.FromString(SpanEncoder(RESOURCE, SCOPE).encode(spans))
    [resource_spans] = request.resource_spans
    [scope_spans] = resource_spans.scope_spans
    assert len(scope_spans.spans) == 50
    assert scope_spans.scope.name == "ferrotunnel"


def test_an_empty_batch_is_a_valid_request() -> None:
    encoder = SpanEncoder(RESOURCE, SCOPE)
    request = ExportTraceServiceRequest.FromString(encoder.request([]))
    assert not request.resource_spans[0].scope_spans[0].spans


def test_resources_and_scopes_of_every_kind_are_encoded_once_by_the_official_encoder() -> None:
    resource = Resource.create(
        {"service.name": "s", "pid": 1234, "args": ("a", "b"), "on": True, "load": 0.5},
        schema_url="https://opentelemetry.io/schemas/1.21.0",
    )
    scope = InstrumentationScope(
        "ferrotunnel", "1.2.3", "https://example.com/schema", {"scope.attr": "v"}
    )
    span = readable(resource=resource, scope=scope, attributes={"a": "b"})
    encoder = SpanEncoder(resource, scope)
    expected = encode_spans([span]).SerializeToString()
    assert encoder.encode([span]) == expected
    assert by_hand(encoder, [span]) == expected


def test_what_the_encoder_does_not_handle_goes_to_the_official_encoder() -> None:
    """Events, links, list values, local parents, other resources: merged into the request
    (protobuf concatenation), each span encoded exactly once."""
    local_parent = SpanContext(1, 2, is_remote=False)
    unusual = [
        readable(span_id=1, events=(Event("retry", {"n": 1}, timestamp=NOW + 1),)),
        readable(span_id=2, links=(Link(VISITOR, {"why": "follows"}),)),
        readable(span_id=3, attributes={"list": ("a", "b")}),  # type: ignore[dict-item]
        readable(span_id=4, parent=local_parent),
        readable(span_id=5, resource=Resource.create({"service.name": "other"})),
        readable(span_id=6, attributes={"huge": 2**64}),
    ]
    plain = [readable(span_id=10 + i, attributes=EXCHANGE) for i in range(3)]
    encoder = SpanEncoder(RESOURCE, SCOPE)
    assert all(encoder.readable(span) is None for span in unusual)
    mixed = [plain[0], *unusual[:3], plain[1], *unusual[3:], plain[2]]
    request = ExportTraceServiceRequest.FromString(encoder.encode(mixed))

    def spans_of(message: ExportTraceServiceRequest) -> dict[bytes, object]:
        return {
            span.span_id: (resource_spans.resource, span)
            for resource_spans in message.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        }

    assert spans_of(request) == spans_of(encode_spans(mixed))
    assert len(spans_of(request)) == len(mixed)


def test_the_caches_are_bounded() -> None:
    encoder = SpanEncoder(RESOURCE, SCOPE)
    for i in range(SpanEncoder.MAX_STRINGS + 10):
        encoder.span(1 << 64 | 1, 0, "", f"M{i % 300}", SpanKind.SERVER, 1, 2,
                     {"url.path": f"/{i}", f"key{i % 300}": i}, 0, None)  # fmt: skip
    assert len(encoder._strings) <= SpanEncoder.MAX_STRINGS
    assert len(encoder._keys) <= SpanEncoder.MAX_KEYS
    assert len(encoder._names) <= SpanEncoder.MAX_KEYS
    assert len(encoder._numbers) <= SpanEncoder.MAX_KEYS


@given(st.integers(min_value=-INT64, max_value=INT64 - 1))
def test_varint_is_protobufs(value: int) -> None:
    tagged = AnyValue(int_value=value).SerializeToString()
    assert tagged[:1] == b"\x18"
    assert varint(value) == tagged[1:]


def text() -> st.SearchStrategy[str]:
    return st.text(st.characters(exclude_categories=["Cs"]), max_size=140)


VALUES = st.one_of(
    text(),
    st.integers(min_value=-INT64, max_value=INT64 - 1),
    st.booleans(),
    st.floats(allow_nan=False),
)


@settings(max_examples=200, deadline=None)
@given(
    name=text().filter(bool),
    attributes=st.dictionaries(text().filter(bool), VALUES, max_size=12),
    parent=st.booleans(),
    state=st.lists(
        st.tuples(st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True), st.just("v1")),
        max_size=3,
        unique_by=lambda kv: kv[0],
    ),
    status=st.sampled_from([StatusCode.UNSET, StatusCode.OK, StatusCode.ERROR]),
    message=st.one_of(st.none(), text()),
    kind=st.sampled_from(list(SpanKind)),
    start=st.integers(min_value=1, max_value=2**64 - 1),
    ids=st.tuples(st.integers(1, 2**128 - 1), st.integers(1, 2**64 - 1), st.integers(1, 2**64 - 1)),
)
def test_random_spans_encode_as_the_official_encoder_does(
    name: str,
    attributes: dict[str, AttributeValue],
    parent: bool,
    state: list[tuple[str, str]],
    status: StatusCode,
    message: str | None,
    kind: SpanKind,
    start: int,
    ids: tuple[int, int, int],
) -> None:
    trace_id, span_id, parent_id = ids
    remote = SpanContext(trace_id, parent_id, True, TraceFlags(1), TraceState(state))
    span = readable(
        name=name,
        trace_id=trace_id,
        span_id=span_id,
        parent=remote if parent else None,
        kind=kind,
        attributes=attributes,
        status=Status(status, message if status is StatusCode.ERROR else None),
        start=start,
        end=start,
    )
    assert_same_as_official([span])


@pytest.mark.parametrize("status", [StatusCode.UNSET, StatusCode.OK, StatusCode.ERROR])
def test_a_status_message_with_any_code_is_canonical_protobuf(status: StatusCode) -> None:
    """(The SDK keeps a message only for errors; the encoder takes any.)"""
    encoder = SpanEncoder(RESOURCE, SCOPE)
    data = encoder.request(
        [encoder.span(1 << 64 | 2, 0, "", "GET", SpanKind.SERVER, 1, 2, {}, status.value, "why")]
    )
    request = ExportTraceServiceRequest.FromString(data)
    assert request.SerializeToString() == data
    [span] = request.resource_spans[0].scope_spans[0].spans
    assert (span.status.code, span.status.message) == (status.value, "why")


def test_spans_of_the_sdks_own_lifecycle_are_encoded_by_hand() -> None:
    """The handshake and proxy spans: started by the provider's tracer, whose scope object
    differs from the encoder's but encodes the same; they join its ScopeSpans."""
    provider = TracerProvider(resource=RESOURCE)
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("ferrotunnel")
    visitor = trace.set_span_in_context(NonRecordingSpan(VISITOR))
    attributes: dict[str, str | int] = {"ferrotunnel.tunnel": "app", "ferrotunnel.stream_id": 3}
    tracer.start_span("proxy app", visitor, SpanKind.CLIENT, attributes).end()
    tracer.start_span("ferrotunnel.handshake", kind=SpanKind.SERVER).end()
    spans = list(memory.get_finished_spans())
    encoder = SpanEncoder(RESOURCE, SCOPE)
    assert all(encoder.readable(span) is not None for span in spans)

    def messages(request: ExportTraceServiceRequest) -> list[object]:
        return [
            (resource_spans.resource, scope_spans.scope, span)
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]

    ours = ExportTraceServiceRequest.FromString(encoder.encode(spans))
    assert len(ours.resource_spans[0].scope_spans) == 1
    assert messages(ours) == messages(encode_spans(spans))
    provider.shutdown()
