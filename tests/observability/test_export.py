"""Exports of a captured request, fed by hand: the curl command runs (through bash, as if
pasted) and the generated pytest test runs, both against a raw origin on 127.0.0.1 that keeps
the bytes it gets; the HAR is read back. Methods, targets and fields are the visitor's, so
each must come out exactly, and none may become code."""

from __future__ import annotations

import ast
import asyncio
import base64
from pathlib import Path

import anyio
import pytest

from ferrotunnel.observability.capture import ExchangeTap
from ferrotunnel.observability.exchange import Exchange
from ferrotunnel.observability.export import to_curl, to_har, to_pytest
from ferrotunnel.observability.store import Store

from ..http.harness import HOST, RawOrigin

pytestmark = pytest.mark.anyio

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"


def captured(request: bytes, response: bytes = OK) -> Exchange:
    tap = ExchangeTap(Store(), "app", 64 * 1024)
    tap.to_origin(memoryview(request))
    tap.to_visitor(response)
    tap.closed(None)
    assert tap.last is not None
    return tap.last


def recording_origin(received: list[bytes], answer: bytes = OK) -> RawOrigin:
    """Keeps each request (head and Content-Length body), answers ``answer``, and then
    leaves the connection open until the client closes it, as a keep-alive origin does."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        size = next(
            (
                int(line[15:])
                for line in head.split(b"\r\n")
                if line.lower()[:15] == b"content-length:"
            ),
            0,
        )
        received.append(head + await reader.readexactly(size))
        writer.write(answer)
        await writer.drain()
        await reader.read()  # until the client closes

    return RawOrigin(handle)


async def run_curl(request: bytes, tmp_path: Path, answer: bytes = OK) -> tuple[str, bytes]:
    """The exported command, run by bash from a file; the request the origin got."""
    received: list[bytes] = []
    async with recording_origin(received, answer) as origin:
        command = to_curl(captured(request, answer), f"http://{HOST}:{origin.port}")
        script = tmp_path / "exported.sh"
        script.write_text(command)
        with anyio.fail_after(5):
            result = await anyio.run_process(["bash", str(script)], cwd=tmp_path, check=False)
    assert result.returncode == 0, (command, result.stderr)
    (got,) = received
    return command, got


# ---------------------------------------------------------------------------- curl


async def test_curl_quotes_a_method_holding_shell_code(tmp_path: Path) -> None:
    # & $ ' are token characters: the HTTP ingress passes such a method on
    method = b"GET&touch$IFS'pwned'&"
    command, got = await run_curl(method + b" /x HTTP/1.1\r\nHost: app\r\n\r\n", tmp_path)
    assert not (tmp_path / "pwned").exists(), command
    assert got.startswith(method + b" /x HTTP/1.1\r\n"), got


async def test_curl_sends_the_header_fields_byte_for_byte(tmp_path: Path) -> None:
    fields = b"X-Name: caf\xc3\xa9\r\nX-Empty: \r\nX-Quote: it's $HOME `id` \\x41\r\n"
    command, got = await run_curl(b"GET /x HTTP/1.1\r\nHost: app\r\n" + fields + b"\r\n", tmp_path)
    assert fields.replace(b"X-Empty: ", b"X-Empty:") in got, (command, got)


@pytest.mark.parametrize(
    "body",
    [
        b'{"a":"x\x00y"}',  # valid UTF-8 with a NUL
        b"line\r\n\x1b[31mred\x1b[0m\tcaf\xc3\xa9 'quoted' \\n",  # control characters
        bytes(range(256)),
    ],
    ids=["nul", "controls", "binary"],
)
async def test_curl_sends_the_body_byte_for_byte(tmp_path: Path, body: bytes) -> None:
    request = b"POST /x HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\n\r\n" % len(body)
    command, got = await run_curl(request + body, tmp_path)
    assert got.endswith(b"\r\n\r\n" + body), (command, got)
    # pasted into a terminal, the command sends no control characters
    assert command.endswith("\n")
    assert command[:-1].isascii()
    assert command[:-1].isprintable()


async def test_curl_of_a_head_request_ends(tmp_path: Path) -> None:
    # a HEAD answer announces a body it does not send; the connection stays open
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    command, got = await run_curl(b"HEAD /x HTTP/1.1\r\nHost: app\r\n\r\n", tmp_path, answer)
    assert got.startswith(b"HEAD /x HTTP/1.1\r\n"), (command, got)


async def test_curl_of_a_head_request_with_a_body_runs_without_it(tmp_path: Path) -> None:
    request = b"HEAD /x HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\n\r\nabc"
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    command, got = await run_curl(request, tmp_path, answer)
    assert command.startswith("# curl cannot send a HEAD request with a body: its 3 bytes")
    assert got.startswith(b"HEAD /x HTTP/1.1\r\n"), (command, got)
    assert b"content-length" not in got.lower()


# ---------------------------------------------------------------------------- pytest


@pytest.mark.parametrize("target", [rb"/search?q=C:\x", rb"/a?q=\N", b'/a?q="""', b"/a\\"])
def test_pytest_export_compiles_whatever_the_target(target: bytes) -> None:
    exchange = captured(b"GET " + target + b" HTTP/1.1\r\nHost: app\r\n\r\n")
    module = ast.parse(to_pytest(exchange, f"http://{HOST}:9"))
    docstring = ast.get_docstring(module)
    assert docstring is not None
    assert f"GET {target.decode()}." in docstring


