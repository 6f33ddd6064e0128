"""Capture never costs the traffic anything: big bodies stream through in constant memory and
arrive intact, gRPC keeps its trailers, WebSockets keep working."""

from __future__ import annotations

import base64
import hashlib
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import grpc  # type: ignore[import-untyped]
import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from ferrotunnel.core import ClientStatus

from ..http.harness import (
    HOST,
    MiB,
    RawOrigin,
    RssWatch,
    content_length,
    read_head,
    request_bytes,
    visitor,
)
from ..http.test_grpc import SERVICE, _authority, _missing, _stream, _unary
from ..http.test_streaming import block, chunked_source, expected_sha256
from .conftest import APP, DashStack, dash_stack

pytestmark = pytest.mark.anyio


async def test_a_100_mib_download_streams_in_constant_memory_with_capture_on() -> None:
    size = 100 * MiB
    async with dash_stack(origin=RawOrigin(chunked_source(size))) as stack:
        assert stack.client.status is ClientStatus.CONNECTED
        async with visitor(stack.public_port) as (reader, writer):
            watch = RssWatch()
            writer.write(request_bytes("GET", "/big", APP))
            head = await read_head(reader)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            digest = hashlib.sha256()
            received = 0
            with anyio.fail_after(45):
                for _ in range(size // MiB):
                    assert await reader.readuntil(b"\r\n") == b"%x\r\n" % MiB
                    data = await reader.readexactly(MiB)
                    assert await reader.readexactly(2) == b"\r\n"
                    digest.update(data)
                    received += len(data)
                    watch.sample()
                assert await reader.readexactly(5) == b"0\r\n\r\n"
        assert received == size
        assert digest.hexdigest() == expected_sha256(size)
        assert watch.growth < 32 * MiB, f"RSS grew by {watch.growth / MiB:.0f} MiB"
        (row,) = await stack.wait_for(1)
        detail = (await stack.api.get(f"/api/v1/requests/{row['id']}")).json()
        body = detail["response"]["body"]
        assert (body["size"], body["captured"], body["truncated"]) == (size, 64 * 1024, True)
        assert body["base64"]  # the first 64 KiB, as sent
        assert body["kind"] == "binary"
        first = block(0)[:16].hex(" ")
        assert body["text"].startswith(f"00000000  {first}")


@pytest.fixture
async def grpc_dash() -> AsyncIterator[DashStack]:
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        "Missing": grpc.unary_unary_rpc_method_handler(_missing),
        "Authority": grpc.unary_unary_rpc_method_handler(_authority),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port(f"{HOST}:0")
    server.start()
    try:
        async with dash_stack(origin=_FixedPort(port)) as stack:
            yield stack
    finally:
        await anyio.to_thread.run_sync(lambda: server.stop(grace=None).wait(5))


class _FixedPort(RawOrigin):
    """Stands for an origin already listening (the grpc server): the tunnel targets it."""

    def __init__(self, port: int) -> None:
        super().__init__(self._unused)
        self._fixed = port

    async def __aenter__(self) -> _FixedPort:
        self.port = self._fixed
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass

    @staticmethod
    async def _unused(*args: object) -> None:
        raise AssertionError("not serving")


async def test_grpc_trailers_survive_capture(grpc_dash: DashStack) -> None:
    authority = APP

    def run() -> tuple[object, object, grpc.RpcError]:
        with grpc.insecure_channel(
            f"{HOST}:{grpc_dash.public_port}", options=[("grpc.default_authority", authority)]
        ) as ch:
            unary = ch.unary_unary(f"/{SERVICE}/Unary")(b"hello", timeout=10)
            items = list(ch.unary_stream(f"/{SERVICE}/Stream")(b"50", timeout=10))
            try:
                ch.unary_unary(f"/{SERVICE}/Missing")(b"widget-7", timeout=10)
            except grpc.RpcError as exc:
                return unary, items, exc
            raise AssertionError("Missing did not fail")

    with anyio.fail_after(30):
        unary, items, error = await anyio.to_thread.run_sync(run)
    assert unary == b"echo:hello"
    assert items == [b"item %d" % i for i in range(50)]
    assert isinstance(error, grpc.Call)
    assert error.code() is grpc.StatusCode.NOT_FOUND  # grpc-status, a trailer
    assert error.details() == "no record named 'widget-7'"  # grpc-message, a trailer
    # and each call is listed, its frames followed without holding them up
    with anyio.fail_after(10):
        while True:
            rows = (await grpc_dash.api.get("/api/v1/requests")).json()["requests"]
            if len(rows) == 3 and all(row["state"] != "pending" for row in rows):
                break
            await anyio.sleep(0.05)
    by_path = {row["path"]: row for row in rows}
    assert set(by_path) == {f"/{SERVICE}/{name}" for name in ("Unary", "Stream", "Missing")}
    assert {(row["method"], row["status"]) for row in rows} == {("POST", 200)}
    missing = by_path[f"/{SERVICE}/Missing"]
    assert missing["state"] == "error"
    assert missing["error"] == "grpc-status 5: no record named 'widget-7'"
    unary = await grpc_dash.api.get(f"/api/v1/requests/{by_path[f'/{SERVICE}/Unary']['id']}")
    detail = unary.json()
    assert detail["state"] == "complete"
    assert detail["http_version"] == "HTTP/2"
    assert ["host", authority] in detail["request"]["headers"]
    assert ["content-type", "application/grpc"] in detail["request"]["headers"]
    assert detail["request"]["complete"] is True
    framed = base64.b64decode(detail["request"]["body"]["base64"])
    assert framed == b"\0" + len(b"hello").to_bytes(4, "big") + b"hello"  # a gRPC message
    answer = base64.b64decode(detail["response"]["body"]["base64"])
    assert answer == b"\0" + len(b"echo:hello").to_bytes(4, "big") + b"echo:hello"
    assert ["grpc-status", "0"] in detail["response"]["trailers"]
    stream = await grpc_dash.api.get(f"/api/v1/requests/{by_path[f'/{SERVICE}/Stream']['id']}")
    body = stream.json()["response"]["body"]
    assert body["size"] == sum(5 + len(b"item %d" % i) for i in range(50))


def _grpc_message(payload: bytes) -> bytes:
    """One uncompressed gRPC message, as a call's DATA carries it."""
    return b"\0" + len(payload).to_bytes(4, "big") + payload


async def _unary_call(stack: DashStack, payload: bytes) -> dict[str, Any]:
    """Makes one call to Unary through the tunnel; its row in the dashboard's list."""

    def call() -> object:
        with grpc.insecure_channel(
            f"{HOST}:{stack.public_port}", options=[("grpc.default_authority", APP)]
        ) as ch:
            return ch.unary_unary(f"/{SERVICE}/Unary")(payload, timeout=10)

    with anyio.fail_after(30):
        assert await anyio.to_thread.run_sync(call) == b"echo:" + payload
        (row,) = await stack.wait_for(1)
    return row


async def test_a_grpc_call_is_replayed_over_http2(grpc_dash: DashStack) -> None:
    row = await _unary_call(grpc_dash, b"hello")
    replay = grpc_dash.api.post
    answer = await replay(f"/api/v1/requests/{row['id']}/replay", json={})
    assert answer.status_code == 201, answer.text
    replayed = answer.json()
    assert (replayed["replay_of"], replayed["http_version"]) == (row["id"], "HTTP/2")
    assert (replayed["status"], replayed["state"]) == (200, "complete")
    assert base64.b64decode(replayed["response"]["body"]["base64"]) == _grpc_message(b"echo:hello")
    assert ["grpc-status", "0"] in replayed["response"]["trailers"]
    # an edited body larger than the origin's first flow-control window (65,535 bytes)
    big = b"x" * 200_000
    edits = {"body_base64": base64.b64encode(_grpc_message(big)).decode()}
    answer = await replay(f"/api/v1/requests/{row['id']}/replay", json=edits)
    assert answer.status_code == 201, answer.text
    body = answer.json()["response"]["body"]
    assert body["size"] == len(_grpc_message(b"echo:" + big))
    # a call the service fails is an answer, recorded as a failed call
    missing = {"path": f"/{SERVICE}/Missing", "body_base64": base64.b64encode(
        _grpc_message(b"gadget")).decode()}  # fmt: skip
    answer = await replay(f"/api/v1/requests/{row['id']}/replay", json=missing)
    assert answer.status_code == 201, answer.text
    assert answer.json()["error"] == "grpc-status 5: no record named 'gadget'"


async def test_a_grpc_calls_exports_run(grpc_dash: DashStack, tmp_path: Path) -> None:
    """curl (``--http2-prior-knowledge``) and the pytest module (httpx over HTTP/2) send the
    call again and get its answer; the HAR says HTTP/2."""
    row = await _unary_call(grpc_dash, b"again")
    export = f"/api/v1/requests/{row['id']}/export?format="
    command = (await grpc_dash.api.get(export + "curl")).text
    assert "--http2-prior-knowledge" in command
    assert "-H 'te: trailers'" in command
    curl = await anyio.run_process(["bash", "-c", command], check=False)
    assert curl.returncode == 0, curl.stderr.decode()
    assert curl.stdout == _grpc_message(b"echo:again")
    har = (await grpc_dash.api.get(export + "har")).json()["log"]["entries"][0]
    assert har["request"]["httpVersion"] == har["response"]["httpVersion"] == "HTTP/2"
    source = (await grpc_dash.api.get(export + "pytest")).text
    path = tmp_path / "test_generated_grpc.py"
    path.write_text(source)
    run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)]
    result = await anyio.run_process(run, check=False, cwd=tmp_path)
    assert result.returncode == 0, source + result.stdout.decode()
    path.write_text(source.replace("echo:again", "echo:other"))  # it checks the answer
    assert (await anyio.run_process(run, check=False, cwd=tmp_path)).returncode == 1


