"""Every built-in plugin through a real tunnel: server, client and origin in this process,
visitors on real loopback sockets.

Each test builds a :class:`~ferrotunnel.core.plugin.PluginHost` with the plugins it needs
(the built-in modules, or test plugins), configured from the tables a TOML file would give,
and wires it exactly as ``ferrotunnel server`` does: authenticators and TCP middlewares to the
:class:`~ferrotunnel.core.Server`, HTTP middlewares to the
:class:`~ferrotunnel.http.HttpIngress`. Visitors are httpx clients or raw sockets.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib
import json
import logging
import re
import socket
import struct
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import hpack
import httpx
import pytest

from ferrotunnel.core import (
    Address,
    Client,
    RejectedError,
    Server,
    SessionConfig,
    Tunnel,
    TunnelKind,
)
from ferrotunnel.core.plugin import (
    ExchangeRecord,
    HttpRequest,
    HttpResponse,
    PluginHost,
    Reply,
    RequestContext,
    hookimpl,
    load_plugins,
    load_toml,
)
from ferrotunnel.core.plugin.config import from_mapping
from ferrotunnel.http import HttpIngress, HttpIngressConfig
from ferrotunnel.http.h2c import EMPTY_SETTINGS, PREFACE
from ferrotunnel.plugins import BUILTINS
from ferrotunnel.protocol import RejectCode

from ..http.harness import (
    Handler,
    Origin,
    OriginRequest,
    OriginResponse,
    RawOrigin,
    ResponseReader,
    curl,
    curl_resolve,
    h2_frame,
    read_until_close,
    request_bytes,
    standard_handler,
    status_of,
    visitor,
    wait_until,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

HOST = "127.0.0.1"
TOKEN = "plugin-e2e-token"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the HTTP ingress is asyncio-only


# ---------------------------------------------------------------------------- the stack


def builtin(name: str) -> ModuleType:
    """The module of built-in plugin ``name`` (``rate-limit`` ...)."""
    return importlib.import_module(BUILTINS[name])


def host_with(
    plugins: Mapping[str, object], config: Mapping[str, object] | None = None
) -> PluginHost:
    """A host with exactly ``plugins`` (name → module or object), configured from ``config``."""
    host = PluginHost.with_plugins(list(plugins.values()), names=list(plugins))
    host.configure(from_mapping(host.schema(), config or {}))
    return host


def builtins(*names: str, config: Mapping[str, object] | None = None) -> PluginHost:
    return host_with({name: builtin(name) for name in names}, config)


def http_tunnel(host: str, port: int) -> Tunnel:
    return Tunnel(host, Address(HOST, port), TunnelKind.HTTP, hostnames=(host,))


def tcp_tunnel(name: str, port: int) -> Tunnel:
    return Tunnel(name, Address(HOST, port), TunnelKind.TCP)


@dataclass
class Stack:
    server: Server
    ingress: HttpIngress
    clients: list[Client] = field(default_factory=list)

    @property
    def http_port(self) -> int:
        assert self.ingress.address is not None
        return self.ingress.address.port

    @property
    def tcp_port(self) -> int:
        address = self.server.tcp_address
        assert address is not None
        return address.port

    def visitor(self, host: str, **options: Any) -> httpx.AsyncClient:
        """An HTTP client whose requests reach ``host`` through the ingress."""
        options.setdefault("timeout", 10.0)
        return httpx.AsyncClient(
            base_url=f"http://{HOST}:{self.http_port}",
            headers={"Host": host},
            trust_env=False,
            **options,
        )

    def connect(self, *tunnels: Tunnel, token: str = TOKEN) -> Client:
        """A client for ``tunnels`` (enter it with ``async with``)."""
        return Client(
            server_addr=str(self.server.control_address),
            token=token,
            tunnels=list(tunnels),
            reconnect=False,
            drain_timeout=0.25,
        )


@asynccontextmanager
async def plugin_stack(
    host: PluginHost,
    *tunnels: Tunnel,
    server_token: str | None = TOKEN,
    client_token: str = TOKEN,
    tcp: bool = False,
    server_session: SessionConfig | None = None,
) -> AsyncIterator[Stack]:
    """A server wired to ``host``'s plugins (as ``ferrotunnel server`` wires them), with an
    HTTP ingress, a TCP ingress if ``tcp``, and one connected client serving ``tunnels``
    (sessions configured by ``server_session``)."""
    config = host.config
    assert config is not None
    ingress = HttpIngress(
        HttpIngressConfig(bind=Address(HOST, 0)),
        middlewares=host.http_middlewares(config),
        plugins=host,
    )
    server = Server(
        token=server_token,
        bind=f"{HOST}:0",
        tcp_bind=f"{HOST}:0" if tcp else None,
        ingresses=[ingress],
        authenticators=host.authenticators(config),
        tcp_middlewares=host.tcp_middlewares(config),
        plugins=host,
        drain_timeout=0.25,
        session=server_session or SessionConfig(),
    )
    async with server, AsyncExitStack() as stack:
        result = Stack(server, ingress)
        if tunnels:
            client = result.connect(*tunnels, token=client_token)
            result.clients.append(await stack.enter_async_context(client))
        yield result
        for conn in list(ingress.connections):  # visitors first: nobody waits for them
            conn._close()


class EchoOrigin:
    """A TCP echo service on 127.0.0.1:0 that counts its connections."""

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> EchoOrigin:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        except OSError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


async def tcp_echo(port: int, data: bytes, source: str = HOST) -> bytes:
    """Send ``data`` to the TCP ingress from ``source``; what came back before ``len(data)``
    bytes arrived or the connection ended (b"" for a refused visitor)."""
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
    try:
        writer.write(data)
        received = b""
        with anyio.fail_after(5):
            while len(received) < len(data):
                try:
                    chunk = await reader.read(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                received += chunk
        return received
    finally:
        writer.close()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def echoed(response: httpx.Response) -> dict[str, Any]:
    """The request as the standard origin echoed it: header names lower case, the values of
    a repeated header joined with ", " (what HTTP defines them to mean)."""
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    headers: dict[str, str] = {}
    for name, value in body["headers"]:
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    body["headers"] = headers
    return body


def failing_origin(state: dict[str, bool], name: str = "origin") -> Handler:
    """An origin handler answering 503 while ``state["failing"]``, else the standard way."""
    standard = standard_handler(name)

    async def handle(request: OriginRequest) -> OriginResponse:
        if state["failing"]:
            return OriginResponse(503, [("x-origin", name)], b"origin says no\n")
        return await standard(request)

    return handle


BREAKER_BODY = "the tunnel's origin is failing"


# ---------------------------------------------------------------------------- 1. rate-limit


async def test_rate_limit_429_after_the_burst_then_200_after_the_refill() -> None:
    rate, burst = 10.0, 3
    host = builtins("rate-limit", config={"rate_limit": {"per_ip": {"rate": rate, "burst": burst}}})
    async with Origin() as origin, Origin(name="other") as other:
        tunnels = [
            http_tunnel("app.localhost", origin.port),
            http_tunnel("b.localhost", other.port),
        ]
        async with plugin_stack(host, *tunnels) as stack, stack.visitor("app.localhost") as web:
            # a full bucket: the burst always passes
            for _ in range(burst):
                assert (await web.get("/")).status_code == 200
            passed = burst
            # then (within a few requests, however slow this machine is) 429
            refused: httpx.Response | None = None
            for _ in range(20):
                response = await web.get("/")
                if response.status_code == 429:
                    refused = response
                    break
                assert response.status_code == 200
                passed += 1
            assert refused is not None, "never rate limited"
            assert refused.headers["Retry-After"] == "1"  # 1/rate rounded up
            assert refused.text == "too many requests\n"
            # refused requests never reach the origin, and cost no token: however many were
            # refused, one token is back 1/rate seconds later
            for _ in range(5):
                response = await web.get("/")
                assert response.status_code in (200, 429)
                passed += response.status_code == 200
            assert len(origin.requests) == passed
            # buckets are per tunnel: the other tunnel is not limited
            async with stack.visitor("b.localhost") as web_b:
                assert (await web_b.get("/")).status_code == 200
            await anyio.sleep(1.5 / rate)
            assert (await web.get("/")).status_code == 200
            assert len(origin.requests) == passed + 1


# ---------------------------------------------------------------------------- 2. circuit-breaker


async def test_circuit_breaker_opens_fails_fast_then_half_opens_and_closes() -> None:
    threshold, open_seconds = 3, 0.5
    host = builtins(
        "circuit-breaker",
        config={
            "circuit_breaker": {
                "tunnels": {"*": {"failure_threshold": threshold, "open_seconds": open_seconds}}
            }
        },
    )
    state = {"failing": True}
    async with (
        Origin(failing_origin(state)) as origin,
        plugin_stack(host, http_tunnel("app.localhost", origin.port)) as stack,
        stack.visitor("app.localhost") as web,
    ):
        # closed: the origin's 503s pass through and count
        for i in range(threshold):
            response = await web.get(f"/fail/{i}")
            assert response.status_code == 503
            assert response.headers["x-origin"] == "origin"
        assert len(origin.requests) == threshold
        # open: 503 at once, from the breaker, and the origin sees nothing
        for _ in range(3):
            response = await web.get("/while-open")
            assert response.status_code == 503
            assert BREAKER_BODY in response.text
            assert response.headers["Retry-After"] == "1"
            assert "x-origin" not in response.headers
        assert len(origin.requests) == threshold
        # half-open after open_seconds: a failed probe opens it again
        await anyio.sleep(open_seconds + 0.05)
        probe = await web.get("/probe-1")
        assert probe.status_code == 503
        assert probe.headers["x-origin"] == "origin"
        assert len(origin.requests) == threshold + 1
        again = await web.get("/while-open-again")
        assert again.status_code == 503
        assert BREAKER_BODY in again.text
        assert len(origin.requests) == threshold + 1
        # the origin recovers: the next probe closes the circuit
        state["failing"] = False
        await anyio.sleep(open_seconds + 0.05)
        assert (await web.get("/probe-2")).status_code == 200
        for i in range(3):
            assert (await web.get(f"/ok/{i}")).status_code == 200
        assert len(origin.requests) == threshold + 5


async def test_circuit_breaker_a_visitor_who_left_is_no_outcome() -> None:
    """An exchange whose visitor left before the origin answered (status 0) says nothing
    about the origin: it neither resets the failure count nor closes a half-open circuit."""
    open_seconds = 0.3
    recorder = Recorder()
    host = host_with(
        {"circuit-breaker": builtin("circuit-breaker"), "recorder": MiddlewarePlugin(recorder)},
        {
            "circuit_breaker": {
                "tunnels": {"*": {"failure_threshold": 2, "open_seconds": open_seconds}}
            }
        },
    )
    state = {"failing": True, "hang": False}
    release = anyio.Event()
    failing = failing_origin(state)

    async def handle(request: OriginRequest) -> OriginResponse:
        if state["hang"]:
            await release.wait()
        return await failing(request)

    async def leave_while_the_origin_thinks(stack: Stack, origin: Origin) -> None:
        state["hang"] = True
        seen, done = len(origin.requests), len(recorder.records)
        async with visitor(stack.http_port) as (_, writer):
            writer.write(request_bytes("GET", "/hang", "app.localhost"))
            await writer.drain()
            await wait_until(lambda: len(origin.requests) > seen, what="the origin got it")
            # reset, not FIN (a FIN could be a half-close, whose request is still answered)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await wait_until(lambda: len(recorder.records) > done, what="the exchange ended")
        assert recorder.records[-1].status == 0
        state["hang"] = False

    async with (
        Origin(handle) as origin,
        plugin_stack(host, http_tunnel("app.localhost", origin.port)) as stack,
        stack.visitor("app.localhost") as web,
    ):
        [breaker] = [m for m in stack.ingress.middlewares if hasattr(m, "state")]
        assert (await web.get("/fail-1")).status_code == 503
        await leave_while_the_origin_thinks(stack, origin)
        assert (await web.get("/fail-2")).status_code == 503  # the 2nd failure in a row
        refused = await web.get("/refused")
        assert BREAKER_BODY in refused.text
        assert [r.path for r in origin.requests] == ["/fail-1", "/hang", "/fail-2"]
        # half-open: a probe whose visitor left does not close the circuit
        await anyio.sleep(open_seconds + 0.05)
        await leave_while_the_origin_thinks(stack, origin)
        assert breaker.state("app.localhost", "app.localhost").value == "half-open"
        probe = await web.get("/probe")  # the origin still fails: open again
        assert probe.headers["x-origin"] == "origin"
        assert BREAKER_BODY in (await web.get("/refused-again")).text
        assert [r.path for r in origin.requests][-2:] == ["/hang", "/probe"]
        release.set()


async def test_circuit_breaker_counts_the_ingress_502_of_a_dead_origin() -> None:
    host = builtins(
        "circuit-breaker",
        config={"circuit_breaker": {"tunnels": {"down.localhost": {"failure_threshold": 2}}}},
    )
    with socket.socket() as probe:  # a port nobody listens on any more
        probe.bind((HOST, 0))
        dead_port = probe.getsockname()[1]
    async with Origin() as origin:
        tunnels = [
            http_tunnel("down.localhost", dead_port),
            http_tunnel("up.localhost", origin.port),
        ]
        async with plugin_stack(host, *tunnels) as stack, stack.visitor("down.localhost") as web:
            for _ in range(2):
                response = await web.get("/")
                assert response.status_code == 502, response.text
                assert BREAKER_BODY not in response.text
            response = await web.get("/")
            assert response.status_code == 503
            assert BREAKER_BODY in response.text
            assert int(response.headers["Retry-After"]) >= 29  # open_seconds defaults to 30
            # the other tunnel has no breaker and its origin is fine
            async with stack.visitor("up.localhost") as up:
                assert (await up.get("/")).status_code == 200


async def test_circuit_breaker_ignores_the_ingress_503_of_a_tunnel_at_its_stream_limit() -> None:
    """The ingress's own 503 for a tunnel serving as many streams as it may never reached
    the origin: it is no failure of the origin's."""
    host = builtins(
        "circuit-breaker", config={"circuit_breaker": {"tunnels": {"*": {"failure_threshold": 1}}}}
    )
    release = anyio.Event()
    standard = standard_handler("origin")

    async def handle(request: OriginRequest) -> OriginResponse:
        if request.path == "/hang":
            await release.wait()
        return await standard(request)

    async with (
        Origin(handle) as origin,
        plugin_stack(
            host,
            http_tunnel("app.localhost", origin.port),
            server_session=SessionConfig(max_streams=1),
        ) as stack,
        stack.visitor("app.localhost") as web,
        visitor(stack.http_port) as (reader, writer),
    ):
        writer.write(request_bytes("GET", "/hang", "app.localhost", "Connection: close"))
        await writer.drain()
        await wait_until(lambda: len(origin.requests) == 1, what="the origin got it")
        busy = await web.get("/busy")
        assert busy.status_code == 503
        assert "try again shortly" in busy.text
        release.set()
        assert status_of(await read_until_close(reader, within=5)) == 200
        assert (await web.get("/after")).status_code == 200  # the circuit stayed closed
    assert [r.path for r in origin.requests] == ["/hang", "/after"]


