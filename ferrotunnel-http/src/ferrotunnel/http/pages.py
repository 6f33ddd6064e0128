"""Error responses a person can read: HTML for browsers, plain text for everything else."""

from __future__ import annotations

import html
from http import HTTPStatus

__all__ = ["REASONS", "error_response", "wants_html"]

#: reason phrases by status: the standard library's, with RFC 9110's name for 413
REASONS = {status.value: status.phrase for status in HTTPStatus} | {413: "Content Too Large"}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{status} {reason}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:4em auto;
padding:0 1em;color:#222}}
h1{{font-size:1.4em}}code{{background:#f2f2f2;padding:.1em .3em;border-radius:3px}}
footer{{margin-top:3em;color:#888;font-size:.85em}}</style></head>
<body><h1>{status} {reason}</h1><p>{detail}</p><footer>ferrotunnel</footer></body></html>
"""


def wants_html(accept: bytes | None) -> bool:
    return accept is not None and b"text/html" in accept.lower()


def error_response(
    status: int,
    detail: str,
    *,
    accept: bytes | None = None,
    close: bool = True,
    head_only: bool = False,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> bytes:
    """A whole HTTP/1.1 response; ``detail`` is one sentence saying what happened and why."""
    reason = REASONS.get(status, "Error")
    if wants_html(accept):
        body = _PAGE.format(status=status, reason=reason, detail=html.escape(detail)).encode()
        content_type = b"text/html; charset=utf-8"
    else:
        body = f"{status} {reason}: {detail}\n".encode()
        content_type = b"text/plain; charset=utf-8"
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    if close:
        headers.append((b"connection", b"close"))
    headers += extra_headers or []
    head = b"HTTP/1.1 %d %s\r\n" % (status, reason.encode())
    head += b"".join(b"%s: %s\r\n" % pair for pair in headers) + b"\r\n"
    return head if head_only else head + body
