"""Spans exported over OTLP/HTTP to a small receiver in the test (a threaded HTTP server on
127.0.0.1 decoding ``ExportTraceServiceRequest``): from a tunnel in this process, and from the
real ``ferrotunnel`` server and client processes configured by flag and by ``OTEL_*``."""

from __future__ import annotations

import gzip
import http.server
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from ferrotunnel.observability.tracing import Tracing, TracingSettings, otlp_provider
from tests.e2e.helpers import HOST, CliProcess, child_env
from tests.http.harness import Origin, raw_exchange, request_bytes, status_of
from tests.http.test_cli import answer, curl, start_server

from .observed import APP, observed_stack

VISITOR_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
VISITOR_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{VISITOR_TRACE}-{VISITOR_SPAN}-01"
TOKEN = "cli-http-token"  # what tests.http.test_cli.start_server gives the server


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, object]


class OtlpReceiver:
    """``POST /v1/traces`` with a protobuf ``ExportTraceServiceRequest``; keeps the spans."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                ok = self.path == "/v1/traces" and (
                    self.headers.get("Content-Type") == "application/x-protobuf"
                )
                if ok:
                    receiver.add(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 400)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{HOST}:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self._lock = threading.Lock()

    def add(self, request: ExportTraceServiceRequest) -> None:
        found = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes: dict[str, object] = {}
                    for a in span.attributes:
                        kind = a.value.WhichOneof("value")
                        attributes[a.key] = getattr(a.value, kind) if kind else None
                    found.append(
                        ReceivedSpan(
                            resource.get("service.name", ""),
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            attributes,
                        )
                    )
        with self._lock:
            self.requests += 1
            self.spans += found

    def named(self, name: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.name == name]

    def wait_for(self, name: str, n: int = 1, timeout: float = 15.0) -> list[ReceivedSpan]:
        deadline = time.monotonic() + timeout
        while len(found := self.named(name)) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {n} {name!r} spans; got {self.spans}")
            time.sleep(0.05)
        return found

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    started = OtlpReceiver()
    yield started
    started.stop()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_spans_reach_an_otlp_http_receiver(receiver: OtlpReceiver) -> None:
    provider = otlp_provider(TracingSettings(endpoint=receiver.url, service_name="edge-test"))
    tracing = Tracing(provider)
    try:
        async with (
            Origin() as origin,
            observed_stack(
                origin.port, server_plugins=[tracing], client_plugins=[tracing]
            ) as stack,
        ):
            request = request_bytes(
                "GET", "/status/201", APP, f"traceparent: {TRACEPARENT}", "Connection: close"
            )
            assert status_of(await raw_exchange(stack.port, request)) == 201
        assert await anyio.to_thread.run_sync(provider.force_flush)
    finally:
        await anyio.to_thread.run_sync(provider.shutdown)

    [server_span] = receiver.named("GET")
    assert (server_span.service, server_span.trace_id) == ("edge-test", VISITOR_TRACE)
    assert server_span.parent_id == VISITOR_SPAN
    assert server_span.attributes["http.response.status_code"] == 201
    [proxy] = receiver.named(f"proxy {APP}")
    assert (proxy.trace_id, proxy.parent_id) == (VISITOR_TRACE, server_span.span_id)
    assert len(receiver.named("ferrotunnel.handshake")) == 2
    origin_trace = origin.requests[0].header("traceparent")
    assert origin_trace == f"00-{VISITOR_TRACE}-{server_span.span_id}-01"


class TraceEcho(http.server.BaseHTTPRequestHandler):
    """An origin answering with the trace context it received, as JSON."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = json.dumps({"traceparent": self.headers.get("traceparent")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def trace_echo() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer((HOST, 0), TraceEcho)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def launch() -> Iterator[Callable[..., CliProcess]]:
    started: list[CliProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> CliProcess:
        proc = CliProcess(list(args), env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


@pytest.mark.timeout(60)
@pytest.mark.skipif(not Path("/usr/bin/curl").exists(), reason="curl is not installed")
def test_the_cli_traces_end_to_end(
    launch: Callable[..., CliProcess], receiver: OtlpReceiver, trace_echo: int, tmp_path: Path
) -> None:
    config = tmp_path / "server.toml"
    config.write_text("[access_log]\nenabled = true\n")
    fast = {"OTEL_BSP_SCHEDULE_DELAY": "100"}  # export within 0.1 s, not 5 s

    def launch_server(*args: str) -> CliProcess:
        extra = ("--otlp-endpoint", receiver.url, "--config", str(config))
        return launch(*args, *extra, env=child_env(**fast))

    server, control, ingress = start_server(launch_server)
    # said at start, not first learnt from a failed export
    server.expect_stderr(rf"traces to {re.escape(receiver.url)} \(OTLP/HTTP, ParentBased")
    # the client is configured by the standard variables alone
    client_env = child_env(
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=receiver.url, OTEL_SERVICE_NAME="laptop", **fast
    )
    client = launch(
        "client", "--server", control, "--token", TOKEN, "--no-dashboard",
        "--local-addr", f"{HOST}:{trace_echo}", "--tunnel-id", "app.localhost",
        env=client_env,
    )  # fmt: skip
    client.expect(r"^\s+http://app\.localhost:\d+\s+->")

    url = f"http://{HOST}:{ingress}/traced"
    code, echo = answer(curl(url, "-H", "Host: app.localhost", "-H", f"traceparent: {TRACEPARENT}"))
    assert code == 200, echo
    version, trace_id, parent_id, flags = echo["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", VISITOR_TRACE, "01")

    [server_span] = receiver.wait_for("GET")
    assert (server_span.service, server_span.trace_id) == ("ferrotunnel", VISITOR_TRACE)
    assert server_span.parent_id == VISITOR_SPAN
    assert server_span.span_id == parent_id  # the origin's parent is the ingress span
    [proxy] = receiver.wait_for("proxy app.localhost")
    assert (proxy.service, proxy.trace_id) == ("laptop", VISITOR_TRACE)
    assert proxy.parent_id == server_span.span_id
    handshakes = receiver.wait_for("ferrotunnel.handshake", 2)
    assert {s.service for s in handshakes} == {"ferrotunnel", "laptop"}

    line = server.expect_stderr(r'^\{"time".*"path": "/traced".*\}$')
    assert json.loads(line.group(0))["trace_id"] == VISITOR_TRACE
    assert "Traceback" not in server.stderr + client.stderr
