"""Every built-in's TOML table: defaults, documented examples, typos and bad values."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ferrotunnel.core.errors import ConfigError
from ferrotunnel.core.plugin import ConfigSchema, load_toml
from ferrotunnel.plugins import (
    access_log,
    auth,
    basic_auth,
    circuit_breaker,
    headers,
    ip_filter,
    rate_limit,
)

from .helpers import config_of, schema_of, toml_config

HEX = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"  # sha256("test")

PLUGINS: list[tuple[ModuleType, str, str, type]] = [
    (auth, "auth", "auth", auth.AuthSettings),
    (basic_auth, "basic-auth", "basic_auth", basic_auth.BasicAuthSettings),
    (ip_filter, "ip-filter", "ip_filter", ip_filter.IpFilterSettings),
    (rate_limit, "rate-limit", "rate_limit", rate_limit.RateLimitSettings),
    (circuit_breaker, "circuit-breaker", "circuit_breaker", circuit_breaker.CircuitBreakerSettings),
    (access_log, "access-log", "access_log", access_log.AccessLogSettings),
    (headers, "headers", "headers", headers.HeadersSettings),
]
IDS = [p[1] for p in PLUGINS]


@pytest.mark.parametrize(("module", "name", "table", "settings"), PLUGINS, ids=IDS)
def test_defaults_load(module: ModuleType, name: str, table: str, settings: type) -> None:
    schema = schema_of(module, name)
    assert schema.tables[table].settings is settings
    assert schema.tables[table].owner == "ferrotunnel-plugins"
    assert load_toml(schema, None).table(table) == settings()
    assert config_of(module, name, {table: {}}).table(table) == settings()


TYPOS: list[tuple[ModuleType, str, dict[str, Any], str]] = [
    (auth, "auth", {"auth": {"token": []}}, "tokens"),
    (auth, "auth", {"auth": {"tokens": [{"nme": "a", "token": "t"}]}}, "name"),
    (auth, "auth", {"auth": {"tokens_fil": "x"}}, "tokens_file"),
    (basic_auth, "basic-auth", {"basic_auth": {"tunels": {}}}, "tunnels"),
    (basic_auth, "basic-auth", {"basic_auth": {"tunnels": {"*": {"user": []}}}}, "users"),
    (ip_filter, "ip-filter", {"ip_filter": {"tunnels": {"*": {"alow": []}}}}, "allow"),
    (rate_limit, "rate-limit", {"rate_limit": {"per_ipp": {"rate": 1.0}}}, "per_ip"),
    (rate_limit, "rate-limit", {"rate_limit": {"per_ip": {"rat": 1.0}}}, "rate"),
    (rate_limit, "rate-limit", {"rate_limit": {"tunnels": {"*": {"exmpt": True}}}}, "exempt"),
    (
        circuit_breaker,
        "circuit-breaker",
        {"circuit_breaker": {"tunnels": {"*": {"failure_treshold": 3}}}},
        "failure_threshold",
    ),
    (access_log, "access-log", {"access_log": {"pth": "x.log"}}, "path"),
    (headers, "headers", {"headers": {"tunnels": {"*": {"request_sett": {}}}}}, "request_set"),
]


@pytest.mark.parametrize(("module", "name", "data", "closest"), TYPOS)
def test_a_typo_names_the_closest_key(
    module: ModuleType, name: str, data: dict[str, Any], closest: str
) -> None:
    with pytest.raises(ConfigError, match=rf"did you mean '{re.escape(closest)}'"):
        config_of(module, name, data)


def test_a_typo_in_a_file_names_its_line(tmp_path: Path) -> None:
    text = "[rate_limit]\nper_ip = { rate = 1.0 }\nper_tunel = { rate = 5.0 }\n"
    with pytest.raises(ConfigError, match=r"rate\.toml:3: .*did you mean 'per_tunnel'"):
        toml_config(rate_limit, "rate-limit", tmp_path / "rate.toml", text)


BY_TABLE = {table: (module, name) for module, name, table, _ in PLUGINS}


def tunnels(entry: dict[str, Any]) -> dict[str, Any]:
    return {"tunnels": {"*": entry}}


BAD_VALUES: list[tuple[str, dict[str, Any], str]] = [
    ("auth", {"tokens": [{"name": "a"}]}, "exactly one of"),
    ("auth", {"tokens": [{"name": "a", "sha256": "abc"}]}, "64 hexadecimal"),
    ("auth", {"tokens": [{"name": "a", "token": "t", "ports": [[5, 1]]}]}, "5-1"),
    ("auth", {"tokens": [{"name": "a", "token": "t", "ports": [[1, 2, 3]]}]}, "low, high"),
    ("auth", {"tokens": [{"name": "a", "token": "t", "hosts": [""]}]}, "empty"),
    ("basic_auth", tunnels({"users": ["nopass"]}), "name:password"),
    ("basic_auth", tunnels({"users": ["a:1", "a:2"]}), "twice"),
    ("basic_auth", tunnels({"users": ["a:sha256:12"]}), "64 hexadecimal"),
    ("basic_auth", tunnels({"realm": 'a"b'}), "without quotes"),
    ("basic_auth", tunnels({"realm": "\u65e5\u672c"}), "printable ASCII"),
    ("ip_filter", tunnels({"deny": ["10.0.0.300/8"]}), "not an address"),
    ("rate_limit", {"per_ip": {"rate": 0}}, "positive"),
    ("rate_limit", {"per_ip": {"rate": 1, "burst": 0}}, "burst"),
    ("rate_limit", {"per_ip": {"burst": 3}}, "needs 'rate'"),
    ("rate_limit", {"max_buckets": 1}, "max_buckets must be at least 2"),
    ("rate_limit", {"ipv6_prefix": 129}, "ipv6_prefix"),
    ("circuit_breaker", tunnels({"failure_statuses": [700]}), "700"),
    ("circuit_breaker", tunnels({"failure_threshold": 0}), "failure_threshold"),
    ("circuit_breaker", tunnels({"open_seconds": 0}), "open_seconds"),
    ("access_log", {"enabled": "yes"}, "true or false"),
    ("headers", tunnels({"request_set": {"Host": "x"}}), "cannot be changed"),
    ("headers", tunnels({"response_add": {"Content-Length": "1"}}), "cannot be changed"),
    ("headers", tunnels({"response_set": {"X": "a\r\nB: c"}}), "line break"),
    ("headers", tunnels({"response_set": {"X": "\u65e5\u672c"}}), "Latin-1"),
    ("headers", tunnels({"request_remove": ["bad name"]}), "not a header name"),
    ("headers", tunnels({"request_set": {"X-Forwarded-Proto": "https"}}), "set by the ingress"),
    ("headers", tunnels({"request_remove": ["forwarded"]}), "set by the ingress"),
]


@pytest.mark.parametrize(("table", "data", "message"), BAD_VALUES)
def test_bad_values_are_configuration_errors(
    table: str, data: dict[str, Any], message: str
) -> None:
    module, name = BY_TABLE[table]
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_of(module, name, {table: data})


def test_the_documented_examples_load(tmp_path: Path) -> None:
    text = f"""