class Maintenance:
    """A third-party middleware answering ``503`` itself for paths under ``/maintenance``,
    without marking ``ctx.state`` (the kernel does)."""

    def on_request(self, request: HttpRequest, ctx: RequestContext) -> Reply | None:
        if request.path.startswith("/maintenance"):
            return Reply(503, "down for maintenance\n")
        return None


async def test_circuit_breaker_ignores_another_plugins_replies() -> None:
    """Another plugin's 503s are not the origin's: they never open the circuit, and the
    records name that plugin as the one that answered."""
    recorder = Recorder()
    host = host_with(
        {
            "maintenance": MiddlewarePlugin(Maintenance()),
            "circuit-breaker": builtin("circuit-breaker"),
            "recorder": MiddlewarePlugin(recorder),
        },
        {"circuit_breaker": {"tunnels": {"*": {"failure_threshold": 2}}}},
    )
    async with (
        Origin() as origin,
        plugin_stack(host, http_tunnel("app.localhost", origin.port)) as stack,
        stack.visitor("app.localhost") as web,
    ):
        for _ in range(4):
            response = await web.get("/maintenance")
            assert response.status_code == 503
            assert response.text == "down for maintenance\n"
        assert (await web.get("/")).status_code == 200  # still closed
        assert [r.path for r in origin.requests] == ["/"]
    assert [r.replied_by for r in recorder.records] == ["maintenance"] * 4 + ["origin"]


