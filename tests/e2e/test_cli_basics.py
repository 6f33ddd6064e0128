"""The command line itself: version, help, and how bad input is reported."""

from __future__ import annotations

import importlib.metadata
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ferrotunnel.cli.tunnels import TunnelOptions
from ferrotunnel.core import Address, TunnelKind

from .conftest import Launch, client_args, server_args
from .helpers import HOST, TunnelClient, TunnelServer, child_env, run_cli

pytestmark = pytest.mark.timeout(60)

SERVER_FLAGS = ["--token", "--bind", "--http-bind", "--tcp-bind", "--tcp-port-range", "--log-level"]
CLIENT_FLAGS = [
    "--server", "--token", "--local-addr", "--protocol", "--tunnel-id", "--remote-port",
    "--no-dashboard", "--dashboard-port",
]  # fmt: skip


def test_version_prints_the_installed_version() -> None:
    result = run_cli(["version"])
    assert result.returncode == 0, result.stderr
    expected = importlib.metadata.version("ferrotunnel-core")
    assert expected == importlib.metadata.version("ferrotunnel-cli")
    lines = result.stdout.splitlines()
    assert lines[0] == f"ferrotunnel {expected}"
    assert lines[1].startswith("python ")


def test_top_level_help_lists_the_commands() -> None:
    result = run_cli(["--help"])
    assert result.returncode == 0, result.stderr
    for command in ("server", "client", "version", "demo"):
        assert f"\n  {command} " in result.stdout, result.stdout


@pytest.mark.parametrize(("command", "flags"), [("server", SERVER_FLAGS), ("client", CLIENT_FLAGS)])
def test_command_help_lists_its_flags(command: str, flags: list[str]) -> None:
    result = run_cli([command, "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: ferrotunnel {command} "), result.stdout
    listed = {word.rstrip(",") for word in result.stdout.split() if word.startswith("--")}
    missing = [flag for flag in flags if flag not in listed]
    assert not missing, f"{missing} not in:\n{result.stdout}"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["server", "--token", "t", "--bind", "nope"], "--bind"),
        (["server", "--token", "t", "--bind", "127.0.0.1:99999"], "--bind"),
        (["server", "--token", "t", "--tcp-port-range", "5-x"], "--tcp-port-range"),
        (["server", "--token", "t", "--tcp-port-range", "10-5"], "--tcp-port-range"),
        (["server", "--token", "t", "--tcp-port-range", "0-5"], "--tcp-port-range"),
        (["server", "--token", "t", "--tcp-port-range", "5-65536"], "--tcp-port-range"),
        (["server", "--token", "t", "--http-bind", "nope"], "--http-bind"),
        (["server", "--token", "t", "--tcp-bind", "nope"], "--tcp-bind"),
        (["client", "--server", "nope", "--token", "t"], "--server"),
        (
            ["client", "--server", "127.0.0.1:1", "--token", "t", "--local-addr", "bad"],
            "--local-addr",
        ),
        (["server"], "missing token"),
        (
            [
                "client",
                "--server",
                "127.0.0.1:1",
                "--token",
                "t",
                "--local-https",
                "--local-ca",
                "/nonexistent/ca.pem",
            ],
            "--local-ca '/nonexistent/ca.pem': No such file or directory",
        ),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_bad_input_is_one_line_and_status_2(args: list[str], needle: str) -> None:
    # stdin is /dev/null, not a terminal: no token prompt, and the environment is scrubbed
    result = run_cli(args)
    assert result.returncode == 2, f"status {result.returncode}\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ferrotunnel: error: "), lines[0]
    assert needle in lines[0], lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize("loop", ["trio", "uvloop"])
def test_a_loop_that_is_not_installed_is_one_line_and_status_2(loop: str) -> None:
    """``--loop trio`` (or uvloop) where the package is missing: how to install it, no
    traceback. The command runs in a real process whose imports of that package fail."""
    code = (
        f"import sys; sys.modules[{loop!r}] = None; "
        "from ferrotunnel.cli.main import main; sys.exit(main())"
    )
    argv = [sys.executable, "-c", code, "--loop", loop, "server", "--token", "t"]
    argv += ["--bind", f"{HOST}:0", "--http-bind", f"{HOST}:0"]
    result = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=child_env(),
        timeout=15, check=False,
    )  # fmt: skip
    assert result.returncode == 2, f"status {result.returncode}\n{result.stderr}"
    assert result.stderr.strip().splitlines() == [
        f"ferrotunnel: error: --loop {loop}: {loop} is not installed (pip install {loop})"
    ], result.stderr
    assert "ferrotunnel server ready" not in result.stdout


