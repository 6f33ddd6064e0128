"""The dashboard's web app: the REST API under ``/api/v1``, live events, the static UI.

Every error is JSON: ``{"error": {"code": "NOT_FOUND", "message": "..."}}``. The routes are
documented in ``docs/dashboard.md``.

Live events are a plain ``StreamingResponse`` of ``text/event-stream`` (about twenty lines)
rather than sse-starlette: that library patches ``uvicorn.Server.handle_exit`` process-wide
and keys its shutdown on global state, which does not suit a server embedded in someone
else's process and loop; here each stream ends when its dashboard stops.

The dashboard listens on loopback and holds captured traffic, so it defends against web pages
the user visits: the Host header must name a loopback host (no DNS rebinding), and POST bodies
must be ``application/json`` (a cross-site form cannot send that without a CORS preflight,
which is never granted).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import string
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import prometheus_client
from prometheus_client.registry import CollectorRegistry
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from ferrotunnel.core import Tunnel

from .diff import diff_responses
from .exchange import Exchange
from .export import VERSION, to_curl, to_har, to_pytest
from .replay import Edits, ReplayError, replay
from .store import Store, sse_message, valid_status_filter

__all__ = ["DashboardContext", "HostCheck", "create_app", "error_response"]

STATIC = Path(__file__).parent / "static"
#: the browser retries a dropped event stream after this many milliseconds
RETRY_MS = 1000
#: a comment line keeps idle event streams (and proxies in between) alive
PING_INTERVAL = 15.0
MAX_LIMIT = 500
#: a request id: ASCII digits only (``str.isdigit`` takes "²" too, which ``int`` refuses, and
#: ``int`` refuses more than 4300 digits), and ids never grow that long
REQUEST_ID = re.compile(r"[0-9]{1,18}")
#: RFC 9110 token characters, what a header name is made of
TCHAR = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)


@dataclass
class DashboardContext:
    """What the app serves: the store, and the client's tunnels (for replay and exports)."""

    store: Store
    tunnels: dict[str, Tunnel]
    capture_limit: int
    public_urls: dict[str, str] = field(default_factory=dict)
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    #: what ``/metrics`` exposes (the dashboard plugin gives the ``metrics`` plugin's client
    #: registry when the client has that plugin)
    registry: CollectorRegistry = prometheus_client.REGISTRY


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


#: a Host header: a name or IPv4 address, or an IPv6 one in brackets; then maybe a port
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[^\[\]:/@\s]+)(?::[0-9]{1,5})?")


class HostCheck:
    """Answers only requests whose ``Host`` names one of ``allowed_hosts`` (no DNS
    rebinding: a page on another site that points its name at 127.0.0.1 gets nothing); others
    get ``400 INVALID_HOST`` in the JSON error format. What Starlette's
    ``TrustedHostMiddleware`` checks, minus its plain-text answer and ``www.`` redirect."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        self.allowed = frozenset(host.lower() for host in allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            value = Headers(scope=scope).get("host", "").strip().lower()
            found = _HOST.fullmatch(value)
            if found is None or found[1] not in self.allowed:
                names = ", ".join(sorted(self.allowed))
                message = f"invalid Host header {value!r}: this server answers only to {names}"
                await error_response(400, "INVALID_HOST", message)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(ctx: DashboardContext, *, allowed_hosts: list[str] | None = None) -> Starlette:
    """The ASGI app for one client's dashboard."""

    routes = [
        Route("/", index),
        Route("/api/v1/health", health),
        Route("/api/v1/tunnels", tunnels),
        Route("/api/v1/tunnels/{name}", tunnel),
        Route("/api/v1/requests", requests, methods=["GET", "DELETE"]),
        Route("/api/v1/requests/{id}", request_detail),
        Route("/api/v1/requests/{id}/replay", replay_request, methods=["POST"]),
        Route("/api/v1/requests/{id}/diff", diff),
        Route("/api/v1/requests/{id}/export", export),
        Route("/api/v1/events", events),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    hosts = allowed_hosts or ["127.0.0.1", "localhost", "[::1]"]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(HostCheck, allowed_hosts=hosts)],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
    )
    app.state.ctx = ctx
    return app


def _ctx(request: Request) -> DashboardContext:
    ctx: DashboardContext = request.app.state.ctx
    return ctx


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
    if not request.url.path.startswith("/api/"):
        return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)
    code = codes.get(exc.status_code, "HTTP_ERROR")
    message = f"no such API route: {request.url.path}" if exc.status_code == 404 else exc.detail
    return error_response(exc.status_code, code, str(message), exc.headers)  # 405's Allow


# ---------------------------------------------------------------------------- pages


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})


# ---------------------------------------------------------------------------- API


async def health(request: Request) -> Response:
    ctx = _ctx(request)
    return JSONResponse(
        {
            "status": "ok",
            "version": VERSION,
            "tunnels": len(ctx.store.tunnels),
            "requests": len(ctx.store),
            "capture_limit": ctx.capture_limit,
        }
    )


