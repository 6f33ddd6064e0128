"""``rate-limit``: token buckets per visitor address and per tunnel (HTTP).

::

    [rate_limit]
    per_ip = { rate = 10.0, burst = 20 }        # each visitor of each tunnel
    per_tunnel = { rate = 200.0, burst = 400 }  # all visitors of a tunnel together

    [rate_limit.tunnels."api.example.com"]
    per_ip = { rate = 2.0, burst = 5 }          # replaces the global per_ip here

    [rate_limit.tunnels."status.example.com"]
    exempt = true                               # no limits at all

A bucket holds up to ``burst`` requests and refills at ``rate`` requests a second; a request
takes one from the visitor's bucket and one from the tunnel's — only if both have one, so a
refused request costs nothing. A refused request is answered ``429`` with ``Retry-After``
(whole seconds until both buckets have a request again, rounded up). "A tunnel" is a tunnel
name together with the host the visitor asked for. IPv6 visitors are grouped by their
``ipv6_prefix`` (one person usually has a whole /64). An HTTP/2 cleartext (gRPC) connection
is passed through undecoded: it takes one request's tokens, for its first request, whatever
the number of calls it then carries.

Memory is bounded: buckets live in one least-recently-used table of at most ``max_buckets``
entries (the least recently used one is dropped when it is full), and every request also
drops up to two least-recently-used buckets that have refilled completely — a full bucket is
the same as a new one, so dropping it forgets nothing. Idle visitors therefore cost nothing
once their buckets have refilled; only an LRU eviction of a bucket that has not refilled
(more than ``max_buckets`` active visitors) lets a visitor start over with a full bucket.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from ferrotunnel.core.plugin import (
    Config,
    ConfigSchema,
    HttpRequest,
    Reply,
    RequestContext,
    hookimpl,
)

from ._common import OWNER, TunnelMatcher, reply, retry_after, settings_of

__all__ = [
    "BucketTable",
    "Rate",
    "RateLimit",
    "RateLimitSettings",
    "RateLimitTunnel",
    "TokenBucket",
]

TABLE = "rate_limit"
PLUGIN = "rate-limit"

Clock = Callable[[], float]


@dataclass(frozen=True)
class Rate:
    """A token bucket: ``{ rate = 10.0, burst = 20 }``."""

    #: requests a second, sustained (> 0)
    rate: float
    #: requests at once: the bucket's size (>= 1); unset: ``rate`` rounded up
    burst: int | None = None

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate must be a positive number, not {self.rate!r}")
        if self.burst is not None and self.burst < 1:
            raise ValueError(f"burst must be at least 1, not {self.burst!r}")

    @property
    def size(self) -> float:
        return float(self.burst if self.burst is not None else max(1, math.ceil(self.rate)))


@dataclass(frozen=True)
class RateLimitTunnel:
    """``[rate_limit.tunnels."PATTERN"]``: limits for the tunnels PATTERN matches."""

    #: replaces ``[rate_limit] per_ip`` for these tunnels (unset: that one applies)
    per_ip: Rate | None = None
    #: replaces ``[rate_limit] per_tunnel`` for these tunnels (unset: that one applies)
    per_tunnel: Rate | None = None
    #: no limits at all for these tunnels
    exempt: bool = False


@dataclass(frozen=True)
class RateLimitSettings:
    """``[rate_limit]``: request rate limits. Unset: the plugin does nothing."""

    #: each visitor address's bucket, per tunnel (unset: no per-visitor limit)
    per_ip: Rate | None = None
    #: each tunnel's bucket, shared by all its visitors (unset: no per-tunnel limit)
    per_tunnel: Rate | None = None
    #: overrides by tunnel pattern, matched against the host and the tunnel name
    #: (``"*"``: every tunnel; the most specific key applies)
    tunnels: dict[str, RateLimitTunnel] = field(default_factory=dict)
    #: most buckets kept at once (least recently used ones are dropped; at least 2)
    max_buckets: int = 100_000
    #: IPv6 visitors sharing this many leading address bits share a bucket (1-128)
    ipv6_prefix: int = 64

    def __post_init__(self) -> None:
        # a request may take from two buckets (its visitor's and its tunnel's): in a table of
        # one, each would evict the other on every request, and nobody would ever be limited
        if self.max_buckets < 2:
            raise ValueError("max_buckets must be at least 2")
        if not 1 <= self.ipv6_prefix <= 128:
            raise ValueError("ipv6_prefix must be between 1 and 128")


class TokenBucket:
    """``size`` tokens at most, refilled at ``rate`` a second; starts full."""

    __slots__ = ("rate", "size", "stamp", "tokens")

    def __init__(self, rate: float, size: float, now: float) -> None:
        self.rate = rate
        self.size = size
        self.tokens = size
        self.stamp = now

    def refill(self, now: float) -> float:
        if now > self.stamp:
            self.tokens = min(self.size, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        return self.tokens


class BucketTable:
    """Token buckets by key, least recently used first, at most ``capacity`` of them."""

    __slots__ = ("_buckets", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._buckets

    def bucket(self, key: Hashable, rate: Rate, now: float) -> TokenBucket:
        buckets = self._buckets
        found = buckets.get(key)
        if found is not None:
            buckets.move_to_end(key)
            return found
        bucket = buckets[key] = TokenBucket(rate.rate, rate.size, now)
        if len(buckets) > self.capacity:
            buckets.popitem(last=False)
        return bucket

    def take_one(self, now: float, key: Hashable, rate: Rate) -> float:
        """:meth:`take` for one bucket: the common case, written out (it runs per request)."""
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            bucket = self.bucket(key, rate, now)
        else:
            buckets.move_to_end(key)
        # the clock is monotonic: ``now`` is never before the bucket's stamp
        tokens = bucket.tokens + (now - bucket.stamp) * bucket.rate
        if tokens > bucket.size:
            tokens = bucket.size
        bucket.stamp = now
        if tokens >= 1.0:
            bucket.tokens = tokens - 1.0
            wait = 0.0
        else:
            bucket.tokens = tokens
            wait = (1.0 - tokens) / bucket.rate
        if len(buckets) > 1:  # else the only bucket, just used
            self.sweep(now)
        return wait

    def take(self, now: float, *wanted: tuple[Hashable, Rate]) -> float:
        """Take a token from each bucket if every one has one: 0.0. Otherwise take none and
        return the seconds until every one will have one."""
        buckets = [self.bucket(key, rate, now) for key, rate in wanted]
        wait = 0.0
        for bucket in buckets:
            tokens = bucket.refill(now)
            if tokens < 1.0:
                wait = max(wait, (1.0 - tokens) / bucket.rate)
        if wait == 0.0:
            for bucket in buckets:
                bucket.tokens -= 1.0
        self.sweep(now)
        return wait

    def sweep(self, now: float, limit: int = 2) -> None:
        """Drop up to ``limit`` least recently used buckets that have refilled."""
        buckets = self._buckets
        while limit and buckets:
            oldest = next(iter(buckets))
            bucket = buckets[oldest]
            elapsed = now - bucket.stamp
            if bucket.tokens + (elapsed if elapsed > 0.0 else 0.0) * bucket.rate < bucket.size:
                return
            del buckets[oldest]
            limit -= 1


@dataclass(frozen=True, slots=True)
class _Policy:
    per_ip: Rate | None
    per_tunnel: Rate | None


@dataclass(frozen=True, slots=True)
class _Plan:
    """The buckets one visitor's requests to one tunnel take from: none (exempt), one
    (``key`` with ``rate``), or the visitor's and the tunnel's (``both``)."""

    key: Hashable = None
    rate: Rate | None = None
    both: tuple[tuple[Hashable, Rate], tuple[Hashable, Rate]] | None = None


_EXEMPT = _Plan()


def _visitor_key(ip: str, prefix: int) -> str:
    if ":" not in ip:
        return ip
    try:
        address = ipaddress.IPv6Address(ip.partition("%")[0])
    except ValueError:
        return ip
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return f"{int(address) >> (128 - prefix):x}/{prefix}"


class RateLimit:
    """The HTTP middleware: ``429`` once a visitor's or tunnel's bucket is empty.

    Which buckets a request takes from depends only on its tunnel, host and visitor address:
    that plan is worked out once for each of them and kept, at most ``cache_size`` plans (the
    cache is emptied when full), so a kept-alive visitor's next requests skip the tunnel
    patterns and the IPv6 grouping (a plan that names no visitor's bucket is kept per address
    all the same: one look-up for every request).

    ``clock`` must never go back (``time.monotonic``): a bucket refills by the time since it
    was last used."""

    __slots__ = ("_buckets", "_cache_size", "_clock", "_default", "_matcher", "_plans", "_prefix")

    def __init__(
        self,
        settings: RateLimitSettings,
        *,
        clock: Clock = time.monotonic,
        cache_size: int = 4096,
    ) -> None:
        self._default = _Policy(settings.per_ip, settings.per_tunnel)
        policies = {}
        for pattern, entry in settings.tunnels.items():
            if entry.exempt:
                policies[pattern] = _Policy(None, None)
            else:
                policies[pattern] = _Policy(entry.per_ip or settings.per_ip,
                                            entry.per_tunnel or settings.per_tunnel)  # fmt: skip
        self._matcher = TunnelMatcher(policies)
        self._buckets = BucketTable(settings.max_buckets)
        self._clock = clock
        self._prefix = settings.ipv6_prefix
        self._plans: dict[tuple[str, str, str], _Plan] = {}
        self._cache_size = cache_size

    @property
    def buckets(self) -> BucketTable:
        return self._buckets

    def on_request(self, request: HttpRequest, ctx: RequestContext) -> Reply | None:
        plan = self._plans.get((ctx.tunnel, ctx.host, ctx.visitor_ip))
        if plan is None:
            plan = self._plan(ctx)
        if plan.rate is not None:
            wait = self._buckets.take_one(self._clock(), plan.key, plan.rate)
        elif plan.both is not None:
            wait = self._buckets.take(self._clock(), *plan.both)
        else:
            return None
        if not wait:
            return None
        return reply(ctx, PLUGIN, 429, "too many requests\n", [("Retry-After", retry_after(wait))])

    def _plan(self, ctx: RequestContext) -> _Plan:
        """The buckets of ``ctx``'s visitor and tunnel, worked out and kept."""
        policy = self._matcher.lookup(ctx.host, ctx.tunnel)
        if policy is None:
            policy = self._default
        per_ip, per_tunnel = policy.per_ip, policy.per_tunnel
        tunnel = (ctx.tunnel, ctx.host)
        if per_ip is None:
            plan = _EXEMPT if per_tunnel is None else _Plan(tunnel, per_tunnel)
        else:
            visitor = (ctx.tunnel, ctx.host, _visitor_key(ctx.visitor_ip, self._prefix))
            if per_tunnel is None:
                plan = _Plan(visitor, per_ip)
            else:
                plan = _Plan(both=((visitor, per_ip), (tunnel, per_tunnel)))
        if len(self._plans) >= self._cache_size:
            self._plans.clear()
        self._plans[(ctx.tunnel, ctx.host, ctx.visitor_ip)] = plan
        return plan


def _configured(settings: RateLimitSettings) -> bool:
    if settings.per_ip or settings.per_tunnel:
        return True
    return any(t.per_ip or t.per_tunnel for t in settings.tunnels.values() if not t.exempt)


@hookimpl
def ferrotunnel_add_config(schema: ConfigSchema) -> None:
    schema.add_table(
        TABLE,
        RateLimitSettings,
        owner=OWNER,
        sides=("server",),  # HTTP middlewares, authenticators: a client has none
        help="request rate limits",
        example={
            "per_ip": {"rate": 10.0, "burst": 20},
            "per_tunnel": {"rate": 100.0},
            "tunnels": {"api.example.com": {"per_ip": {"rate": 2.0}}},
        },
    )


@hookimpl
def ferrotunnel_http_middlewares(config: Config) -> list[RateLimit]:
    settings = settings_of(config, TABLE, RateLimitSettings)
    return [RateLimit(settings)] if _configured(settings) else []
