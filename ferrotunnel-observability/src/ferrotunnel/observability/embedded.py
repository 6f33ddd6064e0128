"""uvicorn inside the tunnel's own event loop.

We bind the listening socket ourselves: a port in use is then an ``OSError`` for the caller to
report, where uvicorn would ``sys.exit`` — which, raised inside a task, would take the whole
tunnel down. Signals stay the host process's: ``capture_signals`` does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

__all__ = ["EmbeddedServer"]


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class EmbeddedServer:
    """Serve ``app`` on ``host:port`` (0: any free port) until :meth:`stop`."""

    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._sock: socket.socket | None = None
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind and serve; raises ``OSError`` if the address cannot be had."""
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            ws="none",
            http="h11",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._server = server = _Server(config)
        self._task = task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                task.result()
                raise OSError(f"the web server at {self.url} stopped at start")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop accepting, let open requests finish (briefly), close."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._task), 5)
            if not self._task.done():
                self._task.cancel()
        if self._sock is not None:
            self._sock.close()
