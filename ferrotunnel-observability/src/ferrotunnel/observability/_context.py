"""W3C trace context without the SDK: reading and writing ``traceparent``, choosing ids.

The ingress decides a request's trace context when its head arrives, but builds the span only
when the exchange has ended, and only if it is sampled (see ``tracing.py``): the ids the
origin sees are chosen here, first.
"""

from __future__ import annotations

import random
import re

__all__ = [
    "format_traceparent",
    "new_ids",
    "new_span_id",
    "new_trace_id",
    "parse_traceparent",
    "traceparent_of",
]

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z")

SAMPLED = 0x01
RANDOM_TRACE_ID = 0x02

_MASK64 = (1 << 64) - 1
_FLAGS = [f"-{flags:02x}" for flags in range(256)]
_getrandbits = random.getrandbits  # the module's generator (random.seed still applies)


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
    return traceparent_of(trace_id << 64 | span_id, flags)


def traceparent_of(ids: int, flags: int) -> str:
    """The ``traceparent`` of ``ids`` (``trace_id << 64 | span_id``): one conversion to hex,
    with the dash between the ids (this runs for every request)."""
    return f"00-{ids.to_bytes(24, 'big').hex('-', -16)}{_FLAGS[flags]}"


def new_ids() -> int:
    """A new trace id and span id, as one int: ``trace_id << 64 | span_id``, neither zero."""
    ids = _getrandbits(192)
    while not ids >> 64 or not ids & _MASK64:  # (one chance in 2**64)
        ids = _getrandbits(192)
    return ids


def new_span_id() -> int:
    return _getrandbits(64) or 1


def new_trace_id() -> int:
    return _getrandbits(128) or 1
