"""Throttling of failed authentications, per source address.

A token guessed online needs many tries; this makes each address pay for its failures.
After ``limit`` failed handshakes within ``window`` seconds an address is refused without
its credentials being looked at (REJECT ``rate_limited``) until that window has passed. The
window starts at the address's first failure and a success clears the address.
Memory is bounded: at most ``max_tracked`` addresses are remembered, expired ones are
dropped first, then the oldest.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["FailureThrottle"]


class FailureThrottle:
    def __init__(
        self,
        limit: int,
        window: float,
        *,
        max_tracked: int = 65_536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_tracked = max_tracked
        self._clock = clock
        self._failures: dict[str, tuple[float, int]] = {}  # address -> (first failure, count)

    def retry_after(self, address: str) -> float:
        """Seconds until ``address`` may try again (0: it may now)."""
        entry = self._failures.get(address)
        if entry is None or entry[1] < self.limit:
            return 0.0
        left = entry[0] + self.window - self._clock()
        if left <= 0:
            del self._failures[address]
            return 0.0
        return left

    def failed(self, address: str) -> None:
        now = self._clock()
        first, count = self._failures.pop(address, (now, 0))
        if now - first >= self.window:
            first, count = now, 0
        if len(self._failures) >= self.max_tracked:
            self._evict(now)
        self._failures[address] = (first, count + 1)  # re-inserted: dict order = recency

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)

    def _evict(self, now: float) -> None:
        expired = [a for a, (first, _) in self._failures.items() if now - first >= self.window]
        for address in expired:
            del self._failures[address]
        while len(self._failures) >= self.max_tracked:
            del self._failures[next(iter(self._failures))]
