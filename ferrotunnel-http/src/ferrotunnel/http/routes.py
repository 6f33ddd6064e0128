"""Which tunnel serves a request: its host name, then the longest matching path prefix."""

from __future__ import annotations

from dataclasses import dataclass

from ferrotunnel.core import Session

__all__ = ["Route", "RouteTable", "normalize_path_prefix"]


@dataclass(frozen=True, slots=True)
class Route:
    host: str
    prefix: str  # "/" or "/api" (no trailing slash)
    session: Session
    #: the tunnel's name as the client chose it: streams are opened for this name
    tunnel: str
    #: the Host the origin sees: None keeps the visitor's
    host_header: bytes | None = None
    #: the tunnel's name on the server (``RequestContext.tunnel``; ``tunnel`` if not given):
    #: see Identity.tunnel_name
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.tunnel)

    def same_tunnel(self, other: Route | None) -> bool:
        """Whether ``other`` goes to this route's tunnel (of the same session)."""
        return other is not None and other.session is self.session and other.tunnel == self.tunnel


def normalize_path_prefix(path: str | None) -> str:
    if not path or path == "/":
        return "/"
    if not path.startswith("/"):
        path = "/" + path
    return path.rstrip("/")


def _matches(prefix: str, path: str) -> bool:
    if prefix == "/":
        return True
    return path == prefix or path.startswith(prefix + "/")


class RouteTable:
    def __init__(self) -> None:
        self._by_host: dict[str, list[Route]] = {}

    def add(self, route: Route) -> None:
        routes = [r for r in self._by_host.get(route.host, []) if r.prefix != route.prefix]
        routes.append(route)
        routes.sort(key=lambda r: len(r.prefix), reverse=True)
        self._by_host[route.host] = routes

    def remove_session(self, session: Session) -> None:
        for host in list(self._by_host):
            kept = [r for r in self._by_host[host] if r.session is not session]
            if kept:
                self._by_host[host] = kept
            else:
                del self._by_host[host]

    def lookup(self, host: str, path: str) -> Route | None:
        for route in self._by_host.get(host, ()):
            if _matches(route.prefix, path):
                return route
        return None

    def hosts(self) -> list[str]:
        return sorted(self._by_host)

    def prefixes(self, host: str) -> list[str]:
        """The path prefixes served on ``host``, shortest first (none: an unknown host)."""
        return sorted(r.prefix for r in self._by_host.get(host, ()))
