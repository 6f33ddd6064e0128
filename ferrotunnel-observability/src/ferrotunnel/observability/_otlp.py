"""OTLP protobuf for the spans this plugin makes, written by hand.

The exporter's generic encoder builds one protobuf message object per span, attribute and
value, then serialises them: 28 to 35 µs per span, in a thread holding the GIL the event loop
needs (see docs/benchmark.md, Issue 7). These spans have few, fixed fields, so their bytes
are written directly: one ``bytes`` per span, joined into an ``ExportTraceServiceRequest``
whose constant parts (the resource, the instrumentation scope, attribute keys) were encoded
once, by the official encoder, when the :class:`SpanEncoder` was made.

The output is the official encoder's, byte for byte (the tests compare them). A span this
encoder does not handle (events, links, list values, another resource or scope) goes through
the official encoder; both parts are concatenated, which protobuf defines as merging them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeAlias, cast

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.trace.v1.trace_pb2 import SpanFlags
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind

__all__ = ["AttributeValue", "SpanEncoder", "varint"]

AttributeValue: TypeAlias = str | bool | int | float

_BYTE = [bytes((i,)) for i in range(128)]
_INT64 = 1 << 63
_TIMES = struct.Struct("<BQBQ")  # start_time_unix_nano (7), end_time_unix_nano (8): fixed64
_DOUBLE = struct.Struct("<d")
#: Span.flags (16, fixed32): the SDK's "context has is_remote", and "is remote" for a parent
#: from another process
_FLAGS_LOCAL = b"\x85\x01" + struct.pack("<I", SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK)
_FLAGS_REMOTE = b"\x85\x01" + struct.pack(
    "<I",
    SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK | SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK,
)
#: Span.kind (6) by the kind's value (an enum member's hash is a Python call): OTLP numbers
#: kinds from 1 (0 is "unspecified")
_KINDS = {kind.value: b"\x30" + _BYTE[kind.value + 1] for kind in SpanKind}
#: Span.status (15) without a message: Status.code (3)
_STATUS = {
    0: b"\x7a\x00",
    1: b"\x7a\x02\x18\x01",
    2: b"\x7a\x02\x18\x02",
}


def varint(value: int) -> bytes:
    """Protobuf's base-128 varint; a negative (int64) value takes ten bytes."""
    if 0 <= value < 0x80:
        return _BYTE[value]
    if 0 < value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, data: bytes) -> bytes:
    """A length-delimited field: ``tag``, the length, ``data``."""
    return tag + varint(len(data)) + data


def _optional(tag: bytes, text: str) -> bytes:
    """A string field, left out when empty (as proto3 does)."""
    return _field(tag, text.encode()) if text else b""


def _envelope(
    resource: Resource, scope: InstrumentationScope | None
) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
    """What encloses the spans of ``resource`` and ``scope``, from the official encoder: the
    ``ResourceSpans.resource`` and ``ScopeSpans.scope`` fields, each with its schema URL."""
    probe = ReadableSpan(
        name="", context=SpanContext(1, 1, False), resource=resource, instrumentation_scope=scope
    )
    [resource_spans] = encode_spans([probe]).resource_spans
    [scope_spans] = resource_spans.scope_spans
    return (
        (
            _field(b"\x0a", resource_spans.resource.SerializeToString()),
            _optional(b"\x1a", resource_spans.schema_url),
        ),
        (
            _field(b"\x0a", scope_spans.scope.SerializeToString()),
            _optional(b"\x1a", scope_spans.schema_url),
        ),
    )


