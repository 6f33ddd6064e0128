"""Replay a captured request straight to the tunnel's local service (as ngrok does).

Going to the origin directly, not through the public URL, means a replay works while the
tunnel is reconnecting, does not pass the server's middlewares (auth, rate limits) a second
time, and reaches exactly the service the original reached. The request is sent as captured —
method, target with its query string, headers in order — minus hop-by-hop fields, with
``Connection: close``; edits replace method, target, headers or body. The replay is recorded
like real traffic (through the same :class:`~.capture.ExchangeTap`), marked ``replay_of``,
including an answer the origin gives before it has read the whole request (a 413, say).
"""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass

import anyio

from ferrotunnel.core import Tunnel

from .capture import ExchangeTap
from .exchange import Exchange
from .store import Store

__all__ = ["Edits", "ReplayError", "replay", "resent"]

#: not forwarded: they describe the original connection, not the request
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)


def resent(name: str, value: str, *, http2: bool) -> bool:
    """Whether a captured field goes out again with a replay or an export: not the
    hop-by-hop ones, except HTTP/2's ``te: trailers`` (gRPC needs it)."""
    key = name.lower()
    if key == "te" and http2:
        return value.strip(" \t").lower() == "trailers"
    return key not in HOP_BY_HOP


BODYLESS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})


class ReplayError(Exception):
    """The replay could not be made; ``code`` and ``status`` are what the API answers."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True, slots=True)
class Edits:
    """What to change before replaying; None keeps the original's."""

    method: str | None = None
    target: str | None = None
    headers: list[tuple[str, str]] | None = None
    body: bytes | None = None


def request_parts(
    original: Exchange, edits: Edits
) -> tuple[str, str, list[tuple[str, str]], bytes]:
    """The edited request: method, target, header fields (as captured) and body."""
    method = edits.method or original.method
    target = edits.target or original.target
    if edits.body is not None:
        body = edits.body
    elif not original.request_complete:
        raise ReplayError(
            "REQUEST_INCOMPLETE",
            f"the request's body stopped after {original.request_body.size} bytes (the "
            "connection ended first); replay with an edited body",
            409,
        )
    elif original.request_body.truncated:
        raise ReplayError(
            "BODY_TRUNCATED",
            f"only {len(original.request_body.data)} of the body's {original.request_body.size}"
            " bytes were captured; replay with an edited body",
            409,
        )
    else:
        body = bytes(original.request_body.data)
    headers = original.request_headers if edits.headers is None else edits.headers
    return method, target, headers, body


def build_request(original: Exchange, edits: Edits) -> tuple[str, str, bytes]:
    """The HTTP/1.1 request to send: (method, target, wire bytes)."""
    method, target, headers, body = request_parts(original, edits)
    # fields keep their order; Content-Length and Connection stay where they were
    lines = [f"{method} {target} HTTP/1.1"]
    length = f"{len(body)}" if body or method not in BODYLESS else None
    closes = False
    for name, value in headers:
        key = name.lower()
        if key == "content-length" and length is not None:
            lines.append(f"{name}: {length}")
            length = None
        elif key == "connection" and not closes:
            lines.append(f"{name}: close")
            closes = True
        elif key not in HOP_BY_HOP:
            lines.append(f"{name}: {value}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if not closes:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return method, target, head + body


async def replay(
    store: Store,
    original: Exchange,
    tunnel: Tunnel,
    edits: Edits,
    *,
    limit: int,
    within: float = 30.0,
) -> Exchange:
    """Send the (edited) request to ``tunnel``'s local address; returns the recorded replay."""
    if tunnel.local_addr is None:
        raise ReplayError(
            "NOT_REPLAYABLE", f"tunnel {tunnel.name!r} is served in-process, not by an address", 422
        )
    http2 = original.http_version == "HTTP/2"
    if http2:
        from .replay_h2 import build_h2_request, exchange_h2

        scheme = "https" if tunnel.local_tls else "http"
        request, body = build_h2_request(original, edits, scheme=scheme)
    else:
        request = build_request(original, edits)[2]
    tap = ExchangeTap(store, tunnel.name, limit, replay_of=original.id)
    tap.to_origin(request)  # recorded now, so a failed replay shows as a row too
    if tap.last is None:  # a head larger than the capture follows (edited headers)
        raise ReplayError("NOT_REPLAYABLE", "the request's head is too large to record", 422)
    addr = tunnel.local_addr
    error: str | None = "the replay was interrupted"  # unless it gets to an answer below
    try:
        with anyio.fail_after(within):
            tls = (http2 and tunnel.local_tls_http2) or tunnel.local_tls  # ALPN h2 for gRPC
            sock = await _connect(addr.host, addr.port, tls)
            if http2:
                async with sock:
                    error = await exchange_h2(sock, tap, request, body)
            else:
                async with sock, anyio.create_task_group() as tasks:
                    # sending and receiving at once: an origin may answer (413, 401...) and
                    # close or reset the connection before it has read the whole request
                    tasks.start_soon(_send, sock, request)
                    error = await _receive(sock, tap)
                    tasks.cancel_scope.cancel()
    except TimeoutError:
        error = f"no complete answer from {addr} within {within:.0f} s"
    except OSError as exc:
        error = f"cannot connect to {addr}: {exc.strerror or exc}"
    finally:
        tap.closed(error)  # never left pending, even when something unexpected escapes
    recorded = tap.last
    assert recorded is not None
    if recorded.error is not None and not recorded.complete:  # (a gRPC failure is an answer)
        raise ReplayError("REPLAY_FAILED", recorded.error, 502)
    return recorded


async def _send(sock: anyio.abc.ByteStream, request: bytes) -> None:
    """Sends the request; a connection that breaks meanwhile ends the receiving side too,
    which records what the origin answered, if anything."""
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await sock.send(request)


async def _receive(sock: anyio.abc.ByteStream, tap: ExchangeTap) -> str | None:
    """Feeds the origin's answer to ``tap`` until it is whole or the connection ends; returns
    why the connection broke, if it did (closing it ends a response without a length)."""
    while not tap.idle:
        try:
            tap.to_visitor(await sock.receive())
        except anyio.EndOfStream:
            break
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            return f"the connection broke: {exc.__cause__ or 'closed'}"
    return None


async def _connect(host: str, port: int, tls: ssl.SSLContext | None) -> anyio.abc.ByteStream:
    if tls is None:
        return await anyio.connect_tcp(host, port)
    # not "standard compatible": closing would wait for the origin's close_notify, which
    # some never send (grpc-core's server: each replay took its 30 s deadline to close)
    return await anyio.connect_tcp(
        host, port, tls=True, ssl_context=tls, tls_hostname=host, tls_standard_compatible=False
    )