async def tunnels(request: Request) -> Response:
    states = _ctx(request).store.tunnels.values()
    return JSONResponse({"tunnels": [state.as_json() for state in states]})


async def tunnel(request: Request) -> Response:
    name = request.path_params["name"]
    state = _ctx(request).store.tunnels.get(name)
    if state is None:
        raise ApiError(404, "NOT_FOUND", f"no tunnel named {name!r}")
    return JSONResponse(state.as_json())


async def requests(request: Request) -> Response:
    store = _ctx(request).store
    if request.method == "DELETE":
        store.clear()
        return Response(status_code=204)
    params = request.query_params
    limit = _int_param(params.get("limit"), "limit", 50, low=1, high=MAX_LIMIT) or 50
    before = _int_param(params.get("before"), "before", None, low=1)
    status = params.get("status")
    if status and not valid_status_filter(status):
        raise ApiError(400, "INVALID_PARAMETER", "status must be like 404, 4xx or pending")
    filters = {
        "tunnel": params.get("tunnel"),
        "method": params.get("method"),
        "status": status,
        "path": params.get("path") or params.get("q"),
    }
    found = store.query(limit=limit, before=before, **filters)
    more = len(found) == limit and bool(store.query(limit=1, before=found[-1].id, **filters))
    return JSONResponse(
        {
            "requests": [e.summary() for e in found],
            "next_before": found[-1].id if more else None,
        }
    )


async def request_detail(request: Request) -> Response:
    return JSONResponse(_exchange(request).detail())


async def replay_request(request: Request) -> Response:
    ctx = _ctx(request)
    original = _exchange(request)
    edits = _edits(await _json_body(request))
    tunnel = ctx.tunnels.get(original.tunnel)
    if tunnel is None:
        raise ApiError(422, "NOT_REPLAYABLE", f"tunnel {original.tunnel!r} is not this client's")
    try:
        replayed = await replay(ctx.store, original, tunnel, edits, limit=ctx.capture_limit)
    except ReplayError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None
    return JSONResponse(replayed.detail(), status_code=201)


async def diff(request: Request) -> Response:
    ctx = _ctx(request)
    exchange = _exchange(request)
    against = request.query_params.get("against")
    if against is not None:
        baseline_id = _int_param(against, "against", None, low=1)
    elif exchange.replay_of is not None:
        baseline_id = exchange.replay_of
    else:
        raise ApiError(
            400, "NO_BASELINE", "not a replay: give ?against=ID to compare with another request"
        )
    assert baseline_id is not None
    baseline = ctx.store.get(baseline_id)
    if baseline is None:
        raise ApiError(404, "NOT_FOUND", f"no request #{baseline_id} (it may have been evicted)")
    return JSONResponse(diff_responses(baseline, exchange))


async def export(request: Request) -> Response:
    ctx = _ctx(request)
    exchange = _exchange(request)
    fmt = request.query_params.get("format", "curl")
    target = request.query_params.get("target", "origin")
    tunnel = ctx.tunnels.get(exchange.tunnel)
    if target == "origin":
        if tunnel is None or tunnel.local_addr is None:
            raise ApiError(422, "NO_ORIGIN", f"tunnel {exchange.tunnel!r} has no local address")
        scheme = "https" if tunnel.local_tls is not None else "http"
        base = f"{scheme}://{tunnel.local_addr}"
    elif target == "public":
        public = ctx.public_urls.get(exchange.tunnel)
        if public is None:
            raise ApiError(422, "NO_PUBLIC_URL", f"tunnel {exchange.tunnel!r} has no public URL")
        base = public
    else:
        raise ApiError(400, "INVALID_PARAMETER", "target must be origin or public")
    filename = f"request-{exchange.id}"
    if fmt == "curl":
        text = to_curl(exchange, base, keep_host=target == "origin")
        return PlainTextResponse(text)
    if fmt == "har":
        return JSONResponse(
            to_har(exchange, base),
            headers={"content-disposition": f'attachment; filename="{filename}.har"'},
        )
    if fmt == "pytest":
        return PlainTextResponse(
            to_pytest(exchange, base, keep_host=target == "origin"),
            headers={"content-disposition": f'attachment; filename="test_{filename}.py"'},
        )
    raise ApiError(400, "INVALID_PARAMETER", "format must be curl, har or pytest")


async def events(request: Request) -> Response:
    ctx = _ctx(request)

    async def stream() -> AsyncIterator[bytes]:
        with ctx.store.subscribe() as subscriber:
            hello = {"requests": len(ctx.store), "tunnels": len(ctx.store.tunnels)}
            yield f"retry: {RETRY_MS}\n\n".encode() + sse_message("hello", hello)
            while not subscriber.lagged and not ctx.closing.is_set():
                try:
                    message = await asyncio.wait_for(subscriber.queue.get(), PING_INTERVAL)
                except TimeoutError:
                    message = b": ping\n\n"
                if message:
                    yield message

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