class SpanEncoder:
    """Spans of one resource and instrumentation scope, as OTLP protobuf.

    :meth:`span` encodes one span (``ScopeSpans.spans`` field, tag included); :meth:`request`
    wraps encoded spans in an ``ExportTraceServiceRequest``. Both are thread-safe (a cache
    entry is added whole, or the cache emptied), so the event loop and the export thread
    can share an encoder.
    """

    #: bounds for the caches of encoded keys and string attributes (values repeat: hosts,
    #: tunnels, methods, visitor addresses, paths)
    MAX_KEYS = 256
    MAX_STRINGS = 4096

    def __init__(self, resource: Resource, scope: InstrumentationScope) -> None:
        self.resource = resource
        self.scope = scope
        self._resource, self._scope = _envelope(resource, scope)
        #: scopes whose encoding is this encoder's (the SDK's tracer makes its own object,
        #: e.g. with a version of "" where ours has None: both encode the same)
        self._scopes: dict[InstrumentationScope | None, bool] = {scope: True}
        self._keys: dict[str, bytes] = {}
        self._names: dict[str, bytes] = {}
        self._numbers: dict[str, tuple[bytes, bytes]] = {}
        self._strings: dict[tuple[str, AttributeValue], bytes] = {}

    # ---- one span

    def span(
        self,
        ids: int,
        parent_span_id: int,
        trace_state: str,
        name: str,
        kind: SpanKind,
        start: int,
        end: int,
        attributes: Mapping[str, AttributeValue],
        status: int,
        message: str | None,
        encoded: bytes = b"",
    ) -> bytes:
        """One span, as a ``ScopeSpans.spans`` field.

        ``ids`` is ``trace_id << 64 | span_id``; ``parent_span_id`` is 0 for a root, else the
        parent is remote (another process's: a visitor's); ``trace_state`` is in its header
        form ("" for none); the times are ns since the epoch; ``status`` is a
        :class:`~opentelemetry.trace.StatusCode` value. The name and times must not be empty
        (the official encoder would leave those fields out).

        ``encoded``: more attributes, from :meth:`attributes` (a caller that sees the same
        values again keeps them encoded), placed before ``attributes``.

        Raises :class:`ValueError` for an attribute value that is not a str, bool, int (64
        bits) or float.
        """
        raw = ids.to_bytes(24, "big")
        parts = [b"\x0a\x10", raw[:16], b"\x12\x08", raw[16:]]
        if trace_state:
            parts.append(_field(b"\x1a", trace_state.encode()))
        if parent_span_id:
            parts += (b"\x22\x08", parent_span_id.to_bytes(8, "big"))
        parts += (
            self._names.get(name) or self._name(name),
            _KINDS[kind._value_],
            _TIMES.pack(0x39, start, 0x41, end),
            encoded,
        )
        # The hot loop (an exchange span's sizes and status; its strings come ``encoded``).
        # Small ints (status codes, sizes) are a cached prefix and their one or two varint
        # bytes. String values repeat (methods, hosts, tunnels, addresses, paths), so their
        # whole field is cached, keyed by the (key, value) item itself; only str values are
        # stored, so a value of another type never matches an entry.
        strings, numbers = self._strings, self._numbers
        for item in attributes.items():
            key, value = item
            if value.__class__ is int and 0 <= value < 0x4000:
                prefix = numbers.get(key) or self._number_prefix(key)
                if value < 0x80:
                    parts.append(prefix[0] + _BYTE[value])
                else:
                    parts.append(prefix[1] + bytes((value & 0x7F | 0x80, value >> 7)))
            else:
                parts.append(strings.get(item) or self._attribute(key, value))
        if message:  # (a code of 0 is left out, as protobuf does)
            text = _field(b"\x12", message.encode())
            parts.append(_field(b"\x7a", (text + b"\x18" + _BYTE[status]) if status else text))
        else:
            parts.append(_STATUS[status])
        parts.append(_FLAGS_REMOTE if parent_span_id else _FLAGS_LOCAL)
        body = b"".join(parts)
        size = len(body)
        if 0x80 <= size < 0x4000:  # the usual size of a span: a two-byte length
            return bytes((0x12, size & 0x7F | 0x80, size >> 7)) + body
        return _field(b"\x12", body)

    def attributes(self, attributes: Mapping[str, AttributeValue]) -> bytes:
        """``Span.attributes`` fields, as :meth:`span` writes them."""
        return b"".join(self._attribute(key, value) for key, value in attributes.items())

    def readable(self, span: ReadableSpan) -> bytes | None:
        """``span`` encoded as :meth:`span` does, or None if only the official encoder can
        (events, links, list values, another resource or scope, a local parent)."""
        context, parent = span.context, span.parent
        if (
            context is None
            or span.events
            or span.links
            or span.dropped_attributes
            or (parent is not None and not parent.is_remote)
            or not span.name
            or not span.start_time
            or not span.end_time
            or not (span.resource is self.resource or span.resource == self.resource)
            or not self._same_scope(span.instrumentation_scope)
        ):
            return None
        state = ",".join(f"{key}={value}" for key, value in context.trace_state.items())
        status = span.status
        try:
            return self.span(
                context.trace_id << 64 | context.span_id,
                parent.span_id if parent is not None else 0,
                state,
                span.name,
                span.kind,
                span.start_time,
                span.end_time,
                cast("Mapping[str, AttributeValue]", span.attributes or {}),  # else ValueError
                status.status_code.value,
                status.description,
            )
        except ValueError:
            return None

    def _same_scope(self, scope: InstrumentationScope | None) -> bool:
        same = self._scopes.get(scope)
        if same is None:
            same = _envelope(self.resource, scope)[1] == self._scope
            if len(self._scopes) >= self.MAX_KEYS:
                self._scopes.clear()
            self._scopes[scope] = same
        return same

    def _attribute(self, key: str, value: AttributeValue) -> bytes:
        """One ``Span.attributes`` field: a KeyValue with a string, bool, int or double."""
        if isinstance(value, str):
            encoded = self._key_value(key, _field(b"\x0a", value.encode()))
            if value.__class__ is str:
                if len(self._strings) >= self.MAX_STRINGS:
                    self._strings.clear()
                self._strings[key, value] = encoded
            return encoded
        if isinstance(value, bool):
            return self._key_value(key, b"\x10\x01" if value else b"\x10\x00")
        if isinstance(value, int):
            if not -_INT64 <= value < _INT64:
                raise ValueError(f"attribute {key!r}: {value} does not fit in 64 bits")
            return self._key_value(key, b"\x18" + varint(value))
        if isinstance(value, float):
            return self._key_value(key, b"\x21" + _DOUBLE.pack(value))
        raise ValueError(f"attribute {key!r}: {type(value).__name__} is not encoded here")

    def _name(self, name: str) -> bytes:
        """``Span.name``, encoded and cached (names repeat: methods)."""
        encoded = _field(b"\x2a", name.encode())
        if len(self._names) >= self.MAX_KEYS:
            self._names.clear()
        self._names[name] = encoded
        return encoded

    def _number_prefix(self, key: str) -> tuple[bytes, bytes]:
        """The bytes before a one- and a two-byte ``int_value`` of attribute ``key``."""
        one, two = self._key_value(key, b"\x18\x00"), self._key_value(key, b"\x18\x80\x01")
        prefix = (one[:-1], two[:-2])
        if len(self._numbers) >= self.MAX_KEYS:
            self._numbers.clear()
        self._numbers[key] = prefix
        return prefix

    def _key_value(self, key: str, any_value: bytes) -> bytes:
        return _field(b"\x4a", self._key(key) + _field(b"\x12", any_value))

    def _key(self, key: str) -> bytes:
        """``KeyValue.key``, encoded (an empty key is left out, as protobuf does)."""
        encoded = self._keys.get(key)
        if encoded is None:
            encoded = _field(b"\x0a", key.encode()) if key else b""
            if len(self._keys) >= self.MAX_KEYS:
                self._keys.clear()
            self._keys[key] = encoded
        return encoded

    # ---- a request

    def request(self, spans: Iterable[bytes], others: Sequence[ReadableSpan] = ()) -> bytes:
        """An ``ExportTraceServiceRequest``: ``spans`` (from :meth:`span`) under this
        encoder's resource and scope, then ``others`` as the official encoder has them."""
        scope, scope_schema = self._scope
        resource, resource_schema = self._resource
        scope_spans = scope + b"".join(spans) + scope_schema
        resource_spans = resource + _field(b"\x12", scope_spans) + resource_schema
        request = _field(b"\x0a", resource_spans)
        if others:
            request += encode_spans(others).SerializeToString()
        return request

    def encode(self, batch: Iterable[bytes | ReadableSpan]) -> bytes:
        """A batch of queued spans as one request: spans already encoded by :meth:`span`,
        and SDK spans (by hand when :meth:`readable` can, else by the official encoder)."""
        encoded: list[bytes] = []
        others: list[ReadableSpan] = []
        for item in batch:
            if isinstance(item, bytes):
                encoded.append(item)
            elif (span := self.readable(item)) is not None:
                encoded.append(span)
            else:
                others.append(item)
        return self.request(encoded, others)
