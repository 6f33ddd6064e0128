"""A captured exchange as something to run or share: a curl command, a HAR file, a pytest test.

``base_url`` says where the request goes: the tunnel's local service (what replay uses) or
its public URL. Hop-by-hop fields and Content-Length are left for the tool to set. A body the
capture truncated cannot be reproduced: the export says so instead of sending a wrong one.
"""

from __future__ import annotations

import base64
import datetime
import json
import keyword
import re
import shlex
from typing import Any

from .exchange import Body, Exchange
from .replay import resent

__all__ = ["to_curl", "to_har", "to_pytest"]

VERSION = "0.1.0"


def _headers(exchange: Exchange) -> list[tuple[str, str]]:
    """The fields to send again: not the hop-by-hop ones, except HTTP/2's ``te: trailers``
    (gRPC needs it)."""
    http2 = exchange.http_version == "HTTP/2"
    return [(k, v) for k, v in exchange.request_headers if resent(k, v, http2=http2)]


def _raw(text: str) -> bytes:
    """The bytes a captured field came as (heads are decoded as latin-1)."""
    return text.encode("latin-1")


_PRINTABLE = re.compile(rb"[\x20-\x7e]*")


def _escaped(data: bytes) -> str:
    """``data`` with every byte but printable ASCII (and ``'``, ``\\``) as ``\\xNN``, as both
    bash's ``$'...'`` and ``printf %b`` read it."""
    return "".join(chr(b) if 0x20 <= b < 0x7F and b not in b"'\\" else f"\\x{b:02x}" for b in data)


def _sh(data: bytes) -> str:
    """One bash word that is exactly ``data`` (no NUL); the command stays printable ASCII,
    so pasting it into a terminal sends no control characters and re-encodes nothing."""
    if _PRINTABLE.fullmatch(data):
        return shlex.quote(data.decode("ascii"))
    return f"$'{_escaped(data)}'"


def to_curl(exchange: Exchange, base_url: str, *, keep_host: bool = True) -> str:
    """A bash command line running curl with the request; ``keep_host=False`` lets the URL's
    host stand (for the public URL). Every word is quoted: method, target and fields are the
    visitor's, and may hold shell syntax."""
    url = base_url.rstrip("/").encode() + _raw(exchange.target)
    # -X HEAD would make curl wait for the body the answer's Content-Length announces
    method = ["-I"] if exchange.method == "HEAD" else ["-X", _sh(_raw(exchange.method))]
    # an HTTP/2 exchange came over h2c: an h2c-only service (gRPC) would not answer HTTP/1.1
    http2 = ["--http2-prior-knowledge"] if exchange.http_version == "HTTP/2" else []
    parts = ["curl", "-sS", *http2, *method, _sh(url)]
    for name, value in _headers(exchange):
        if name.lower() == "host" and not keep_host:
            continue
        # "Name:" with nothing after it tells curl to remove the field; "Name;" sends it empty
        field = f"{name}: {value}" if value else f"{name};"
        parts += ["-H", _sh(_raw(field))]
    body = exchange.request_body
    prefix = ""
    if exchange.method == "HEAD" and body.size:  # curl's -I cannot be given data
        prefix = (
            f"# curl cannot send a HEAD request with a body: its {body.size} bytes are left out\n"
        )
    elif body.truncated:
        prefix = f"# the body ({body.size} bytes) was captured only in part: it is left out\n"
    elif b"\0" in body.data:  # a NUL cannot be in an argument: printf writes it to stdin
        prefix = f"printf '%b' '{_escaped(bytes(body.data))}' | "
        parts += ["--data-binary", "@-"]
    elif body.data:
        parts += ["--data-binary", _sh(bytes(body.data))]
    return prefix + " ".join(parts) + "\n"


def _har_content(body: Body | None, content_type: str | None) -> dict[str, Any]:
    if body is None:
        return {"size": 0, "mimeType": "", "text": ""}
    data = bytes(body.data)
    content: dict[str, Any] = {"size": body.size, "mimeType": content_type or ""}
    try:
        content["text"] = data.decode("utf-8")
    except UnicodeDecodeError:
        content["text"] = base64.b64encode(data).decode()
        content["encoding"] = "base64"
    if body.truncated:
        content["comment"] = f"first {len(data)} of {body.size} bytes captured"
    return content


