"""The watching parser: message boundaries in every framing, at every chunk split."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from ferrotunnel.observability.http1 import Head, Http1Parser


@dataclass
class Seen:
    heads: list[Head] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    ends: int = 0
    opaque: list[str] = field(default_factory=list)

    def parser(self, *, response: bool) -> Http1Parser:
        def on_head(head: Head) -> None:
            self.heads.append(head)
            self.bodies.append(b"")

        def on_body(chunk: memoryview) -> None:
            self.bodies[-1] += bytes(chunk)

        def on_end() -> None:
            self.ends += 1

        return Http1Parser(
            response=response,
            on_head=on_head,
            on_body=on_body,
            on_end=on_end,
            on_opaque=self.opaque.append,
        )


def feed_split(data: bytes, *, response: bool, step: int, methods: tuple[str, ...] = ()) -> Seen:
    seen = Seen()
    parser = seen.parser(response=response)
    for method in methods:
        parser.expect(method)
    for i in range(0, len(data), step):
        parser.feed(memoryview(data)[i : i + step])
    parser.feed_eof()
    return seen


PIPELINE = (
    b"POST /a?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
    b"PUT /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n"
    b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n"
)


@pytest.mark.parametrize("step", [1, 2, 7, 64, 4096])
def test_requests_in_every_framing_at_every_split(step: int) -> None:
    seen = feed_split(PIPELINE, response=False, step=step)
    assert [(h.method, h.target) for h in seen.heads] == [
        ("POST", "/a?x=1"),
        ("PUT", "/b"),
        ("GET", "/c"),
    ]
    assert seen.bodies == [b"hello", b"abcde", b""]
    assert seen.ends == 3
    assert seen.heads[0].headers == [("Host", "h"), ("Content-Length", "5")]
    assert not seen.opaque


RESPONSES = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
    b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"  # the answer to HEAD: no body
    b"HTTP/1.1 204 No Content\r\n\r\n"
    b"HTTP/1.1 500 Oops\r\n\r\nuntil the end"
)


@pytest.mark.parametrize("step", [1, 3, 4096])
def test_responses_follow_the_request_methods(step: int) -> None:
    seen = feed_split(RESPONSES, response=True, step=step, methods=("POST", "HEAD", "GET", "GET"))
    assert [(h.status, h.reason) for h in seen.heads] == [
        (200, "OK"),
        (200, "OK"),
        (204, "No Content"),
        (500, "Oops"),
    ]
    assert seen.bodies == [b"abc", b"", b"", b"until the end"]
    assert seen.ends == 4  # the last one at EOF


def test_a_protocol_switch_turns_both_sides_opaque() -> None:
    requests = feed_split(
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello",
        response=False,
        step=5,
    )
    assert requests.ends == 1
    assert requests.opaque == ["protocol switched"]
    responses = feed_split(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi",
        response=True,
        step=5,
        methods=("GET",),
    )
    assert [h.status for h in responses.heads] == [101]
    assert responses.opaque == ["protocol switched"]


def test_http2_and_garbage_are_not_parsed() -> None:
    assert feed_split(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", response=False, step=3).opaque == [
        "HTTP/2"
    ]
    assert feed_split(b"\x16\x03\x01 hello\r\n\r\n", response=False, step=4).opaque
    assert feed_split(b"x" * 20000, response=False, step=1000).opaque == ["line too long"]
    big_head = b"GET / HTTP/1.1\r\n" + b"X-A: " + b"a" * 5000 + b"\r\n"
    assert feed_split(big_head * 20, response=False, step=4096).opaque


def test_a_bad_chunk_size_stops_the_parser_not_the_caller() -> None:
    seen = feed_split(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", response=True, step=4
    )
    assert seen.opaque == ["bad chunk size"]
