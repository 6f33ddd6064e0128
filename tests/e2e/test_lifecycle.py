"""Signals, crashes and restarts of the server and client processes."""

from __future__ import annotations

import os
import re
import signal
import socket
import time

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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
@pytest.mark.parametrize("which", ["server", "client"])
def test_signal_with_an_open_connection_exits_0(
    tunnel: Tunnel, which: str, signum: signal.Signals
) -> None:
    proc = tunnel.server.proc if which == "server" else tunnel.client.proc
    with socket.create_connection((HOST, tunnel.public_port), timeout=5) as visitor:
        assert echo_on(visitor, b"open", time.monotonic() + 5) == b"open"
        signalled = time.monotonic()
        proc.signal(signum)
        status = proc.wait_exit(timeout=5.0)
        took = time.monotonic() - signalled
        assert status == 0, proc.describe()
        assert took < 5.0
        assert "Traceback" not in proc.stderr, proc.describe()
        # the visitor is not left hanging on a tunnel that is gone
        wait_closed(visitor, timeout=5.0)


def test_client_reconnects_after_the_server_is_killed_and_restarted(
    tunnel: Tunnel, launch: Launch
) -> None:
    control, public = tunnel.server.control_port, tunnel.public_port
    tunnel.server.proc.kill()
    with pytest.raises(ConnectionRefusedError):  # nobody listens on the public port any more
        echo_roundtrip(public, b"x", timeout=2)
    args = [
        "server", "--token", TOKEN, "--bind", f"{HOST}:{control}",
        "--http-bind", f"{HOST}:0", "--tcp-bind", f"{HOST}:{public}",
    ]  # fmt: skip
    restarted = TunnelServer(launch(*args))
    assert (restarted.control_port, restarted.tcp_port) == (control, public)
    wait_for_echo(public, timeout=15)
    data = os.urandom(256 << 10)
    assert echo_roundtrip(public, data) == data
    assert tunnel.client.proc.popen.poll() is None, tunnel.client.proc.describe()


def _port_range_server(launch: Launch) -> tuple[TunnelServer, int]:
    low = free_port()
    high = min(low + 4, 65535)
    args = [
        "server", "--token", TOKEN, "--bind", f"{HOST}:0", "--http-bind", f"{HOST}:0",
        "--tcp-port-range", f"{low}-{high}",
    ]  # fmt: skip
    server = TunnelServer(launch(*args), tcp_ingress=False)
    assert re.search(rf"^\s+TCP port range\s+{low}-{high}$", server.proc.stdout, re.M)
    return server, low


def test_killed_client_reclaims_its_port_at_once(launch: Launch, echo: EchoServer) -> None:
    server, port = _port_range_server(launch)
    args = client_args(server.control, TOKEN, echo.port, "--remote-port", str(port))
    first = TunnelClient(launch(*args))
    assert first.public_port == port
    assert echo_roundtrip(port, b"one") == b"one"
    first.proc.kill()
    started = time.monotonic()
    second = TunnelClient(launch(*args), timeout=5.0)
    assert second.public_port == port
    assert time.monotonic() - started < 5.0
    wait_for_echo(port, timeout=5)
    assert "held by another client" not in second.proc.stderr


def test_restart_takes_over_from_a_hung_client(launch: Launch, echo: EchoServer) -> None:
    """The old process is frozen (SIGSTOP), so its connection still looks alive to the server:
    the same command started again must take the port over at once, not be refused."""
    server, port = _port_range_server(launch)
    args = client_args(server.control, TOKEN, echo.port, "--remote-port", str(port))
    hung = TunnelClient(launch(*args))
    hung.proc.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        fresh = TunnelClient(launch(*args), timeout=5.0)
        assert fresh.public_port == port
        assert time.monotonic() - started < 5.0
        data = os.urandom(64 << 10)
        assert echo_roundtrip(port, data) == data
        server.proc.expect_stderr(r"reconnected: closing its stale session", timeout=5)
    finally:
        hung.proc.kill()  # SIGKILL ends a stopped process too
    assert fresh.proc.popen.poll() is None, fresh.proc.describe()


def test_another_client_cannot_take_a_held_port(launch: Launch, echo: EchoServer) -> None:
    server, port = _port_range_server(launch)
    args = client_args(server.control, TOKEN, echo.port, "--remote-port", str(port))
    holder = TunnelClient(launch(*args, "--client-id", "holder"))
    assert holder.public_port == port
    other = launch(*args, "--client-id", "someone-else")
    status = other.wait_exit(timeout=5.0)
    assert status != 0, other.describe()
    assert "held by another client" in other.stderr, other.describe()
    # the holder keeps its tunnel
    assert echo_roundtrip(port, b"mine") == b"mine"
    assert holder.proc.popen.poll() is None


def test_a_second_ctrl_c_exits_at_once(tunnel: Tunnel) -> None:
    """While the server drains an open connection, a second SIGINT ends it immediately."""
    server = tunnel.server.proc
    with socket.create_connection((HOST, tunnel.public_port), timeout=5) as visitor:
        assert echo_on(visitor, b"open", time.monotonic() + 5) == b"open"
        server.signal(signal.SIGINT)
        server.expect_stderr(r"SIGINT: shutting down", timeout=5)
        signalled = time.monotonic()
        server.signal(signal.SIGINT)
        status = server.wait_exit(timeout=5)
        assert time.monotonic() - signalled < 1.0, server.describe()
    assert status == 130, server.describe()
    assert "Traceback" not in server.stderr, server.describe()
    assert server.stderr.splitlines()[-1] == "ferrotunnel: error: interrupted again, exiting now"


def test_no_reconnect_client_fails_when_the_server_dies(launch: Launch, echo: EchoServer) -> None:
    """``--no-reconnect``: losing the server ends the client with a failure status, so that a
    supervisor (systemd ``Restart=on-failure``, a shell ``&&``) sees it."""
    server = TunnelServer(launch(*server_args(TOKEN)))
    client = TunnelClient(launch(*client_args(server.control, TOKEN, echo.port, "--no-reconnect")))
    assert echo_roundtrip(client.public_port, b"up") == b"up"
    server.proc.kill()
    status = client.proc.wait_exit(timeout=5)
    assert status == 1, client.proc.describe()
    assert "lost the connection" in client.proc.stderr.splitlines()[-1], client.proc.describe()
    assert "Traceback" not in client.proc.stderr


@pytest.mark.parametrize("stop", ["SIGTERM", "kill"])
def test_no_reconnect_client_says_why_once_and_never_reconnecting(
    launch: Launch, echo: EchoServer, stop: str
) -> None:
    """With ``--no-reconnect`` the lost connection is reported once, as the exit message with
    its reason; no log line says "reconnecting" (it logged one, then exited)."""
    server = TunnelServer(launch(*server_args(TOKEN)))
    client = TunnelClient(launch(*client_args(server.control, TOKEN, echo.port, "--no-reconnect")))
    assert echo_roundtrip(client.public_port, b"up") == b"up"
    if stop == "kill":
        server.proc.kill()
    else:
        server.proc.signal(signal.SIGTERM)
    assert client.proc.wait_exit(timeout=10) == 1, client.proc.describe()
    lines = client.proc.stderr.strip().splitlines()
    assert not [line for line in lines if "reconnecting" in line], client.proc.describe()
    assert re.fullmatch(
        rf"ferrotunnel: error: lost the connection to {re.escape(server.control)} \(.+\)",
        lines[-1],
    ), client.proc.describe()
