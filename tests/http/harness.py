"""Building blocks of the HTTP ingress tests: a tunnel stack, origins, raw visitors.

Everything runs in the test's own event loop (asyncio or uvloop) on 127.0.0.1, port 0:

* :func:`tunnel_stack` — a :class:`~ferrotunnel.core.Server` with an
  :class:`~ferrotunnel.http.HttpIngress`, plus one :class:`~ferrotunnel.core.Client` per
  list of tunnels given;
* :class:`Origin` — an HTTP/1.1 origin built on h11 (strict: a malformed request the
  ingress forwards makes it fail), answering through a handler; :func:`standard_handler`
  is the one most tests use, and every response names the origin (``x-origin``);
* :class:`RawOrigin` — a socket-level origin for misbehaving on purpose;
* raw visitors (:func:`raw_exchange`, :func:`read_response`) for byte-exact checks.

Blocking clients (curl, grpcio) run through ``anyio.run_process`` / ``anyio.to_thread``.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import ssl
import subprocess
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, cast

import anyio
import h11

from ferrotunnel.core import Address, Client, Server, SessionConfig, Tunnel, TunnelKind
from ferrotunnel.core.plugin import HttpMiddleware
from ferrotunnel.http import HttpIngress, HttpIngressConfig

HOST = "127.0.0.1"
TOKEN = "http-test-token"
CURL = Path("/usr/bin/curl")
MiB = 1 << 20


# ---------------------------------------------------------------------------- the tunnel


def http_tunnel(host: str, port: int, *, name: str | None = None, **options: Any) -> Tunnel:
    """An HTTP tunnel serving ``host`` from ``127.0.0.1:port``."""
    return Tunnel(
        name or host,
        Address(HOST, port),
        TunnelKind.HTTP,
        hostnames=(host,),
        **options,
    )


@dataclass
class Stack:
    server: Server
    ingress: HttpIngress
    clients: list[Client]

    @property
    def port(self) -> int:
        assert self.ingress.address is not None
        return self.ingress.address.port

    def url(self, path: str = "/") -> str:
        return f"http://{HOST}:{self.port}{path}"


@asynccontextmanager
async def tunnel_stack(
    *clients: Sequence[Tunnel],
    drain_timeout: float = 0.25,
    server_session: SessionConfig | None = None,
    middlewares: Sequence[object] = (),  # HttpMiddlewares: each method is optional
    **settings: Any,
) -> AsyncIterator[Stack]:
    """A server (sessions configured by ``server_session``) whose HTTP ingress is
    configured by ``settings`` and runs ``middlewares``, and one client per sequence of
    tunnels in ``clients`` (all registered when this yields)."""
    settings.setdefault("bind", Address(HOST, 0))
    chain = cast(Sequence[HttpMiddleware], middlewares)
    ingress = HttpIngress(HttpIngressConfig(**settings), middlewares=chain)
    async with (
        Server(
            token=TOKEN,
            bind=f"{HOST}:0",
            ingresses=[ingress],
            drain_timeout=drain_timeout,
            session=server_session or SessionConfig(),
        ) as server,
        AsyncExitStack() as stack,
    ):
        started = []
        for tunnels in clients:
            client = Client(
                server_addr=str(server.control_address),
                token=TOKEN,
                tunnels=list(tunnels),
                drain_timeout=drain_timeout,
                reconnect=False,
            )
            started.append(await stack.enter_async_context(client))
        yield Stack(server, ingress, started)
        # visitors first, so that no client waits for streams nobody will finish
        for conn in list(ingress.connections):
            conn._close()


# ---------------------------------------------------------------------------- origins


@dataclass
class OriginRequest:
    """A request as the origin received it (header names lower case, as h11 gives them)."""

    method: str
    target: str
    http_version: str
    headers: list[tuple[str, str]]
    peer: tuple[str, int]
    connection: int  # index of the origin-side connection it came on
    _body: Callable[[], AsyncIterator[bytes]] = field(repr=False)
    body: bytes | None = None  # set once read()

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (sends ``100 Continue`` first if the visitor waits for it)."""
        return self._body()

    async def read(self) -> bytes:
        if self.body is None:
            self.body = b"".join([chunk async for chunk in self.chunks()])
        return self.body


