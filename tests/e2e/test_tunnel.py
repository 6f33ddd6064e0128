"""Traffic through a real server and client process, and what must never happen on the way."""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import TOKEN, Launch, Tunnel, client_args, server_args
from .helpers import (
    HOST,
    EchoServer,
    TunnelClient,
    TunnelServer,
    echo_on,
    echo_roundtrip,
    free_port,
    wait_closed,
    wait_for_echo,
)

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20


def test_one_mebibyte_round_trip(tunnel: Tunnel) -> None:
    data = os.urandom(MiB)
    reply = echo_roundtrip(tunnel.public_port, data, timeout=15)
    assert len(reply) == len(data)
    assert reply == data


def test_concurrent_connections(tunnel: Tunnel) -> None:
    payloads = [os.urandom(128 << 10) for _ in range(16)]
    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        replies = list(pool.map(lambda p: echo_roundtrip(tunnel.public_port, p, 15), payloads))
    for sent, got in zip(payloads, replies, strict=True):
        assert got == sent


def test_many_exchanges_on_one_connection(tunnel: Tunnel) -> None:
    deadline = time.monotonic() + 10
    with socket.create_connection((HOST, tunnel.public_port), timeout=10) as sock:
        for size in (1, 7, 1000, 65536, 300_000):
            data = os.urandom(size)
            assert echo_on(sock, data, deadline) == data


def test_bench_command_shape(launch: Launch, echo: EchoServer) -> None:
    """The exact commands of ../shared/bench "ferrotunnel tcp": fixed ports given as flags."""
    control, aux, public = free_port(), free_port(), free_port()
    token = "bench-token"
    server = launch(
        "server", "--token", token, "--bind", f"127.0.0.1:{control}",
        "--http-bind", f"127.0.0.1:{aux}", "--tcp-bind", f"127.0.0.1:{public}",
    )  # fmt: skip
    TunnelServer(server)
    client = launch(
        "client", "--server", f"127.0.0.1:{control}", "--token", token,
        "--local-addr", f"{HOST}:{echo.port}", "--protocol", "tcp", "--no-dashboard",
    )  # fmt: skip
    assert TunnelClient(client).public_port == public
    wait_for_echo(public, timeout=5)
    data = os.urandom(MiB)
    assert echo_roundtrip(public, data, timeout=15) == data


def test_wrong_token_ends_the_client_quickly(tunnel: Tunnel, launch: Launch) -> None:
    started = time.monotonic()
    bad = launch(*client_args(tunnel.server.control, "not-the-token", tunnel.echo.port))
    status = bad.wait_exit(timeout=2.0)
    took = time.monotonic() - started
    assert status != 0, bad.describe()
    assert "invalid token" in bad.stderr, bad.describe()
    assert took < 2.0
    # the rejected attempt did not disturb the tunnel in place
    assert echo_roundtrip(tunnel.public_port, b"still here") == b"still here"


def test_a_client_without_a_token_says_it_sent_none(tunnel: Tunnel, launch: Launch) -> None:
    """No --token, no FERROTUNNEL_TOKEN, no terminal to prompt on (a service, a script): the
    refusal says the client sent no token and how to give one, in one line, status 1."""
    args = client_args(tunnel.server.control, "x", tunnel.echo.port)
    args[args.index("--token") : args.index("--token") + 2] = []
    bad = launch(*args)
    assert bad.wait_exit(timeout=5) == 1, bad.describe()
    lines = bad.stderr.strip().splitlines()
    assert lines == [
        "ferrotunnel: error: server rejected the session: invalid token (auth_failed): this "
        "client sent no token (pass --token, set FERROTUNNEL_TOKEN or give token in the "
        "[client] table)"
    ], bad.describe()
    # a wrong token is just refused: no hint about a missing one
    wrong = launch(*client_args(tunnel.server.control, "not-the-token", tunnel.echo.port))
    assert wrong.wait_exit(timeout=5) == 1, wrong.describe()
    assert "sent no token" not in wrong.stderr, wrong.describe()