# ---------------------------------------------------------------------------- 3. ip-filter


async def test_ip_filter_http_deny_and_allow_lists() -> None:
    host = builtins(
        "ip-filter",
        config={
            "ip_filter": {
                "tunnels": {
                    "denied.localhost": {"deny": ["127.0.0.0/8"]},
                    "allowed.localhost": {"allow": ["10.0.0.0/8", "127.0.0.1"]},
                    "elsewhere.localhost": {"allow": ["10.0.0.0/8"]},
                    # deny wins over allow
                    "both.localhost": {"allow": ["127.0.0.1"], "deny": ["127.0.0.1/32"]},
                }
            }
        },
    )
    names = ["denied", "allowed", "elsewhere", "both", "open"]
    async with Origin() as origin:
        tunnels = [http_tunnel(f"{n}.localhost", origin.port) for n in names]
        async with plugin_stack(host, *tunnels) as stack:
            statuses = {}
            for name in names:
                async with stack.visitor(f"{name}.localhost") as web:
                    response = await web.get(f"/{name}")
                    statuses[name] = response.status_code
                    if response.status_code == 403:
                        assert response.text == "forbidden\n"
            assert statuses == {
                "denied": 403,
                "allowed": 200,
                "elsewhere": 403,
                "both": 403,
                "open": 200,
            }
            assert sorted(r.path for r in origin.requests) == ["/allowed", "/open"]


