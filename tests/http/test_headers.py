"""What the origin is told: X-Forwarded-* and Forwarded (replaced at the edge, appended
behind a trusted proxy), and the Host header the tunnel asks for."""

from __future__ import annotations

from typing import Any

import pytest

from .harness import (
    HOST,
    Origin,
    OriginRequest,
    http_tunnel,
    read_response,
    request_bytes,
    tunnel_stack,
    visitor,
)

pytestmark = pytest.mark.anyio

APP = "app.localhost"
SPOOFED = (
    "X-Forwarded-For: 203.0.113.9",
    "X-Forwarded-For: 198.51.100.7",
    "X-Forwarded-Proto: https",
    "X-Forwarded-Host: spoofed.example",
    "Forwarded: for=203.0.113.9;proto=https",
)


async def one_request(*headers: str, host: str = APP, **settings: Any) -> OriginRequest:
    """Send one raw request through a fresh stack; return what the origin received."""
    async with (
        Origin(name="app") as origin,
        tunnel_stack([http_tunnel(APP, origin.port)], **settings) as stack,
        visitor(stack.port) as (reader, writer),
    ):
        writer.write(request_bytes("GET", "/who", host, *headers))
        response = await read_response(reader)
    assert response.status == 200, response.body
    (request,) = origin.requests
    return request


async def test_forwarding_headers_describe_the_visitor() -> None:
    request = await one_request()
    assert request.header_all("x-forwarded-for") == [HOST]
    assert request.header_all("x-forwarded-proto") == ["http"]
    assert request.header_all("x-forwarded-host") == [APP]
    assert request.header_all("forwarded") == [f'for={HOST};proto=http;host="{APP}"']


async def test_spoofed_forwarding_headers_are_replaced() -> None:
    request = await one_request(*SPOOFED)
    assert request.header_all("x-forwarded-for") == [HOST]
    assert request.header_all("x-forwarded-proto") == ["http"]
    assert request.header_all("x-forwarded-host") == [APP]
    assert request.header_all("forwarded") == [f'for={HOST};proto=http;host="{APP}"']
    assert not any("203.0.113.9" in v or "spoofed" in v for _, v in request.headers)


async def test_a_trusted_proxy_has_its_headers_kept_and_appended_to() -> None:
    request = await one_request(*SPOOFED, trusted_proxies=("127.0.0.0/8",))
    assert request.header_all("x-forwarded-for") == [f"203.0.113.9, 198.51.100.7, {HOST}"]
    assert request.header_all("x-forwarded-proto") == ["https"]
    assert request.header_all("x-forwarded-host") == ["spoofed.example"]
    assert request.header_all("forwarded") == [
        f'for=203.0.113.9;proto=https, for={HOST};proto=http;host="{APP}"'
    ]


async def test_behind_a_tls_terminating_proxy_the_scheme_is_https() -> None:
    """``scheme=b"https"``: the plain listener is reached through a proxy that terminates TLS,
    so the origin is told https and the public URL says so."""
    async with (
        Origin(name="app") as origin,
        tunnel_stack([http_tunnel(APP, origin.port)], scheme=b"https", public_port=443) as stack,
        visitor(stack.port) as (reader, writer),
    ):
        assert stack.clients[0].tunnels[0].public_url == f"https://{APP}"
        writer.write(request_bytes("GET", "/who", APP))
        assert (await read_response(reader)).status == 200
    (request,) = origin.requests
    assert request.header_all("x-forwarded-proto") == ["https"]
    assert request.header_all("forwarded") == [f'for={HOST};proto=https;host="{APP}"']


async def test_trusting_another_network_is_not_trusting_the_visitor() -> None:
    request = await one_request(*SPOOFED, trusted_proxies=("10.0.0.0/8", "::1/128"))
    assert request.header_all("x-forwarded-for") == [HOST]


async def test_default_host_header_is_the_visitors() -> None:
    request = await one_request(host=f"{APP}:8443")
    assert request.header_all("host") == [f"{APP}:8443"]


async def test_host_header_rewrite() -> None:
    async with Origin(name="app") as origin:
        rewritten = f"{HOST}:{origin.port}"
        async with (
            tunnel_stack([http_tunnel(APP, origin.port, host_header=rewritten)]) as st,
            visitor(st.port) as (reader, writer),
        ):
            writer.write(request_bytes("GET", "/", f"{APP}:8443"))
            response = await read_response(reader)
    assert response.status == 200
    (request,) = origin.requests
    assert request.header_all("host") == [rewritten]
    assert request.header_all("x-forwarded-host") == [f"{APP}:8443"]  # the original survives


async def test_an_h2c_upgrade_offer_does_not_reach_the_origin() -> None:
    """``Upgrade: h2c`` (deprecated by RFC 9113) would make an HTTP/2 connection that no gate
    reads: the origin never sees the offer and answers in HTTP/1.1; another protocol on
    offer beside it stays."""
    offer = ("Connection: Upgrade, HTTP2-Settings", "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA")
    async with (
        Origin() as origin,
        tunnel_stack([http_tunnel(APP, origin.port)]) as stack,
        visitor(stack.port) as (reader, writer),
    ):
        writer.write(request_bytes("GET", "/a", APP, "Upgrade: h2c", *offer))
        assert (await read_response(reader)).status == 200
    async with (
        Origin() as other,
        tunnel_stack([http_tunnel(APP, other.port)]) as stack,
        visitor(stack.port) as (reader, writer),
    ):
        writer.write(request_bytes("GET", "/b", APP, "Upgrade: foo/1, h2c", *offer))
        await read_response(reader)
    (alone,) = origin.requests
    assert (alone.header("upgrade"), alone.header("http2-settings")) == (None, None)
    (both,) = other.requests
    assert (both.header("upgrade"), both.header("http2-settings")) == ("foo/1", None)
