"""Addresses and listeners, with an asyncio fast path and a portable anyio path."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import anyio
from anyio.abc import SocketStream, TaskGroup

from .errors import ConfigError, ListenError

__all__ = ["Address", "Listener", "listen", "listening_as", "running_asyncio_loop"]


@dataclass(frozen=True, slots=True)
class Address:
    """A host and port, parsed from ``host:port``, ``[v6]:port`` or ``:port``."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, what: str = "address", default_host: str = "") -> Address:
        text = text.strip()
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ConfigError(f"{what} {text!r} must be HOST:PORT")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise ConfigError(f"{what} {text!r}: write IPv6 addresses as [ADDR]:PORT")
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ConfigError(f"{what} {text!r}: port must be a number within 0..65535")
        return cls(host or default_host, int(port_text))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or None under trio (which gets the portable path)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


@contextlib.contextmanager
def listening_as(listener: str, address: Address) -> Iterator[None]:
    """An OSError within (binding ``address``) becomes a :class:`ListenError` naming
    ``listener`` (``"control plane"``, ``"HTTP ingress"``, ...)."""
    try:
        yield
    except ListenError:
        raise
    except OSError as exc:
        raise ListenError(listener, str(address), exc) from exc


class Listener:
    """A bound TCP listener; ``address`` is what it really bound (port 0 resolved)."""

    def __init__(self, address: Address, close: Callable[[], Awaitable[None]]) -> None:
        self.address = address
        self._close = close

    async def aclose(self) -> None:
        await self._close()


async def listen(
    address: Address,
    task_group: TaskGroup,
    *,
    protocol_factory: Callable[[], asyncio.Protocol],
    handler: Callable[[SocketStream], Awaitable[None]],
    ssl_context: ssl.SSLContext | None = None,
) -> Listener:
    """Listen on ``address``. On asyncio each connection gets ``protocol_factory()``; on
    other backends ``handler(stream)`` runs in a new task of ``task_group``."""
    host = address.host or None
    loop = running_asyncio_loop()
    if loop is not None:
        server = await loop.create_server(
            protocol_factory, host, address.port, backlog=4096, reuse_address=True, ssl=ssl_context
        )
        sockname = server.sockets[0].getsockname()

        async def close_server() -> None:
            server.close()

        return Listener(Address(address.host or str(sockname[0]), sockname[1]), close_server)

    listener = await anyio.create_tcp_listener(
        local_host=host, local_port=address.port, reuse_port=False, backlog=4096
    )
    sockname = listener.extra(anyio.abc.SocketAttribute.local_address)
    scope = anyio.CancelScope()
    closed = anyio.Event()

    async def serve() -> None:
        try:
            with scope:
                await listener.serve(handler, task_group)
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()  # here, not under a pending accept()
            closed.set()

    task_group.start_soon(serve)

    async def close_listener() -> None:
        scope.cancel()
        await closed.wait()

    port = sockname[1] if isinstance(sockname, tuple) else address.port
    return Listener(Address(address.host or str(sockname[0]), int(port)), close_listener)
