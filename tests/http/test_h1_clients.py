"""Real HTTP/1.1 clients (httpx, curl) through the tunnel: methods, statuses, redirects,
cookies, chunked bodies, gzip passed through, HEAD, keep-alive with per-request routing."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from .harness import (
    CURL,
    GZIP_BODY,
    Origin,
    Stack,
    curl,
    curl_resolve,
    http_tunnel,
    read_until_close,
    request_bytes,
    tunnel_stack,
    visitor,
)

pytestmark = pytest.mark.anyio

APP = "app.localhost"
OTHER = "other.localhost"


async def _note_port(response: httpx.Response) -> None:
    stream = response.extensions["network_stream"]
    response.extensions["visitor_port"] = stream.get_extra_info("client_addr")[1]


def client_for(stack: Stack, host: str = APP, **kwargs: Any) -> httpx.AsyncClient:
    """An httpx client for the ingress, sending ``Host: host``; each response notes the
    visitor-side port of the connection it came on."""
    return httpx.AsyncClient(
        base_url=stack.url(),
        headers={"Host": host},
        timeout=10,
        trust_env=False,
        event_hooks={"response": [_note_port]},
        **kwargs,
    )


def local_port(response: httpx.Response) -> int:
    return int(response.extensions["visitor_port"])


@pytest.fixture
async def app() -> AsyncIterator[tuple[Stack, Origin]]:
    async with Origin(name="app") as origin, tunnel_stack([http_tunnel(APP, origin.port)]) as stack:
        yield stack, origin


# ---------------------------------------------------------------------------- httpx


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
async def test_methods_reach_the_origin(app: tuple[Stack, Origin], method: str) -> None:
    stack, _ = app
    body = b"" if method in ("GET", "OPTIONS") else os.urandom(1000)
    async with client_for(stack) as client:
        response = await client.request(method, "/thing?x=1", content=body)
    assert response.status_code == 200
    echo = response.json()
    assert echo["method"] == method
    assert echo["target"] == "/thing?x=1"
    assert echo["body_len"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert response.headers["x-origin"] == "app"


async def test_head_has_content_length_and_no_body(app: tuple[Stack, Origin]) -> None:
    stack, _ = app
    async with client_for(stack) as client:
        get = await client.get("/landing")
        head = await client.head("/landing")
        again = await client.get("/echo")  # the connection is still in sync
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"] == "13"
    assert again.status_code == 200
    assert json.loads(again.content)["method"] == "GET"
    assert local_port(get) == local_port(head) == local_port(again)


@pytest.mark.parametrize("status", [200, 201, 204, 304, 404, 500])
async def test_status_codes_pass_through(app: tuple[Stack, Origin], status: int) -> None:
    stack, _ = app
    async with client_for(stack) as client:
        response = await client.get(f"/status/{status}")
        after = await client.get("/status/200")  # bodiless 204/304 kept the connection in sync
    assert response.status_code == status
    assert response.headers["x-origin"] == "app"  # from the origin, not the ingress
    if status in (204, 304):
        assert response.content == b""
    else:
        assert response.content == f"status {status} from app".encode()
    assert after.content == b"status 200 from app"
    assert local_port(response) == local_port(after)


async def test_redirect_is_passed_through_and_followed(app: tuple[Stack, Origin]) -> None:
    stack, _ = app
    async with client_for(stack) as client:
        moved = await client.get("/redirect")
        followed = await client.get("/redirect", follow_redirects=True)
    assert moved.status_code == 302
    assert moved.headers["location"] == "/landing"
    assert followed.status_code == 200
    assert followed.content == b"landed at app"
    assert [r.status_code for r in followed.history] == [302]


async def test_cookies_both_ways(app: tuple[Stack, Origin]) -> None:
    stack, origin = app
    async with client_for(stack) as client:
        response = await client.get("/cookie")
        assert response.headers.get_list("set-cookie") == [
            "session=abc123; Path=/",
            "theme=dark",
        ]
        echo = (await client.get("/echo")).json()
    cookie = dict(echo["headers"])["cookie"]
    assert sorted(cookie.split("; ")) == ["session=abc123", "theme=dark"]
    assert origin.requests[-1].header("cookie") == cookie


async def test_chunked_request_and_response(app: tuple[Stack, Origin]) -> None:
    stack, origin = app
    parts = [os.urandom(n) for n in (1, 100, 65536, 3, 200_000)]

    async def upload() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    async with client_for(stack) as client:
        response = await client.post("/upload", content=upload())
        chunked = await client.get("/chunked")
    echo = response.json()
    assert origin.requests[0].header("transfer-encoding") == "chunked"
    assert echo["body_len"] == sum(map(len, parts))
    assert echo["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
    assert chunked.headers["transfer-encoding"] == "chunked"
    assert chunked.content == b"".join(b"chunk %d;" % i for i in range(10))


async def test_gzip_body_passes_untouched(app: tuple[Stack, Origin]) -> None:
    stack, _ = app
    async with client_for(stack) as client, client.stream("GET", "/gzip") as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert response.headers["content-encoding"] == "gzip"
    assert raw == GZIP_BODY
    async with client_for(stack) as client:
        decoded = await client.get("/gzip")
    assert decoded.content == b"compressible text " * 500


async def test_keep_alive_reuses_one_connection_each_way(app: tuple[Stack, Origin]) -> None:
    stack, origin = app
    async with client_for(stack) as client:
        responses = [await client.get(f"/n/{i}") for i in range(8)]
    assert len({local_port(r) for r in responses}) == 1
    assert [r.json()["target"] for r in responses] == [f"/n/{i}" for i in range(8)]
    assert origin.connections == 1  # one visitor connection, one origin connection
    assert {r.json()["connection"] for r in responses} == {0}


async def test_each_request_on_a_connection_is_routed_by_its_host() -> None:
    async with (
        Origin(name="app") as app,
        Origin(name="other") as other,
        tunnel_stack([http_tunnel(APP, app.port), http_tunnel(OTHER, other.port)]) as stack,
    ):
        hosts = [APP, OTHER, OTHER, APP, OTHER, APP, APP]
        async with client_for(stack) as client:
            responses = [
                await client.get(f"/{i}", headers={"Host": host}) for i, host in enumerate(hosts)
            ]
    assert len({local_port(r) for r in responses}) == 1
    assert [r.headers["x-origin"] for r in responses] == [h.split(".")[0] for h in hosts]
    assert [r.json()["target"] for r in responses] == [f"/{i}" for i in range(len(hosts))]
    assert sorted(r.target for r in app.requests + other.requests) == sorted(
        f"/{i}" for i in range(len(hosts))
    )


# ---------------------------------------------------------------------------- curl

needs_curl = pytest.mark.skipif(not CURL.exists(), reason="curl is not installed")


@needs_curl
@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("GET", []),
        ("POST", ["--data-binary", "posted body"]),
        ("PUT", ["--data-binary", "put body"]),
        ("DELETE", []),
        ("OPTIONS", []),
    ],
)
async def test_curl_methods(app: tuple[Stack, Origin], method: str, args: list[str]) -> None:
    stack, _ = app
    url = f"http://{APP}:{stack.port}/curl"
    result = await curl(*curl_resolve(APP, stack.port), "-X", method, *args, url)
    assert result.returncode == 0, result.stderr
    echo = json.loads(result.stdout)
    assert echo["method"] == method
    body = b"posted body" if method == "POST" else b"put body" if method == "PUT" else b""
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert dict(echo["headers"])["host"] == f"{APP}:{stack.port}"


@needs_curl
async def test_curl_head_statuses_and_redirect(app: tuple[Stack, Origin]) -> None:
    stack, _ = app
    base = f"http://{APP}:{stack.port}"
    fmt = ["-o", "/dev/null", "-w", "%{http_code} %{num_connects}\n"]
    result = await curl(
        *curl_resolve(APP, stack.port),
        *fmt,
        f"{base}/status/201",
        *fmt,
        f"{base}/status/204",
        *fmt,
        f"{base}/status/404",
        *fmt,
        f"{base}/status/500",
        *fmt,
        f"{base}/redirect",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().split()
    # five transfers, one connection (num_connects counts new connections per transfer)
    assert lines == ["201", "1", "204", "0", "404", "0", "500", "0", "302", "0"]
    head = await curl(*curl_resolve(APP, stack.port), "--head", f"{base}/resource")
    assert head.returncode == 0, head.stderr
    text = head.stdout.decode().lower()
    assert text.startswith("http/1.1 200")
    assert "content-length: " in text
    followed = await curl(*curl_resolve(APP, stack.port), "-L", f"{base}/redirect")
    assert followed.stdout == b"landed at app"


@needs_curl
async def test_curl_cookies_chunked_and_gzip(app: tuple[Stack, Origin], tmp_path: Any) -> None:
    stack, origin = app
    base = f"http://{APP}:{stack.port}"
    jar = tmp_path / "jar"
    resolve = curl_resolve(APP, stack.port)
    set_cookies = await curl(*resolve, "-c", str(jar), f"{base}/cookie")
    assert set_cookies.stdout == b"cookies set"
    echo = json.loads((await curl(*resolve, "-b", str(jar), f"{base}/echo")).stdout)
    assert sorted(dict(echo["headers"])["cookie"].split("; ")) == ["session=abc123", "theme=dark"]

    body = os.urandom(300_000)
    (tmp_path / "body").write_bytes(body)
    upload = await curl(
        *resolve,
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        f"@{tmp_path / 'body'}",
        f"{base}/upload",
    )
    echo = json.loads(upload.stdout)
    assert origin.requests[-1].header("transfer-encoding") == "chunked"
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()

    chunked = await curl(*resolve, "-i", f"{base}/chunked")
    assert b"transfer-encoding: chunked" in chunked.stdout.lower()
    assert chunked.stdout.endswith(b"".join(b"chunk %d;" % i for i in range(10)))

    raw = await curl(*resolve, f"{base}/gzip")  # no --compressed: curl leaves it encoded
    assert raw.stdout == GZIP_BODY
    decoded = await curl(*resolve, "--compressed", f"{base}/gzip")
    assert decoded.stdout == b"compressible text " * 500


@needs_curl
async def test_curl_keep_alive_across_hosts() -> None:
    async with (
        Origin(name="app") as app,
        Origin(name="other") as other,
        tunnel_stack([http_tunnel(APP, app.port), http_tunnel(OTHER, other.port)]) as stack,
    ):
        # one curl, one connection (both names resolve to the ingress), alternating hosts
        urls = [f"http://{h}:{stack.port}/x" for h in (APP, OTHER, APP, OTHER)]
        args = [*curl_resolve(APP, stack.port), *curl_resolve(OTHER, stack.port)]
        for url in urls:
            args += ["-w", "\n%{num_connects}\n", url]
        result = await curl(*args)
    assert result.returncode == 0, result.stderr
    # curl keeps separate connections per host name: 2 connects, each then reused
    out = result.stdout.decode()
    origins = [json.loads(line)["origin"] for line in out.splitlines()[::2]]
    assert origins == ["app", "other", "app", "other"]
    assert out.splitlines()[1::2] == ["1", "1", "0", "0"]


async def test_a_visitor_that_half_closes_still_gets_its_answer(app: tuple[Stack, Origin]) -> None:
    stack, _ = app
    async with visitor(stack.port) as (reader, writer):
        writer.write(request_bytes("POST", "/half", APP, body=b"last words"))
        writer.write_eof()  # nothing more from this visitor: the answer must still come
        raw = await read_until_close(reader)
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert b'"body_len": 10' in raw