[[auth.tokens]]
name = "alice"
token = "alice-secret"
hosts = ["*.alice.example.com"]
ports = [[20000, 20010], 8080]

[[auth.tokens]]
name = "bob"
sha256 = "{HEX}"

[basic_auth.tunnels."app.example.com"]
users = ["alice:secret", "bob:sha256:{HEX}"]
realm = "staging"

[ip_filter.tunnels."*"]
deny = ["203.0.113.0/24"]

[ip_filter.tunnels."admin.example.com"]
allow = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]

[rate_limit]
per_ip = {{ rate = 10.0, burst = 20 }}
per_tunnel = {{ rate = 200, burst = 400 }}

[rate_limit.tunnels."status.example.com"]
exempt = true

[circuit_breaker.tunnels."*"]
failure_threshold = 5
open_seconds = 30

[access_log]
enabled = true
query = false

[headers.tunnels."*"]
response_set = {{ Strict-Transport-Security = "max-age=31536000" }}
response_remove = ["Server"]
"""
    path = tmp_path / "ferrotunnel.toml"
    path.write_text(text, encoding="utf-8")
    from ferrotunnel.core.plugin import PluginHost

    modules = [auth, basic_auth, ip_filter, rate_limit, circuit_breaker, access_log, headers]
    host = PluginHost.with_plugins(modules, names=IDS)
    config = load_toml(host.schema(), path)
    tokens = config.table("auth").tokens
    assert tokens[0].ports == ((20000, 20010), 8080)
    assert tokens[1].sha256 == HEX
    assert config.table("rate_limit").per_tunnel == rate_limit.Rate(200.0, 400)
    assert config.table("circuit_breaker").tunnels["*"].open_seconds == 30.0
    assert config.table("access_log").active
    assert config.table("headers").tunnels["*"].response_remove == ("Server",)


@dataclass(frozen=True)
class _Rule:
    allow: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Settings:
    path: str | None = None
    tunnels: dict[str, _Rule] = field(default_factory=dict)


def test_a_table_example_is_checked_when_it_is_declared() -> None:
    """``add_table(example=...)`` (what ``config init`` shows) is refused at once when it is
    not a valid table, naming it: a plugin cannot ship a starter file that fails its check."""
    Settings = _Settings
    schema = ConfigSchema()
    example = {"path": "x.log", "tunnels": {"*": {"allow": ["10.0.0.0/8"]}}}
    schema.add_table("mine", Settings, owner="me", example=example)
    assert schema.tables["mine"].example == example
    with pytest.raises(ConfigError, match=r"example of \[other\].*unknown key 'alow'"):
        schema.add_table("other", Settings, owner="me", example={"tunnels": {"*": {"alow": []}}})
    assert "other" not in schema.tables
