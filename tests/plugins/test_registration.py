"""The built-ins are entry points that load, declare their tables and stay inert unset."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

import pytest

from ferrotunnel.core.plugin import PluginHost, load_plugins
from ferrotunnel.core.plugin.config import from_mapping
from ferrotunnel.plugins import BUILTINS
from ferrotunnel.plugins.access_log import AccessLog

NAMES = sorted(BUILTINS)


def test_the_seven_entry_points_are_registered() -> None:
    found = {ep.name: ep for ep in entry_points(group="ferrotunnel")}
    assert set(NAMES) <= set(found)
    for name in NAMES:
        assert found[name].value == BUILTINS[name]
        dist = found[name].dist
        assert dist is not None
        assert dist.name == "ferrotunnel-plugins"


def test_load_plugins_enables_them_all() -> None:
    host = load_plugins(strict=True)
    infos = {info.name: info for info in host.infos}
    for name in NAMES:
        assert infos[name].status == "enabled", infos[name]
        assert infos[name].distribution == "ferrotunnel-plugins"
        assert "ferrotunnel_add_config" in infos[name].hooks
    assert "ferrotunnel_tcp_middlewares" in infos["ip-filter"].hooks
    assert "ferrotunnel_authenticators" in infos["auth"].hooks


def test_a_blocked_builtin_is_not_loaded() -> None:
    host = load_plugins(block=["rate-limit"])
    infos = {info.name: info for info in host.infos}
    assert infos["rate-limit"].status == "blocked"
    assert "rate_limit" not in host.schema().tables


def test_every_table_is_declared_once_by_ferrotunnel_plugins() -> None:
    schema = load_plugins(strict=True).schema()
    tables = {
        "auth", "basic_auth", "ip_filter", "rate_limit", "circuit_breaker", "access_log",
        "headers",
    }  # fmt: skip
    assert tables <= set(schema.tables)
    for table in tables:
        assert schema.tables[table].owner == "ferrotunnel-plugins"


def test_unconfigured_plugins_add_nothing() -> None:
    host = load_plugins(strict=True)
    config = from_mapping(host.schema(), {})
    host.configure(config)
    assert host.authenticators(config) == []
    assert host.http_middlewares(config) == []
    assert host.tcp_middlewares(config) == []


def test_configured_middlewares_come_in_a_sensible_order(tmp_path) -> None:
    host = load_plugins(strict=True)
    config = from_mapping(
        host.schema(),
        {
            "basic_auth": {"tunnels": {"*": {"users": ["a:b"]}}},
            "ip_filter": {"tunnels": {"*": {"deny": ["10.0.0.0/8"]}}},
            "rate_limit": {"per_ip": {"rate": 1.0}},
            "circuit_breaker": {"tunnels": {"*": {}}},
            "access_log": {"path": str(tmp_path / "access.log")},
            "headers": {
                "tunnels": {"*": {"request_set": {"X-A": "1"}, "response_set": {"X-B": "2"}}}
            },
        },
    )
    middlewares = host.http_middlewares(config)
    for middleware in middlewares:
        if isinstance(middleware, AccessLog):
            middleware.close()
    # ip-filter first (tryfirst), then rate limits before credentials are checked; the
    # breaker only sees requests the others let through (trylast)
    assert [type(m).__name__ for m in middlewares] == [
        "IpFilterHttp",
        "RateLimit",
        "BasicAuth",
        "AccessLog",
        "CircuitBreaker",
        "RequestHeaders",
        "ResponseHeaders",
    ]
    assert [type(m).__name__ for m in host.tcp_middlewares(config)] == ["IpFilterTcp"]


@pytest.mark.parametrize("name", NAMES)
def test_each_module_registers_alone(name: str) -> None:
    module = importlib.import_module(BUILTINS[name])
    host = PluginHost.with_plugins([module], names=[name])
    assert host.infos[0].status == "enabled"
    config = from_mapping(host.schema(), {})
    host.configure(config)
    assert host.http_middlewares(config) == []


def test_the_objects_match_the_kernel_protocols() -> None:
    from ferrotunnel.core.plugin import Authenticator, TcpConnection, TcpMiddleware
    from ferrotunnel.plugins.auth import TokenAuthenticator
    from ferrotunnel.plugins.ip_filter import IpFilterTcp

    authenticator: Authenticator = TokenAuthenticator([])  # checked by mypy
    tcp: TcpMiddleware = IpFilterTcp({})
    assert isinstance(authenticator, Authenticator)
    assert tcp.on_connect(TcpConnection("db", 20000, "192.0.2.7", 40000))
