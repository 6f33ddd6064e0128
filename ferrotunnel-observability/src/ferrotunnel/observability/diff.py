"""How a replay's response differs from the original's: status, header fields, body."""

from __future__ import annotations

import difflib
from typing import Any

from .exchange import HEX_LIMIT, NO_BODY, Body, Exchange, render_body

__all__ = ["diff_responses"]

#: fields that differ on every response and would only be noise
VOLATILE = frozenset(
    {"date", "age", "expires", "last-modified", "etag", "set-cookie", "connection", "keep-alive"}
)


def diff_responses(original: Exchange, other: Exchange) -> dict[str, Any]:
    """``{"status": {...}, "headers": [...], "body": {...}, "same": bool}``.

    Whether the bodies are the same is decided on the bytes captured and the real sizes: the
    displayed text can hide a difference (a binary body shows only its first 4 KiB as hex,
    pretty-printed JSON ignores spacing). The text serves only for the unified diff, which is
    marked ``partial`` when it cannot show every byte.
    """
    headers = []
    a, b = _fields(original), _fields(other)
    for name in sorted(a.keys() | b.keys()):
        if a.get(name) != b.get(name):
            headers.append(
                {
                    "name": name,
                    "original": a.get(name),
                    "replay": b.get(name),
                    "volatile": name in VOLATILE,
                }
            )
    body_a, body_b = original.response_body or NO_BODY, other.response_body or NO_BODY
    # a body captured in part is compared as far as it was captured, and by its size
    body_same = body_a.size == body_b.size and body_a.data == body_b.data
    (text_a, partial_a), (text_b, partial_b) = _text(original), _text(other)
    body_lines = list(
        difflib.unified_diff(
            text_a.splitlines(),
            text_b.splitlines(),
            f"#{original.id}",
            f"#{other.id}",
            lineterm="",
            n=3,
        )
    )
    same = (
        original.status == other.status
        and not [h for h in headers if not h["volatile"]]
        and body_same
    )
    return {
        "original": original.id,
        "replay": other.id,
        "same": same,
        "status": {"original": original.status, "replay": other.status},
        "headers": headers,
        "body": {
            "same": body_same,
            "partial": partial_a or partial_b,
            "size": {"original": body_a.size, "replay": body_b.size},
            "diff": "\n".join(body_lines),
        },
    }


def _fields(exchange: Exchange) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in exchange.response_headers:
        key = name.lower()
        fields[key] = f"{fields[key]}, {value}" if key in fields else value
    return fields


def _text(exchange: Exchange) -> tuple[str, bool]:
    """The response body as displayed, and whether that shows only part of it (a body
    captured in part, or a binary one whose hex dump stops after ``HEX_LIMIT`` bytes)."""
    body: Body = exchange.response_body or NO_BODY
    shown = render_body(
        body,
        exchange.header("content-type", response=True),
        exchange.header("content-encoding", response=True),
    )
    partial = body.truncated or (shown["kind"] == "binary" and len(body.data) > HEX_LIMIT)
    return str(shown["text"]), partial