async def test_pytest_export_sends_repeated_and_non_ascii_fields() -> None:
    fields = b"X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-For: 192.0.2.2\r\nX-Name: caf\xc3\xa9\r\n"
    received: list[bytes] = []
    async with recording_origin(received) as origin:
        source = to_pytest(
            captured(b"GET /x HTTP/1.1\r\nHost: app\r\n" + fields + b"\r\n"),
            f"http://{HOST}:{origin.port}",
        )
        namespace: dict[str, object] = {}
        exec(compile(source, "test_generated.py", "exec"), namespace)
        with anyio.fail_after(10):
            await anyio.to_thread.run_sync(namespace["test_get__x"])  # type: ignore[arg-type]
    (got,) = received
    assert fields in got, (source, got)


@pytest.mark.parametrize("keep_host", [True, False])
async def test_pytest_export_sends_the_host_the_origin_saw(keep_host: bool) -> None:
    """To the origin (the default target) the request goes with the Host it had, as the curl
    export and the replay send it: an origin serving several names answers the same. To the
    public URL, the URL's host stands."""
    received: list[bytes] = []
    async with recording_origin(received) as origin:
        source = to_pytest(
            captured(b"GET /x HTTP/1.1\r\nHost: app.example.com\r\nX-A: 1\r\n\r\n"),
            f"http://{HOST}:{origin.port}",
            keep_host=keep_host,
        )
        namespace: dict[str, object] = {}
        exec(compile(source, "test_generated.py", "exec"), namespace)
        with anyio.fail_after(10):
            await anyio.to_thread.run_sync(namespace["test_get__x"])  # type: ignore[arg-type]
    (got,) = received
    hosts = [line for line in got.split(b"\r\n") if line.lower().startswith(b"host:")]
    expected = b"app.example.com" if keep_host else f"{HOST}:{origin.port}".encode()
    assert [line.split(b":", 1)[1].strip() for line in hosts] == [expected], (source, got)


# ---------------------------------------------------------------------------- HAR


def test_har_marks_a_binary_request_body_as_base64() -> None:
    body = b"\x89PNG\r\n\x1a\n\x00\x01\xfe"
    exchange = captured(
        b"POST /up HTTP/1.1\r\nHost: app\r\nContent-Type: image/png\r\nContent-Length: %d"
        b"\r\n\r\n%s" % (len(body), body)
    )
    post = to_har(exchange, f"http://{HOST}:9")["log"]["entries"][0]["request"]["postData"]
    assert post["encoding"] == "base64"
    assert "base64" in post["comment"]
    assert base64.b64decode(post["text"]) == body


def test_har_response_version_is_the_responses() -> None:
    exchange = captured(
        b"GET /x HTTP/1.1\r\nHost: app\r\n\r\n", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    )
    entry = to_har(exchange, f"http://{HOST}:9")["log"]["entries"][0]
    assert entry["request"]["httpVersion"] == "HTTP/1.1"
    assert entry["response"]["httpVersion"] == "HTTP/1.0"
