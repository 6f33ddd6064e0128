"""The watching parser: message boundaries in every framing, at every chunk split."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ferrotunnel.observability.http1 import (
    Head,
    Http1Parser,
    request_head,
    response_head,
    start_line,
    whole_request,
    whole_response,
)


@dataclass
class Seen:
    heads: list[Head] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    ends: int = 0
    opaque: list[str] = field(default_factory=list)

    def parser(self, *, response: bool, head_limit: int = 64 * 1024) -> Http1Parser:
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
            head_limit=head_limit,
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
    """CONNECT switches once its request ends; an Upgrade only if its answer is a 101 (the
    request side is then stopped by the tap), so a declined one leaves the stream HTTP/1."""
    requests = feed_split(
        b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n\x16\x03\x01 tls",
        response=False,
        step=5,
    )
    assert requests.ends == 1
    assert requests.opaque == ["protocol switched"]
    requests = feed_split(
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        b"GET /next HTTP/1.1\r\n\r\n",
        response=False,
        step=5,
    )
    assert [h.target for h in requests.heads] == ["/ws", "/next"]
    assert not requests.opaque
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


# ---------------------------------------------------------------------------- heads, however split


def record(
    data: bytes,
    cuts: list[int],
    *,
    response: bool,
    methods: tuple[str, ...] = (),
    head_limit: int = 64 * 1024,
) -> Seen:
    """What a parser sees of ``data`` fed in pieces cut at ``cuts``."""
    seen = Seen()
    parser = seen.parser(response=response, head_limit=head_limit)
    for method in methods:
        parser.expect(method)
    bounds = [0, *sorted(set(cuts)), len(data)]
    for start, end in itertools.pairwise(bounds):
        if end > start:
            parser.feed(memoryview(data)[start:end])
    parser.feed_eof()
    return seen


def summary(seen: Seen) -> tuple[object, ...]:
    heads = [
        (h.raw, h.method, h.target, h.version, h.status, h.reason, h.headers) for h in seen.heads
    ]
    return heads, seen.bodies, seen.ends, seen.opaque


def test_a_head_split_at_every_byte_position_is_seen_as_if_whole() -> None:
    for data, response, methods in (
        (PIPELINE, False, ()),
        (RESPONSES, True, ("POST", "HEAD", "GET", "GET")),
    ):
        whole = summary(record(data, [], response=response, methods=methods))
        for cut in range(1, len(data)):
            split = record(data, [cut], response=response, methods=methods)
            assert summary(split) == whole, cut


def test_several_messages_and_empty_lines_between_them_in_one_chunk() -> None:
    data = b"\r\n" + PIPELINE + b"\r\n\r\n" + b"DELETE /d HTTP/1.1\nHost: h\n\n"  # bare LF too
    seen = record(data, [], response=False)
    assert [(h.method, h.target) for h in seen.heads] == [
        ("POST", "/a?x=1"),
        ("PUT", "/b"),
        ("GET", "/c"),
        ("DELETE", "/d"),
    ]
    assert seen.heads[3].headers == [("Host", "h")]
    assert (seen.bodies, seen.ends, seen.opaque) == ([b"hello", b"abcde", b"", b""], 4, [])
    for cut in range(1, len(data)):
        assert summary(record(data, [cut], response=False)) == summary(seen), cut


def test_chunked_bodies_with_extensions_and_trailers_at_every_split() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"4;name=value\r\nwiki\r\n5\r\npedia\r\n0\r\nX-Checksum: abc\r\nX-More: 1\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\n\r\n"
    )
    whole = record(data, [], response=True, methods=("GET", "GET"))
    assert [h.status for h in whole.heads] == [200, 204]
    assert (whole.bodies, whole.ends, whole.opaque) == ([b"wikipedia", b""], 2, [])
    for cut in range(1, len(data)):
        assert summary(record(data, [cut], response=True, methods=("GET", "GET"))) == summary(
            whole
        ), cut


def test_header_fields_are_split_out_only_when_asked_for_and_as_sent() -> None:
    seen = record(
        b"GET / HTTP/1.1\r\nHost:  h \r\nX-Empty:\r\nno colon here\r\nX-A: 1: 2\r\n\r\n",
        [],
        response=False,
    )
    (head,) = seen.heads
    assert head.raw.startswith(b"GET / HTTP/1.1\r\n")
    assert head._headers is None  # not split yet
    assert head.headers == [("Host", "h"), ("X-Empty", ""), ("X-A", "1: 2")]
    assert head.header("x-a") == "1: 2"
    assert head.header("absent") is None


def test_framing_fields_are_found_in_any_case_with_spaces_before_the_colon() -> None:
    seen = record(
        b"POST /a HTTP/1.1\r\ncONTENT-lENGTH : 3\r\n\r\nabc"
        b"POST /b HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nde"
        b"POST /c HTTP/1.1\r\nX-Long: 1\r\n Content-Length: 9\r\n\r\n",  # folded: not a field
        [],
        response=False,
    )
    assert seen.bodies == [b"abc", b"de", b""]
    assert (seen.ends, seen.opaque) == (3, [])


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "bad content-length"),
        (b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", "bad content-length"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", "line too long"),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 2000 + b"\r\n", "head too large"),
    ],
)
def test_a_head_is_judged_alike_whole_or_split(data: bytes, why: str) -> None:
    for cuts in ([], [len(data) // 2], list(range(1, len(data)))):
        assert record(data, cuts, response=False, head_limit=10_000).opaque == [why]


def test_a_head_at_the_limit_is_followed_over_it_is_not() -> None:
    head = b"GET / HTTP/1.1\r\nX: " + b"y" * 60 + b"\r\n"  # with its line ends, the limit
    for extra, expected in ((b"", []), (b"z", ["head too large"])):
        data = head[:-2] + extra + b"\r\n\r\nGET /next HTTP/1.1\r\n\r\n"
        for cuts in ([], [5], list(range(1, len(data)))):
            seen = record(data, cuts, response=False, head_limit=len(head))
            assert seen.opaque == expected, cuts


# ---------------------------------------------------------------------------- property


NAMES = ["Host", "X-A", "Content-Length", "content-length", "TRANSFER-ENCODING", "Connection"]
NAMES += ["Upgrade", "Set-Cookie", "Content-Length "]
VALUES = ["", "0", "1", "7", "3, 3", "chunked", "gzip, chunked", "chunked, gzip", "close"]
VALUES += ["keep-alive, Upgrade", "websocket", " spaced out ", "zz"]
REQUEST_LINES = [b"GET / HTTP/1.1", b"POST /a?b=1 HTTP/1.1", b"HEAD /h HTTP/1.0"]
REQUEST_LINES += [b"CONNECT h:443 HTTP/1.1", b"PUT /p HTTP/1.1", b"GET /no-version"]
STATUS_LINES = [b"HTTP/1.1 200 OK", b"HTTP/1.1 204 No Content", b"HTTP/1.1 304 Not Modified"]
STATUS_LINES += [b"HTTP/1.1 100 Continue", b"HTTP/1.0 404 Not Found", b"HTTP/1.1 101 Switching"]
STATUS_LINES += [b"HTTP/1.1 500", b"HTTP/1.1 2x0 Odd"]


@st.composite
def messages(draw: st.DrawFn, response: bool) -> bytes:
    """One message: a head (CRLF or bare LF lines) and a body framed as its fields say, or
    not (then the stream desynchronises — both ways of feeding it must agree on that too)."""
    end = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
    start = draw(st.sampled_from(STATUS_LINES if response else REQUEST_LINES))
    fields = draw(st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=5))
    head = start + end + b"".join(f"{n}:{v}".encode() + end for n, v in fields) + end
    body = draw(st.binary(max_size=30))
    if draw(st.booleans()):
        sizes = draw(st.lists(st.integers(1, 20), max_size=3))
        body = b"".join(b"%x;e=1\r\n" % size + b"c" * size + b"\r\n" for size in sizes)
        body += b"0\r\n" + draw(st.sampled_from([b"", b"X-Trailer: 1\r\n"])) + b"\r\n"
    return draw(st.sampled_from([b"", b"\r\n"])) + head + body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_whole_heads_and_split_heads_are_seen_alike(data: st.DataObject) -> None:
    response = data.draw(st.booleans())
    stream = b"".join(data.draw(st.lists(messages(response), min_size=1, max_size=4)))
    methods = tuple(data.draw(st.lists(st.sampled_from(["GET", "HEAD", "CONNECT"]), max_size=4)))
    cuts = data.draw(st.lists(st.integers(1, len(stream)), max_size=10))
    whole = summary(record(stream, [], response=response, methods=methods))
    split = record(stream, cuts, response=response, methods=methods)
    assert summary(split) == whole
    byte_by_byte = record(stream, list(range(len(stream))), response=response, methods=methods)
    assert summary(byte_by_byte) == whole


def _line(*choices: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.tuples(*(st.sampled_from(c) for c in choices)).map(b"".join)


_SEP = [b" ", b"  ", b"", b"\t", b" \r"]
_REQUEST_LINES = _line(
    [b"GET", b"PRI", b"CONNECT", b"", b"G\xe9T", b"HEAD"], _SEP, [b"/", b"*", b"/a b", b"\r/"],
    _SEP, [b"HTTP/1.1", b"HTTP/2.0", b"HTTP/", b"http/1.1", b"HTTP/1.1 x", b""], [b"", b"\r", b" "],
)  # fmt: skip
_STATUS_LINES = _line(
    [b"HTTP/1.1", b"HTTP/", b"HTTP/1.1 ", b"ICY", b""], _SEP,
    [b"200", b"204", b"101", b"99", b"2x", b"\xb200", b"-1", b""], _SEP,
    [b"OK", b"", b"Not Found", b"a\rb", b"\xe9"], [b"", b"\r", b" "],
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(st.one_of(_REQUEST_LINES.map(lambda b: (b, False)), _STATUS_LINES.map(lambda b: (b, True))))
@example((b"PRI * HTTP/2.0", False))  # the HTTP/2 preface: never a request
@example((b"CONNECT db:5432 HTTP/1.1", False))
@example((b"HTTP/1.1 200 OK\r", True))
@example((b"\r/  HTTP/1.1", False))  # an empty line first: left to the parser
def test_the_whole_message_shortcut_reads_start_lines_as_the_parser_does(
    line: tuple[bytes, bool],
) -> None:
    """``whole_request``/``whole_response`` take every whole message whose start line the
    parser accepts (but CONNECT's, and interim responses), and read it alike; what the parser
    refuses (the HTTP/2 preface, a malformed line), they leave to it, and so a message that
    starts with empty lines (which the parser skips before it reads the start line)."""
    raw, response = line[0] + b"\r\n", line[1]
    if raw[:1] in (b"\r", b"\n"):
        assert whole_response(raw + b"Content-Length: 0\r\n\r\n", "GET") is None
        assert whole_request(raw + b"\r\n") is None
        return
    if response:
        raw += b"Content-Length: 0\r\n"
        start = whole_response(raw + b"\r\n", "GET")
        expected = start_line(raw, response=True)
        if start is not None:
            assert response_head(raw + b"\r\n", start) == expected
        elif not isinstance(expected, str) and expected.status >= 200:
            pytest.fail(f"{raw!r}: the parser reads {expected}, the shortcut refused it")
    else:
        found = whole_request(raw + b"\r\n")
        expected = start_line(raw, response=False)
        if found is not None:
            assert not isinstance(expected, str)
            assert found == (raw, expected.method)
            assert request_head(found[0]) == expected
        elif not isinstance(expected, str) and expected.method not in ("CONNECT", "PRI"):
            pytest.fail(f"{raw!r}: the parser reads {expected}, the shortcut refused it")
