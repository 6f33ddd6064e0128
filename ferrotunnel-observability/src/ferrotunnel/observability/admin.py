"""The server's admin view: sessions, tunnels and visitors, and closing a session.

Off unless ``[dashboard] admin = true``; it needs the server's ``--token`` and asks for it on
every API call (``Authorization: Bearer <token>``), listens on 127.0.0.1 by default, and
refuses foreign Host headers like the client's dashboard. Sessions and tunnels come from the
server's session hooks; visitors from a TCP and an HTTP middleware that only take notes
(returned only when the admin view is on, so the request path is untouched otherwise).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ferrotunnel.core import GrantedTunnel, Server, Session
from ferrotunnel.core.plugin import ExchangeRecord, RequestContext, TcpConnection

from .api import HostCheck, error_response
from .export import VERSION

__all__ = ["AdminState", "create_admin_app"]

STATIC = Path(__file__).parent / "static"
#: distinct visitor addresses remembered (least recently seen dropped first)
MAX_VISITORS = 500
#: how long a closed session's streams get to finish
CLOSE_DRAIN = 3.0


@dataclass
class SessionInfo:
    session: Session
    identity: str
    opened: float = field(default_factory=time.time)
    tunnels: list[GrantedTunnel] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        peer = self.session.peer
        return {
            "id": self.session.session_id,
            "identity": self.identity,
            "peer": f"{peer[0]}:{peer[1]}" if peer else None,
            "opened": self.opened,
            "streams": len(self.session.streams),
            "tunnels": [_tunnel_json(t) for t in self.tunnels],
        }


@dataclass
class VisitorInfo:
    ip: str
    first_seen: float
    last_seen: float
    connections: int = 0  # TCP
    requests: int = 0  # HTTP
    tunnels: set[str] = field(default_factory=set)
    last_status: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "ip": self.ip,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "connections": self.connections,
            "requests": self.requests,
            "tunnels": sorted(self.tunnels),
            "last_status": self.last_status,
        }


class AdminState:
    """What one server's admin view knows."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.sessions: dict[Session, SessionInfo] = {}
        self.visitors: OrderedDict[str, VisitorInfo] = OrderedDict()
        self.closing: set[Session] = set()

    def visitor(self, ip: str, tunnel: str) -> VisitorInfo:
        now = time.time()
        info = self.visitors.pop(ip, None) or VisitorInfo(ip, now, now)
        info.last_seen = now
        info.tunnels.add(tunnel)
        self.visitors[ip] = info
        while len(self.visitors) > MAX_VISITORS:
            self.visitors.popitem(last=False)
        return info


class VisitorLog:
    """A TCP and HTTP middleware that only notes who came (never refuses anyone)."""

    def __init__(self, states: list[AdminState]) -> None:
        self.states = states

    def on_connect(self, conn: TcpConnection) -> bool:
        for state in self.states:
            state.visitor(conn.visitor_ip, conn.tunnel).connections += 1
        return True

    def on_complete(self, record: ExchangeRecord, ctx: RequestContext) -> None:
        for state in self.states:
            info = state.visitor(record.visitor_ip, record.tunnel)
            info.requests += 1
            info.last_status = record.status


def create_admin_app(state: AdminState, token: str, allowed_hosts: list[str]) -> Starlette:
    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "admin.html", headers={"cache-control": "no-cache"})

    def authorized(request: Request) -> None:
        offered = request.headers.get("authorization", "")
        scheme, _, value = offered.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), token.encode()):
            raise HTTPException(401, "send the server token: Authorization: Bearer <token>")

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": VERSION})

    async def sessions(request: Request) -> Response:
        authorized(request)
        live = [info for s, info in state.sessions.items() if not s.closed]
        return JSONResponse({"sessions": [info.as_json() for info in live]})

    async def close_session(request: Request) -> Response:
        authorized(request)
        wanted = request.path_params["id"]
        for session in state.sessions:
            if session.session_id == wanted and not session.closed:
                if session not in state.closing:
                    state.closing.add(session)
                    _drain_soon(session)
                return JSONResponse({"closing": wanted}, status_code=202)
        return error_response(404, "NOT_FOUND", f"no open session {wanted!r}")

    async def tunnels(request: Request) -> Response:
        authorized(request)
        found = [
            {**_tunnel_json(t), "session": info.session.session_id, "identity": info.identity}
            for session, info in state.sessions.items()
            if not session.closed
            for t in info.tunnels
        ]
        return JSONResponse({"tunnels": found})

    async def visitors(request: Request) -> Response:
        authorized(request)
        newest = reversed(state.visitors.values())
        return JSONResponse({"visitors": [v.as_json() for v in newest]})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        codes = {401: "UNAUTHORIZED", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
        response = error_response(
            exc.status_code, codes.get(exc.status_code, "HTTP_ERROR"), str(exc.detail)
        )
        if exc.status_code == 401:
            response.headers["www-authenticate"] = "Bearer"
        return response

    return Starlette(
        routes=[
            Route("/", page),
            Route("/api/v1/health", health),
            Route("/api/v1/sessions", sessions),
            Route("/api/v1/sessions/{id}", close_session, methods=["DELETE"]),
            Route("/api/v1/tunnels", tunnels),
            Route("/api/v1/visitors", visitors),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[Middleware(HostCheck, allowed_hosts=allowed_hosts)],
        exception_handlers={HTTPException: http_error},
    )


def _drain_soon(session: Session) -> None:
    """GOAWAY now; the session closes when its streams are done (or after CLOSE_DRAIN s).
    The client may reconnect: closing a session is not a ban (revoke its token for that)."""
    task = asyncio.get_running_loop().create_task(session.drain(CLOSE_DRAIN))
    _draining.add(task)
    task.add_done_callback(_draining.discard)


#: drains in progress (a task nobody references may be collected mid-way)
_draining: set[asyncio.Task[None]] = set()


def _tunnel_json(tunnel: GrantedTunnel) -> dict[str, Any]:
    return {
        "name": tunnel.name,
        "kind": str(tunnel.kind),
        "public_url": tunnel.public_url,
        "remote_port": tunnel.remote_port,
    }
