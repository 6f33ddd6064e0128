"""Reconnect delays: exponential backoff with full jitter, capped.

Full jitter (a uniformly random delay between 0 and the exponential bound) spreads a crowd of
clients that lost the same server, so they do not all knock again at the same instant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int, rand: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0 for the first retry)."""
        bound = min(self.cap, self.base * 2.0 ** min(attempt, 32))
        return (random.random() if rand is None else rand) * bound