async def metrics(request: Request) -> Response:
    """Prometheus text format, from the context's registry."""
    body = prometheus_client.generate_latest(_ctx(request).registry)
    return Response(body, media_type=prometheus_client.CONTENT_TYPE_LATEST)


# ---------------------------------------------------------------------------- helpers


def _exchange(request: Request) -> Exchange:
    raw = request.path_params["id"]
    if not REQUEST_ID.fullmatch(raw):
        raise ApiError(400, "INVALID_ID", f"request ids are numbers, not {raw[:40]!r}")
    exchange = _ctx(request).store.get(int(raw))
    if exchange is None:
        raise ApiError(404, "NOT_FOUND", f"no request #{raw} (it may have been evicted)")
    return exchange


def _int_param(
    raw: str | None, name: str, default: int | None, *, low: int, high: int | None = None
) -> int | None:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "INVALID_PARAMETER", f"{name} must be a number") from None
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ApiError(400, "INVALID_PARAMETER", f"{name} must be {bounds}")
    return value


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", "send a JSON body (application/json)")
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, "INVALID_JSON", f"the body is not JSON: {exc}") from None
    except RecursionError:  # the parser recurses once per nested array or object
        raise ApiError(400, "INVALID_JSON", "the body is nested too deeply") from None
    if not isinstance(value, dict):
        raise ApiError(400, "INVALID_JSON", "the body must be a JSON object")
    return value


def _edits(body: dict[str, Any]) -> Edits:
    """The replay body: ``method``, ``path``, ``headers`` (``[[name, value], ...]`` or an
    object), and ``body`` (text) or ``body_base64``; each optional. Whatever cannot go on
    the wire as written is refused here, so that building the request cannot fail."""
    unknown = set(body) - {"method", "path", "headers", "body", "body_base64"}
    if unknown:
        raise ApiError(400, "INVALID_EDIT", f"unknown fields: {', '.join(sorted(unknown))}")
    method = body.get("method")
    if method is not None and (
        not isinstance(method, str) or not method.isascii() or not method.isalpha()
    ):
        raise ApiError(400, "INVALID_EDIT", "method must be a token like GET or POST")
    path = _edit_path(body.get("path"))
    headers = _edit_headers(body.get("headers"))
    data: bytes | None = None
    if "body" in body and "body_base64" in body:
        raise ApiError(400, "INVALID_EDIT", "give body or body_base64, not both")
    if "body" in body:
        if not isinstance(body["body"], str):
            raise ApiError(400, "INVALID_EDIT", "body must be a string")
        try:
            data = body["body"].encode()
        except UnicodeEncodeError:  # JSON can spell a lone surrogate, "\ud800"
            raise ApiError(400, "INVALID_EDIT", "body is not valid Unicode") from None
    elif "body_base64" in body:
        if not isinstance(body["body_base64"], str):
            raise ApiError(400, "INVALID_EDIT", "body_base64 must be a string")
        try:
            data = base64.b64decode(body["body_base64"], validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "INVALID_EDIT", "body_base64 is not base64") from None
    return Edits(method.upper() if method else None, path, headers, data)


def _edit_path(path: object) -> str | None:
    """The request target, sent as ASCII: other characters are percent-encoded as UTF-8, as
    a browser does with a URL typed in; spaces and control characters are refused."""
    if path is None:
        return None
    if not isinstance(path, str) or not path.startswith("/") or any(_control(c) for c in path):
        raise ApiError(400, "INVALID_EDIT", "path must start with / and have no spaces or controls")
    try:
        return quote(path, safe=string.punctuation)  # keeps ASCII, and %-escapes as they are
    except UnicodeEncodeError:  # a lone surrogate
        raise ApiError(400, "INVALID_EDIT", "path is not valid Unicode") from None


def _control(c: str) -> bool:
    """A space, a C0 control or DEL: what ends or breaks a request line."""
    return c <= " " or c == "\x7f"


def _edit_headers(raw: object) -> list[tuple[str, str]] | None:
    if raw is None:
        return None
    pairs: list[Any] = list(raw.items()) if isinstance(raw, dict) else raw  # type: ignore[assignment]
    if not isinstance(pairs, list):
        raise ApiError(400, "INVALID_EDIT", "headers must be a list of [name, value] or an object")
    headers = []
    for pair in pairs:
        if not (
            isinstance(pair, list | tuple)
            and len(pair) == 2
            and all(isinstance(p, str) for p in pair)
        ):
            raise ApiError(400, "INVALID_EDIT", "each header must be [name, value] strings")
        name, value = pair
        if not name or not set(name) <= TCHAR:
            raise ApiError(400, "INVALID_EDIT", f"header name {name!r} is not an HTTP token")
        if not all(c == "\t" or " " <= c <= "~" or "\x80" <= c <= "\xff" for c in value):
            raise ApiError(
                400, "INVALID_EDIT", f"header {name}: only Latin-1 without control characters"
            )
        headers.append((name, value))
    return headers
