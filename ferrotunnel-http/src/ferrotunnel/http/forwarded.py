"""Who the visitor is, told to the origin: X-Forwarded-For/-Proto/-Host and Forwarded.

By default the ingress is the edge: whatever a visitor claims in these headers is dropped and
replaced. Only a visitor inside ``trusted`` (a load balancer in front of the server, say) has
its values kept, with this hop appended.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from .h1 import Headers

__all__ = ["TrustedProxies", "add_forwarding_headers"]

_FORWARDING = {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"}

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """CIDR ranges whose forwarding headers are believed."""

    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        self._networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(cidr, strict=False) for cidr in cidrs
        )

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __contains__(self, address: str) -> bool:
        if not self._networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)


def _forwarded_node(ip: str) -> bytes:
    return f'"[{ip}]"'.encode() if ":" in ip else ip.encode()


def add_forwarding_headers(
    headers: Headers, visitor_ip: str, host: bytes | None, scheme: bytes, trusted: bool
) -> Headers:
    """Return ``headers`` with this hop's forwarding headers (in place of untrusted ones)."""
    kept: Headers = []
    earlier: dict[bytes, bytes] = {}
    for name, value in headers:
        lower = name.lower()
        if lower in _FORWARDING:
            if trusted:
                earlier[lower] = earlier[lower] + b", " + value if lower in earlier else value
            continue
        kept.append((name, value))
    ip = visitor_ip.encode()
    chain = earlier.get(b"x-forwarded-for")
    kept.append((b"X-Forwarded-For", chain + b", " + ip if chain else ip))
    kept.append((b"X-Forwarded-Proto", earlier.get(b"x-forwarded-proto", scheme)))
    original_host = earlier.get(b"x-forwarded-host", host)
    if original_host is not None:
        kept.append((b"X-Forwarded-Host", original_host))
    node = b"for=" + _forwarded_node(visitor_ip) + b";proto=" + scheme
    if host is not None and b'"' not in host:
        node += b';host="' + host + b'"'
    prior = earlier.get(b"forwarded")
    kept.append((b"Forwarded", prior + b", " + node if prior else node))
    return kept
