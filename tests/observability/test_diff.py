"""The response diff, on exchanges fed to a tap by hand: ``same`` comes from the bytes
captured and the real sizes, never from the displayed text alone."""

from __future__ import annotations

import os
from typing import Any

import pytest

from ferrotunnel.observability.capture import ExchangeTap
from ferrotunnel.observability.diff import diff_responses
from ferrotunnel.observability.exchange import Exchange
from ferrotunnel.observability.store import Store

pytestmark = pytest.mark.timeout(10)

GET = b"GET /blob HTTP/1.1\r\nHost: app\r\n\r\n"


def exchange(response: bytes, limit: int = 64 * 1024) -> Exchange:
    tap = ExchangeTap(Store(), "app", limit)
    tap.to_origin(GET)
    tap.to_visitor(response)
    tap.closed(None)
    assert tap.last is not None
    return tap.last


def diff(a: bytes, b: bytes, limit: int = 64 * 1024) -> dict[str, Any]:
    return diff_responses(exchange(a, limit), exchange(b, limit))


def sized(body: bytes, content_type: str = "application/octet-stream") -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


def chunked(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    )


def test_text_bodies_are_diffed_line_by_line() -> None:
    shown = diff(sized(b"one\ntwo\n", "text/plain"), sized(b"one\nthree\n", "text/plain"))
    assert (shown["same"], shown["body"]["same"], shown["body"]["partial"]) == (False, False, False)
    assert "-two" in shown["body"]["diff"]
    assert "+three" in shown["body"]["diff"]
    same = diff(sized(b"one\n", "text/plain"), sized(b"one\n", "text/plain"))
    assert (same["same"], same["body"], same["headers"]) == (
        True,
        {"same": True, "partial": False, "size": {"original": 4, "replay": 4}, "diff": ""},
        [],
    )


def test_binary_bodies_that_differ_after_the_hex_dump_differ() -> None:
    """The detail view shows a binary body's first 4 KiB as hex: bytes after that count too,
    and the diff of the hex dumps is marked partial."""
    prefix = b"\x89PNG\r\n\x1a\n" + os.urandom(5000)
    shown = diff(sized(prefix + b"\x00" * 100), sized(prefix + b"\xff" * 100))
    assert (shown["same"], shown["body"]["same"]) == (False, False)
    assert shown["body"]["partial"] is True
    same = diff(sized(prefix), sized(prefix))
    assert (same["same"], same["body"]["same"]) == (True, True)


def test_bodies_that_differ_past_the_capture_limit_differ_by_size() -> None:
    """Two chunked bodies with the same first ``limit`` bytes but of other sizes: the sizes
    tell them apart, and the diff covers only what was captured."""
    shown = diff(chunked(b"a" * 1024), chunked(b"a" * 1024 + b"b" * 9000), limit=1024)
    assert (shown["same"], shown["body"]["same"]) == (False, False)
    assert shown["body"]["partial"] is True
    assert shown["body"]["size"] == {"original": 1024, "replay": 10024}


def test_bodies_that_display_alike_but_differ_in_bytes_differ() -> None:
    """Pretty-printed JSON looks the same whatever the spacing sent: the bytes differ."""
    shown = diff(sized(b'{"a": 1}', "application/json"), sized(b'{"a":1}', "application/json"))
    assert (shown["same"], shown["body"]["same"], shown["body"]["diff"]) == (False, False, "")