async def test_ip_filter_tcp_refuses_denied_visitors() -> None:
    payload = b"hello through the tunnel\n"
    async with EchoOrigin() as echo:
        # everything on loopback denied: the visitor is accepted, then closed without data
        deny = builtins(
            "ip-filter", config={"ip_filter": {"tunnels": {"db": {"deny": ["127.0.0.0/8"]}}}}
        )
        async with plugin_stack(deny, tcp_tunnel("db", echo.port), tcp=True) as stack:
            assert await tcp_echo(stack.tcp_port, payload) == b""
        assert echo.connections == 0
        # an allow list with 127.0.0.1: it passes, another loopback address does not
        allow = builtins(
            "ip-filter", config={"ip_filter": {"tunnels": {"db": {"allow": ["127.0.0.1"]}}}}
        )
        async with plugin_stack(allow, tcp_tunnel("db", echo.port), tcp=True) as stack:
            assert await tcp_echo(stack.tcp_port, payload) == payload
            assert echo.connections == 1
            assert await tcp_echo(stack.tcp_port, payload, source="127.0.0.2") == b""
            assert echo.connections == 1
            assert await tcp_echo(stack.tcp_port, payload) == payload  # still serving
        assert echo.connections == 2


async def read_h2_answer(reader: asyncio.StreamReader) -> tuple[dict[str, str], bytes]:
    """An HTTP/2 answer the ingress gave itself: the headers of stream 1 and its body, read
    until the connection ends (frames on stream 0 are skipped)."""
    headers: dict[str, str] = {}
    body = b""
    data = await read_until_close(reader, within=5)
    pos = 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        ftype, stream = data[pos + 3], int.from_bytes(data[pos + 5 : pos + 9], "big")
        payload = data[pos + 9 : pos + 9 + length]
        pos += 9 + length
        if stream == 1 and ftype == 0x1:
            headers = {k.decode(): v.decode() for k, v in hpack.Decoder().decode(payload, raw=True)}
        elif stream == 1 and ftype == 0x0:
            body += payload
    return headers, body


async def test_http2_prior_knowledge_does_not_get_past_the_plugins() -> None:
    """An HTTP/2 (h2c) connection is passed through to the origin undecoded, but not before
    the plugins have seen its first request: a visitor they refuse gets their answer, as an
    HTTP/2 response, and the origin sees nothing."""
    host = builtins(
        "ip-filter",
        "basic-auth",
        config={
            "ip_filter": {"tunnels": {"denied.localhost": {"deny": ["127.0.0.0/8"]}}},
            "basic_auth": {"tunnels": {"secure.localhost": {"users": ["alice:s3cret"]}}},
        },
    )
    received: dict[int, bytes] = {}

    async def h2_origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(received)
        received[index] = b""
        writer.write(h2_frame(0x4, 0x0, 0, b""))  # its SETTINGS
        while data := await reader.read(65536):
            received[index] += data

    def arrived(index: int, data: bytes) -> bool:
        return received.get(index) == data

    def first_request(authority: str, *headers: tuple[str, str]) -> bytes:
        pseudo = [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/h2"),
            (":authority", authority),
        ]
        block = hpack.Encoder().encode([*pseudo, *headers])
        return PREFACE + h2_frame(0x4, 0x0, 0, b"") + h2_frame(0x1, 0x5, 1, block)

    names = ["denied", "secure", "open"]
    async with RawOrigin(h2_origin) as origin:
        tunnels = [http_tunnel(f"{n}.localhost", origin.port) for n in names]
        async with plugin_stack(host, *tunnels) as stack:
            for authority, status in [("denied.localhost", "403"), ("secure.localhost", "401")]:
                async with visitor(stack.http_port) as (reader, writer):
                    writer.write(first_request(authority))
                    headers, body = await read_h2_answer(reader)
                assert headers.get(":status") == status, (authority, headers)
                assert int(headers["content-length"]) == len(body)
                if status == "401":
                    assert headers["www-authenticate"].startswith('Basic realm="ferrotunnel"')
            # a real HTTP/2 client reads those answers too
            for authority, code in [("denied.localhost", 403), ("secure.localhost", 401)]:
                result = await curl(
                    "--http2-prior-knowledge", "--include",
                    *curl_resolve(authority, stack.http_port),
                    f"http://{authority}:{stack.http_port}/h2",
                    within=10,
                )  # fmt: skip
                head = result.stdout.decode("latin-1")
                assert result.returncode == 0, result.stderr
                assert head.startswith(f"HTTP/2 {code}"), head
            assert origin.connections == 0
            # a refused client that does not hang up is closed when the ingress closes
            async with visitor(stack.http_port) as (reader, writer):
                writer.write(first_request("denied.localhost"))
                await read_h2_answer(reader)
                for conn in list(stack.ingress.connections):
                    conn._close()
                await wait_until(lambda: not stack.ingress.connections, within=1.0)
            # let in: the connection goes through to the origin, untouched
            allowed = [
                first_request("secure.localhost", ("authorization", basic("alice", "s3cret"))),
                first_request("open.localhost"),
            ]
            for index, data in enumerate(allowed):
                async with visitor(stack.http_port) as (reader, writer):
                    writer.write(data)
                    with anyio.fail_after(5):
                        assert await reader.readexactly(9) == EMPTY_SETTINGS  # the ingress's
                        assert await reader.readexactly(9) == h2_frame(0x4, 0x0, 0, b"")
                    await wait_until(partial(arrived, index, data), what="the origin")


# ---------------------------------------------------------------------------- 4. basic-auth


