"""Prometheus metrics after known traffic through a real tunnel (server and client in this
process, real sockets), read back with prometheus_client's own parser."""

from __future__ import annotations

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry

from ferrotunnel.core import Address, Client, ClientStatus, RejectedError, Server
from ferrotunnel.core.plugin import PluginHost
from ferrotunnel.core.plugin.types import Identity, Peer
from ferrotunnel.core.testing import plugin_host
from ferrotunnel.observability.dashboard import Dashboard
from ferrotunnel.observability.metrics import (
    ClientMetrics,
    MetricsPlugin,
    ServerMetrics,
    metrics_app,
    serve_metrics,
)
from ferrotunnel.protocol import Hello
from tests.core.helpers import FAST, connect, echo_server, free_port_range, make_client
from tests.http.harness import HOST, Origin, raw_exchange, request_bytes, status_of, visitor

from .observed import APP, Samples, observed_stack, parse, scrape, value

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the HTTP ingress is asyncio-only


def registry_of(collector: ServerMetrics | ClientMetrics) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


async def until(registry: CollectorRegistry, name: str, expected: float, **labels: str) -> Samples:
    """Scrape until ``name{labels}`` reads ``expected`` (events land a moment after traffic)."""
    with anyio.fail_after(5):
        while True:
            samples = scrape(registry)
            if value(samples, name, **labels) == expected:
                return samples
            await anyio.sleep(0.01)


async def test_server_and_client_metrics_after_known_traffic() -> None:
    server_metrics, client_metrics = ServerMetrics(), ClientMetrics()
    server_registry, client_registry = registry_of(server_metrics), registry_of(client_metrics)
    plan = [("GET", "/status/200", b"")] * 3 + [
        ("GET", "/status/404", b""),
        ("GET", "/status/503", b""),
        ("POST", "/upload", b"x" * 1000),
    ]
    async with (
        Origin() as origin,
        observed_stack(
            origin.port, server_plugins=[server_metrics], client_plugins=[client_metrics]
        ) as stack,
    ):
        client_metrics.attach(stack.client)
        sent = received = 0
        statuses = []
        for method, target, body in plan:
            request = request_bytes(method, target, APP, "Connection: close", body=body)
            response = await raw_exchange(stack.port, request)
            statuses.append(status_of(response))
            sent += len(request)
            received += len(response)
        assert statuses == [200, 200, 200, 404, 503, 200]

        tunnel = APP
        samples = await until(
            server_registry, "ferrotunnel_http_request_duration_seconds_count", 6, tunnel=tunnel
        )
        requests = "ferrotunnel_http_requests_total"
        assert value(samples, requests, tunnel=tunnel, status_class="2xx") == 4
        assert value(samples, requests, tunnel=tunnel, status_class="4xx") == 1
        assert value(samples, requests, tunnel=tunnel, status_class="5xx") == 1
        assert value(samples, requests, tunnel=tunnel, status_class="3xx") is None
        # responses pass unmodified; requests gain this hop's X-Forwarded-* headers
        assert value(samples, "ferrotunnel_tunnel_bytes_out_total", tunnel=tunnel) == received
        bytes_in = value(samples, "ferrotunnel_tunnel_bytes_in_total", tunnel=tunnel)
        assert bytes_in is not None
        assert sent < bytes_in < sent + 6 * 200
        histogram = "ferrotunnel_http_request_duration_seconds"
        buckets = sorted(
            (float(dict(labels)["le"]), v)
            for (name, labels), v in samples.items()
            if name == f"{histogram}_bucket"
        )
        assert buckets[-1] == (float("inf"), 6)
        assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
        assert 0 < (value(samples, f"{histogram}_sum", tunnel=tunnel) or 0) < 6 * 5
        assert value(samples, "ferrotunnel_sessions_active") == 1
        assert value(samples, "ferrotunnel_sessions_opened_total") == 1
        assert value(samples, "ferrotunnel_tunnels_active", kind="http") == 1
        assert value(samples, "ferrotunnel_tunnels_active", kind="tcp") == 0
        # one stream per visitor connection (each asked Connection: close)
        assert value(samples, "ferrotunnel_streams_opened_total") == 6
        await until(server_registry, "ferrotunnel_streams_active", 0, tunnel=tunnel)

        client_samples = await until(
            client_registry, "ferrotunnel_client_streams_active", 0, tunnel=tunnel
        )
        assert value(client_samples, "ferrotunnel_client_streams_opened_total") == 6
        assert value(client_samples, "ferrotunnel_client_connected") == 1
        assert value(client_samples, "ferrotunnel_client_tunnels_active") == 1
        assert value(client_samples, "ferrotunnel_client_reconnects_total") == 0

        # a stream in use is active on both sides
        async with visitor(stack.port) as (reader, writer):
            writer.write(request_bytes("GET", "/status/200", APP))
            await reader.readuntil(b"status 200 from origin")
            assert value(scrape(server_registry), "ferrotunnel_streams_active", tunnel=APP) == 1
            assert (
                value(scrape(client_registry), "ferrotunnel_client_streams_active", tunnel=APP) == 1
            )

    # the session is gone: gauges drop, counters keep their totals
    samples = await until(server_registry, "ferrotunnel_sessions_active", 0)
    assert value(samples, "ferrotunnel_tunnels_active", kind="http") == 0
    assert value(samples, "ferrotunnel_streams_opened_total") == 7
    assert value(samples, "ferrotunnel_http_requests_total", tunnel=APP, status_class="2xx") == 5