@dataclass
class OriginResponse:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: bytes (a Content-Length is added unless given), or chunks (sent chunked unless a
    #: Content-Length is given); a HEAD request gets the headers only
    body: bytes | AsyncIterable[bytes] = b""
    reason: str = ""


Handler = Callable[[OriginRequest], Awaitable[OriginResponse]]


class _Listening:
    """An asyncio server on 127.0.0.1:0 whose connection tasks are cancelled on exit."""

    ssl_context: ssl.SSLContext | None = None

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(
            self._serve, HOST, 0, ssl=self.ssl_context, limit=1 << 20
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await _cancel_all(self._tasks)

    def _track(self) -> asyncio.Task[Any]:
        """Called first in ``_serve``: count the connection, cancel it on exit."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        return task

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class Origin(_Listening):
    """An HTTP/1.1 server (keep-alive, chunked, 100-continue) on 127.0.0.1:0."""

    def __init__(
        self,
        handler: Handler | None = None,
        *,
        name: str = "origin",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.handler = handler or standard_handler(name)
        self.ssl_context = ssl_context
        self.peers: list[tuple[str, int]] = []
        self.requests: list[OriginRequest] = []
        self.errors: list[BaseException] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.connections
        task = self._track()
        peer = writer.get_extra_info("peername")
        self.peers.append((peer[0], peer[1]))
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        try:
            while True:
                event = await _next_event(conn, reader)
                if not isinstance(event, h11.Request):
                    break
                request = self._request(conn, reader, writer, event, index, peer)
                self.requests.append(request)
                response = await self.handler(request)
                await self._respond(conn, writer, request, response)
                while conn.their_state is h11.SEND_BODY:  # what the handler did not read
                    if isinstance(await _next_event(conn, reader), h11.ConnectionClosed):
                        break
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except (h11.ProtocolError, OSError, asyncio.IncompleteReadError) as exc:
            if not isinstance(exc, ConnectionError):
                self.errors.append(exc)
        finally:
            self._tasks.discard(task)
            writer.close()

    def _request(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        event: h11.Request,
        index: int,
        peer: tuple[str, int],
    ) -> OriginRequest:
        async def body() -> AsyncIterator[bytes]:
            if conn.they_are_waiting_for_100_continue:
                writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            while conn.their_state is h11.SEND_BODY:
                item = await _next_event(conn, reader)
                if isinstance(item, h11.Data):
                    yield bytes(item.data)
                elif not isinstance(item, h11.EndOfMessage):
                    raise ConnectionError(f"request body ended by {item!r}")

        return OriginRequest(
            method=event.method.decode(),
            target=event.target.decode(),
            http_version=event.http_version.decode(),
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers],
            peer=(peer[0], peer[1]),
            connection=index,
            _body=body,
        )

    async def _respond(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        request: OriginRequest,
        response: OriginResponse,
    ) -> None:
        headers = list(response.headers)
        names = {k.lower() for k, _ in headers}
        body = response.body
        no_body = request.method == "HEAD" or response.status in (204, 304)
        framed = "content-length" in names or "transfer-encoding" in names
        if isinstance(body, bytes) and response.status not in (204, 304) and not framed:
            headers.append(("content-length", str(len(body))))
        writer.write(
            conn.send(
                h11.Response(
                    status_code=response.status, headers=headers, reason=response.reason.encode()
                )
            )
        )
        if not no_body:
            if isinstance(body, bytes):
                if body:
                    writer.write(conn.send(h11.Data(data=body)))
            else:
                async for chunk in body:
                    writer.write(conn.send(h11.Data(data=chunk)))
                    await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await reader.read(256 << 10))


async def _cancel_all(tasks: set[asyncio.Task[Any]]) -> None:
    for task in list(tasks):
        task.cancel()
    if tasks:
        await asyncio.wait(list(tasks), timeout=5)


def standard_handler(name: str) -> Handler:
    """What most tests talk to. Every response carries ``x-origin: <name>``.

    ``/status/N`` answers N; ``/redirect`` → 302 to ``/landing``; ``/cookie`` sets two
    cookies; ``/chunked`` streams ten chunks; ``/gzip`` sends a gzip body as is; anything
    else echoes the request as JSON (method, target, headers, body length and sha256,
    origin connection index).
    """

    async def handle(request: OriginRequest) -> OriginResponse:
        ident = ("x-origin", name)
        path = request.path
        if path.startswith("/status/"):
            await request.read()
            status = int(path.rsplit("/", 1)[1])
            return OriginResponse(status, [ident], f"status {status} from {name}".encode())
        if path == "/redirect":
            return OriginResponse(302, [ident, ("location", "/landing")], b"moved\n")
        if path == "/landing":
            return OriginResponse(200, [ident], f"landed at {name}".encode())
        if path == "/cookie":
            cookies = [("set-cookie", "session=abc123; Path=/"), ("set-cookie", "theme=dark")]
            return OriginResponse(200, [ident, *cookies], b"cookies set")
        if path == "/chunked":

            async def chunks() -> AsyncIterator[bytes]:
                for i in range(10):
                    yield b"chunk %d;" % i

            return OriginResponse(200, [ident], chunks())
        if path == "/gzip":
            headers = [ident, ("content-encoding", "gzip"), ("content-type", "text/plain")]
            return OriginResponse(200, headers, GZIP_BODY)
        body = await request.read()
        echo = {
            "origin": name,
            "method": request.method,
            "target": request.target,
            "version": request.http_version,
            "headers": request.headers,
            "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "connection": request.connection,
        }
        payload = json.dumps(echo).encode()
        return OriginResponse(200, [ident, ("content-type", "application/json")], payload)

    return handle


#: deterministic, so that "identical bytes" can be checked against a constant
GZIP_BODY = gzip.compress(b"compressible text " * 500, mtime=0)


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawOrigin(_Listening):
    """A TCP server whose handler speaks (or fails to speak) HTTP by hand."""

    def __init__(self, handler: RawHandler) -> None:
        super().__init__()
        self.handler = handler

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = self._track()
        try:
            await self.handler(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    """A raw origin's view of a request head (through the blank line)."""
    return await reader.readuntil(b"\r\n\r\n")


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


# ---------------------------------------------------------------------------- raw visitors


async def open_visitor(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(HOST, port, limit=1 << 20)


@asynccontextmanager
async def visitor(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw visitor connection to ``127.0.0.1:port``, closed however the block ends."""
    reader, writer = await open_visitor(port)
    try:
        yield reader, writer
    finally:
        writer.close()


async def read_until_close(reader: asyncio.StreamReader, within: float = 10.0) -> bytes:
    """Everything until EOF (a reset counts as the end too), within ``within`` seconds."""
    data = bytearray()
    with anyio.fail_after(within):
        while True:
            try:
                chunk = await reader.read(1 << 16)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    return bytes(data)


async def raw_exchange(port: int, data: bytes, within: float = 10.0) -> bytes:
    """Send ``data`` on a new connection; return all it receives until the server closes."""
    async with visitor(port) as (reader, writer):
        writer.write(data)
        await writer.drain()
        return await read_until_close(reader, within)


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name.lower():
                return value
        return None


class ResponseReader:
    """Reads successive responses off one raw visitor connection (h11 as the parser)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.conn = h11.Connection(h11.CLIENT)
        self.informational: list[int] = []

    async def next(self, method: str = "GET", within: float = 10.0) -> RawResponse:
        conn = self.conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        status = 0
        headers: list[tuple[str, str]] = []
        body = bytearray()
        with anyio.fail_after(within):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await self.reader.read(1 << 16))
                elif isinstance(event, h11.InformationalResponse):
                    self.informational.append(event.status_code)
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    headers = [(k.decode(), v.decode("latin-1")) for k, v in event.headers]
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    return RawResponse(status, headers, bytes(body))
                else:
                    raise AssertionError(f"connection ended mid-response: {event!r}")


async def read_response(
    reader: asyncio.StreamReader, method: str = "GET", within: float = 10.0
) -> RawResponse:
    return await ResponseReader(reader).next(method, within)


def status_of(raw: bytes) -> int:
    """The status code of the first response in ``raw`` (0 if there is none)."""
    first = raw.split(b"\r\n", 1)[0]
    parts = first.split(b" ")
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1].isdigit():
        return int(parts[1])
    return 0


def request_bytes(
    method: str = "GET",
    target: str = "/",
    host: str | None = "app.localhost",
    *headers: str,
    body: bytes = b"",
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += headers
    if body and not any(
        h.lower().startswith(("content-length", "transfer-encoding")) for h in headers
    ):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def h2_frame(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
    """One HTTP/2 frame."""
    header = len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + stream.to_bytes(4, "big")
    return header + payload


# ---------------------------------------------------------------------------- processes, memory


async def curl(*args: str, within: float = 20.0) -> subprocess.CompletedProcess[bytes]:
    """Run curl to completion (stdout/stderr captured); never longer than ``within``."""
    with anyio.fail_after(within):
        return await anyio.run_process(
            [str(CURL), "--silent", "--show-error", "--max-time", str(within), *args],
            check=False,
        )


def curl_resolve(host: str, port: int) -> list[str]:
    """curl flags that make ``http://host:port/`` reach the ingress."""
    return ["--resolve", f"{host}:{port}:{HOST}"]


def rss() -> int:
    """This process's resident set size, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class RssWatch:
    """Tracks the peak RSS above a baseline, sampled when :meth:`sample` is called."""

    def __init__(self) -> None:
        self.baseline = rss()
        self.peak = self.baseline
        self._last = 0.0

    def sample(self, every: float = 0.05) -> None:
        now = time.monotonic()
        if now - self._last >= every:
            self._last = now
            self.peak = max(self.peak, rss())

    @property
    def growth(self) -> int:
        self.peak = max(self.peak, rss())
        return self.peak - self.baseline


async def wait_until(predicate: Callable[[], bool], within: float = 5.0, what: str = "") -> None:
    """Poll ``predicate`` (every 10 ms) until true; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {within} s waiting for {what or predicate}")
        await anyio.sleep(0.01)
