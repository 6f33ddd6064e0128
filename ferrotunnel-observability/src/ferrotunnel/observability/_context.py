"""W3C trace context without the SDK: reading a ``traceparent``, choosing ids ahead of the span.

The ingress decides a request's trace context when its head arrives, but builds the SDK span
only when the exchange has ended, and only if it is sampled (see ``tracing.py``). So the ids
the origin sees in ``traceparent`` are chosen first, and :class:`StagedIds` hands them to the
SDK's tracer when the span is finally built.
"""

from __future__ import annotations

import random
import re

from opentelemetry.sdk.trace.id_generator import IdGenerator

__all__ = ["StagedIds", "format_traceparent", "parse_traceparent"]

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z")

SAMPLED = 0x01
RANDOM_TRACE_ID = 0x02


def parse_traceparent(value: str) -> tuple[int, int, int] | None:
    """``(trace_id, parent_id, flags)`` of a valid W3C ``traceparent``, else None."""
    match = _TRACEPARENT.match(value.strip())
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, int(flags_hex, 16)


def format_traceparent(trace_id: int, span_id: int, flags: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


def new_span_id() -> int:
    return random.getrandbits(64) or 1


def new_trace_id() -> int:
    return random.getrandbits(128) or 1


class StagedIds(IdGenerator):
    """Ids set with :meth:`stage` are returned by the next ``generate_*`` call; otherwise
    ``fallback`` chooses. The tracer calls it synchronously inside ``start_span``."""

    def __init__(self, fallback: IdGenerator) -> None:
        self.fallback = fallback
        self._trace_id = 0
        self._span_id = 0

    def stage(self, trace_id: int, span_id: int) -> None:
        self._trace_id, self._span_id = trace_id, span_id

    def generate_span_id(self) -> int:
        span_id, self._span_id = self._span_id, 0
        return span_id or self.fallback.generate_span_id()

    def generate_trace_id(self) -> int:
        trace_id, self._trace_id = self._trace_id, 0
        return trace_id or self.fallback.generate_trace_id()

    def is_trace_id_random(self) -> bool:
        return True
