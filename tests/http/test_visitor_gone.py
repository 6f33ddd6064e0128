"""A visitor whose socket is already gone when the origin ends its side must cost only its
own connection: ``write_eof`` raising ENOTCONN there used to escape into the session that
was delivering the stream's frames, and end every tunnel of the client."""

from __future__ import annotations

import asyncio
import errno
from typing import Any

import pytest

from ferrotunnel.core import Address
from ferrotunnel.http import HttpIngress, HttpIngressConfig
from ferrotunnel.http.connection import IngressConnection, _Phase

pytestmark = pytest.mark.anyio


class GoneTransport(asyncio.Transport):
    """A visitor's transport whose peer has reset the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    def write(self, data: Any) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted


async def test_the_origins_end_after_the_visitor_left_raises_nothing() -> None:
    ingress = HttpIngress(HttpIngressConfig(bind=Address("127.0.0.1", 0)))
    connection = IngressConnection(ingress)
    transport = GoneTransport()
    connection.connection_made(transport)
    connection._phase = _Phase.TUNNEL  # a WebSocket or HTTP/2 connection, passed through
    connection._on_stream_end(None)  # the origin's FIN, delivered by the session
    assert transport.aborted
    connection._linger_close()  # and the gentle close after an answer: no raise either


async def test_the_client_side_origin_gone_at_its_end_raises_nothing() -> None:
    """The same on the client: the visitor's FIN reaches a local service that has just
    reset its connection."""
    from ferrotunnel.core.relay import SpliceProtocol

    protocol = SpliceProtocol(lambda peer: None)
    transport = GoneTransport()
    protocol.transport = transport
    protocol.write_eof()
    assert transport.aborted
