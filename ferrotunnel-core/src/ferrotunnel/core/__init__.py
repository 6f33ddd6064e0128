"""The ferrotunnel kernel: a flow-controlled stream mux, and the Server and Client built on it.

A TCP tunnel in a few lines::

    import anyio
    from ferrotunnel.core import Client, Server

    async def main() -> None:
        async with Server(token="secret", bind="127.0.0.1:7835", tcp_bind="127.0.0.1:9000"):
            async with Client(server_addr="127.0.0.1:7835", token="secret",
                              local_addr="127.0.0.1:8000", protocol="tcp") as client:
                print(client.tunnels[0].public_url)   # tcp://127.0.0.1:9000
                await anyio.sleep_forever()

    anyio.run(main)

See ``docs/ARCHITECTURE.md`` for how the pieces fit.
"""

from ferrotunnel.protocol import GrantedTunnel, TunnelKind, TunnelRequest

from .backoff import Backoff
from .client import Client, ClientBuilder, ClientConfig, ClientStatus, Tunnel
from .errors import (
    ConfigError,
    FerroTunnelError,
    HandshakeError,
    ListenError,
    ProtocolError,
    RejectedError,
    SessionClosedError,
    StreamLimitError,
    StreamResetError,
    TlsError,
)
from .ingress import Ingress
from .net import Address
from .server import Refused, Server, ServerBuilder, ServerConfig
from .session import Role, Session, SessionConfig
from .stream import Stream, StreamAttribute
from .tls import TlsInfo

__version__ = "0.1.0"

__all__ = [
    "Address",
    "Backoff",
    "Client",
    "ClientBuilder",
    "ClientConfig",
    "ClientStatus",
    "ConfigError",
    "FerroTunnelError",
    "GrantedTunnel",
    "HandshakeError",
    "ListenError",
    "Ingress",
    "ProtocolError",
    "Refused",
    "RejectedError",
    "Role",
    "Server",
    "ServerBuilder",
    "ServerConfig",
    "Session",
    "SessionClosedError",
    "SessionConfig",
    "Stream",
    "StreamAttribute",
    "StreamLimitError",
    "StreamResetError",
    "TlsError",
    "TlsInfo",
    "Tunnel",
    "TunnelKind",
    "TunnelRequest",
    "__version__",
]
