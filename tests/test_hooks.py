"""Meta-tests over the hookspecs: each one is documented, and each one is really called.

A recorder plugin implements every hookspec in ``ferrotunnel.core.plugin.spec``; a server, a
client and one HTTP exchange (and the CLI's command registration) then run with it, and
every hook must have been called with the arguments its spec promises. A new hookspec
without a caller, a test or documentation fails here.
"""

from __future__ import annotations

import inspect
import re
import ssl
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import click
import pytest
import trustme

from ferrotunnel.core import (
    Address,
    Client,
    GrantedTunnel,
    Role,
    Server,
    Session,
    Stream,
    Tunnel,
    TunnelKind,
)
from ferrotunnel.core.plugin import (
    Config,
    ConfigSchema,
    ExchangeRecord,
    Identity,
    Peer,
    PluginHost,
    RequestContext,
    TcpConnection,
    TlsOptions,
    TlsPurpose,
    hookimpl,
    spec,
)
from ferrotunnel.core.plugin.config import from_mapping
from ferrotunnel.http import HttpIngress, HttpIngressConfig
from ferrotunnel.protocol import ALPN_PROTOCOL, Hello

ROOT = Path(__file__).resolve().parent.parent
HOOKS = sorted(
    name
    for name, _ in inspect.getmembers(spec, inspect.isfunction)
    if name.startswith("ferrotunnel_")
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the HTTP ingress is asyncio-only


def test_every_hookspec_has_a_docstring_with_an_example() -> None:
    assert HOOKS, "no hookspecs found"
    for name in HOOKS:
        doc = inspect.getdoc(getattr(spec, name)) or ""
        assert "Example::" in doc, f"{name} has no example in its docstring"
        assert "@hookimpl" in doc, f"{name}'s example does not show @hookimpl"


def test_every_hookspec_is_documented_for_plugin_authors() -> None:
    text = (ROOT / "docs" / "plugin-development.md").read_text()
    documented = set(re.findall(r"^### (ferrotunnel_\w+)\(", text, re.MULTILINE))
    assert documented == set(HOOKS)


@dataclass(frozen=True)
class RecorderSettings:
    greeting: str = "hi"


class Recorder:
    """Implements every hook and notes each call."""

    def __init__(self) -> None:
        self.calls: dict[str, dict[str, Any]] = {}
        self.all_calls: list[tuple[str, dict[str, Any]]] = []
        self.session_closed = anyio.Event()
        #: what the stream tap saw: to the origin, to the visitor
        self.tapped = [b"", b""]
        self.ca = trustme.CA()

    def _note(self, name: str, **kwargs: Any) -> None:
        self.calls.setdefault(name, kwargs)
        self.all_calls.append((name, kwargs))

    @hookimpl
    def ferrotunnel_add_config(self, schema: ConfigSchema) -> None:
        self._note("ferrotunnel_add_config", schema=schema)
        schema.add_table("recorder", RecorderSettings, owner="tests")

    @hookimpl
    def ferrotunnel_configure(self, config: Config) -> None:
        self._note("ferrotunnel_configure", config=config)

    @hookimpl
    def ferrotunnel_register_commands(self, cli: Any) -> None:
        self._note("ferrotunnel_register_commands", cli=cli)

    @hookimpl
    def ferrotunnel_ssl_context(self, options: TlsOptions) -> ssl.SSLContext:
        self._note(f"ssl_context:{options.purpose}", options=options)
        self._note("ferrotunnel_ssl_context", options=options)
        if options.purpose is TlsPurpose.SERVER:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ca.issue_cert("127.0.0.1").configure_cert(context)
        else:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
            self.ca.configure_trust(context)
        context.set_alpn_protocols([ALPN_PROTOCOL])
        return context

    @hookimpl
    def ferrotunnel_authenticators(self, config: Config) -> list[Any]:
        recorder = self

        class Accept:
            async def authenticate(self, hello: Any, peer: Any) -> Identity | None:
                recorder._note("authenticate", hello=hello)
                return Identity("recorded") if hello.token == "t" else None

        self._note("ferrotunnel_authenticators", config=config)
        return [Accept()]

    @hookimpl
    def ferrotunnel_http_middlewares(self, config: Config) -> list[Any]:
        recorder = self

        class Middleware:
            def on_request(self, request: Any, ctx: RequestContext) -> None:
                recorder._note("on_request", request=request, ctx=ctx)

            def on_response(self, response: Any, ctx: RequestContext) -> None:
                response.set_header("X-Greeting", config.table("recorder").greeting)

            def on_complete(self, record: ExchangeRecord, ctx: RequestContext) -> None:
                recorder._note("on_complete", record=record)

        self._note("ferrotunnel_http_middlewares", config=config)
        return [Middleware()]

    @hookimpl
    def ferrotunnel_tcp_middlewares(self, config: Config) -> list[Any]:
        self._note("ferrotunnel_tcp_middlewares", config=config)
        return []

    @hookimpl
    def ferrotunnel_stream_observers(self, config: Config) -> list[Any]:
        recorder = self

        class Tap:
            def to_origin(self, data: bytes | memoryview) -> None:
                recorder.tapped[0] += data

            def to_visitor(self, data: bytes) -> None:
                recorder.tapped[1] += data

            def closed(self, error: str | None) -> None:
                recorder._note("tap_closed", error=error)

        class Observer:
            def on_stream(self, stream: Stream) -> Tap:
                recorder._note("on_stream", stream=stream)
                stream.add_done_callback(lambda s: recorder._note("stream_done", stream=s))
                return Tap()

        self._note("ferrotunnel_stream_observers", config=config)
        return [Observer()]

    @hookimpl
    async def ferrotunnel_startup(self, app: Any) -> None:
        await anyio.lowlevel.checkpoint()
        self._note("ferrotunnel_startup", app=app)

    @hookimpl
    async def ferrotunnel_shutdown(self, app: Any) -> None:
        self._note("ferrotunnel_shutdown", app=app)

    @hookimpl
    def ferrotunnel_session_opened(self, session: Session, identity: Identity) -> None:
        self._note("ferrotunnel_session_opened", session=session, identity=identity)

    @hookimpl
    def ferrotunnel_handshake_done(
        self, session: Session, hello: Any, failure: str | None, duration: float
    ) -> None:
        self._note(
            "ferrotunnel_handshake_done",
            role=session.role,
            hello=hello,
            failure=failure,
            duration=duration,
        )

    @hookimpl
    def ferrotunnel_session_closed(self, session: Session) -> None:
        self._note("ferrotunnel_session_closed", session=session)
        self.session_closed.set()

    @hookimpl
    def ferrotunnel_tunnel_registered(self, session: Session, tunnel: GrantedTunnel) -> None:
        self._note("ferrotunnel_tunnel_registered", tunnel=tunnel)

    @hookimpl
    def ferrotunnel_tunnel_closed(self, session: Session, tunnel: GrantedTunnel) -> None:
        self._note("ferrotunnel_tunnel_closed", tunnel=tunnel)

    @hookimpl
    def ferrotunnel_exchange_complete(self, record: ExchangeRecord) -> None:
        self._note("ferrotunnel_exchange_complete", record=record)


async def _origin(sock: Any) -> None:
    async with sock:
        head = b""
        while b"\r\n\r\n" not in head:
            head += await sock.receive()
        await sock.send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


async def test_every_hook_is_called_through_a_real_tunnel() -> None:
    recorder = Recorder()
    host = PluginHost.with_plugins([recorder], names=["recorder"])
    config = from_mapping(host.schema(), {"recorder": {"greeting": "hello"}})
    host.configure(config)
    host.register_commands(click.Group())
    ingress = HttpIngress(
        HttpIngressConfig(bind=Address("127.0.0.1", 0)),
        middlewares=host.http_middlewares(config),
        plugins=host,
    )
    async with anyio.create_task_group() as tg:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        origin_port = listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.start_soon(listener.serve, _origin)
        server = Server(
            bind="127.0.0.1:0",
            ssl_context=host.ssl_context(TlsOptions(TlsPurpose.SERVER)),
            authenticators=host.authenticators(config),
            tcp_middlewares=host.tcp_middlewares(config),
            ingresses=[ingress],
            plugins=host,
        )
        async with server:
            tunnel = Tunnel("rec.localhost", Address("127.0.0.1", origin_port), TunnelKind.HTTP)
            async with Client(
                server_addr=str(server.control_address),
                token="t",
                tunnels=[tunnel],
                plugins=host,
                stream_observers=host.stream_observers(config),
                ssl_context=host.ssl_context(TlsOptions(TlsPurpose.CLIENT)),
            ) as client:
                assert client.session is not None
                assert client.session.tls is not None
                assert client.session.tls.alpn == ALPN_PROTOCOL
                assert ingress.address is not None
                async with await anyio.connect_tcp("127.0.0.1", ingress.address.port) as sock:
                    await sock.send(b"GET /x HTTP/1.1\r\nHost: rec.localhost\r\n\r\n")
                    reply = b""
                    with anyio.fail_after(5):
                        while not reply.endswith(b"ok"):
                            reply += await sock.receive()
                assert b"X-Greeting: hello" in reply
            with anyio.fail_after(5):
                await recorder.session_closed.wait()
        tg.cancel_scope.cancel()
    await listener.aclose()

    missing = set(HOOKS) - set(recorder.calls)
    assert not missing, f"hooks never called: {sorted(missing)}"
    assert recorder.calls["ferrotunnel_session_opened"]["identity"] == Identity("recorded")
    assert recorder.calls["ferrotunnel_tunnel_registered"]["tunnel"].name == "rec.localhost"
    record: ExchangeRecord = recorder.calls["ferrotunnel_exchange_complete"]["record"]
    assert (record.method, record.path, record.status, record.host) == (
        "GET",
        "/x",
        200,
        "rec.localhost",
    )
    assert record.bytes_out > 0
    assert recorder.calls["on_request"]["ctx"].tunnel == "rec.localhost"
    assert isinstance(recorder.calls["ferrotunnel_startup"]["app"], Server)
    assert "ssl_context:server" in recorder.calls
    assert "ssl_context:client" in recorder.calls
    handshakes = [kw for name, kw in recorder.all_calls if name == "ferrotunnel_handshake_done"]
    assert {kw["role"] for kw in handshakes} == {Role.SERVER, Role.CLIENT}
    for kw in handshakes:
        assert kw["failure"] is None
        assert kw["hello"].client_id
        assert 0 <= kw["duration"] < 5
    assert recorder.calls["on_stream"]["stream"].tunnel == "rec.localhost"
    assert recorder.calls["stream_done"]["stream"].done
    assert recorder.tapped[0].startswith(b"GET /x HTTP/1.1\r\n")
    assert recorder.tapped[1].endswith(b"\r\n\r\nok")
    assert recorder.calls["tap_closed"]["error"] is None


def test_tcp_connection_record_is_what_tcp_middlewares_get() -> None:
    conn = TcpConnection("db", 20000, "203.0.113.9", 5555)
    assert (conn.tunnel, conn.port, conn.visitor_ip, conn.visitor_port) == (
        "db",
        20000,
        "203.0.113.9",
        5555,
    )


def _example(hook: str) -> str:
    """The code of a hookspec's docstring example."""
    doc = inspect.getdoc(getattr(spec, hook)) or ""
    return textwrap.dedent(doc.split("Example::", 1)[1])


async def test_the_authenticators_example_runs() -> None:
    """``peer`` is a :class:`Peer` (``peer.host``), not a tuple: the example must use it so."""
    namespace: dict[str, Any] = {"Identity": Identity, "hookimpl": hookimpl}
    exec(_example("ferrotunnel_authenticators"), namespace)
    (authenticator,) = namespace["ferrotunnel_authenticators"](config=None)
    hello = Hello(versions=(1,), client_id="c")
    office = await authenticator.authenticate(hello, Peer("10.0.0.5", 40000))
    assert office == Identity("office")
    assert await authenticator.authenticate(hello, Peer("10.0.0.6", 40000)) is None
