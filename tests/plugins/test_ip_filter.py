"""ip-filter: deny wins, allow lists, HTTP 403 and TCP refusals."""

from __future__ import annotations

from typing import Any

import pytest

from ferrotunnel.core.plugin import TcpConnection
from ferrotunnel.plugins import ip_filter
from ferrotunnel.plugins.ip_filter import IpFilterHttp, IpFilterTcp

from .helpers import FakeRequest, config_of, make_ctx


def tunnels(**entries: Any) -> dict[str, ip_filter.IpFilterRule]:
    config = config_of(ip_filter, "ip-filter", {"ip_filter": {"tunnels": entries}})
    return config.table("ip_filter").tunnels  # type: ignore[no-any-return]


RULES = {
    "*": {"deny": ["203.0.113.0/24", "2001:db8:bad::/48"]},
    "admin.example.com": {"allow": ["10.0.0.0/8", "192.0.2.7"], "deny": ["10.9.0.0/16"]},
}


@pytest.mark.parametrize(
    ("host", "ip", "allowed"),
    [
        ("app.example.com", "198.51.100.1", True),
        ("app.example.com", "203.0.113.9", False),
        ("app.example.com", "::ffff:203.0.113.9", False),  # IPv4-mapped
        ("app.example.com", "2001:db8:bad::1", False),
        ("app.example.com", "2001:db8:900d::1", True),
        ("admin.example.com", "10.1.2.3", True),
        ("admin.example.com", "192.0.2.7", True),
        ("admin.example.com", "192.0.2.8", False),  # not allowed
        ("admin.example.com", "10.9.0.1", False),  # denied wins over allowed
        ("admin.example.com", "not-an-ip", False),
        ("app.example.com", "not-an-ip", True),
    ],
)
def test_http(host: str, ip: str, allowed: bool) -> None:
    mw = IpFilterHttp(tunnels(**RULES))
    ctx = make_ctx(host=host, visitor_ip=ip)
    result = mw.on_request(FakeRequest(host=host), ctx)
    if allowed:
        assert result is None
    else:
        assert result is not None
        assert result.status == 403
        assert ctx.state["ferrotunnel.replied_by"] == "ip-filter"


@pytest.mark.parametrize(
    "visitor", ["192.0.2.7", "::ffff:192.0.2.7", "10.1.2.3", "::ffff:10.1.2.3"]
)
def test_entries_written_as_ipv4_mapped_apply_to_ipv4_visitors(visitor: str) -> None:
    """Visitors are judged as IPv4; so are entries a dual-stack listener's logs suggested."""
    rules = {
        "*": {"deny": ["::ffff:192.0.2.7"]},
        "admin.example.com": {"allow": ["::ffff:10.0.0.0/104"]},
    }
    mw = IpFilterHttp(tunnels(**rules))
    denied = mw.on_request(FakeRequest(), make_ctx(host="app.example.com", visitor_ip=visitor))
    assert (denied is not None) == visitor.endswith("192.0.2.7")
    admitted = mw.on_request(FakeRequest(), make_ctx(host="admin.example.com", visitor_ip=visitor))
    assert (admitted is None) == visitor.endswith("10.1.2.3")


def test_unmatched_tunnels_are_untouched() -> None:
    mw = IpFilterHttp(tunnels(**{"admin.example.com": {"allow": ["10.0.0.0/8"]}}))
    assert mw.on_request(FakeRequest(), make_ctx(host="app.example.com")) is None


def test_tcp_is_matched_by_tunnel_name() -> None:
    mw = IpFilterTcp(tunnels(db={"deny": ["192.0.2.0/24"]}, ssh={"allow": ["10.0.0.0/8"]}))

    def connect(tunnel: str, ip: str) -> bool:
        return mw.on_connect(TcpConnection(tunnel, 20000, ip, 40000))

    assert not connect("db", "192.0.2.7")
    assert connect("db", "198.51.100.1")
    assert connect("ssh", "10.0.0.5")
    assert not connect("ssh", "192.0.2.7")
    assert connect("web", "192.0.2.7")


def test_hooks_only_when_configured() -> None:
    empty = config_of(ip_filter, "ip-filter", {"ip_filter": {"tunnels": {"*": {}}}})
    assert ip_filter.ferrotunnel_http_middlewares(empty) == []
    assert ip_filter.ferrotunnel_tcp_middlewares(empty) == []
    config = config_of(ip_filter, "ip-filter", {"ip_filter": {"tunnels": RULES}})
    assert [type(m) for m in ip_filter.ferrotunnel_http_middlewares(config)] == [IpFilterHttp]
    assert [type(m) for m in ip_filter.ferrotunnel_tcp_middlewares(config)] == [IpFilterTcp]


def test_verdicts_are_cached_per_address_and_bounded() -> None:
    rule = ip_filter.IpRule(
        ip_filter.IpFilterRule(allow=("10.0.0.0/8",), deny=("10.9.0.0/16",)), cache_size=4
    )
    addresses = [f"10.{i}.0.1" for i in range(12)] + ["192.0.2.1", "junk"]
    first = [rule.admits(ip) for ip in addresses]
    again = [rule.admits(ip) for ip in addresses]  # partly from the cache, partly not
    assert first == again == [i != 9 for i in range(12)] + [False, False]
    assert len(rule._verdicts) <= 4


def test_admitted_visitors_are_remembered_per_tunnel_and_bounded() -> None:
    """A visitor admitted to one tunnel is not thereby admitted to another whose rule differs,
    a refused visitor stays refused, and the memory of admissions is bounded."""
    rules = {"*": {"allow": ["10.0.0.0/8"]}, "admin.example.com": {"allow": ["10.1.0.0/16"]}}
    mw = IpFilterHttp(tunnels(**rules), cache_size=4)

    def admitted(host: str, ip: str, tunnel: str = "app") -> bool:
        ctx = make_ctx(host=host, visitor_ip=ip, tunnel=tunnel)
        return mw.on_request(FakeRequest(host=host), ctx) is None

    for _ in range(2):  # the second round partly from the cache
        assert admitted("app.example.com", "10.2.0.1")
        assert not admitted("admin.example.com", "10.2.0.1")
        assert admitted("admin.example.com", "10.1.0.1")
        assert not admitted("app.example.com", "192.0.2.1")
        assert not admitted("x.example.com", "10.2.0.1", tunnel="admin.example.com")
    for i in range(20):
        assert admitted("app.example.com", f"10.3.0.{i}")
        assert len(mw._admitted) <= 4
    assert not admitted("admin.example.com", "10.3.0.19")
