"""rate-limit: token buckets, 429 with Retry-After, overrides and bounded memory."""

from __future__ import annotations

from typing import Any

import pytest

from ferrotunnel.core.errors import ConfigError
from ferrotunnel.core.plugin import Reply
from ferrotunnel.plugins import rate_limit
from ferrotunnel.plugins._common import REPLIED_BY
from ferrotunnel.plugins.rate_limit import BucketTable, Rate, RateLimit, RateLimitSettings

from .helpers import FakeClock, FakeRequest, config_of, make_ctx


def limiter(clock: FakeClock, **table: Any) -> RateLimit:
    config = config_of(rate_limit, "rate-limit", {"rate_limit": table})
    return RateLimit(config.table("rate_limit"), clock=clock)


def hit(mw: RateLimit, ip: str = "192.0.2.7", host: str = "app.example.com") -> Reply | None:
    return mw.on_request(FakeRequest(host=host), make_ctx(host=host, visitor_ip=ip))


def test_429_after_the_burst_then_recovery_after_the_refill() -> None:
    clock = FakeClock()
    mw = limiter(clock, per_ip={"rate": 2.0, "burst": 3})
    assert [hit(mw) for _ in range(3)] == [None, None, None]
    refused = hit(mw)
    assert refused is not None
    assert refused.status == 429
    assert dict(refused.headers) == {"Retry-After": "1"}  # 0.5 s, rounded up
    clock.advance(0.5)  # one token back
    assert hit(mw) is None
    assert hit(mw) is not None
    clock.advance(10)  # refilled to the burst, not beyond
    assert [hit(mw) for _ in range(3)] == [None, None, None]
    assert hit(mw) is not None


def test_retry_after_is_the_ceiling_of_the_wait() -> None:
    clock = FakeClock()
    mw = limiter(clock, per_ip={"rate": 0.1, "burst": 1})
    assert hit(mw) is None
    clock.advance(2.5)
    refused = hit(mw)
    assert refused is not None
    assert dict(refused.headers)["Retry-After"] == "8"  # 7.5 s


def test_the_reply_marks_the_context() -> None:
    mw = limiter(FakeClock(), per_ip={"rate": 1.0, "burst": 1})
    ctx = make_ctx()
    assert mw.on_request(FakeRequest(), ctx) is None
    assert REPLIED_BY not in ctx.state
    assert mw.on_request(FakeRequest(), ctx) is not None
    assert ctx.state[REPLIED_BY] == "rate-limit"


def test_visitors_and_tunnels_have_their_own_buckets() -> None:
    mw = limiter(FakeClock(), per_ip={"rate": 1.0, "burst": 1})
    assert hit(mw, "192.0.2.1") is None
    assert hit(mw, "192.0.2.1") is not None
    assert hit(mw, "192.0.2.2") is None
    assert hit(mw, "192.0.2.1", host="other.example.com") is None


def test_ipv6_visitors_share_a_bucket_per_prefix() -> None:
    mw = limiter(FakeClock(), per_ip={"rate": 1.0, "burst": 1})
    assert hit(mw, "2001:db8:1:2::1") is None
    assert hit(mw, "2001:db8:1:2::ffff") is not None  # same /64
    assert hit(mw, "2001:db8:1:3::1") is None
    assert hit(mw, "::ffff:192.0.2.9") is None  # IPv4-mapped: an IPv4 visitor
    assert hit(mw, "192.0.2.9") is not None


def test_the_tunnel_bucket_is_shared_and_a_refusal_costs_nothing() -> None:
    clock = FakeClock()
    mw = limiter(clock, per_ip={"rate": 1.0, "burst": 2}, per_tunnel={"rate": 1.0, "burst": 3})
    assert hit(mw, "192.0.2.1") is None
    assert hit(mw, "192.0.2.1") is None
    assert hit(mw, "192.0.2.1") is not None  # its own bucket is empty: the tunnel's untouched
    assert hit(mw, "192.0.2.2") is None  # the tunnel's last token
    refused = hit(mw, "192.0.2.3")
    assert refused is not None
    assert refused.status == 429
    clock.advance(1.0)
    assert hit(mw, "192.0.2.3") is None


def test_overrides_by_pattern_and_exemptions() -> None:
    mw = limiter(
        FakeClock(),
        per_ip={"rate": 1.0, "burst": 1},
        tunnels={
            "api.example.com": {"per_ip": {"rate": 1.0, "burst": 3}},
            "*.example.com": {"per_tunnel": {"rate": 1.0, "burst": 2}},
            "status.example.com": {"exempt": True},
        },
    )
    assert [hit(mw, host="api.example.com") for _ in range(3)] == [None] * 3
    assert hit(mw, host="api.example.com") is not None
    # the wildcard entry keeps the global per_ip and adds a tunnel limit
    assert hit(mw, "192.0.2.1", host="www.example.com") is None
    assert hit(mw, "192.0.2.1", host="www.example.com") is not None
    assert hit(mw, "192.0.2.2", host="www.example.com") is None
    assert hit(mw, "192.0.2.3", host="www.example.com") is not None
    assert all(hit(mw, host="status.example.com") is None for _ in range(50))
    assert hit(mw, host="elsewhere.org") is None  # the global limit
    assert hit(mw, host="elsewhere.org") is not None


