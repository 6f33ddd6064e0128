"""``ferrotunnel.core.testing``, exactly as docs/plugin-development.md teaches it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import SocketStream

from ferrotunnel.core import Stream
from ferrotunnel.core.plugin import (
    Config,
    ConfigSchema,
    HttpResponse,
    RequestContext,
    TcpConnection,
    hookimpl,
)
from ferrotunnel.core.testing import plugin_host, running_tunnel
from ferrotunnel.http.testing import HttpOrigin, running_http_tunnel


@dataclass(frozen=True)
class GateSettings:
    refuse: str = "nobody"


class Gate:
    """A plugin with a config table and a TCP middleware."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    def ferrotunnel_add_config(self, schema: Any) -> None:
        schema.add_table("gate", GateSettings, owner="tests")

    @hookimpl
    def ferrotunnel_tcp_middlewares(self, config: Any) -> list[Any]:
        gate = self
        refuse: str = config.table("gate").refuse

        class Middleware:
            def on_connect(self, conn: TcpConnection) -> bool:
                gate.seen.append(conn.visitor_ip)
                return conn.visitor_ip != refuse

        return [Middleware()]


async def echo(sock: SocketStream) -> None:
    async with sock:
        try:
            async for chunk in sock:
                await sock.send(chunk)
        except anyio.BrokenResourceError:
            pass


@pytest.mark.anyio
async def test_running_tunnel_with_a_chosen_plugin() -> None:
    gate = Gate()
    host = plugin_host(gate, config={"gate": {"refuse": "203.0.113.1"}})
    async with running_tunnel(echo, plugins=host) as tunnel:
        assert tunnel.public is not None
        async with await anyio.connect_tcp(*tunnel.public) as sock:
            await sock.send(b"ping")
            with anyio.fail_after(5):
                assert await sock.receive() == b"ping"
    assert gate.seen == ["127.0.0.1"]  # the plugin's middleware saw the visitor


def test_a_plugin_config_typo_is_refused() -> None:
    from ferrotunnel.core import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'refuse'"):
        plugin_host(Gate(), config={"gate": {"refuses": "x"}})


class Recorder:
    """What the taps of a client-side stream observer saw."""

    def __init__(self) -> None:
        self.to_origin = bytearray()
        self.to_visitor = bytearray()
        self.closed: list[str | None] = []


class Tap:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def to_origin(self, data: bytes | memoryview) -> None:
        self.recorder.to_origin += data

    def to_visitor(self, data: bytes) -> None:
        self.recorder.to_visitor += data

    def closed(self, error: str | None) -> None:
        self.recorder.closed.append(error)


class Observer:
    def __init__(self) -> None:
        self.recorder = Recorder()

    def on_stream(self, stream: Stream) -> Tap:
        return Tap(self.recorder)


class ClientEvents:
    """A client-side plugin: the handshake hook fires on the client too."""

    def __init__(self) -> None:
        self.failures: list[str | None] = []

    @hookimpl
    def ferrotunnel_handshake_done(self, failure: str | None) -> None:
        self.failures.append(failure)


@pytest.mark.anyio
async def test_running_tunnel_gives_the_client_its_plugins_and_observers() -> None:
    observer, events = Observer(), ClientEvents()
    client_host = plugin_host(events)
    async with running_tunnel(
        echo, client_plugins=client_host, stream_observers=[observer]
    ) as tunnel:
        assert tunnel.public is not None
        async with await anyio.connect_tcp(*tunnel.public) as sock:
            await sock.send(b"ping")
            with anyio.fail_after(5):
                assert await sock.receive() == b"ping"
    seen = observer.recorder
    assert (bytes(seen.to_origin), bytes(seen.to_visitor)) == (b"ping", b"ping")
    assert events.failures == [None]  # the client's successful handshake


@dataclass(frozen=True)
class HelloSettings:
    header: str = "X-Hello"
    greeting: str = "world"


class Greeter:
    def __init__(self, settings: HelloSettings) -> None:
        self.settings = settings

    def on_response(self, response: HttpResponse, ctx: RequestContext) -> None:
        response.set_header(self.settings.header, self.settings.greeting)


class HelloPlugin:
    @hookimpl
    def ferrotunnel_add_config(self, schema: ConfigSchema) -> None:
        schema.add_table("hello", HelloSettings, owner="tests")

    @hookimpl
    def ferrotunnel_http_middlewares(self, config: Config) -> list[Greeter]:
        return [Greeter(config.get(HelloSettings))]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the HTTP ingress runs on asyncio
async def test_the_http_recipe_of_the_plugin_guide() -> None:
    """docs/plugin-development.md, "Testing a plugin": an HTTP middleware through a tunnel."""
    host = plugin_host(HelloPlugin(), config={"hello": {"greeting": "hi"}})
    origin = HttpOrigin(body=b"ok")
    async with (
        running_http_tunnel(origin, plugins=host) as tunnel,
        httpx.AsyncClient(base_url=tunnel.url, headers=tunnel.headers) as http,
    ):
        response = await http.get("/")
    assert response.headers["x-hello"] == "hi"
    assert origin.requests[0].header("host") == "app.localhost"
