"""HTTP/2 (gRPC) connections are passed through undecoded: with metrics and tracing on they
still work end to end (trailers intact); every call is counted and gets a request span (each
is put to the middlewares: see h2gate.py), and the connection's stream a client proxy span."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import anyio
import anyio.to_thread
import grpc  # type: ignore[import-untyped]
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from ferrotunnel.observability.metrics import ServerMetrics
from ferrotunnel.observability.tracing import Tracing
from tests.http.harness import HOST, wait_until

from .observed import APP, observed_stack, scrape, value

pytestmark = pytest.mark.anyio

SERVICE = "test.Echo"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the HTTP ingress is asyncio-only


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b"echo:" + request


def _missing(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.NOT_FOUND, "no such record")
    raise AssertionError("abort() raises")


@pytest.fixture
def grpc_port() -> Iterator[int]:
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "Missing": grpc.unary_unary_rpc_method_handler(_missing),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port(f"{HOST}:0")
    server.start()
    yield port
    server.stop(grace=None).wait(5)


@pytest.fixture
async def exporter() -> AsyncIterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


async def test_grpc_through_an_observed_tunnel(
    grpc_port: int, exporter: InMemorySpanExporter
) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing, metrics = Tracing(provider), ServerMetrics()
    registry = CollectorRegistry()
    registry.register(metrics)
    async with observed_stack(
        grpc_port, server_plugins=[tracing, metrics], client_plugins=[tracing]
    ) as stack:

        def calls() -> tuple[bytes, grpc.StatusCode]:
            options = [("grpc.default_authority", APP)]
            with grpc.insecure_channel(f"{HOST}:{stack.port}", options=options) as channel:
                reply = channel.unary_unary(f"/{SERVICE}/Unary")(b"hi", timeout=10)
                with pytest.raises(grpc.RpcError) as failed:
                    channel.unary_unary(f"/{SERVICE}/Missing")(b"x", timeout=10)
                return reply, failed.value.code()

        reply, code = await anyio.to_thread.run_sync(calls)

        def requests() -> float | None:
            samples = scrape(registry)
            return value(samples, "ferrotunnel_http_requests_total", tunnel=APP, status_class="2xx")

        # both calls answered 200 (the failure is in the trailers), each counted
        await wait_until(lambda: requests() == 2, what="both calls counted")
        samples = scrape(registry)
    assert (reply, code) == (b"echo:hi", grpc.StatusCode.NOT_FOUND)  # trailers intact
    spans = exporter.get_finished_spans()
    names = [span.name for span in spans]
    # every call is put to the middlewares (the gate), so each gets its span
    request_spans = [span for span in spans if span.name == "POST"]
    paths = sorted(str((span.attributes or {})["url.path"]) for span in request_spans)
    assert paths == [f"/{SERVICE}/Missing", f"/{SERVICE}/Unary"]
    assert {(span.attributes or {})["http.response.status_code"] for span in request_spans} == {200}
    assert names.count(f"proxy {APP}") == 1  # one HTTP/2 connection, one stream
    assert value(samples, "ferrotunnel_streams_opened_total") == 1