def to_har(exchange: Exchange, base_url: str) -> dict[str, Any]:
    """A HAR 1.2 log with this one entry."""
    url = base_url.rstrip("/") + exchange.target
    query = exchange.target.partition("?")[2]
    started = datetime.datetime.fromtimestamp(exchange.started, datetime.UTC)
    duration = (exchange.duration or 0.0) * 1000
    wait = (exchange.ttfb or 0.0) * 1000
    request: dict[str, Any] = {
        "method": exchange.method,
        "url": url,
        "httpVersion": exchange.http_version,
        "cookies": [],
        "headers": [{"name": k, "value": v} for k, v in exchange.request_headers],
        "queryString": [
            {"name": name, "value": value}
            for name, _, value in (pair.partition("=") for pair in query.split("&") if pair)
        ],
        "headersSize": -1,
        "bodySize": exchange.request_body.size,
    }
    if exchange.request_body.size:
        content = _har_content(exchange.request_body, exchange.header("content-type"))
        post = {"mimeType": content["mimeType"], "text": content["text"]}
        notes = [content["comment"]] if "comment" in content else []
        if "encoding" in content:
            # HAR 1.2 has no encoding for postData: without this mark, a tool would send
            # the base64 text itself
            post["encoding"] = "base64"
            notes.append("the body is not UTF-8: text is its base64")
        if notes:
            post["comment"] = "; ".join(notes)
        request["postData"] = post
    response: dict[str, Any] = {
        "status": exchange.status or 0,
        "statusText": exchange.reason,
        "httpVersion": exchange.response.version if exchange.response else "",
        "cookies": [],
        "headers": [{"name": k, "value": v} for k, v in exchange.response_headers],
        "content": _har_content(
            exchange.response_body, exchange.header("content-type", response=True)
        ),
        "redirectURL": exchange.header("location", response=True) or "",
        "headersSize": -1,
        "bodySize": exchange.response_body.size if exchange.response_body else -1,
    }
    entry: dict[str, Any] = {
        "startedDateTime": started.isoformat().replace("+00:00", "Z"),
        "time": round(duration, 3),
        "request": request,
        "response": response,
        "cache": {},
        "timings": {
            "send": 0,
            "wait": round(wait, 3),
            "receive": round(max(0.0, duration - wait), 3),
        },
    }
    if exchange.visitor_ip:
        entry["_visitorIp"] = exchange.visitor_ip
    if exchange.trace_id:
        entry["_traceId"] = exchange.trace_id
    if exchange.error:
        entry["comment"] = exchange.error
    return {
        "log": {
            "version": "1.2",
            "creator": {"name": "ferrotunnel dashboard", "version": VERSION},
            "entries": [entry],
        }
    }


def to_pytest(exchange: Exchange, base_url: str, *, keep_host: bool = True) -> str:
    """A self-contained pytest module (httpx) that sends the request and checks the answer
    the original got: status, and the body when it was captured whole (JSON compared as
    data). The request's ``Host`` goes as it came (an origin may serve several names, as
    the curl export and the replay send it); ``keep_host=False`` lets the URL's host stand
    (for the public URL)."""
    name = re.sub(r"\W+", "_", f"{exchange.method}_{exchange.path}".lower()).strip("_")
    if not name.isidentifier() or keyword.iskeyword(name):
        name = "request"
    # escaped, so that no target ends the docstring or holds an invalid escape (\x, \N)
    summary = f"{exchange.method} {exchange.target}".encode("unicode_escape").decode()
    summary = summary.replace('"', '\\"')
    lines = [
        f'"""Generated by the ferrotunnel dashboard from request #{exchange.id}: {summary}."""',
        "",
        "import httpx",
        "",
        f"BASE_URL = {base_url.rstrip('/')!r}",
        "",
        "",
        f"def test_{name}() -> None:",
    ]
    call, pad = "    response = httpx.request(", "    "
    if exchange.http_version == "HTTP/2":  # as it came: prior knowledge, no TLS
        lines += [
            "    # HTTP/2 needs httpx's HTTP/2 support: pip install 'httpx[http2]'",
            "    with httpx.Client(http1=False, http2=True) as client:",
        ]
        call, pad = "        response = client.request(", "        "
    lines += [
        call,
        f"{pad}    {exchange.method!r},",
        f"{pad}    BASE_URL + {exchange.target!r},",
        f"{pad}    headers=[",
    ]
    # pairs, as a field may come more than once; bytes, as httpx sends a str value only if
    # it is ASCII
    lines += [
        f"{pad}        ({k!r}, {_raw(v)!r}),"
        for k, v in _headers(exchange)
        if k.lower() != "accept-encoding" and (keep_host or k.lower() != "host")
    ]
    lines.append(f"{pad}    ],")
    body = exchange.request_body
    if body.data and not body.truncated:
        lines.append(f"{pad}    content={bytes(body.data)!r},")
    lines += [f"{pad}    timeout=30,", f"{pad})"]
    if exchange.response is not None:  # not the ingress's 502 when the origin never answered
        lines.append(f"    assert response.status_code == {exchange.response.status}")
    answer = exchange.response_body
    if answer is not None and exchange.complete and not answer.truncated:
        encoding = exchange.header("content-encoding", response=True)
        data = bytes(answer.data)
        media = (exchange.header("content-type", response=True) or "").split(";")[0].strip()
        if encoding is None and (media == "application/json" or media.endswith("+json")):
            try:
                value = json.loads(data)
            except ValueError:
                pass
            else:
                lines.append(f"    assert response.json() == {value!r}")
                return "\n".join(lines) + "\n"
        if encoding is None and len(data) <= 4096:
            lines.append(f"    assert response.content == {data!r}")
    return "\n".join(lines) + "\n"
