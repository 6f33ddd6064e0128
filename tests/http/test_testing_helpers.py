"""``ferrotunnel.http.testing``: what a plugin author's HTTP test is built from."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import httpx
import pytest

import ferrotunnel.plugins.headers
import ferrotunnel.plugins.rate_limit
from ferrotunnel.core import Address
from ferrotunnel.core.plugin import ExchangeRecord, hookimpl
from ferrotunnel.core.testing import plugin_host
from ferrotunnel.http import HttpIngressConfig
from ferrotunnel.http.testing import HttpOrigin, running_http_tunnel

pytestmark = pytest.mark.anyio


async def test_a_header_plugins_edits_reach_the_origin_and_the_visitor() -> None:
    host = plugin_host(
        ferrotunnel.plugins.headers,
        config={
            "headers": {
                "tunnels": {
                    "app.localhost": {
                        "request_set": {"x-from": "tunnel"},
                        "response_set": {"x-served-by": "ferrotunnel"},
                    }
                }
            }
        },
    )
    origin = HttpOrigin(body=b"hello", headers={"x-origin": "1"})
    async with (
        running_http_tunnel(origin, plugins=host) as tunnel,
        httpx.AsyncClient(base_url=tunnel.url, headers=tunnel.headers) as http,
    ):
        with anyio.fail_after(10):
            first = await http.get("/a?q=1")
            second = await http.post("/b", content=b"x" * 70_000)
            chunks = [b"one,", b"two"]

            async def body() -> AsyncIterator[bytes]:
                for chunk in chunks:
                    yield chunk

            third = await http.put("/c", content=body())
    assert (first.status_code, first.text) == (200, "hello")
    assert first.headers["x-served-by"] == "ferrotunnel"
    assert first.headers["x-origin"] == "1"
    assert [(r.method, r.target) for r in origin.requests] == [
        ("GET", "/a?q=1"),
        ("POST", "/b"),
        ("PUT", "/c"),
    ]
    assert all(r.header("X-From") == "tunnel" for r in origin.requests)
    assert origin.requests[0].header("host") == "app.localhost"
    assert origin.requests[1].body == b"x" * 70_000
    assert "chunked" in (origin.requests[2].header("transfer-encoding") or "")
    assert origin.requests[2].body == b"one,two"
    assert second.status_code == third.status_code == 200


class Records:
    """Every exchange's record, as an event-hook plugin sees it."""

    def __init__(self, expected: int) -> None:
        self.records: list[ExchangeRecord] = []
        self.expected = expected
        self.all_in = anyio.Event()

    @hookimpl
    def ferrotunnel_exchange_complete(self, record: ExchangeRecord) -> None:
        self.records.append(record)
        if len(self.records) == self.expected:
            self.all_in.set()


async def test_a_plugin_under_test_is_named_as_its_entry_point() -> None:
    """``replied_by`` in a test is what a server started from the CLI reports."""
    records = Records(expected=2)
    host = plugin_host(
        ferrotunnel.plugins.rate_limit,
        records,
        config={"rate_limit": {"per_ip": {"rate": 0.001, "burst": 1}}},
    )
    info = host.infos[0]
    assert (info.name, info.distribution) == ("rate-limit", "ferrotunnel-plugins")
    origin = HttpOrigin()
    async with (
        running_http_tunnel(origin, plugins=host) as tunnel,
        httpx.AsyncClient(base_url=tunnel.url, headers=tunnel.headers) as http,
    ):
        with anyio.fail_after(10):
            statuses = [(await http.get("/")).status_code for _ in range(2)]
            await records.all_in.wait()
    assert statuses == [200, 429]
    assert [r.replied_by for r in records.records] == ["origin", "rate-limit"]
    assert len(origin.requests) == 1


async def test_the_origin_refuses_a_head_it_will_not_buffer() -> None:
    """The ingress's own limit is 64 KiB too: a larger one (``config``) lets the origin's show."""
    origin = HttpOrigin()
    config = HttpIngressConfig(bind=Address("127.0.0.1", 0), max_head_size=256 * 1024)
    async with (
        running_http_tunnel(origin, config=config) as tunnel,
        httpx.AsyncClient(base_url=tunnel.url, headers=tunnel.headers) as http,
    ):
        with anyio.fail_after(10):
            response = await http.get("/", headers={"x-big": "a" * 100_000})
    assert response.status_code == 431
    assert origin.requests == []


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_off_asyncio_the_error_says_which_backend_to_use() -> None:
    with pytest.raises(RuntimeError, match="'asyncio' backend"):
        async with running_http_tunnel(HttpOrigin()):
            pass  # pragma: no cover
