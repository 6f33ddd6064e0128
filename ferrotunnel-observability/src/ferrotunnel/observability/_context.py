"""W3C trace context without the SDK: reading and writing ``traceparent``, choosing ids.

The ingress decides a request's trace context when its head arrives, but builds the span only
when the exchange has ended, and only if it is sampled (see ``tracing.py``): the ids the
origin sees are chosen here, first.
"""

from __future__ import annotations

import random
import re

__all__ = ["format_traceparent", "new_span_id", "new_trace_id", "parse_traceparent"]

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