def test_a_client_without_its_dashboard_says_why(launch: Launch) -> None:
    """The dashboard runs on asyncio: on ``--loop trio`` the client says so where the URL
    would be (it said "not available: install ferrotunnel-observability", installed or not)."""
    server = TunnelServer(launch(*server_args("t")))
    client = launch(
        "--loop", "trio", "client", "--server", server.control, "--token", "t",
        "--protocol", "tcp", "--local-addr", f"{HOST}:9", "--dashboard-port", "0",
    )  # fmt: skip
    line = client.expect(r"^\s+dashboard: (?P<why>.+)$").group("why")
    assert line == "unavailable: it needs --loop asyncio or uvloop", client.describe()
    # blocked: installed, but not loaded
    blocked = launch(
        "--block-plugin", "dashboard", "client", "--server", server.control, "--token", "t",
        "--tunnel-id", "blocked", "--local-addr", f"{HOST}:9",
    )  # fmt: skip
    line = blocked.expect(r"^\s+dashboard: (?P<why>.+)$").group("why")
    assert line == "off (the dashboard plugin is not loaded: --no-plugins or --block-plugin)"


@pytest.mark.parametrize(
    ("option", "listener"),
    [
        ("--bind", "control plane"),
        ("--http-bind", "HTTP ingress"),
        ("--tcp-bind", "TCP ingress"),
        ("FERROTUNNEL_HTTP_BIND", "HTTP ingress"),
        ("http_bind", "HTTP ingress"),
    ],
)
def test_an_occupied_port_names_its_listener_in_one_line_and_status_1(
    tmp_path: Path, option: str, listener: str
) -> None:
    args = {"--bind": f"{HOST}:0", "--http-bind": f"{HOST}:0"}
    env = child_env()
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        where = option
        if option.startswith("--"):
            args[option] = f"{HOST}:{port}"
        elif option.startswith("FERROTUNNEL_"):
            args.pop("--http-bind")
            env[option] = f"{HOST}:{port}"
        else:  # from the configuration file
            args.pop("--http-bind")
            config = tmp_path / "server.toml"
            config.write_text(f'[server]\n{option} = "{HOST}:{port}"\n', encoding="utf-8")
            args["--config"] = str(config)
            where = f"{config}:2: [server] {option}"
        argv = ["server", "--token", "t", *(x for pair in args.items() for x in pair)]
        result = run_cli(argv, env=env)
    assert result.returncode == 1, f"status {result.returncode}\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0] == (
        f"ferrotunnel: error: cannot listen on {HOST}:{port} for the {listener} ({where}): "
        "Address already in use"
    ), lines[0]
    assert "Traceback" not in result.stderr


def test_token_from_the_environment(launch: Launch) -> None:
    token = "env-token-7d1e"
    env = child_env(FERROTUNNEL_TOKEN=token)
    args = ["server", "--bind", f"{HOST}:0", "--http-bind", f"{HOST}:0", "--tcp-bind", f"{HOST}:0"]
    server = TunnelServer(launch(*args, env=env))
    # the server really uses the environment's token: a client presenting it gets in
    client = TunnelClient(launch(*client_args(server.control, token, 9)))
    assert client.public_port == server.tcp_port


@pytest.mark.parametrize("path", ["/api", "/api/", "api", "api/"])
def test_a_path_prefix_names_the_tunnel_host_slash_path(path: str) -> None:
    """The server routes ``--path api`` as ``/api``; the tunnel's name (in logs, the
    dashboard, metrics, plugin tables) says so too, instead of ``appapi``."""
    options = TunnelOptions("preserve", local_https=False, local_ca=None)
    tunnel = options.make(TunnelKind.HTTP, "app", Address(HOST, 3000), path=path)
    assert tunnel.name == "app/api"
