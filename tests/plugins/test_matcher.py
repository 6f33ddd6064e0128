"""Tunnel patterns: the most specific key applies."""

from __future__ import annotations

from ferrotunnel.plugins._common import TunnelMatcher, retry_after


def test_most_specific_key_wins() -> None:
    matcher = TunnelMatcher(
        {
            "*": "all",
            "*.example.com": "example",
            "*.api.example.com": "api-wild",
            "v1.api.example.com": "exact-host",
            "db": "exact-tunnel",
            "web-?": "web",
        }
    )
    assert matcher.lookup("v1.api.example.com", "x") == "exact-host"
    assert matcher.lookup("v2.api.example.com", "x") == "api-wild"
    assert matcher.lookup("www.example.com", "x") == "example"
    assert matcher.lookup("www.example.org", "x") == "all"
    assert matcher.lookup("", "db") == "exact-tunnel"
    assert matcher.lookup("www.example.com", "db") == "exact-tunnel"  # exact beats wildcard
    assert matcher.lookup("v1.api.example.com", "db") == "exact-host"  # host beats tunnel
    assert matcher.lookup("", "web-1") == "web"
    assert matcher.lookup("WWW.Example.COM", "X") == "example"  # case-insensitive


def test_no_match_and_caching() -> None:
    matcher = TunnelMatcher({"*.example.com": 1}, cache_size=2)
    assert not TunnelMatcher({})
    assert matcher
    for i in range(10):
        assert matcher.lookup(f"h{i}.example.com", "t") == 1
        assert matcher.lookup(f"h{i}.example.org", "t") is None
    assert len(matcher._cache) <= 2


def test_a_lone_star_applies_to_every_tunnel_without_a_cache() -> None:
    matcher = TunnelMatcher({"*": "all"})
    assert [matcher.lookup(f"h{i}.example.com", f"t{i}") for i in range(3)] == ["all"] * 3
    assert not matcher._cache  # answered without a look-up
    assert TunnelMatcher({"*": None}).lookup("a", "b") is None
    both = TunnelMatcher({"*": "all", "db": "db"})  # not alone: the most specific key still wins
    assert (both.lookup("x", "db"), both.lookup("x", "web")) == ("db", "all")


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    assert [retry_after(s) for s in (0.0, 0.01, 1.0, 1.2, 29.9)] == ["1", "1", "1", "2", "30"]
