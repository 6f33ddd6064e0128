"""Failures are answered where they happen, in a form the visitor can read; bad visitors
(malformed, huge, slow) are cut off without slowing anyone else down."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest

from ferrotunnel.core import SessionConfig
from ferrotunnel.core.plugin import Reply
from ferrotunnel.http.middleware import reply_bytes

from .harness import (
    HOST,
    Origin,
    RawOrigin,
    ResponseReader,
    Stack,
    http_tunnel,
    raw_exchange,
    read_head,
    read_response,
    read_until_close,
    request_bytes,
    status_of,
    tunnel_stack,
    visitor,
)

pytestmark = pytest.mark.anyio

APP = "app.localhost"


@pytest.fixture
async def app() -> AsyncIterator[Stack]:
    async with (
        Origin(name="app") as origin,
        tunnel_stack(
            [http_tunnel(APP, origin.port)], head_timeout=0.5, max_head_size=8192
        ) as stack,
    ):
        yield stack


# ---------------------------------------------------------------------------- routing errors


async def test_unknown_host_is_a_404_naming_it(app: Stack) -> None:
    async with httpx.AsyncClient(base_url=app.url(), timeout=10) as client:
        text = await client.get("/", headers={"Host": "nope.localhost"})
        page = await client.get("/", headers={"Host": "nope.localhost", "Accept": "text/html"})
    assert text.status_code == 404
    assert text.headers["content-type"].startswith("text/plain")
    assert "'nope.localhost'" in text.text
    assert "--tunnel-id nope.localhost" in text.text  # and how to serve it
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert page.text.startswith("<!doctype html>")
    assert "404 Not Found" in page.text
    assert "nope.localhost" in page.text


async def test_no_host_at_all(app: Stack) -> None:
    raw = await raw_exchange(app.port, b"GET / HTTP/1.0\r\n\r\n")
    assert status_of(raw) == 404
    assert b"no Host header" in raw
    assert status_of(await raw_exchange(app.port, b"GET / HTTP/1.1\r\n\r\n")) == 400


async def test_health(app: Stack) -> None:
    for host in (APP, "unknown.localhost"):
        async with httpx.AsyncClient(base_url=app.url(), headers={"Host": host}) as client:
            response = await client.get("/health")
        assert response.status_code == 200
        assert response.text == "OK\n"
    assert await raw_exchange(app.port, b"GET /health HTTP/1.0\r\n\r\n") == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\n"
        b"connection: close\r\n\r\nOK\n"
    )


@pytest.mark.parametrize(
    ("target", "host", "status"),
    [
        ("/health", APP, 200),
        ("/", "unknown.localhost", 404),
    ],
)
async def test_head_answered_by_the_ingress_has_no_body(
    app: Stack, target: str, host: str, status: int
) -> None:
    """(Regression: the ingress's own answers to HEAD carried a body, which the visitor
    then read as the start of the next response.)"""
    async with visitor(app.port) as (reader, writer):
        responses = ResponseReader(reader)
        writer.write(request_bytes("HEAD", target, host) + request_bytes("GET", "/after", APP))
        head = await responses.next("HEAD")
        after = await responses.next("GET")
    assert head.status == status
    assert head.body == b""
    assert int(head.header("content-length") or 0) > 0
    assert after.status == 200
    assert b'"target": "/after"' in after.body


# ---------------------------------------------------------------------------- origin errors


async def test_origin_down_is_a_502() -> None:
    # a bound socket that does not listen: connecting to it is refused, deterministically
    with socket.socket() as closed:
        closed.bind((HOST, 0))
        port = closed.getsockname()[1]
        async with tunnel_stack([http_tunnel(APP, port)]) as stack:
            raw = await raw_exchange(stack.port, request_bytes("GET", "/", APP, "Accept: */*"))
            async with httpx.AsyncClient(base_url=stack.url(), headers={"Host": APP}) as client:
                page = await client.get("/", headers={"Accept": "text/html"})
    assert status_of(raw) == 502
    assert b"local service refused the connection, or reset it before answering" in raw
    assert page.status_code == 502
    assert page.headers["content-type"].startswith("text/html")


async def test_an_origin_resetting_before_it_answers_is_a_502_that_says_so() -> None:
    """The service accepted, read the request, then reset the connection: the client reports
    it as it reports a refused connection, and the visitor's 502 does not claim a refusal."""

    async def resets(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # closing with a zero linger: an RST, not a FIN

    async with RawOrigin(resets) as origin, tunnel_stack([http_tunnel(APP, origin.port)]) as st:
        raw = await raw_exchange(st.port, request_bytes("GET", "/", APP))
    assert status_of(raw) == 502
    assert b"refused the connection, or reset it before answering" in raw


async def test_slow_origin_is_a_504() -> None:
    async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await reader.read()

    async with (
        RawOrigin(never_answers) as origin,
        tunnel_stack([http_tunnel(APP, origin.port)], response_timeout=0.5) as stack,
    ):
        started = time.monotonic()
        raw = await raw_exchange(stack.port, request_bytes("GET", "/slow", APP), within=10)
        took = time.monotonic() - started
    assert status_of(raw) == 504
    assert b"did not answer within 0.5 s" in raw
    assert 0.4 < took < 5


async def test_a_tunnel_at_its_stream_limit_answers_503() -> None:
    """With ``max_streams=1`` and one request still waiting for its origin, another
    visitor's request gets a 503 at once; the first is unaffected."""
    arrived, release = asyncio.Event(), asyncio.Event()

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        arrived.set()
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nheld")
        await writer.drain()
        writer.close()

    async with (
        RawOrigin(held) as origin,
        tunnel_stack(
            [http_tunnel(APP, origin.port)], server_session=SessionConfig(max_streams=1)
        ) as stack,
        visitor(stack.port) as (reader, writer),
    ):
        writer.write(request_bytes("GET", "/first", APP))
        await writer.drain()
        with anyio.fail_after(5):
            await arrived.wait()
        second = request_bytes("GET", "/second", APP, "Connection: close")
        busy = await raw_exchange(stack.port, second, within=5)
        assert status_of(busy) == 503
        assert b"try again shortly" in busy
        release.set()
        first = await read_until_close(reader)
    assert status_of(first) == 200
    assert first.endswith(b"held")


@pytest.mark.parametrize(
    "answer",
    [
        b"",  # closes without a word
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",  # a head, then nothing
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
    ],
    ids=["silent-close", "truncated", "garbage", "conflicting-length"],
)
async def test_origin_breaking_the_exchange(answer: bytes) -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(answer)
        await writer.drain()

    async with RawOrigin(broken) as origin, tunnel_stack([http_tunnel(APP, origin.port)]) as st:
        raw = await raw_exchange(st.port, request_bytes("GET", "/", APP))
    if answer.endswith(b"\r\n\r\n") and answer.startswith(b"HTTP/1.1 200"):
        # the head went out: all that is left is to end the connection before the body does
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
        assert raw.endswith(b"\r\n\r\n")
    else:
        assert status_of(raw) == 502


async def test_oversized_response_head_is_a_502() -> None:
    """(Regression: a response head over max_head_size was only refused if it arrived in
    pieces.)"""

    async def huge_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * 20_000 + b"\r\nContent-Length: 0\r\n\r\n"
        )
        await writer.drain()
        await reader.read()

    async with (
        RawOrigin(huge_head) as origin,
        tunnel_stack([http_tunnel(APP, origin.port)], max_head_size=8192) as stack,
    ):
        raw = await raw_exchange(stack.port, request_bytes("GET", "/", APP))
    assert status_of(raw) == 502
    assert b"too large" in raw


