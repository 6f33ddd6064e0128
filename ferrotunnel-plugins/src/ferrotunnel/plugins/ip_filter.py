"""``ip-filter``: allow and deny visitors by address, per tunnel (HTTP and TCP).

::

    [ip_filter.tunnels."*"]
    deny = ["203.0.113.0/24"]

    [ip_filter.tunnels."admin.example.com"]
    allow = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]

A visitor whose address is in a ``deny`` network is refused; otherwise, if ``allow`` is not
empty, a visitor outside every ``allow`` network is refused. HTTP visitors get ``403``; TCP
connections are closed (for TCP tunnels the keys are matched against the tunnel name).
IPv4-mapped IPv6 addresses (``::ffff:192.0.2.7``) are checked as IPv4, visitors and entries
alike (``::ffff:10.0.0.0/104`` is taken as ``10.0.0.0/8``). One entry applies
per tunnel — the most specific key; entries are not merged, so repeat global ``deny``
networks in specific entries. Tunnels no key matches are untouched.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from ferrotunnel.core.plugin import (
    Config,
    ConfigSchema,
    HttpRequest,
    Reply,
    RequestContext,
    TcpConnection,
    hookimpl,
)

from ._common import OWNER, TunnelMatcher, reply, settings_of

__all__ = ["IpFilterHttp", "IpFilterRule", "IpFilterSettings", "IpFilterTcp", "IpRule"]

TABLE = "ip_filter"
PLUGIN = "ip-filter"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _networks(cidrs: tuple[str, ...], key: str) -> tuple[Network, ...]:
    """The entries as networks; IPv4-mapped ones as IPv4, as visitors are judged (see
    :func:`_address`), else they would never match anyone."""
    networks = []
    for cidr in cidrs:
        try:
            network = ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{key}: {cidr!r} is not an address or CIDR network") from None
        if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
            ipv4 = network.network_address.ipv4_mapped
            network = ipaddress.IPv4Network((ipv4, network.prefixlen - 96))
        networks.append(network)
    return tuple(networks)


@dataclass(frozen=True)
class IpFilterRule:
    """``[ip_filter.tunnels."PATTERN"]``: who may visit the tunnels PATTERN matches."""

    #: networks (``"10.0.0.0/8"``) or addresses allowed in; empty: everyone not denied
    allow: tuple[str, ...] = ()
    #: networks or addresses refused; wins over ``allow``
    deny: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _networks(self.allow, "allow")
        _networks(self.deny, "deny")


@dataclass(frozen=True)
class IpFilterSettings:
    """``[ip_filter]``: per-tunnel address rules. Unset: the plugin does nothing."""

    #: rules by tunnel pattern, matched against the host and the tunnel name
    #: (``"*"``: every tunnel; the most specific key applies)
    tunnels: dict[str, IpFilterRule] = field(default_factory=dict)


def _address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class IpRule:
    """A compiled :class:`IpFilterRule`. Verdicts are cached per address text, at most
    ``cache_size`` of them (the cache is emptied when full): a kept-alive visitor asks for
    every request, and parsing the address each time cost more than the rest of the plugin."""

    __slots__ = ("_cache_size", "_verdicts", "allow", "deny")

    def __init__(self, rule: IpFilterRule, *, cache_size: int = 4096) -> None:
        self.allow = _collapse(_networks(rule.allow, "allow"))
        self.deny = _collapse(_networks(rule.deny, "deny"))
        self._verdicts: dict[str, bool] = {}
        self._cache_size = cache_size

    def __bool__(self) -> bool:
        return bool(self.allow or self.deny)

    def admits(self, visitor_ip: str) -> bool:
        verdict = self._verdicts.get(visitor_ip)
        if verdict is None:
            verdict = self._judge(visitor_ip)
            if len(self._verdicts) >= self._cache_size:
                self._verdicts.clear()
            self._verdicts[visitor_ip] = verdict
        return verdict

    def _judge(self, visitor_ip: str) -> bool:
        address = _address(visitor_ip)
        if address is None:  # not an address we can judge: only rules without allow pass it
            return not self.allow
        if any(address in network for network in self.deny):
            return False
        return not self.allow or any(address in network for network in self.allow)


def _collapse(networks: tuple[Network, ...]) -> tuple[Network, ...]:
    v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    return (*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6))


def _matcher(tunnels: Mapping[str, IpFilterRule]) -> TunnelMatcher[IpRule]:
    return TunnelMatcher({pattern: IpRule(rule) for pattern, rule in tunnels.items()})


class IpFilterHttp:
    """The HTTP middleware: ``403`` for visitors a tunnel's rule refuses.

    Admitted visitors are remembered per (host, tunnel, address), at most ``cache_size`` of
    them (the set is emptied when full): the rule that applies and its verdict are fixed for
    those three, so a kept-alive visitor's next requests cost one set lookup."""

    __slots__ = ("_admitted", "_cache_size", "_matcher")

    def __init__(self, tunnels: Mapping[str, IpFilterRule], *, cache_size: int = 4096) -> None:
        self._matcher = _matcher(tunnels)
        self._admitted: set[tuple[str, str, str]] = set()
        self._cache_size = cache_size

    def on_request(self, request: HttpRequest, ctx: RequestContext) -> Reply | None:
        if (ctx.host, ctx.tunnel, ctx.visitor_ip) in self._admitted:
            return None
        return self._judge(ctx)

    def _judge(self, ctx: RequestContext) -> Reply | None:
        rule = self._matcher.lookup(ctx.host, ctx.tunnel)
        if rule is None or rule.admits(ctx.visitor_ip):
            if len(self._admitted) >= self._cache_size:
                self._admitted.clear()
            self._admitted.add((ctx.host, ctx.tunnel, ctx.visitor_ip))
            return None
        return reply(ctx, PLUGIN, 403, "forbidden\n")


class IpFilterTcp:
    """The TCP middleware: refuses connections a tunnel's rule refuses."""

    __slots__ = ("_matcher",)

    def __init__(self, tunnels: Mapping[str, IpFilterRule]) -> None:
        self._matcher = _matcher(tunnels)

    def on_connect(self, conn: TcpConnection) -> bool:
        rule = self._matcher.lookup("", conn.tunnel)
        return rule is None or rule.admits(conn.visitor_ip)


def _configured(config: Config) -> dict[str, IpFilterRule]:
    settings = settings_of(config, TABLE, IpFilterSettings)
    return settings.tunnels if any(r.allow or r.deny for r in settings.tunnels.values()) else {}


@hookimpl
def ferrotunnel_add_config(schema: ConfigSchema) -> None:
    schema.add_table(
        TABLE,
        IpFilterSettings,
        owner=OWNER,
        sides=("server",),  # HTTP middlewares, authenticators: a client has none
        help="visitor address rules",
        example={"tunnels": {"*": {"allow": ["10.0.0.0/8"], "deny": ["10.0.0.66"]}}},
    )


@hookimpl(tryfirst=True)
def ferrotunnel_http_middlewares(config: Config) -> list[IpFilterHttp]:
    tunnels = _configured(config)
    return [IpFilterHttp(tunnels)] if tunnels else []


@hookimpl(tryfirst=True)
def ferrotunnel_tcp_middlewares(config: Config) -> list[IpFilterTcp]:
    tunnels = _configured(config)
    return [IpFilterTcp(tunnels)] if tunnels else []