async def _ws_echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def test_a_websocket_works_and_is_listed_as_its_upgrade() -> None:
    async with serve(_ws_echo, HOST, 0) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        async with dash_stack(origin=_FixedPort(port)) as stack:
            async with connect(
                f"ws://{APP}:{stack.public_port}/chat?room=1",
                host=HOST,
                port=stack.public_port,
                open_timeout=10,
                close_timeout=5,
            ) as ws:
                for i in range(20):
                    message = f"message {i} " * i if i % 2 else bytes(range(i))
                    await ws.send(message)
                    assert await ws.recv() == message
            (row,) = await stack.wait_for(1)
            assert (row["target"], row["status"], row["state"]) == ("/chat?room=1", 101, "complete")


@pytest.mark.timeout(30)
async def test_requests_after_a_declined_upgrade_are_listed() -> None:
    """``curl --http2`` asks for h2c; the origin declines (a 200, not a 101) and the ingress
    keeps serving HTTP/1.1 on the connection: the requests after it are listed too."""
    async with dash_stack() as stack, visitor(stack.public_port) as (reader, writer):
        writer.write(
            request_bytes(
                "GET",
                "/first",
                APP,
                "Connection: Upgrade, HTTP2-Settings",
                "Upgrade: h2c",
                "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA",
            )
        )
        for i in range(4):
            with anyio.fail_after(5):
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 "), head
                await reader.readexactly(content_length(head))
            if i < 3:
                writer.write(request_bytes("GET", f"/after/{i}", APP))
        rows = await stack.wait_for(4)
        assert [r["path"] for r in rows] == ["/after/2", "/after/1", "/after/0", "/first"]


async def test_a_grpc_call_to_an_https_origin_is_replayed_with_alpn_h2() -> None:
    import trustme

    from ..http.test_tls_origin import grpc_tls_origin, h2_trusting, trusting

    ca = trustme.CA()
    contexts = {"local_tls": trusting(ca), "local_tls_http2": h2_trusting(ca)}
    async with (
        grpc_tls_origin(ca) as port,
        dash_stack(origin=_FixedPort(port), tunnel=contexts) as stack,
    ):

        def call() -> object:
            with grpc.insecure_channel(
                f"{HOST}:{stack.public_port}", options=[("grpc.default_authority", APP)]
            ) as ch:
                return ch.unary_unary(f"/{SERVICE}/Unary")(b"again", timeout=10)

        with anyio.fail_after(30):
            assert await anyio.to_thread.run_sync(call) == b"tls:again"
            (row,) = await stack.wait_for(1)
        answer = await stack.api.post(f"/api/v1/requests/{row['id']}/replay", json={})
    assert answer.status_code == 201, answer.text
    replayed = answer.json()
    assert (replayed["status"], replayed["state"]) == (200, "complete")
    assert base64.b64decode(replayed["response"]["body"]["base64"]) == _grpc_message(b"tls:again")