async def test_handshake_failures_by_reason() -> None:
    server_metrics = ServerMetrics()
    registry = registry_of(server_metrics)
    refused = ClientMetrics()
    async with (
        Origin() as origin,
        observed_stack(origin.port, server_plugins=[server_metrics]) as stack,
    ):
        address = str(stack.server.control_address)
        wrong = Client(
            server_addr=address,
            token="wrong",
            tunnels=list(stack.client.config.tunnels),
            reconnect=False,
            plugins=plugin_host(refused),
        )
        refused.attach(wrong)
        with pytest.raises(RejectedError):
            await wrong.start()
        # a connection that closes before its HELLO
        control = stack.server.control_address
        stream = await anyio.connect_tcp(control.host, control.port)
        await stream.aclose()
        samples = await until(registry, "ferrotunnel_handshake_failures_total", 1, reason="closed")
    assert value(samples, "ferrotunnel_handshake_failures_total", reason="auth_failed") == 1
    client_samples = scrape(registry_of(refused))
    assert (
        value(client_samples, "ferrotunnel_client_handshake_failures_total", reason="auth_failed")
        == 1
    )
    assert value(client_samples, "ferrotunnel_client_connected") == 0


async def test_client_reconnects_are_counted() -> None:
    client_metrics = ClientMetrics()
    registry = registry_of(client_metrics)
    async with (
        Origin() as origin,
        observed_stack(origin.port, client_plugins=[client_metrics], reconnect=True) as stack,
    ):
        client_metrics.attach(stack.client)
        for session in stack.server.sessions:
            session.abort()
        samples = await until(registry, "ferrotunnel_client_reconnects_total", 1)
        with anyio.fail_after(5):
            await stack.client.wait_connected()
        assert stack.client.status is ClientStatus.CONNECTED
        samples = await until(registry, "ferrotunnel_client_connected", 1)
        assert value(samples, "ferrotunnel_client_tunnels_active") == 1
        response = await raw_exchange(
            stack.port, request_bytes("GET", "/status/200", APP, "Connection: close")
        )
        assert status_of(response) == 200


async def test_endpoint_and_asgi_app_serve_the_registry() -> None:
    server_metrics = ServerMetrics()
    registry = registry_of(server_metrics)
    endpoint = await serve_metrics(registry, Address(HOST, 0))
    try:
        port = endpoint.address.port
        raw = await raw_exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = raw.partition(b"\r\n\r\n")
        assert status_of(raw) == 200
        assert b"text/plain; version=0.0.4" in head
        assert value(parse(body.decode()), "ferrotunnel_sessions_active") == 0
        assert status_of(await raw_exchange(port, b"GET /other HTTP/1.1\r\n\r\n")) == 404
    finally:
        await endpoint.aclose()

    # the ASGI app to mount in a web app of one's own
    transport = httpx.ASGITransport(app=metrics_app(registry))
    async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert value(parse(response.text), "ferrotunnel_sessions_opened_total") == 0


async def test_the_plugin_collects_client_metrics_for_the_dashboard_without_flags() -> None:
    metrics = MetricsPlugin()
    host = plugin_host(metrics)  # [metrics] not enabled: no endpoint, no server middleware
    assert host.config is not None
    assert host.http_middlewares(host.config) == []
    async with (
        Origin() as origin,
        observed_stack(
            origin.port,
            client_plugins=[metrics, Dashboard()],
            client_config={"dashboard": {"port": 0}},
        ) as stack,
    ):
        registry = metrics.client_registry(stack.client)
        assert metrics.client_registry(stack.client) is registry
        for _ in range(2):
            request = request_bytes("GET", "/status/200", APP, "Connection: close")
            assert status_of(await raw_exchange(stack.port, request)) == 200
        samples = scrape(registry)
        assert value(samples, "ferrotunnel_client_streams_opened_total") == 2
        assert value(samples, "ferrotunnel_client_connected") == 1
        # the dashboard of the same client serves them at its /metrics
        async with httpx.AsyncClient(base_url=stack.client.endpoints["dashboard"]) as http:
            response = await http.get("/metrics")
        assert response.status_code == 200
        assert parse(response.text) == scrape(registry)
    assert metrics.endpoint is None


async def test_a_limited_identitys_streams_are_counted_under_its_server_name() -> None:
    """The server names a limited identity's tunnel ``carol/db`` (its client says ``db``):
    ``ferrotunnel_streams_active`` counts its streams under that name too, not under the
    client's, where they would mix with another client's ``db``."""

    class Users:
        async def authenticate(self, hello: Hello, peer: Peer) -> Identity:
            return Identity("carol", ports=((1, 65535),))

    metrics = ServerMetrics()
    registry = registry_of(metrics)
    async with (
        echo_server() as echo_port,
        Server(
            authenticators=[Users()],
            plugins=PluginHost.with_plugins([metrics]),
            bind=f"{HOST}:0",
            tcp_port_range=free_port_range(1),
            session=FAST,
            drain_timeout=0.5,
        ) as server,
        make_client(server, echo_port, token="t", tunnel_id="db", reconnect=False) as client,
    ):
        [granted] = client.tunnels
        assert granted.remote_port is not None
        async with await connect(granted.remote_port) as sock:
            await sock.send(b"hi")
            assert await sock.receive() == b"hi"
            samples = scrape(registry)
    assert value(samples, "ferrotunnel_streams_active", tunnel="carol/db") == 1
    assert value(samples, "ferrotunnel_streams_active", tunnel="db") is None
