"""The core's StreamTap, on the splice path (asyncio, uvloop) and the pump path (trio): it sees
every byte both ways, in order, then ``closed`` once — also when the local service cannot be
reached — and a client with plugins calls the lifecycle and tunnel hooks with itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream

from ferrotunnel.core import (
    Address,
    Client,
    GrantedTunnel,
    Server,
    Session,
    Stream,
    StreamResetError,
    Tunnel,
)
from ferrotunnel.core.plugin import PluginHost, StreamTap, hookimpl
from ferrotunnel.protocol import ErrorCode

from ..e2e.helpers import free_port

pytestmark = pytest.mark.anyio


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    return request.param


@dataclass
class Recording:
    to_origin: bytearray = field(default_factory=bytearray)
    to_visitor: bytearray = field(default_factory=bytearray)
    closed: list[str | None] = field(default_factory=list)
    done: anyio.Event = field(default_factory=anyio.Event)


class Tap:
    def __init__(self, rec: Recording) -> None:
        self.rec = rec

    def to_origin(self, data: bytes | memoryview) -> None:
        self.rec.to_origin += data

    def to_visitor(self, data: bytes) -> None:
        self.rec.to_visitor += data

    def closed(self, error: str | None) -> None:
        self.rec.closed.append(error)
        self.rec.done.set()


class Observer:
    def __init__(self) -> None:
        self.recordings: list[Recording] = []

    def on_stream(self, stream: Stream) -> StreamTap | None:
        rec = Recording()
        self.recordings.append(rec)
        return Tap(rec)


class LifecyclePlugin:
    def __init__(self) -> None:
        self.observer = Observer()
        self.calls: list[tuple[str, Any]] = []

    @hookimpl
    def ferrotunnel_startup(self, app: Any) -> None:
        self.calls.append(("startup", app))
        app.observe(self.observer)

    @hookimpl
    async def ferrotunnel_shutdown(self, app: Any) -> None:
        self.calls.append(("shutdown", app))

    @hookimpl
    def ferrotunnel_tunnel_registered(self, session: Session, tunnel: GrantedTunnel) -> None:
        self.calls.append(("registered", tunnel.name))

    @hookimpl
    def ferrotunnel_tunnel_closed(self, session: Session, tunnel: GrantedTunnel) -> None:
        self.calls.append(("closed", tunnel.name))


async def _upper_echo(sock: SocketStream) -> None:
    async with sock:
        try:
            while True:
                await sock.send((await sock.receive()).upper())
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass


async def test_a_tap_sees_every_byte_both_ways_then_closes() -> None:
    plugin = LifecyclePlugin()
    host = PluginHost.with_plugins([plugin], names=["lifecycle"])
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, _upper_echo)
        origin = Address("127.0.0.1", listener.extra(anyio.abc.SocketAttribute.local_port))
        async with Server(token="t", bind="127.0.0.1:0", tcp_bind="127.0.0.1:0") as server:
            tunnel = Tunnel("tapped", origin)
            client = Client(
                server_addr=str(server.control_address),
                token="t",
                tunnels=[tunnel],
                plugins=host,
                reconnect=False,
            )
            async with client:
                public = server.tcp_address
                assert public is not None
                sent = bytearray()
                async with await anyio.connect_tcp(public.host, public.port) as sock:
                    for i in range(50):
                        chunk = b"chunk %d of the conversation;" % i * 100
                        sent += chunk
                        await sock.send(chunk)
                    reply = bytearray()
                    with anyio.fail_after(10):
                        while len(reply) < len(sent):
                            reply += await sock.receive()
                    await sock.send_eof()
                    with anyio.fail_after(10):
                        await plugin.observer.recordings[0].done.wait()
                assert reply == sent.upper()
            assert ("startup", client) in plugin.calls
        tg.cancel_scope.cancel()
    (rec,) = plugin.observer.recordings
    assert rec.to_origin == sent
    assert rec.to_visitor == sent.upper()
    assert rec.closed == [None]
    names = [name for name, _ in plugin.calls]
    assert names == ["startup", "registered", "closed", "shutdown"]


async def test_a_refused_local_connect_shows_the_tap_what_arrived_then_why() -> None:
    """Nothing is relayed when the local service is down, but the tap still sees the request
    that arrived for it, then ``closed`` with the reason; the stream is reset CONNECT_ERROR
    (what the HTTP ingress answers with a 502)."""
    observer = Observer()
    dead = free_port()
    request = b"POST /orders?x=1 HTTP/1.1\r\nHost: app\r\nContent-Length: 2\r\n\r\n{}"
    async with (
        Server(token="t", bind="127.0.0.1:0", tcp_bind="127.0.0.1:0") as server,
        Client(
            server_addr=str(server.control_address),
            token="t",
            tunnels=[Tunnel("down", Address("127.0.0.1", dead))],
            stream_observers=[observer],
            reconnect=False,
        ),
    ):
        (session,) = server.sessions
        stream = session.open_stream("down")
        await stream.send(request)  # goes out with the OPEN, as the HTTP ingress sends a head
        with anyio.fail_after(10):
            with pytest.raises(StreamResetError) as reset:
                await stream.receive()
            await observer.recordings[0].done.wait()
    assert reset.value.code == ErrorCode.CONNECT_ERROR
    (rec,) = observer.recordings
    assert rec.to_origin == request
    assert rec.to_visitor == b""
    assert rec.closed == [f"the local service at 127.0.0.1:{dead} refused the connection"]


async def test_the_dashboard_steps_aside_without_asyncio(
    anyio_backend: object, caplog: pytest.LogCaptureFixture
) -> None:
    from ferrotunnel.observability.dashboard import Dashboard

    plugin = Dashboard(port=0)
    host = PluginHost.with_plugins([plugin], names=["dashboard"])
    async with Server(token="t", bind="127.0.0.1:0", tcp_bind="127.0.0.1:0") as server:
        tunnel = Tunnel("plain", Address("127.0.0.1", 9))
        async with Client(
            server_addr=str(server.control_address), token="t", tunnels=[tunnel], plugins=host
        ) as client:
            if anyio_backend == "trio":
                assert client.endpoints["dashboard"] == (
                    "unavailable: it needs --loop asyncio or uvloop"
                )
                assert any("needs asyncio" in r.getMessage() for r in caplog.records)
            else:
                assert client.endpoints["dashboard"].startswith("http://127.0.0.1:")