async def test_basic_auth_challenges_then_lets_in_without_forwarding_credentials() -> None:
    host = builtins(
        "basic-auth",
        config={
            "basic_auth": {
                "tunnels": {"secure.localhost": {"users": ["alice:s3cret"], "realm": "stage"}}
            }
        },
    )
    async with Origin() as origin:
        tunnels = [
            http_tunnel("secure.localhost", origin.port),
            http_tunnel("open.localhost", origin.port),
        ]
        async with plugin_stack(host, *tunnels) as stack, stack.visitor("secure.localhost") as web:
            for auth in [None, basic("alice", "wrong"), basic("mallory", "s3cret")]:
                headers = {"Authorization": auth} if auth else {}
                refused = await web.get("/private", headers=headers)
                assert refused.status_code == 401
                assert refused.headers["WWW-Authenticate"] == 'Basic realm="stage", charset="UTF-8"'
            assert origin.requests == []
            ok = await web.get("/private", headers={"Authorization": basic("alice", "s3cret")})
            assert echoed(ok)["target"] == "/private"
            assert "authorization" not in echoed(ok)["headers"]  # forward_authorization = false
            assert origin.requests[-1].header("authorization") is None
            # a tunnel without an entry is not protected, and its Authorization is untouched
            async with stack.visitor("open.localhost") as open_web:
                assert (await open_web.get("/public")).status_code == 200
                mine = basic("someone", "else")
                passed = await open_web.get("/public", headers={"Authorization": mine})
                assert echoed(passed)["headers"]["authorization"] == mine


@pytest.mark.parametrize("visited", ["app.localhost", "nope.localhost"])
async def test_an_answer_to_an_upload_reaches_the_uploader(visited: str) -> None:
    """A 401 from basic-auth (or the ingress's own 404) answers an upload before its body
    has arrived: the connection then closes gently, so the visitor reads the answer instead
    of a reset, and the origin sees nothing."""
    host = builtins(
        "basic-auth", config={"basic_auth": {"tunnels": {"*": {"users": ["alice:s3cret"]}}}}
    )
    body = b"x" * (8 << 20)
    async with (
        Origin() as origin,
        plugin_stack(host, http_tunnel("app.localhost", origin.port)) as stack,
        stack.visitor(visited) as web,
    ):
        statuses = [(await web.post("/upload", content=body)).status_code for _ in range(3)]
    assert statuses == [401 if visited == "app.localhost" else 404] * 3
    assert origin.requests == []


# ---------------------------------------------------------------------------- 5. auth


async def test_auth_scoped_tokens_hashed_tokens_and_wrong_tokens() -> None:
    host = builtins(
        "auth",
        config={
            "auth": {
                "tokens": [
                    {"name": "alice", "token": "alice-secret", "hosts": ["*.alice.localhost"]},
                    {"name": "bob", "sha256": hashlib.sha256(b"bob-secret").hexdigest()},
                    {"name": "carol", "token": "carol-secret", "ports": []},
                ]
            }
        },
    )
    async with Origin() as origin:
        async with plugin_stack(host, server_token=None, tcp=True) as stack:
            # outside alice's scope: refused for good, naming why
            with anyio.fail_after(5), pytest.raises(RejectedError) as info:
                async with stack.connect(
                    http_tunnel("app.bob.localhost", origin.port), token="alice-secret"
                ):
                    pass
            assert info.value.code is RejectCode.FORBIDDEN
            assert "alice" in info.value.reason
            assert "app.bob.localhost" in info.value.reason
            # inside it: served
            inside = http_tunnel("app.alice.localhost", origin.port)
            async with stack.connect(inside, token="alice-secret") as alice:
                [granted] = alice.tunnels
                assert granted.hostnames == ("app.alice.localhost",)
                async with stack.visitor("app.alice.localhost") as web:
                    assert (await web.get("/alice")).status_code == 200
            # a token stored as its sha256: unscoped
            async with (
                stack.connect(http_tunnel("bob.localhost", origin.port), token="bob-secret"),
                stack.visitor("bob.localhost") as web,
            ):
                assert (await web.get("/bob")).status_code == 200
            # the digest itself is not the token
            with anyio.fail_after(5), pytest.raises(RejectedError) as info:
                async with stack.connect(
                    http_tunnel("bob.localhost", origin.port),
                    token=hashlib.sha256(b"bob-secret").hexdigest(),
                ):
                    pass
            assert info.value.code is RejectCode.AUTH_FAILED
            # a wrong token
            with anyio.fail_after(5), pytest.raises(RejectedError) as info:
                async with stack.connect(http_tunnel("x.localhost", origin.port), token="nope"):
                    pass
            assert info.value.code is RejectCode.AUTH_FAILED
            # ports = []: carol may not claim the TCP ingress's port
            tcp = Tunnel("db", Address(HOST, origin.port), TunnelKind.TCP, stack.tcp_port)
            with anyio.fail_after(5), pytest.raises(RejectedError) as info:
                async with stack.connect(tcp, token="carol-secret"):
                    pass
            assert info.value.code is RejectCode.FORBIDDEN
        assert sorted(r.path for r in origin.requests) == ["/alice", "/bob"]


