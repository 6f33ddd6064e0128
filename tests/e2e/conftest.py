"""Fixtures: a process launcher that never leaks children, a local echo service, a tunnel."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from .helpers import HOST, CliProcess, EchoServer, TunnelClient, TunnelServer

Launch = Callable[..., CliProcess]


@pytest.fixture
def launch() -> Iterator[Launch]:
    """``launch("server", "--token", ...)`` starts ``ferrotunnel`` with these arguments;
    every process started is killed and reaped at teardown."""
    started: list[CliProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> CliProcess:
        proc = CliProcess(list(args), env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.stop()


def server_args(token: str, *extra: str) -> list[str]:
    return [
        "server", "--token", token,
        "--bind", f"{HOST}:0", "--http-bind", f"{HOST}:0", "--tcp-bind", f"{HOST}:0",
        *extra,
    ]  # fmt: skip


def client_args(control: str, token: str, local_port: int, *extra: str) -> list[str]:
    return [
        "client", "--server", control, "--token", token,
        "--local-addr", f"{HOST}:{local_port}", "--protocol", "tcp", "--no-dashboard",
        *extra,
    ]  # fmt: skip


@dataclass
class Tunnel:
    token: str
    server: TunnelServer
    client: TunnelClient
    echo: EchoServer

    @property
    def public_port(self) -> int:
        return self.client.public_port


TOKEN = "e2e-token-5f0c"


@pytest.fixture
def tunnel(launch: Launch, echo: EchoServer) -> Tunnel:
    """A server and a client, both real processes, exposing ``echo`` over TCP."""
    server = TunnelServer(launch(*server_args(TOKEN)))
    client = TunnelClient(launch(*client_args(server.control, TOKEN, echo.port)))
    assert client.public_port == server.tcp_port, client.proc.describe()
    return Tunnel(TOKEN, server, client, echo)