async def test_tunnel_offline() -> None:
    async with (
        Origin(name="app") as origin,
        tunnel_stack([http_tunnel(APP, origin.port)]) as st,
        visitor(st.port) as (reader, writer),
    ):
        responses = ResponseReader(reader)
        writer.write(request_bytes("GET", "/1", APP))
        assert (await responses.next()).status == 200
        await st.clients[0].shutdown()
        # the kept-alive visitor connection, and a new one
        writer.write(request_bytes("GET", "/2", APP))
        kept = await responses.next(within=5)
        fresh = await raw_exchange(st.port, request_bytes("GET", "/3", APP, "Connection: close"))
    assert kept.status in (404, 502), kept
    assert status_of(fresh) in (404, 502), fresh
    assert [r.target for r in origin.requests] == ["/1"]


# ---------------------------------------------------------------------------- bad visitors


@pytest.mark.parametrize(
    "request_head",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\r\n\r\n",
    ],
    ids=["garbage", "no-colon", "obs-fold", "two-hosts", "cl-and-te", "two-lengths", "bare-lf"],
)
async def test_malformed_request_is_a_400(app: Stack, request_head: bytes) -> None:
    raw = await raw_exchange(app.port, request_head)  # and then the connection closes
    assert status_of(raw) == 400, raw
    assert b"connection: close" in raw


async def test_unsupported_version_is_a_505(app: Stack) -> None:
    assert status_of(await raw_exchange(app.port, b"GET / HTTP/2.0\r\nHost: a\r\n\r\n")) == 505


async def test_malformed_chunked_body_is_a_400(app: Stack) -> None:
    raw = await raw_exchange(
        app.port,
        request_bytes("POST", "/", APP, "Transfer-Encoding: chunked") + b"zz\r\nhello\r\n0\r\n\r\n",
    )
    assert status_of(raw) == 400


async def test_malformed_body_after_the_response_started_aborts() -> None:
    """The origin answers while the upload is still coming; then the upload turns out to be
    malformed. The response cannot be finished: the connection is cut, and no error page
    is spliced into the middle of the response body.

    (Regression: a 400 was written after the partial response.)"""
    answered = asyncio.Event()

    async def answer_early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nearly\r\n")
        await writer.drain()
        answered.set()
        await reader.read()

    async with (
        RawOrigin(answer_early) as origin,
        tunnel_stack([http_tunnel(APP, origin.port)]) as stack,
        visitor(stack.port) as (reader, writer),
    ):
        writer.write(
            request_bytes("POST", "/", APP, "Transfer-Encoding: chunked") + b"3\r\nabc\r\n"
        )
        with anyio.fail_after(5):
            head = await read_head(reader)
            assert await reader.readexactly(10) == b"5\r\nearly\r\n"
        writer.write(b"not a chunk size\r\n")
        rest = await read_until_close(reader)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert rest == b""