async def test_a_scoped_client_cannot_name_its_way_into_another_tunnels_rules() -> None:
    """Tunnel names are the client's choice: a client whose token is scoped has its tunnels
    named ``IDENTITY/NAME`` on the server, so a rule keyed by a bare name (here one that
    lets loopback visitors into the tunnel "open") never applies to it; a rule keyed by its
    qualified name does. Its client still knows the tunnel by the name it chose."""
    ip_filter = {
        "tunnels": {
            "*": {"allow": ["10.0.0.0/8"]},  # loopback visitors refused everywhere ...
            "open": {"allow": ["127.0.0.0/8"]},  # ... except in the tunnel "open"
            "alice/public": {"allow": ["127.0.0.0/8"]},  # ... and alice's "public"
        }
    }
    tokens = [
        {"name": "alice", "token": "alice-secret", "hosts": ["*.alice.localhost"]},
        {"name": "bob", "token": "bob-secret"},  # unscoped: trusted with any name
    ]
    seen: list[str] = []

    class Tunnels:
        def on_complete(self, record: ExchangeRecord, ctx: RequestContext) -> None:
            seen.append(ctx.tunnel)

    host = host_with(
        {
            "tunnels": MiddlewarePlugin(Tunnels()),
            "auth": builtin("auth"),
            "ip-filter": builtin("ip-filter"),
        },
        {"auth": {"tokens": tokens}, "ip_filter": ip_filter},
    )

    def named(name: str, hostname: str, port: int) -> Tunnel:
        return Tunnel(name, Address(HOST, port), TunnelKind.HTTP, hostnames=(hostname,))

    async with Origin() as origin, plugin_stack(host, server_token=None) as stack:
        alice_open = named("open", "open.alice.localhost", origin.port)
        alice_public = named("public", "public.alice.localhost", origin.port)
        async with stack.connect(alice_open, alice_public, token="alice-secret") as alice:
            assert [t.name for t in alice.tunnels] == ["open", "public"]
            async with stack.visitor("open.alice.localhost") as web:
                assert (await web.get("/alice-open")).status_code == 403
            async with stack.visitor("public.alice.localhost") as web:
                assert (await web.get("/alice-public")).status_code == 200
        async with (
            stack.connect(named("open", "open.bob.localhost", origin.port), token="bob-secret"),
            stack.visitor("open.bob.localhost") as web,
        ):
            assert (await web.get("/bob-open")).status_code == 200
    assert seen == ["alice/open", "alice/public", "open"]
    assert [r.path for r in origin.requests] == ["/alice-public", "/bob-open"]


# ---------------------------------------------------------------------------- 6. access-log

TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def log_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_access_log_writes_a_json_line_per_exchange(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    host = builtins("access-log", config={"access_log": {"path": str(path)}})
    async with (
        Origin() as origin,
        plugin_stack(host, http_tunnel("log.localhost", origin.port)) as stack,
    ):
        body = b"0123456789"
        request = request_bytes(
            "POST", "/hello?x=1", "log.localhost", "Connection: close", body=body
        )
        raw = await _exchange(stack.http_port, request)
        assert status_of(raw) == 200
        async with stack.visitor("log.localhost") as web:
            assert (await web.get("/status/404")).status_code == 404
        await wait_until(lambda: len(log_lines(path)) >= 2, what="two access log lines")
    first, second = log_lines(path)
    assert set(first) == {
        "time", "tunnel", "host", "method", "path", "status", "bytes_in", "bytes_out",
        "duration_ms", "visitor_ip", "request_id",
    }  # fmt: skip
    assert TIME_RE.match(first["time"]), first["time"]
    assert first["tunnel"] == "log.localhost"
    assert first["host"] == "log.localhost"
    assert (first["method"], first["path"], first["status"]) == ("POST", "/hello?x=1", 200)
    assert first["visitor_ip"] == HOST
    assert first["bytes_out"] == len(raw)  # head and body, as the visitor got them
    assert first["bytes_in"] >= len(request)  # as forwarded (X-Forwarded-* added)
    assert isinstance(first["duration_ms"], float)
    assert first["duration_ms"] >= 0
    assert re.fullmatch(r"[0-9a-f]{16}", first["request_id"])
    assert (second["method"], second["path"], second["status"]) == ("GET", "/status/404", 404)
    assert second["request_id"] != first["request_id"]


async def _exchange(port: int, data: bytes) -> bytes:
    async with visitor(port) as (reader, writer):
        writer.write(data)
        await writer.drain()
        return await read_until_close(reader)


# ---------------------------------------------------------------------------- 7. headers


async def test_headers_plugin_edits_requests_and_responses() -> None:
    host = builtins(
        "headers",
        config={
            "headers": {
                "tunnels": {
                    "*": {
                        "request_set": {"X-From-Tunnel": "yes"},
                        "request_remove": ["X-Secret"],
                        "response_set": {"X-Served-By": "ferrotunnel"},
                        "response_remove": ["X-Origin"],
                    },
                    "api.localhost": {"request_add": {"Via": "1.1 ferrotunnel"}},
                }
            }
        },
    )
    async with Origin() as origin:
        tunnels = [
            http_tunnel("app.localhost", origin.port),
            http_tunnel("api.localhost", origin.port),
        ]
        async with plugin_stack(host, *tunnels) as stack:
            async with stack.visitor("app.localhost") as web:
                response = await web.get(
                    "/", headers={"X-Secret": "hunter2", "X-From-Tunnel": "forged"}
                )
                seen = echoed(response)["headers"]
                assert seen["x-from-tunnel"] == "yes"
                assert "x-secret" not in seen
                assert response.headers["X-Served-By"] == "ferrotunnel"
                assert "x-origin" not in response.headers
                assert response.headers["content-type"] == "application/json"
            # the most specific entry applies, alone
            async with stack.visitor("api.localhost") as api:
                response = await api.get("/", headers={"Via": "1.0 proxy", "X-Secret": "kept"})
                seen = echoed(response)["headers"]
                assert seen["via"] == "1.0 proxy, 1.1 ferrotunnel"
                assert seen["x-secret"] == "kept"
                assert "x-from-tunnel" not in seen
                assert "x-served-by" not in response.headers
                assert response.headers["x-origin"] == "origin"


# ---------------------------------------------------------------------------- 8. failing plugins


class Boom:
    """A middleware that fails on purpose: in ``on_request`` for ``/boom-request``, in
    ``on_response`` for ``/boom-response``."""

    def on_request(self, request: HttpRequest, ctx: RequestContext) -> Reply | None:
        if request.path.startswith("/boom-request"):
            raise RuntimeError("boom in on_request")
        if request.path.startswith("/boom-response"):
            ctx.state["boom"] = True
        return None

    def on_response(self, response: HttpResponse, ctx: RequestContext) -> None:
        if ctx.state.get("boom"):
            raise RuntimeError("boom in on_response")
        response.set_header("X-Boom-Checked", "1")


class AsyncBoom:
    async def on_request(self, request: HttpRequest, ctx: RequestContext) -> Reply | None:
        await anyio.sleep(0.001)
        if request.path.startswith("/async-boom"):
            raise RuntimeError("boom in async on_request")
        return None


class Recorder:
    """Notes every exchange's outcome (``on_complete``)."""

    def __init__(self) -> None:
        self.records: list[ExchangeRecord] = []

    def on_complete(self, record: ExchangeRecord, ctx: RequestContext) -> None:
        self.records.append(record)


class MiddlewarePlugin:
    """A plugin object returning fixed middlewares."""

    def __init__(self, *middlewares: object) -> None:
        self.middlewares = middlewares

    @hookimpl
    def ferrotunnel_http_middlewares(self) -> list[object]:
        return list(self.middlewares)


async def test_a_failing_plugin_costs_one_request_a_500(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="ferrotunnel.http.middleware")
    recorder = Recorder()
    host = host_with(
        {
            "boom": MiddlewarePlugin(Boom()),
            "async-boom": MiddlewarePlugin(AsyncBoom()),
            "recorder": MiddlewarePlugin(recorder),
        }
    )
    async with Origin() as origin:
        tunnels = [http_tunnel("a.localhost", origin.port), http_tunnel("b.localhost", origin.port)]
        async with plugin_stack(host, *tunnels) as stack:
            async with stack.visitor("a.localhost") as web_a, stack.visitor("b.localhost") as web_b:
                failed = await web_a.get("/boom-request")
                assert failed.status_code == 500
                assert "plugin failed" in failed.text
                assert origin.requests == []
                # the same connection, the next request: normal
                ok = await web_a.get("/after")
                assert ok.status_code == 200
                assert ok.headers["X-Boom-Checked"] == "1"
                assert (await web_b.get("/other-tunnel")).status_code == 200
                # on_response: the origin answered, the visitor gets a 500 instead
                failed = await web_a.get("/boom-response")
                assert failed.status_code == 500
                assert "x-origin" not in failed.headers
                assert origin.requests[-1].path == "/boom-response"
                assert (await web_a.get("/after-response")).status_code == 200
                # an async middleware that raises: the same
                assert (await web_b.get("/async-boom")).status_code == 500
                assert (await web_b.get("/after-async")).status_code == 200
            # the server keeps serving new visitors
            async with stack.visitor("a.localhost") as fresh:
                assert (await fresh.get("/fresh")).status_code == 200
                assert (await fresh.get("/health")).status_code == 200
    assert [r.path for r in origin.requests] == [
        "/after", "/other-tunnel", "/boom-response", "/after-response", "/after-async", "/fresh",
    ]  # fmt: skip
    failures = {
        r.getMessage(): r for r in caplog.records if r.name == "ferrotunnel.http.middleware"
    }
    assert set(failures) == {
        "plugin boom failed in on_request",
        "plugin boom failed in on_response",
        "plugin async-boom failed in on_request",
    }
    for record in failures.values():
        assert record.levelno == logging.ERROR
        assert record.exc_info is not None
        assert "boom in" in str(record.exc_info[1])
    # every exchange was completed once, the failed ones with their 500
    statuses = [(r.path, r.status) for r in recorder.records]
    assert ("/boom-request", 500) in statuses
    assert ("/boom-response", 500) in statuses
    assert ("/async-boom", 500) in statuses
    assert len(statuses) == 8  # /health is the ingress's own: no exchange of a tunnel
    # each failed exchange is accounted to the plugin that failed, not to the origin
    answered = {r.path: r.replied_by for r in recorder.records}
    assert answered["/boom-request"] == answered["/boom-response"] == "boom"
    assert answered["/async-boom"] == "async-boom"
    assert answered["/after"] == "origin"


class BadReply:
    """A middleware whose Reply is malformed: a header value carrying CR/LF (as one copied
    from the request could), or a non-str value."""

    def on_request(self, request: HttpRequest, ctx: RequestContext) -> Reply | None:
        if request.path == "/split":
            return Reply(403, "no\n", [("X-Why", "a\r\nSet-Cookie: evil=1")])
        if request.path == "/int":
            return Reply(429, "slow down\n", [("Retry-After", 5)])  # type: ignore[list-item]
        return None


async def test_a_malformed_reply_is_contained_as_a_500(caplog: pytest.LogCaptureFixture) -> None:
    """A Reply's headers are checked as ``set_header`` checks them: one that would split the
    response (or cannot be written) is the plugin's failure, answered with a 500, logged with
    the plugin's name, and the connection carries on."""
    caplog.set_level(logging.ERROR, logger="ferrotunnel.http.middleware")
    recorder = Recorder()
    host = host_with({"bad": MiddlewarePlugin(BadReply()), "recorder": MiddlewarePlugin(recorder)})
    async with (
        Origin() as origin,
        plugin_stack(host, http_tunnel("app.localhost", origin.port)) as stack,
    ):
        async with visitor(stack.http_port) as (reader, writer):
            writer.write(
                request_bytes("GET", "/split", "app.localhost")
                + request_bytes("GET", "/int", "app.localhost")
                + request_bytes("GET", "/fine", "app.localhost", "Connection: close")
            )
            raw = await read_until_close(reader, within=5)
        # HTTP/2 prior knowledge: the refusal is sent as HTTP/2 frames, checked the same way
        block = hpack.Encoder().encode(
            [(":method", "GET"), (":scheme", "http"), (":path", "/split"),
             (":authority", "app.localhost")]
        )  # fmt: skip
        async with visitor(stack.http_port) as (reader, writer):
            writer.write(PREFACE + h2_frame(0x4, 0x0, 0, b"") + h2_frame(0x1, 0x5, 1, block))
            h2_headers, _ = await read_h2_answer(reader)
    assert b"evil" not in raw, raw
    assert [part[:3] for part in raw.split(b"HTTP/1.1 ")[1:]] == [b"500", b"500", b"200"], raw
    assert h2_headers[":status"] == "500", h2_headers
    assert "x-why" not in h2_headers
    assert [r.path for r in origin.requests] == ["/fine"]
    failures = [r.getMessage() for r in caplog.records if r.name == "ferrotunnel.http.middleware"]
    assert failures == ["plugin bad failed in on_request"] * 3, failures
    assert [(r.path, r.status, r.replied_by) for r in recorder.records] == [
        ("/split", 500, "bad"), ("/int", 500, "bad"), ("/fine", 200, "origin"),
        ("/split", 500, "bad"),
    ]  # fmt: skip


# ---------------------------------------------------------------------------- 9. async middleware


class Gate:
    """An async ``on_request``: waits a little, then refuses (``X-Deny``) or marks the request."""

    def __init__(self) -> None:
        self.decided = 0

    async def on_request(self, request: HttpRequest, ctx: RequestContext) -> Reply | None:
        await anyio.sleep(0.01)
        self.decided += 1
        if request.header("X-Deny") is not None:
            return Reply(403, "denied by the gate\n", [("X-Gate", "denied")])
        request.set_header("X-Gate", f"passed {self.decided}")
        return None


async def test_an_async_middleware_replies_or_lets_through() -> None:
    gate = Gate()
    host = host_with({"gate": MiddlewarePlugin(gate)})
    async with (
        Origin() as origin,
        plugin_stack(host, http_tunnel("app.localhost", origin.port)) as stack,
    ):
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with stack.visitor("app.localhost", limits=limits) as web:
            for i in range(4):
                if i % 2:
                    denied = await web.get(f"/{i}", headers={"X-Deny": "1"})
                    assert denied.status_code == 403
                    assert denied.text == "denied by the gate\n"
                    assert denied.headers["X-Gate"] == "denied"
                else:
                    passed = echoed(await web.get(f"/{i}"))
                    assert passed["headers"]["x-gate"] == f"passed {i + 1}"
        assert [r.path for r in origin.requests] == ["/0", "/2"]
        assert origin.connections == 1  # the kept-alive visitor kept its origin connection
        # pipelined: three requests in one write, answered in order
        async with visitor(stack.http_port) as (reader, writer):
            writer.write(
                request_bytes("GET", "/p1", "app.localhost")
                + request_bytes("GET", "/p2", "app.localhost", "X-Deny: yes")
                + request_bytes("GET", "/p3", "app.localhost")
            )
            await writer.drain()
            responses = ResponseReader(reader)
            first, second, third = [await responses.next() for _ in range(3)]
        assert first.status == 200
        assert json.loads(first.body)["target"] == "/p1"
        assert second.status == 403
        assert second.body == b"denied by the gate\n"
        assert third.status == 200
        assert json.loads(third.body)["target"] == "/p3"
        assert [r.path for r in origin.requests] == ["/0", "/2", "/p1", "/p3"]
        assert gate.decided == 7


# ---------------------------------------------------------------------------- 10. all at once


ALL_BUILTINS_TOML = """
[rate_limit]
per_ip = {{ rate = 100.0, burst = 100 }}

[ip_filter.tunnels."*"]
allow = ["127.0.0.0/8"]

[basic_auth.tunnels."secure.localhost"]
users = ["alice:s3cret"]

[headers.tunnels."*"]
request_set = {{ X-Via-Tunnel = "1" }}
response_set = {{ X-Frame-Options = "DENY" }}

[access_log]
path = "{log}"

[circuit_breaker.tunnels."*"]
failure_threshold = 2
open_seconds = 0.3

[[auth.tokens]]
name = "ci"
token = "{token}"
"""


async def test_all_builtins_enabled_at_once(tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    config_path = tmp_path / "server.toml"
    config_path.write_text(ALL_BUILTINS_TOML.format(log=log_path, token="ci-token"))
    host = load_plugins()  # the real entry points, as ``ferrotunnel server`` loads them
    assert {i.name for i in host.infos if i.status == "enabled"} >= set(BUILTINS)
    host.configure(load_toml(host.schema(), config_path))
    config = host.config
    assert config is not None
    middlewares = host.http_middlewares(config)
    kinds = [type(m).__name__ for m in middlewares]
    for middleware in middlewares:  # this set is only looked at (the access log's file)
        getattr(middleware, "close", lambda: None)()
    assert kinds[0] == "IpFilterHttp"  # refused visitors are turned away first
    assert set(kinds) >= {"RateLimit", "BasicAuth", "AccessLog", "CircuitBreaker"}
    state = {"failing": False}
    async with Origin(failing_origin(state)) as origin:
        tunnels = [
            http_tunnel("open.localhost", origin.port),
            http_tunnel("secure.localhost", origin.port),
        ]
        async with plugin_stack(
            host, *tunnels, server_token=None, client_token="ci-token"
        ) as stack:
            async with stack.visitor("open.localhost") as web:
                response = await web.get("/normal")
                seen = echoed(response)["headers"]
                assert seen["x-via-tunnel"] == "1"
                assert response.headers["X-Frame-Options"] == "DENY"
            async with stack.visitor("secure.localhost") as secure:
                assert (await secure.get("/secret")).status_code == 401
                response = await secure.get(
                    "/secret", headers={"Authorization": basic("alice", "s3cret")}
                )
                assert "authorization" not in echoed(response)["headers"]
                assert response.headers["X-Frame-Options"] == "DENY"
                # 401s from basic-auth are not origin failures: the breaker stays closed
                for _ in range(3):
                    assert (await secure.get("/secret")).status_code == 401
                assert (
                    await secure.get("/secret", headers={"Authorization": basic("alice", "s3cret")})
                ).status_code == 200
            await wait_until(lambda: len(log_lines(log_path)) >= 7, what="seven log lines")
    lines = log_lines(log_path)
    assert [(line["path"], line["status"]) for line in lines] == [
        ("/normal", 200),
        ("/secret", 401),
        ("/secret", 200),
        ("/secret", 401),
        ("/secret", 401),
        ("/secret", 401),
        ("/secret", 200),
    ]
    assert lines[2]["user"] == "alice"
    assert "user" not in lines[1]
    assert len(origin.requests) == 3
