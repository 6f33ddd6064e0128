"""Turning the client's command-line options into :class:`~ferrotunnel.core.Tunnel` objects."""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable

from ferrotunnel.core import Address, ConfigError, Tunnel, TunnelKind

__all__ = ["TunnelOptions", "parse_tunnel_spec"]

_SPEC = re.compile(
    r"(?P<kind>http|tcp):(?P<name>[^=/@]+)(?P<path>/[^=@]*)?(?:@(?P<port>\d+))?=(?P<local>.+)"
)


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


class TunnelOptions:
    """Settings shared by every HTTP tunnel of one client command.

    ``name(key)`` says where a setting came from in error messages (default: its flag).
    """

    def __init__(
        self,
        host_header: str,
        local_https: bool,
        local_ca: str | None,
        *,
        name: Callable[[str], str] = _flag,
    ) -> None:
        self.host_header = host_header
        self.name = name
        self.local_tls: ssl.SSLContext | None = None
        self.local_tls_http2: ssl.SSLContext | None = None  # gRPC servers want ALPN h2
        if local_https:
            try:
                self.local_tls = ssl.create_default_context(cafile=local_ca)
                self.local_tls_http2 = ssl.create_default_context(cafile=local_ca)
            except ssl.SSLError as exc:
                raise ConfigError(
                    f"{name('local_ca')} {local_ca!r}: not a PEM CA certificate "
                    f"({exc.reason or exc})"
                ) from None
            except OSError as exc:
                raise ConfigError(
                    f"{name('local_ca')} {local_ca!r}: {exc.strerror or exc}"
                ) from None
            self.local_tls_http2.set_alpn_protocols(["h2"])
        elif local_ca:
            raise ConfigError(f"{name('local_ca')} needs {name('local_https')}")

    def host_header_for(self, local: Address) -> str | None:
        if self.host_header == "preserve":
            return None
        if self.host_header == "rewrite":
            return str(local)
        return self.host_header

    def make(
        self,
        kind: TunnelKind,
        name: str,
        local: Address,
        *,
        path: str | None = None,
        remote_port: int | None = None,
    ) -> Tunnel:
        if kind is TunnelKind.TCP:
            if path:
                raise ConfigError(f"tunnel {name!r}: a path prefix needs an HTTP tunnel")
            return Tunnel(name, local, kind, remote_port)
        if remote_port is not None:
            raise ConfigError(f"tunnel {name!r}: {self.name('remote_port')} is for TCP tunnels")
        prefix = path.strip("/") if path else ""  # as the server reads it: "api" is "/api"
        return Tunnel(
            name + (f"/{prefix}" if prefix else ""),  # unique per host and path prefix
            local,
            kind,
            hostnames=(name,),
            path=path,
            host_header=self.host_header_for(local),
            local_tls=self.local_tls,
            local_tls_http2=self.local_tls_http2,
        )


def parse_tunnel_spec(spec: str, options: TunnelOptions) -> Tunnel:
    """``http:app.example.com/api=127.0.0.1:3000`` or ``tcp:db@20005=127.0.0.1:5432``."""
    match = _SPEC.fullmatch(spec.strip())
    if match is None:
        raise ConfigError(
            f"--tunnel {spec!r} must look like http:HOST[/PATH]=LOCAL or tcp:NAME[@PORT]=LOCAL"
        )
    local = Address.parse(match["local"], what=f"--tunnel {spec!r}")
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"--tunnel {spec!r}: port must be within 1..65535")
    return options.make(
        TunnelKind(match["kind"]), match["name"], local, path=match["path"], remote_port=port
    )