async def test_oversized_head_is_a_431(app: Stack) -> None:
    big = "X-Filler: " + "f" * 10_000
    # in one piece (regression: a whole head over the limit in one read was accepted)...
    whole = await raw_exchange(app.port, request_bytes("GET", "/", APP, big))
    assert status_of(whole) == 431
    assert b"8192 bytes" in whole
    # ...and in pieces, the head never ending
    async with visitor(app.port) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: app.localhost\r\n")
        for _ in range(10):
            writer.write(b"X-More: " + b"m" * 1000 + b"\r\n")
        trickled = await read_until_close(reader)
    assert status_of(trickled) == 431


async def test_a_head_at_the_limit_is_accepted(app: Stack) -> None:
    head = request_bytes("GET", "/", APP)
    filler = 8192 - len(head) - len("X-F: \r\n")
    exact = request_bytes("GET", "/", APP, "X-F: " + "f" * filler)
    assert len(exact) == 8192
    async with visitor(app.port) as (reader, writer):
        writer.write(exact)
        response = await read_response(reader)
    assert response.status == 200


async def test_slow_head_is_a_408(app: Stack) -> None:
    async with visitor(app.port) as (reader, writer):
        started = time.monotonic()
        writer.write(b"GET / HTTP/1.1\r\nHost: app.lo")
        raw = await read_until_close(reader, within=5)
        took = time.monotonic() - started
    assert status_of(raw) == 408
    assert 0.4 < took < 3


async def test_an_incomplete_http2_preface_times_out(app: Stack) -> None:
    """(Regression: a connection that sent the start of an HTTP/2 preface, or the preface
    and no request, was never closed: neither the head nor the idle timeout applied.)"""
    for data in (b"PRI * HTTP/2.0\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"):
        async with visitor(app.port) as (reader, writer):
            writer.write(data)
            raw = await read_until_close(reader, within=5)
        assert b"408" not in raw  # closed, not answered in HTTP/1


async def test_idle_keep_alive_connection_is_closed() -> None:
    async with (
        Origin(name="app") as origin,
        tunnel_stack([http_tunnel(APP, origin.port)], idle_timeout=0.3) as stack,
        visitor(stack.port) as (reader, writer),
    ):
        writer.write(request_bytes("GET", "/", APP))
        assert (await read_response(reader)).status == 200
        assert await read_until_close(reader, within=5) == b""


# ---------------------------------------------------------------------------- slowloris


async def test_slowloris_does_not_starve_other_visitors() -> None:
    head_timeout = 1.5
    trickled = b"GET / HTTP/1.1\r\nHost: app.localhost\r\nX-Slow: " + b"s" * 10_000
    async with (
        Origin(name="app") as origin,
        tunnel_stack([http_tunnel(APP, origin.port)], head_timeout=head_timeout) as stack,
    ):
        answers: list[bytes] = []
        cut_off_after: list[float] = []
        trickling = 0
        all_trickling = anyio.Event()

        async def trickle(writer: asyncio.StreamWriter) -> None:
            nonlocal trickling
            try:
                for i, byte in enumerate(trickled):  # one byte at a time, until cut off
                    writer.write(bytes([byte]))
                    await writer.drain()
                    if i == 10:
                        trickling += 1
                        if trickling == 20:
                            all_trickling.set()
                    await anyio.sleep(0.02)
            except ConnectionError:
                pass  # cut off while trickling

        async def slowloris() -> None:
            async with visitor(stack.port) as (reader, writer):
                started = time.monotonic()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(trickle, writer)
                    answers.append(await read_until_close(reader, within=10))
                    cut_off_after.append(time.monotonic() - started)
                    tg.cancel_scope.cancel()

        latencies: list[float] = []
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(slowloris)
                await all_trickling.wait()
                async with httpx.AsyncClient(base_url=stack.url(), headers={"Host": APP}) as c:
                    for i in range(30):
                        started = time.monotonic()
                        fresh = await c.get(f"/{i}", headers={"Connection": "close"})
                        latencies.append(time.monotonic() - started)
                        assert fresh.status_code == 200
                assert len(answers) == 0  # measured while every slowloris was still at it
    assert max(latencies) < 0.5, latencies
    assert len(answers) == 20
    assert all(status_of(a) == 408 for a in answers), answers
    assert all(head_timeout - 0.1 < t < head_timeout + 2 for t in cut_off_after), cut_off_after


@pytest.mark.parametrize(
    ("status", "reason"),
    [(401, b"Unauthorized"), (429, b"Too Many Requests"), (413, b"Content Too Large")],
)
def test_a_plugins_reply_carries_its_status_reason(status: int, reason: bytes) -> None:
    head = reply_bytes(Reply(status, "no"), close=False, head_only=True)
    assert head.startswith(b"HTTP/1.1 %d %s\r\n" % (status, reason))
