"""Helpers for testing HTTP middlewares: an HTTP tunnel and a recording origin in one process.

::

    import httpx
    from ferrotunnel.core.testing import plugin_host
    from ferrotunnel.http.testing import HttpOrigin, running_http_tunnel

    @pytest.mark.anyio
    async def test_my_middleware():
        host = plugin_host(my_plugin, config={"my_table": {"greeting": "hi"}})
        origin = HttpOrigin(body=b"ok")
        async with running_http_tunnel(origin, plugins=host) as tunnel:
            async with httpx.AsyncClient(base_url=tunnel.url, headers=tunnel.headers) as http:
                response = await http.get("/")
        assert origin.requests[0].header("x-seen-by") == "my-plugin"

:func:`~ferrotunnel.core.testing.running_tunnel` gives a server only the plugins'
authenticators and TCP middlewares; HTTP middlewares belong to an HTTP ingress, which this
module adds. The ingress is an asyncio protocol, so these tests run on anyio's default
``asyncio`` backend (uvloop too), not trio. Everything listens on 127.0.0.1, ephemeral ports.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import SocketStream

from ferrotunnel.core import Address, TunnelKind
from ferrotunnel.core.plugin import PluginHost
from ferrotunnel.core.testing import Origin, RunningTunnel, running_tunnel

from .ingress import HttpIngress, HttpIngressConfig

__all__ = ["HttpOrigin", "ReceivedRequest", "RunningHttpTunnel", "running_http_tunnel"]

#: no request head this origin accepts is longer (it answers 431 and closes beyond it)
MAX_HEAD = 64 * 1024


@dataclass
class ReceivedRequest:
    """A request as it reached the origin, after every middleware's edits."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        name = name.lower()
        return next((value for key, value in self.headers if key.lower() == name), None)


class HttpOrigin:
    """A local web service for tests: answers every request with the same response, on
    keep-alive connections, and keeps what it received in :attr:`requests`.

    Bodies sent with ``Content-Length`` or ``Transfer-Encoding: chunked`` are read whole
    (chunk extensions and trailers are skipped).
    """

    def __init__(
        self, *, status: int = 200, body: bytes = b"ok", headers: Mapping[str, str] | None = None
    ) -> None:
        fields = {"content-type": "text/plain", **(headers or {})}
        lines = [f"HTTP/1.1 {status} X", *(f"{k}: {v}" for k, v in fields.items())]
        lines.append(f"content-length: {len(body)}")
        self.response = "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body
        #: every request received, in order
        self.requests: list[ReceivedRequest] = []

    async def __call__(self, sock: SocketStream) -> None:
        reader = _Reader(sock)
        async with sock:
            try:
                while (head := await reader.until(b"\r\n\r\n", MAX_HEAD)) is not None:
                    request = await self._read_request(head, reader)
                    self.requests.append(request)
                    await sock.send(self.response)
                    if (request.header("connection") or "").lower() == "close":
                        return
            except _TooLong:
                await sock.send(b"HTTP/1.1 431 X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    async def _read_request(self, head: bytes, reader: _Reader) -> ReceivedRequest:
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]
        request = ReceivedRequest(method, target, headers, b"")
        if "chunked" in (request.header("transfer-encoding") or "").lower():
            request.body = await reader.chunked()
        else:
            request.body = await reader.exactly(int(request.header("content-length") or 0))
        return request


class _TooLong(Exception):
    pass


class _Reader:
    """Buffered reads from a socket stream: up to a delimiter, a length, a chunked body."""

    def __init__(self, sock: SocketStream) -> None:
        self.sock = sock
        self.buffer = b""

    async def until(self, delimiter: bytes, limit: int) -> bytes | None:
        """The bytes before ``delimiter`` (consumed), or None at a clean end of stream."""
        while (end := self.buffer.find(delimiter)) < 0:
            if len(self.buffer) > limit:
                raise _TooLong
            try:
                self.buffer += await self.sock.receive()
            except anyio.EndOfStream:
                if self.buffer:
                    raise
                return None
        if end > limit:
            raise _TooLong
        data, self.buffer = self.buffer[:end], self.buffer[end + len(delimiter) :]
        return data

    async def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self.buffer += await self.sock.receive()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    async def chunked(self) -> bytes:
        body = bytearray()
        while True:
            size_line = await self.until(b"\r\n", 1024)
            if size_line is None:
                raise anyio.EndOfStream
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while await self.until(b"\r\n", MAX_HEAD):  # trailer fields, then a blank line
                    pass
                return bytes(body)
            body += await self.exactly(size)
            await self.exactly(2)  # the CRLF after each chunk


@dataclass
class RunningHttpTunnel:
    """An HTTP tunnel in service: send requests to :attr:`url` with :attr:`headers`."""

    tunnel: RunningTunnel
    ingress: HttpIngress
    #: the tunnel's hostname (the Host a visitor sends)
    host: str
    #: the ingress, e.g. ``http://127.0.0.1:41234``
    url: str
    #: headers that route a request to this tunnel: ``{"host": host}``
    headers: dict[str, str] = field(default_factory=dict)


@asynccontextmanager
async def running_http_tunnel(
    origin: Origin,
    *,
    name: str = "app.localhost",
    plugins: PluginHost | None = None,
    config: HttpIngressConfig | None = None,
    **options: Any,
) -> AsyncIterator[RunningHttpTunnel]:
    """A server with an HTTP ingress using ``plugins``' HTTP middlewares (and, like
    :func:`~ferrotunnel.core.testing.running_tunnel`, their authenticators, TCP middlewares
    and events), a client with one HTTP tunnel ``name``, and ``origin`` behind it.

    ``config`` replaces the ingress's settings (its ``bind`` should stay on 127.0.0.1, port
    0); ``options`` go to :func:`~ferrotunnel.core.testing.running_tunnel`.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "the HTTP ingress runs on asyncio: run this test on anyio's 'asyncio' backend"
        ) from None
    middlewares = (
        plugins.http_middlewares(plugins.config)
        if plugins is not None and plugins.config is not None
        else []
    )
    ingress = HttpIngress(
        config or HttpIngressConfig(bind=Address("127.0.0.1", 0)),
        middlewares=middlewares,
        plugins=plugins,
    )
    async with running_tunnel(
        origin, kind=TunnelKind.HTTP, name=name, ingresses=[ingress], plugins=plugins, **options
    ) as tunnel:
        address = ingress.address
        assert address is not None  # the server started the ingress
        url = f"http://{address.host}:{address.port}"
        yield RunningHttpTunnel(tunnel, ingress, name, url, {"host": name})