def test_a_server_with_a_domain_names_it_in_tcp_urls(launch: Launch, echo: EchoServer) -> None:
    """``--domain tunnel.example.com --tcp-bind ...``: a TCP tunnel's public URL is
    ``tcp://tunnel.example.com:PORT``, as the README shows (it was the bind address, or this
    machine's host name for 0.0.0.0); ``--public-host`` still wins."""
    for extra, host in (
        (["--domain", "Tunnel.Example.com."], "tunnel.example.com"),
        (["--domain", "tunnel.example.com", "--public-host", "edge.example.net"],
         "edge.example.net"),
    ):  # fmt: skip
        server = TunnelServer(launch(*server_args(TOKEN, *extra)))
        client = TunnelClient(launch(*client_args(server.control, TOKEN, echo.port)))
        url = client.proc.expect_stderr(r"tunnel '\S+' is public at (?P<url>\S+)$", timeout=5)
        assert url.group("url") == f"tcp://{host}:{server.tcp_port}", client.proc.describe()
        assert echo_roundtrip(client.public_port, b"by name") == b"by name"
        for proc in (client.proc, server.proc):
            proc.signal(signal.SIGTERM)
            assert proc.wait_exit(timeout=5) == 0, proc.describe()


def test_the_token_is_never_logged(launch: Launch, echo: EchoServer) -> None:
    token = "s3cr3t-Tok3n-9f8e7d6c5b4a"
    wrong = "wr0ng-Tok3n-0a1b2c3d4e5f"
    server = TunnelServer(launch(*server_args(token, "--log-level", "debug")))
    client = TunnelClient(
        launch(*client_args(server.control, token, echo.port, "--log-level", "debug"))
    )
    data = os.urandom(256 << 10)
    assert echo_roundtrip(client.public_port, data) == data
    intruder = launch(
        *client_args(server.control, wrong, echo.port, "--log-level", "debug", "--no-reconnect")
    )
    assert intruder.wait_exit(timeout=5) != 0
    # stop both cleanly so that shutdown logging is included too
    for proc in (client.proc, server.proc):
        proc.signal(signal.SIGTERM)
        assert proc.wait_exit(timeout=5) == 0, proc.describe()
    assert "DEBUG" in server.proc.stderr, "debug logging is not on: the check proves nothing"
    for proc in (server.proc, client.proc, intruder):
        for secret in (token, wrong):
            assert secret not in proc.stdout, proc.describe()
            assert secret not in proc.stderr, proc.describe()


def test_garbage_on_the_control_port(tunnel: Tunnel) -> None:
    """The server closes the connection at once and goes on. The bytes are fixed: one in
    some 250 random kilobytes starts like a frame longer than what was sent, which the
    server rightly waits for (until the handshake deadline, 10 s)."""
    garbage = random.Random(1).randbytes(1024)  # its first frame header is already invalid
    with socket.create_connection((HOST, tunnel.server.control_port), timeout=5) as raw:
        raw.sendall(garbage)
        wait_closed(raw, timeout=2.0)
    assert tunnel.server.proc.popen.poll() is None, tunnel.server.proc.describe()
    data = os.urandom(64 << 10)
    assert echo_roundtrip(tunnel.public_port, data) == data


def test_a_prefix_of_the_token_is_rejected(tunnel: Tunnel, launch: Launch) -> None:
    """A token that is a prefix of the real one is still wrong (no partial comparison)."""
    bad = launch(*client_args(tunnel.server.control, TOKEN[:-1], tunnel.echo.port))
    assert bad.wait_exit(timeout=5) != 0
    assert "invalid token" in bad.stderr, bad.describe()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop", "trio"])
def test_each_event_loop(launch: Launch, echo: EchoServer, loop: str) -> None:
    """``--loop`` picks the event loop; the asyncio fast path and the portable (trio) path
    of both processes carry the same bytes and stop cleanly on SIGTERM."""
    server = TunnelServer(launch("--loop", loop, *server_args(TOKEN)))
    client = TunnelClient(launch("--loop", loop, *client_args(server.control, TOKEN, echo.port)))
    data = os.urandom(MiB)
    assert echo_roundtrip(client.public_port, data, timeout=15) == data
    for proc in (client.proc, server.proc):
        proc.signal(signal.SIGTERM)
        assert proc.wait_exit(timeout=5) == 0, proc.describe()
