"""The built-ins decide on every gRPC call, with real ``ferrotunnel`` processes and grpcio:
the rate limit refuses the call after its burst with RESOURCE_EXHAUSTED (not the whole
connection), basic auth refuses a call without credentials as UNAUTHENTICATED while a call
with them on the same channel goes through, and the access log has a line per call."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc  # type: ignore[import-untyped]
import pytest

from tests.e2e.conftest import Launch
from tests.e2e.helpers import HOST, CliProcess
from tests.http.test_cli import client_args, start_server

SERVICE, APP = "test.Echo", "grpc.localhost"


@pytest.fixture
def grpc_port() -> Iterator[int]:
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    echo = grpc.unary_unary_rpc_method_handler(lambda request, _: b"echo:" + request)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Unary": echo}),)
    )
    port = server.add_insecure_port(f"{HOST}:0")
    server.start()
    yield port
    server.stop(grace=None).wait(5)


def tunnel(launch: Launch, config: Path, grpc_port: int) -> int:
    """A server with ``config``, a client exposing the gRPC service as ``APP``; the
    ingress port."""
    _, control, ingress = start_server(lambda *args: launch(*args, "--config", str(config)))
    client: CliProcess = launch(
        *client_args(control, "--local-addr", f"{HOST}:{grpc_port}", "--tunnel-id", APP)
    )
    client.expect(r"^ferrotunnel client connected$")
    return ingress


def calls(ingress: int, metadata: list[list[tuple[str, str]]]) -> list[object]:
    """One channel, one unary call per entry of ``metadata``: each reply or status code."""
    outcomes: list[object] = []
    with grpc.insecure_channel(
        f"{HOST}:{ingress}", options=[("grpc.default_authority", APP)]
    ) as channel:
        unary = channel.unary_unary(f"/{SERVICE}/Unary")
        for i, fields in enumerate(metadata):
            try:
                outcomes.append(unary(b"%d" % i, timeout=10, metadata=fields))
            except grpc.RpcError as error:
                outcomes.append(error.code())
    return outcomes


@pytest.mark.timeout(60)
def test_the_rate_limit_counts_calls_not_connections(
    launch: Launch, grpc_port: int, tmp_path: Path
) -> None:
    log = tmp_path / "access.jsonl"
    config = tmp_path / "server.toml"
    config.write_text(
        f'[rate_limit]\nper_ip = {{ rate = 0.001, burst = 3 }}\n\n[access_log]\npath = "{log}"\n'
    )
    ingress = tunnel(launch, config, grpc_port)
    outcomes = calls(ingress, [[]] * 5)
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    assert outcomes == [b"echo:0", b"echo:1", b"echo:2", exhausted, exhausted]
    # a line is written once its call has ended, which the client may learn first
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        not log.exists() or len(log.read_text().splitlines()) < 5
    ):
        time.sleep(0.02)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(line["status"] for line in lines) == [200, 200, 200, 429, 429]


@pytest.mark.timeout(60)
def test_basic_auth_decides_each_call(launch: Launch, grpc_port: int, tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text(f'[basic_auth.tunnels."{APP}"]\nusers = ["ada:lovelace"]\n')
    ingress = tunnel(launch, config, grpc_port)
    good = [("authorization", "Basic " + base64.b64encode(b"ada:lovelace").decode())]
    outcomes = calls(ingress, [good, [], good])
    assert outcomes == [b"echo:0", grpc.StatusCode.UNAUTHENTICATED, b"echo:2"]
