"""The server's hardening flags, through the real ``ferrotunnel`` processes: each flag
reaches the limit it names, and the limit answers as documented in ``docs/security.md``."""

from __future__ import annotations

import socket
import time

from tests.e2e.helpers import HOST, CliProcess, EchoServer

from .tls_helpers import Launch, client_args, server_args, start_server

EXIT_WITHIN = 8.0


def _exit_line(client: CliProcess) -> str:
    assert client.wait_exit(EXIT_WITHIN) != 0, client.describe()
    errors = [line for line in client.stderr.splitlines() if line.startswith("ferrotunnel: error")]
    assert len(errors) == 1, client.describe()
    return errors[0]


def test_max_head_size_flag_gives_431(launch: Launch) -> None:
    server = start_server(launch, *server_args(None, "--max-head-size", "2048"))
    port = server.ports["HTTP ingress"]
    request = f"GET / HTTP/1.1\r\nHost: app.localhost\r\nX-Big: {'a' * 3000}\r\n\r\n".encode()
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(request)
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:80]


def test_max_tunnels_flag_refuses_a_client_asking_for_more(
    launch: Launch, echo: EchoServer
) -> None:
    server = start_server(launch, *server_args(None, "--max-tunnels", "1"))
    local = f"{HOST}:{echo.port}"
    client = launch(
        "client", "--server", f"{HOST}:{server.control_port}", "--token", "sec-token",
        "--no-dashboard", "--tunnel", f"tcp:one={local}", "--tunnel", f"tcp:two={local}",
    )  # fmt: skip
    assert "allows 1 per client" in _exit_line(client)


def test_auth_failure_flags_throttle_an_address(launch: Launch, echo: EchoServer) -> None:
    server = start_server(
        launch, *server_args(None, "--auth-failure-limit", "2", "--auth-failure-window", "30")
    )
    for _ in range(2):
        wrong = launch(*client_args(server.control_port, echo.port, token="wrong-guess"))
        assert "invalid token" in _exit_line(wrong)
    # now even the right token is refused from this address, without being checked
    right = launch(*client_args(server.control_port, echo.port, "--no-reconnect"))
    assert "too many failed authentications" in _exit_line(right)


def test_max_unauthenticated_flag_closes_the_excess_at_accept(launch: Launch) -> None:
    server = start_server(
        launch, *server_args(None, "--max-unauthenticated", "1", "--handshake-timeout", "30")
    )
    address = (HOST, server.control_port)
    with socket.create_connection(address, timeout=5) as silent:
        deadline = time.monotonic() + 5
        while True:  # the first connection is counted once the server has accepted it
            with socket.create_connection(address, timeout=5) as extra:
                extra.settimeout(2)
                try:
                    closed = extra.recv(1) == b""
                except TimeoutError:
                    closed = False
                except ConnectionResetError:
                    closed = True
            if closed or time.monotonic() > deadline:
                break
        assert closed, "a connection over --max-unauthenticated was not closed at once"
        assert silent.fileno() >= 0
