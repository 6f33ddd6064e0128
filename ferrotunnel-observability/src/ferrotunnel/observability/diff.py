"""How a replay's response differs from the original's: status, header fields, body."""

from __future__ import annotations

import difflib
from typing import Any

from .exchange import Exchange, render_body

__all__ = ["diff_responses"]

#: fields that differ on every response and would only be noise
VOLATILE = frozenset(
    {"date", "age", "expires", "last-modified", "etag", "set-cookie", "connection", "keep-alive"}
)


def diff_responses(original: Exchange, other: Exchange) -> dict[str, Any]:
    """``{"status": {...}, "headers": [...], "body": {...}, "same": bool}``; the body diff is
    a unified diff of the displayed text (JSON pretty-printed, binary as hex)."""
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
    text_a, text_b = _text(original), _text(other)
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
        and text_a == text_b
    )
    return {
        "original": original.id,
        "replay": other.id,
        "same": same,
        "status": {"original": original.status, "replay": other.status},
        "headers": headers,
        "body": {"same": text_a == text_b, "diff": "\n".join(body_lines)},
    }


def _fields(exchange: Exchange) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in exchange.response_headers:
        key = name.lower()
        fields[key] = f"{fields[key]}, {value}" if key in fields else value
    return fields


def _text(exchange: Exchange) -> str:
    if exchange.response_body is None:
        return ""
    body = render_body(
        exchange.response_body,
        exchange.header("content-type", response=True),
        exchange.header("content-encoding", response=True),
    )
    return str(body["text"])
