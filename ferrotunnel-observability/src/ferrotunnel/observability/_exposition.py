"""Serving a Prometheus registry: an ASGI app to mount, or a tiny endpoint of its own.

The endpoint runs on the server's own asyncio loop rather than in prometheus_client's thread
(``start_http_server``): collectors read live session state, which only the loop's thread may
touch safely. A scrape is one short request; nothing here is on a tunnel's data path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import make_asgi_app as _make_asgi_app

from ferrotunnel.core import Address

__all__ = ["MetricsEndpoint", "metrics_app", "serve_metrics"]

log = logging.getLogger("ferrotunnel.observability.metrics")

#: the classic text format, which every Prometheus version scrapes
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_MAX_HEAD = 8192
_HEAD_TIMEOUT = 10.0


def metrics_app(registry: CollectorRegistry) -> Callable[..., Any]:
    """An ASGI app answering with ``registry`` in the Prometheus text format (mount it at
    ``/metrics``: the dashboard does)."""
    return _make_asgi_app(registry)


class MetricsEndpoint:
    """``GET /metrics`` on one address, answered from ``registry``; 404 for anything else."""

    def __init__(self, registry: CollectorRegistry, server: asyncio.Server) -> None:
        self.registry = registry
        self._server = server

    @property
    def address(self) -> Address:
        host, port = self._server.sockets[0].getsockname()[:2]
        return Address(str(host), int(port))

    async def aclose(self) -> None:
        self._server.close()
        await self._server.wait_closed()


async def serve_metrics(registry: CollectorRegistry, address: Address) -> MetricsEndpoint:
    """Listen on ``address`` (port 0: any free port) and serve ``registry`` at ``/metrics``
    (on the running asyncio loop)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_HEAD_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            method, target = _request_line(head)
            if method in (b"GET", b"HEAD") and target.split(b"?")[0] == b"/metrics":
                body = generate_latest(registry)
                status, content_type = b"200 OK", CONTENT_TYPE
            else:
                body = b"not found: metrics are at /metrics\n"
                status, content_type = b"404 Not Found", b"text/plain; charset=utf-8"
            writer.write(
                b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n" % (status, content_type, len(body))
            )
            if method != b"HEAD":
                writer.write(body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a scraper that went away or sent nonsense: nothing to answer
        except Exception:
            log.exception("metrics endpoint failed")
        finally:
            writer.close()

    server = await asyncio.start_server(handle, address.host, address.port, limit=_MAX_HEAD)
    return MetricsEndpoint(registry, server)


def _request_line(head: bytes) -> tuple[bytes, bytes]:
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    return (parts[0], parts[1]) if len(parts) == 3 else (b"", b"")