def test_burst_defaults_to_the_rate_rounded_up() -> None:
    assert Rate(2.5).size == 3.0
    assert Rate(0.2).size == 1.0
    assert Rate(2.5, 7).size == 7.0


def test_memory_is_bounded_by_max_buckets() -> None:
    clock = FakeClock()
    mw = limiter(clock, per_ip={"rate": 1.0, "burst": 1}, max_buckets=100)
    for i in range(1000):
        hit(mw, f"10.0.{i // 256}.{i % 256}")
    assert len(mw.buckets) == 100
    # the most recent visitor is remembered, the oldest forgotten
    assert hit(mw, "10.0.3.231") is not None
    assert hit(mw, "10.0.0.0") is None


def test_the_smallest_table_still_limits_a_visitor_and_a_tunnel() -> None:
    """A request may take from two buckets: a table of one would evict one of them for the
    other on every request, and nobody would ever be limited. So two is the least allowed."""
    with pytest.raises(ConfigError, match="max_buckets must be at least 2"):
        limiter(FakeClock(), max_buckets=1)
    clock = FakeClock()
    both = {"rate": 1.0, "burst": 1}
    mw = limiter(clock, per_ip=both, per_tunnel=both, max_buckets=2)
    assert [hit(mw) is None for _ in range(5)] == [True, False, False, False, False]
    clock.advance(1)
    assert hit(mw) is None
    assert hit(mw, "192.0.2.8") is not None  # the tunnel's bucket is empty for everybody


def test_refilled_buckets_are_swept_on_access() -> None:
    clock = FakeClock()
    mw = limiter(clock, per_ip={"rate": 10.0, "burst": 5})
    for i in range(50):
        hit(mw, f"10.0.0.{i}")
    assert len(mw.buckets) == 50
    clock.advance(1.0)  # all refilled
    for _ in range(30):
        hit(mw, "10.0.1.1")
    assert len(mw.buckets) <= 2  # each access dropped up to two idle ones


def test_bucket_table_takes_all_or_nothing() -> None:
    table = BucketTable(10)
    a, b = Rate(1.0, 1), Rate(1.0, 2)
    assert table.take(0.0, ("a", a), ("b", b)) == 0.0
    assert table.take(0.0, ("a", a), ("b", b)) == 1.0
    assert table.take(0.0, ("b", b)) == 0.0  # b still had its second token
    assert table.take(0.0, ("b", b)) == 1.0


def test_not_configured_means_no_middleware() -> None:
    config = config_of(
        rate_limit, "rate-limit", {"rate_limit": {"tunnels": {"*": {"exempt": True}}}}
    )
    assert rate_limit.ferrotunnel_http_middlewares(config) == []
    config = config_of(rate_limit, "rate-limit", {"rate_limit": {"per_tunnel": {"rate": 5.0}}})
    assert [type(m) for m in rate_limit.ferrotunnel_http_middlewares(config)] == [RateLimit]
    assert RateLimitSettings().per_ip is None


def test_plans_are_kept_per_tunnel_and_visitor_and_bounded() -> None:
    """What a request takes from is worked out once per tunnel, host and address; a plan kept
    for one tunnel does not apply to another with other limits, and the plans are bounded."""
    config = config_of(
        rate_limit,
        "rate-limit",
        {
            "rate_limit": {
                "per_ip": {"rate": 1.0, "burst": 1},
                "tunnels": {
                    "api.example.com": {"per_ip": {"rate": 1.0, "burst": 2}},
                    "status.example.com": {"exempt": True},
                },
            }
        },
    )
    mw = RateLimit(config.table("rate_limit"), clock=FakeClock(), cache_size=4)
    for ip in ("192.0.2.1", "192.0.2.2"):
        assert [hit(mw, ip, "api.example.com") is None for _ in range(3)] == [True, True, False]
        assert [hit(mw, ip) is None for _ in range(2)] == [True, False]
        assert all(hit(mw, ip, "status.example.com") is None for _ in range(3))
        assert len(mw._plans) <= 4
    # IPv6 visitors of one /64 still share a bucket, whichever plan each address has
    assert hit(mw, "2001:db8::1") is None
    assert hit(mw, "2001:db8::2") is not None
    assert len(mw._plans) <= 4


def test_the_tunnel_bucket_alone() -> None:
    clock = FakeClock()
    mw = limiter(clock, per_tunnel={"rate": 1.0, "burst": 2})
    assert hit(mw, "192.0.2.1") is None
    assert hit(mw, "192.0.2.2") is None
    refused = hit(mw, "192.0.2.3")
    assert refused is not None
    assert dict(refused.headers) == {"Retry-After": "1"}
    assert hit(mw, "192.0.2.3", host="other.example.com") is None
    clock.advance(1.0)
    assert hit(mw, "192.0.2.1") is None
