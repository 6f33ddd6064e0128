"""Configuration files and plugin switches of the real ``ferrotunnel`` command.

Every test runs the installed console script as a child process (servers and clients on
127.0.0.1 with ephemeral ports, their addresses parsed from what they print) and talks to it
over real sockets. Every wait is bounded; every process is killed and reaped at teardown.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from ..e2e.conftest import Launch
from ..e2e.helpers import (
    CONTROL_RE,
    HOST,
    TCP_INGRESS_RE,
    CliProcess,
    EchoServer,
    child_env,
    echo_roundtrip,
    free_port,
    run_cli,
)

pytestmark = pytest.mark.timeout(60)

HTTP_INGRESS_RE = r"^\s+HTTP ingress\s+(?P<host>\S+):(?P<port>\d+)$"
PLUGINS_RE = r"^\s+plugins\s+(?P<names>.+)$"
HTTP_TUNNEL_RE = r"^\s+http://(?P<host>[^\s:/]+):(?P<port>\d+)\s+->\s+(?P<local>\S+)$"
TCP_TUNNEL_RE = r"^\s+tcp://(?P<host>[^\s:]+):(?P<port>\d+)\s+->\s+(?P<local>\S+)$"
BUILTINS = ["access-log", "auth", "basic-auth", "circuit-breaker", "headers", "ip-filter",
            "rate-limit", "tls"]  # fmt: skip
#: every plugin of this environment: the built-ins and the other workspace distributions' ones
INSTALLED = sorted({ep.name for ep in entry_points(group="ferrotunnel")})


class _Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = f"hello {self.path} for {self.headers['Host']}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Origin", "cli-test")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def web_origin() -> Iterator[int]:
    """A small HTTP origin on 127.0.0.1:0 (its port)."""
    server = http.server.ThreadingHTTPServer((HOST, 0), _Hello)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()
    thread.join(5)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@dataclass
class RunningServer:
    proc: CliProcess
    control: str
    control_host: str
    http_host: str
    http_port: int
    tcp_port: int | None
    plugins: str


def started_server(proc: CliProcess, *, tcp: bool = True) -> RunningServer:
    """Wait for ``ferrotunnel server`` to be ready; the addresses it printed."""
    control = proc.expect(CONTROL_RE)
    tcp_port = int(proc.expect(TCP_INGRESS_RE).group("port")) if tcp else None
    web = proc.expect(HTTP_INGRESS_RE)
    plugins = proc.expect(PLUGINS_RE).group("names")
    proc.expect(r"^Press Ctrl-C to stop\.$")
    return RunningServer(
        proc,
        f"{control['host']}:{control['port']}",
        control["host"],
        web["host"],
        int(web["port"]),
        tcp_port,
        plugins,
    )


def http_get(port: int, host: str, path: str = "/", timeout: float = 10.0) -> tuple[int, str]:
    """One ``Connection: close`` request to ``127.0.0.1:port``: (status, whole response)."""
    deadline = time.monotonic() + timeout
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    data = bytearray()
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(request)
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    text = data.decode("latin-1")
    match = re.match(r"HTTP/1\.1 (\d{3}) ", text)
    return (int(match.group(1)) if match else 0), text


def server_args(token: str) -> list[str]:
    return [
        "server", "--token", token,
        "--bind", f"{HOST}:0", "--http-bind", f"{HOST}:0", "--tcp-bind", f"{HOST}:0",
    ]  # fmt: skip


def client_tcp(control: str, token: str, local_port: int, *extra: str) -> list[str]:
    return [
        "client", "--server", control, "--token", token, "--protocol", "tcp",
        "--local-addr", f"{HOST}:{local_port}", "--no-dashboard", "--no-reconnect", *extra,
    ]  # fmt: skip


def one_error_line(result_stderr: str) -> str:
    lines = result_stderr.strip().splitlines()
    assert len(lines) == 1, result_stderr
    assert lines[0].startswith("ferrotunnel: error: "), result_stderr
    return lines[0]


# ---------------------------------------------------------------------------- 1. config init


@pytest.mark.parametrize("kind", ["server", "client"])
def test_config_init_writes_a_private_file_that_config_check_accepts(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / f"{kind}.toml"
    result = run_cli(["config", "init", kind, "--out", str(path)])
    assert result.returncode == 0, result.stderr
    assert str(path) in result.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert f"[{kind}]" in text
    for table in SERVER_ONLY_TABLES:  # every plugin table its side reads, commented out
        assert (f"# [{table}]" in text) is (kind == "server"), text
    for table in ["metrics", "tracing", "dashboard"]:
        assert f"# [{table}]" in text
    # the plugins' tables in alphabetical order, as a reader looks for one
    sections = re.findall(r"^# ---- \[(\w+)\]", text, flags=re.MULTILINE)
    assert len(sections) >= 3, text
    assert sections == sorted(sections)
    checked = run_cli(["config", "check", str(path)])
    assert checked.returncode == 0, checked.stderr
    *checks, verdict = checked.stdout.splitlines()
    assert checks == [checks[0]]
    assert checks[0].startswith(f"ferrotunnel {kind}: settings ok (")
    assert verdict == f"{path}: ok ({kind})"
    # not overwritten without --force; with it, private again even if it was not
    again = run_cli(["config", "init", kind, "--out", str(path)])
    assert again.returncode == 2
    assert "exists" in one_error_line(again.stderr)
    path.chmod(0o644)
    forced = run_cli(["config", "init", kind, "--out", str(path), "--force"])
    assert forced.returncode == 0, forced.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_config_init_server_writes_a_fresh_token_each_time(tmp_path: Path) -> None:
    tokens = []
    for name in ("a.toml", "b.toml"):
        result = run_cli(["config", "init", "server", "--out", str(tmp_path / name)])
        assert result.returncode == 0, result.stderr
        match = re.search(r'^token = "([^"]+)"$', (tmp_path / name).read_text(), re.MULTILINE)
        assert match is not None
        tokens.append(match.group(1))
    assert tokens[0] != tokens[1]
    assert all(len(token) >= 24 for token in tokens)


#: a commented-out setting of a starter file: a table header, ``key = value``, or a line of a
#: value tomli_w wrote on several lines; help text (``# control plane: ...``) is none of these
COMMENTED_SETTING = re.compile(r'^# (?=\[|[A-Za-z_"][\w."*-]*\s=(\s|$)|\s+\S|\])')
PER_TUNNEL_TABLES = ["ip_filter", "headers", "basic_auth", "circuit_breaker", "rate_limit"]
#: the tables only a server reads (HTTP middlewares, authenticators)
SERVER_ONLY_TABLES = ["access_log", "auth", *PER_TUNNEL_TABLES]


@pytest.mark.parametrize("kind", ["server", "client"])
def test_every_commented_line_of_the_starter_file_is_valid_uncommented(
    tmp_path: Path, kind: str
) -> None:
    """Uncomment everything, kernel keys without a default and plugin tables alike: the file
    is valid TOML, and ``config check`` accepts it (given the files its examples name:
    ``ferrotunnel cert init``'s certificates, an ``[auth] tokens_file``)."""
    path = tmp_path / f"{kind}.toml"
    assert run_cli(["config", "init", kind, "--out", str(path)]).returncode == 0
    text = path.read_text()
    lines = text.splitlines()
    assert not [line for line in lines if re.search(r"=\s*$", line)], text  # no `# key = `
    if kind == "server":
        for table in PER_TUNNEL_TABLES:  # every per-tunnel table shows an example entry
            assert f'# [{table}.tunnels."' in text, text
    uncommented = [line[2:] if COMMENTED_SETTING.match(line) else line for line in lines]
    assert len([1 for a, b in zip(lines, uncommented, strict=True) if a != b]) > 10
    edited = write(tmp_path / "edited.toml", "\n".join(uncommented) + "\n")
    assert run_cli(["cert", "init", "--out", str(tmp_path / "certs")]).returncode == 0
    write(tmp_path / "tokens.txt", "bob:bob-secret\n").chmod(0o600)
    checked = run_cli(["config", "check", str(edited)], cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr + edited.read_text()
    verdict = checked.stdout.splitlines()[-1]
    for table in [*(SERVER_ONLY_TABLES if kind == "server" else []), "dashboard", kind]:
        assert table in verdict, verdict


# ---------------------------------------------------------------------------- 2. config check


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        pytest.param(
            '[server]\ntoken = "x"\nhtt_bind = "127.0.0.1:0"\n',
            3,
            "unknown key 'htt_bind' in [server]; did you mean 'http_bind'?",
            id="typo-server-key",
        ),
        pytest.param(
            '[server]\ntoken = "x"\n\n[rate_limits]\nper_ip = { rate = 1.0 }\n',
            4,
            "unknown table [rate_limits]; did you mean 'rate_limit'?",
            id="unknown-table",
        ),
        pytest.param(
            "[rate_limit]\nmax_buckets = 10\nper_ip = { rate = 5.0, brust = 3 }\n",
            3,
            "unknown key 'brust' in [rate_limit.per_ip]; did you mean 'burst'?",
            id="typo-in-inline-table",
        ),
        pytest.param(
            '[basic_auth.tunnels."app.example.com"]\nuser = ["alice:pw"]\n',
            2,
            "unknown key 'user' in [basic_auth.tunnels.app.example.com]; did you mean 'users'?",
            id="typo-per-tunnel-key",
        ),
        pytest.param(
            '[client]\nserver = "h:1"\n\n[[client.tunnels]]\nname = "a"\nlocal_adr = "h:2"\n',
            6,
            "unknown key 'local_adr' in [client.tunnels[0]]; did you mean 'local_addr'?",
            id="typo-client-tunnel",
        ),
        pytest.param(
            '[server]\nmax_sessions = "ten"\n',
            2,
            "server.max_sessions must be an integer, not 'ten'",
            id="wrong-type-int",
        ),
        pytest.param(
            '[circuit_breaker.tunnels."*"]\nopen_seconds = "soon"\n',
            2,
            "circuit_breaker.tunnels.*.open_seconds must be a number, not 'soon'",
            id="wrong-type-float",
        ),
        pytest.param(
            '[server]\ntrust_proxy = "10.0.0.0/8"\n',
            2,
            "server.trust_proxy must be a list, not '10.0.0.0/8'",
            id="wrong-type-list",
        ),
    ],
)
def test_config_check_names_the_file_line_and_fix(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = write(tmp_path / "bad.toml", text)
    result = run_cli(["config", "check", str(path)])
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    error = one_error_line(result.stderr)
    assert error.startswith(f"ferrotunnel: error: {path}:{line}: "), error
    assert message in error, error


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            '[server]\ntoken = "x"\n\n[auth]\ntokens_file = "missing.txt"\n',
            "[auth] tokens_file '{dir}/missing.txt': No such file or directory",
            id="missing-tokens-file",
        ),
        pytest.param(
            '[server]\n\n[[auth.tokens]]\nname = "a"\ntoken = "t"\n\n'
            '[[auth.tokens]]\nname = "b"\ntoken = "t"\n',
            "[auth] tokens[1]: the same token as [auth] tokens[0] ('b' and 'a')",
            id="duplicate-token",
        ),
        pytest.param(
            '[server]\ntoken = "x"\n\n[metrics]\nenabled = true\nbind = "127.0.0.1"\n',
            "{dir}/settings.toml:6: [metrics] bind '127.0.0.1' must be HOST:PORT",
            id="metrics-bind-without-port",
        ),
        pytest.param(
            '[server]\ntoken = "x"\nbind = "nohost"\n',
            "{dir}/settings.toml:3: [server] bind 'nohost' must be HOST:PORT",
            id="server-bind-without-port",
        ),
        pytest.param(
            '[server]\ntoken = "x"\ntcp_port_range = "30000-20000"\n',
            "{dir}/settings.toml:3: [server] tcp_port_range '30000-20000': "
            "need 1 <= LOW <= HIGH <= 65535",
            id="reversed-port-range",
        ),
        pytest.param(
            '[server]\ntoken = "x"\ntls_cert = "server.pem"\n',
            "{dir}/settings.toml:3: [server] tls_cert needs [server] tls_key",
            id="certificate-without-key",
        ),
        pytest.param(
            '[server]\ntoken = "x"\nhttps_cert = ["a.pem", "b.pem"]\nhttps_key = ["a.key"]\n',
            "2 certificates ({dir}/settings.toml:3: [server] https_cert) but 1 keys "
            "({dir}/settings.toml:4: [server] https_key): give one key for each certificate, "
            "in the same order",
            id="https-keys-miscounted",
        ),
        pytest.param(
            '[client]\nserver = "127.0.0.1:7835"\ntls_ca = "ca.pem"\ntls_skip_verify = true\n',
            "{dir}/settings.toml:4: [client] tls_skip_verify and {dir}/settings.toml:3: "
            "[client] tls_ca contradict each other: verify the server against that CA, "
            "or not at all",
            id="client-skip-verify-with-ca",
        ),
        pytest.param(
            '[server]\nbind = "127.0.0.1:0"\n',
            "missing token: pass --token or set FERROTUNNEL_TOKEN",
            id="server-without-any-credential",
        ),
        pytest.param(
            '[client]\nserver = "127.0.0.1:7835"\n\n'
            '[[client.tunnels]]\nname = "a"\nlocal_addr = "127.0.0.1:1"\nprotocol = "udp"\n',
            "{dir}/settings.toml:7: [[client.tunnels]] 'a' protocol: must be http or tcp",
            id="client-tunnel-protocol",
        ),
        pytest.param(
            '[client]\nserver = "127.0.0.1:7835"\n\n'
            '[[client.tunnels]]\nname = "a"\nlocal_addr = "127.0.0.1:1"\n\n'
            '[[client.tunnels]]\nname = "b"\nlocal_addr = "127.0.0.1"\n',
            "{dir}/settings.toml:10: [[client.tunnels]] 'b' local_addr '127.0.0.1' must be "
            "HOST:PORT",
            id="client-second-tunnel-address",
        ),
        pytest.param(
            '[client]\nserver = "127.0.0.1:7835"\n\n[dashboard]\nport = 70000\n',
            "{dir}/settings.toml:5: [dashboard] port 70000 is not a TCP port (0-65535)",
            id="dashboard-port",
        ),
        pytest.param(
            '[server]\ntoken = "x"\n\n[access_log]\npath = "no-such-dir/a.log"\n',
            "[access_log] path '{dir}/no-such-dir/a.log': No such file or directory",
            id="access-log-directory",
        ),
    ],
)
def test_config_check_checks_what_a_start_checks(tmp_path: Path, text: str, message: str) -> None:
    """Values, the files they name and the plugins' own checks: what the table schema cannot
    see, ``config check`` still catches — exactly as ``server``/``client`` would at start."""
    path = write(tmp_path / "settings.toml", text)
    result = run_cli(["config", "check", str(path)])
    assert result.returncode == 2, result.stdout + result.stderr
    assert "ok" not in result.stdout
    expected = message.replace("{dir}", str(tmp_path))
    assert one_error_line(result.stderr) == f"ferrotunnel: error: {expected}"


def test_check_flags_validate_and_exit_without_listening(tmp_path: Path) -> None:
    port = free_port()
    args = ["--token", "t", "--bind", f"{HOST}:{port}", "--http-bind", f"{HOST}:0"]
    checked = run_cli(["server", *args, "--check"])
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(
        f"ferrotunnel server: settings ok (control plane {HOST}:{port}"
    )
    with socket.create_server((HOST, port)):  # nothing listens there: the check did not bind
        pass
    unpaired = run_cli(["server", "--token", "t", "--tls-cert", "server.pem", "--check"])
    assert one_error_line(unpaired.stderr) == "ferrotunnel: error: --tls-cert needs --tls-key"
    bad = run_cli(["server", "--token", "t", "--bind", "nohost", "--check"])
    assert bad.returncode == 2
    assert one_error_line(bad.stderr) == "ferrotunnel: error: --bind 'nohost' must be HOST:PORT"
    client = run_cli(["client", "--server", f"{HOST}:{port}", "--tunnel-id", "app", "--check"])
    assert client.returncode == 0, client.stderr
    assert (
        client.stdout == f"ferrotunnel client: settings ok (server {HOST}:{port}; tunnels: app)\n"
    )


@pytest.mark.parametrize(
    ("command", "file", "flag", "variable", "value"),
    [
        pytest.param(
            ["server", "--token", "t"], "[server]\ntoken = 't'\nbind", "--bind",
            "FERROTUNNEL_BIND", "nohost", id="server-bind",
        ),
        pytest.param(
            ["server", "--token", "t"], "[server]\ntoken = 't'\nhttp-bind", "--http-bind",
            "FERROTUNNEL_HTTP_BIND", "host:http", id="server-http-bind-dashed",
        ),
        pytest.param(
            ["server", "--token", "t"], "[server]\ntoken = 't'\ntcp_port_range", "--tcp-port-range",
            "FERROTUNNEL_TCP_PORT_RANGE", "20000", id="server-port-range",
        ),
        pytest.param(
            ["client"], "[client]\ntoken = 't'\nserver", "--server", "FERROTUNNEL_SERVER", "nohost",
            id="client-server",
        ),
        pytest.param(
            ["client"], "[client]\nserver = '127.0.0.1:1'\nlocal_addr", "--local-addr",
            "FERROTUNNEL_LOCAL_ADDR", "nohost", id="client-local-addr",
        ),
    ],
)  # fmt: skip
def test_a_bad_value_is_named_where_it_came_from(
    tmp_path: Path, command: list[str], file: str, flag: str, variable: str, value: str
) -> None:
    """The flag, the environment variable or the file's table, key and line: whichever
    gave the value (the same precedence as the start: flag, variable, file)."""
    table, extra, key = file.split("\n")
    path = write(tmp_path / "settings.toml", f'{table}\n{extra}\n{key} = "{value}"\n')
    ok = "127.0.0.1:0" if "range" not in key else "20000-20001"

    def error(*args: str, **env: str) -> str:
        result = run_cli([*command, *args, "--check"], env=child_env(**env))
        assert result.returncode == 2, result.stdout + result.stderr
        return one_error_line(result.stderr).removeprefix("ferrotunnel: error: ")

    from_file = error("--config", str(path))
    assert from_file.startswith(f"{path}:3: {table} {key} '{value}'"), from_file
    checked = run_cli(["config", "check", str(path)])
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert one_error_line(checked.stderr) == f"ferrotunnel: error: {from_file}"
    from_env = error("--config", str(path), **{variable: f"{value}x"})
    assert from_env.startswith(f"{variable} '{value}x'"), from_env
    from_flag = error("--config", str(path), flag, f"{value}y", **{variable: ok})
    assert from_flag.startswith(f"{flag} '{value}y'"), from_flag
    # the file's good value, a bad flag: the flag is named
    good = write(tmp_path / "good.toml", f'{table}\n{extra}\n{key} = "{ok}"\n')
    assert error("--config", str(good), flag, value).startswith(f"{flag} '{value}'")


@pytest.mark.parametrize("table", SERVER_ONLY_TABLES)
def test_a_client_file_refuses_a_table_only_the_server_reads(tmp_path: Path, table: str) -> None:
    """``[basic_auth]`` (or any table only a server reads) in a client's file would be
    ignored, the tunnel left unprotected: an error naming the file and line. A file with a
    [server] table as well is shared by both sides, and accepted."""
    text = f'[client]\nserver = "{HOST}:9"\ntoken = "t"\n\n[{table}]\n'
    path = write(tmp_path / "client.toml", text)
    expected = (
        f"ferrotunnel: error: {path}:5: [{table}] is read by the server only "
        "(ferrotunnel-plugins): a client ignores it; put it in the server's configuration"
    )
    for args in (["config", "check", str(path)], ["client", "--check", "--config", str(path)]):
        result = run_cli(args)
        assert result.returncode == 2, result.stdout + result.stderr
        assert one_error_line(result.stderr) == expected
    shared = write(tmp_path / "both.toml", f'[server]\ntoken = "t"\n\n{text}')
    checked = run_cli(["config", "check", str(shared)], cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr


def test_server_refuses_a_bad_config_file_the_same_way(tmp_path: Path) -> None:
    path = write(tmp_path / "server.toml", '[server]\ntoken = "x"\nhtt_bind = "127.0.0.1:0"\n')
    result = run_cli(["server", "--config", str(path)], timeout=15)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{path}:3: unknown key 'htt_bind'" in one_error_line(result.stderr)


@pytest.mark.parametrize(
    "command", [["config", "check"], ["server", "--check", "--config"], ["client", "--config"]]
)
def test_a_file_that_is_not_utf8_is_a_one_line_error(tmp_path: Path, command: list[str]) -> None:
    """A file saved in Latin-1 (or a binary one) names the file and line, with no traceback."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[server]\ntoken = "x"\n# caf\xe9\n')
    result = run_cli([*command, str(path)])
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    error = one_error_line(result.stderr)
    assert error == (
        f"ferrotunnel: error: {path}:3: not UTF-8 text (byte 0xe9); a TOML file must be UTF-8"
    )


# ---------------------------------------------------------------------------- 3. server --config


def test_server_takes_its_settings_from_the_file(
    tmp_path: Path, launch: Launch, echo: EchoServer
) -> None:
    config = write(
        tmp_path / "server.toml",
        f"""
[server]
token = "file-token"
bind = "{HOST}:0"
http_bind = "{HOST}:0"
tcp_bind = "{HOST}:0"
health_path = "/healthz"
""",
    )
    server = started_server(launch("server", "--config", str(config)))
    assert server.control_host == HOST  # not the default 0.0.0.0
    assert server.http_host == HOST
    assert server.plugins == ", ".join(INSTALLED)
    assert http_get(server.http_port, "any")[0] == 404
    assert http_get(server.http_port, "any", "/healthz")[0] == 200  # the file's, not /health
    assert server.tcp_port is not None
    client = launch(*client_tcp(server.control, "file-token", echo.port))
    client.expect(TCP_TUNNEL_RE)
    assert echo_roundtrip(server.tcp_port, b"via the file's token\n") == b"via the file's token\n"


def test_flags_beat_environment_beats_file(
    tmp_path: Path, launch: Launch, echo: EchoServer
) -> None:
    config = write(
        tmp_path / "server.toml",
        f"""
[server]
token = "file-token"
bind = "{HOST}:0"
http_bind = "127.0.0.2:0"
tcp_bind = "{HOST}:0"
""",
    )
    env = child_env(FERROTUNNEL_TOKEN="env-token", FERROTUNNEL_HTTP_BIND="127.0.0.3:0")
    server = started_server(
        launch("server", "--config", str(config), "--http-bind", f"{HOST}:0", env=env)
    )
    assert server.http_host == HOST  # the flag, over the environment and the file
    assert http_get(server.http_port, "any", "/health")[0] == 200
    assert server.tcp_port is not None
    # the environment's token replaced the file's
    refused = launch(*client_tcp(server.control, "file-token", echo.port))
    assert refused.wait_exit(10) == 1, refused.describe()
    assert "invalid token (auth_failed)" in refused.stderr
    client = launch(*client_tcp(server.control, "env-token", echo.port))
    client.expect(TCP_TUNNEL_RE)
    assert echo_roundtrip(server.tcp_port, b"env wins\n") == b"env wins\n"


def test_environment_beats_file_without_a_flag(tmp_path: Path, launch: Launch) -> None:
    config = write(
        tmp_path / "server.toml",
        f'[server]\ntoken = "t"\nbind = "{HOST}:0"\nhttp_bind = "127.0.0.2:0"\n',
    )
    env = child_env(FERROTUNNEL_HTTP_BIND=f"{HOST}:0")
    server = started_server(launch("server", "--config", str(config), env=env), tcp=False)
    assert server.http_host == HOST
    assert http_get(server.http_port, "any", "/health")[0] == 200


# ---------------------------------------------------------------------------- 4. client --config


def test_client_serves_the_tunnels_of_its_file(
    tmp_path: Path, launch: Launch, echo: EchoServer, web_origin: int
) -> None:
    server = started_server(launch(*server_args("shared-token")))
    assert server.tcp_port is not None
    config = write(
        tmp_path / "client.toml",
        f"""
[client]
server = "{server.control}"
token = "shared-token"
dashboard = false
reconnect = false

[[client.tunnels]]
name = "app.localhost"
local_addr = "{HOST}:{web_origin}"

[[client.tunnels]]
name = "db"
local_addr = "{HOST}:{echo.port}"
protocol = "tcp"
""",
    )
    client = launch("client", "--config", str(config))
    client.expect(r"^ferrotunnel client connected$")
    web = client.expect(HTTP_TUNNEL_RE)
    assert web["host"] == "app.localhost"
    assert int(web["port"]) == server.http_port
    assert web["local"] == f"http://{HOST}:{web_origin}"
    tcp = client.expect(TCP_TUNNEL_RE)
    assert int(tcp["port"]) == server.tcp_port
    assert tcp["local"] == f"{HOST}:{echo.port}"
    client.expect(r"^Press Ctrl-C to stop\.$")
    assert "dashboard" not in client.stdout  # dashboard = false, from the file
    status, response = http_get(server.http_port, "app.localhost", "/from-file")
    assert status == 200, response
    assert response.endswith("hello /from-file for app.localhost\n")
    assert "X-Origin: cli-test" in response
    payload = b"tcp tunnel from the file\n" * 100
    assert echo_roundtrip(server.tcp_port, payload) == payload


def test_client_flags_beat_its_file(tmp_path: Path, launch: Launch, echo: EchoServer) -> None:
    server = started_server(launch(*server_args("right")))
    assert server.tcp_port is not None
    config = write(
        tmp_path / "client.toml",
        f'[client]\nserver = "{server.control}"\ntoken = "wrong"\nprotocol = "tcp"\n'
        f'local_addr = "{HOST}:{echo.port}"\ndashboard = false\n',
    )
    client = launch("client", "--config", str(config), "--token", "right")
    client.expect(TCP_TUNNEL_RE)
    assert echo_roundtrip(server.tcp_port, b"flag wins\n") == b"flag wins\n"


def test_client_takes_the_dashboard_table_of_its_file(
    tmp_path: Path, launch: Launch, echo: EchoServer
) -> None:
    server = started_server(launch(*server_args("t")))
    port = free_port()
    client_table = (
        f'[client]\nserver = "{server.control}"\ntoken = "t"\nprotocol = "tcp"\n'
        f'local_addr = "{HOST}:{echo.port}"\nreconnect = false\n'
    )
    config = write(tmp_path / "client.toml", f"{client_table}\n[dashboard]\nport = {port}\n")
    client = launch("client", "--config", str(config))
    client.expect(TCP_TUNNEL_RE)
    client.expect(rf"^\s+dashboard: http://127\.0\.0\.1:{port}$")
    client.kill()
    # a flag still wins over the table
    flag_port = free_port()
    client = launch("client", "--config", str(config), "--dashboard-port", str(flag_port))
    client.expect(rf"^\s+dashboard: http://127\.0\.0\.1:{flag_port}$")
    client.kill()
    # enabled = false in [dashboard]: no dashboard, and no "install ..." hint either
    off = write(tmp_path / "off.toml", f"{client_table}\n[dashboard]\nenabled = false\n")
    client = launch("client", "--config", str(off))
    client.expect(r"^Press Ctrl-C to stop\.$")
    assert "dashboard" not in client.stdout


# ---------------------------------------------------------------------------- 5. plugins list


def plugin_rows(stdout: str) -> dict[str, list[str]]:
    lines = stdout.strip().splitlines()
    assert lines[0].split() == ["NAME", "DISTRIBUTION", "VERSION", "STATUS", "HOOKS"], stdout
    return {line.split()[0]: line.split()[1:] for line in lines[1:]}


def test_plugins_list_shows_the_builtins() -> None:
    result = run_cli(["plugins", "list"])
    assert result.returncode == 0, result.stderr
    rows = plugin_rows(result.stdout)
    assert set(rows) >= set(BUILTINS), result.stdout
    for name in BUILTINS:
        distribution, _version, status, *hooks = rows[name]
        assert (distribution, status) == ("ferrotunnel-plugins", "enabled"), rows[name]
        if name != "tls":  # its settings are the kernel's --tls-* options
            assert "add_config," in hooks or "add_config" in hooks
    assert "authenticators," in rows["auth"] or "authenticators" in rows["auth"]
    assert any(h.startswith("ssl_context") for h in rows["tls"])
    assert any(h.startswith("tcp_middlewares") for h in rows["ip-filter"])


def test_no_plugins_and_blocked_plugins() -> None:
    none = run_cli(["--no-plugins", "plugins", "list"])
    assert none.returncode == 0, none.stderr
    assert none.stdout.strip() == "no plugins found"
    blocked = run_cli(["--block-plugin", "rate-limit", "plugins", "list"])
    assert blocked.returncode == 0, blocked.stderr
    rows = plugin_rows(blocked.stdout)
    assert rows["rate-limit"][2:] == ["blocked", "-"]
    assert all(rows[name][2] == "enabled" for name in BUILTINS if name != "rate-limit")
    # the environment variable, two at once
    env = child_env(FERROTUNNEL_BLOCK_PLUGINS="auth,headers")
    rows = plugin_rows(run_cli(["plugins", "list"], env=env).stdout)
    assert {name for name, row in rows.items() if row[2] == "blocked"} == {"auth", "headers"}


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        pytest.param(
            ["--block-plugin", "rate_limit"],
            {},
            "--block-plugin 'rate_limit': no installed plugin has that name; "
            "did you mean 'rate-limit'?",
            id="flag-typo",
        ),
        pytest.param(
            ["--block-plugin=nosuch"],
            {},
            "--block-plugin 'nosuch': no installed plugin has that name (installed: ",
            id="flag-unknown",
        ),
        pytest.param(
            [],
            {"FERROTUNNEL_BLOCK_PLUGINS": "auth, ip_filtre"},
            "FERROTUNNEL_BLOCK_PLUGINS 'ip_filtre': no installed plugin has that name; "
            "did you mean 'ip-filter'?",
            id="variable-typo",
        ),
    ],
)
def test_blocking_a_plugin_no_one_installed_is_an_error(
    args: list[str], env: dict[str, str], message: str
) -> None:
    """A typo in a block would silently block nothing: refused, naming the closest plugin."""
    for command in (["plugins", "list"], ["server", "--token", "t", "--check"]):
        result = run_cli([*args, *command], env=child_env(**env))
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stdout == ""
        error = one_error_line(result.stderr)
        assert error.startswith(f"ferrotunnel: error: {message}"), error
        assert ", ".join(INSTALLED) in error
    # spaces around the variable's names are not part of them
    spaced = run_cli(["plugins", "list"], env=child_env(FERROTUNNEL_BLOCK_PLUGINS=" auth , tls"))
    assert spaced.returncode == 0, spaced.stderr
    rows = plugin_rows(spaced.stdout)
    assert {name for name, row in rows.items() if row[2] == "blocked"} == {"auth", "tls"}


def test_server_without_plugins_and_with_a_blocked_one(tmp_path: Path, launch: Launch) -> None:
    args = ["server", "--token", "t", "--bind", f"{HOST}:0", "--http-bind", f"{HOST}:0"]
    none = started_server(launch("--no-plugins", *args), tcp=False)
    assert none.plugins == "none"
    some = started_server(launch("--block-plugin", "auth", *args), tcp=False)
    assert some.plugins == ", ".join(b for b in INSTALLED if b != "auth")
    # a blocked plugin's table is unknown: the configuration names it
    config = write(tmp_path / "server.toml", '[server]\ntoken = "t"\n\n[rate_limit]\n')
    result = run_cli(["--block-plugin", "rate-limit", "server", "--config", str(config)])
    assert result.returncode == 2
    error = one_error_line(result.stderr)
    assert f"{config}:4: unknown table [rate_limit]" in error
    assert "plugin 'rate-limit' (ferrotunnel-plugins" in error, error
    assert error.endswith("is blocked (--block-plugin, FERROTUNNEL_BLOCK_PLUGINS), so its table is "
                          "unknown (comment it out, or load the plugin)"), error  # fmt: skip


@pytest.mark.parametrize(
    "command", [["config", "check"], ["server", "--check", "--config"], ["client", "--config"]]
)
def test_without_plugins_an_unknown_table_says_plugins_are_off(
    tmp_path: Path, command: list[str]
) -> None:
    config = write(
        tmp_path / "settings.toml",
        '[server]\ntoken = "t"\n\n[client]\nserver = "127.0.0.1:1"\n\n[access_log]\n',
    )
    result = run_cli(["--no-plugins", *command, str(config)])
    assert result.returncode == 2, result.stdout + result.stderr
    assert one_error_line(result.stderr) == (
        f"ferrotunnel: error: {config}:7: unknown table [access_log] (known: client, server); "
        "plugins are off (--no-plugins), so their tables are unknown"
    )
    # with plugins, a typo'd table gets no such hint
    typo = write(tmp_path / "typo.toml", "[acces_log]\n")
    result = run_cli([*command, str(typo)])
    assert result.returncode == 2, result.stdout + result.stderr
    error = one_error_line(result.stderr)
    assert error.startswith(
        f"ferrotunnel: error: {typo}:1: unknown table [acces_log]; did you mean 'access_log'?"
    )
    assert error.endswith(")"), error


# ---------------------------------------------------------------------------- 6. [auth] tokens


def test_server_with_auth_tokens_and_no_token(
    tmp_path: Path, launch: Launch, echo: EchoServer, web_origin: int
) -> None:
    bob = hashlib.sha256(b"bob-secret").hexdigest()
    config = write(
        tmp_path / "server.toml",
        f"""
[server]
bind = "{HOST}:0"
http_bind = "{HOST}:0"
tcp_bind = "{HOST}:0"

[auth]
tokens = [
    {{ name = "alice", token = "alice-secret", hosts = ["*.alice.localhost"] }},
    {{ name = "bob", sha256 = "{bob}" }},
]
""",
    )
    server = started_server(launch("server", "--config", str(config)))
    assert server.tcp_port is not None
    # a listed token (stored as its digest) connects
    client = launch(*client_tcp(server.control, "bob-secret", echo.port))
    client.expect(TCP_TUNNEL_RE)
    assert echo_roundtrip(server.tcp_port, b"bob's tunnel\n") == b"bob's tunnel\n"
    # another token: rejected, with a clear message, exit status 1
    stranger = launch(*client_tcp(server.control, "guess", echo.port, "--tunnel-id", "x"))
    assert stranger.wait_exit(10) == 1, stranger.describe()
    # said once, as the exit message (not also as an ERROR log line before it)
    assert one_error_line(stranger.stderr) == (
        "ferrotunnel: error: server rejected the session: invalid token (auth_failed)"
    )
    # a scoped token: inside its hosts served, outside refused
    web_args = [
        "client", "--server", server.control, "--token", "alice-secret", "--no-dashboard",
        "--no-reconnect", "--local-addr", f"{HOST}:{web_origin}", "--tunnel-id",
    ]  # fmt: skip
    outside = launch(*web_args, "app.bob.localhost")
    assert outside.wait_exit(10) == 1, outside.describe()
    assert "'alice' may not claim app.bob.localhost (forbidden)" in outside.stderr
    inside = launch(*web_args, "app.alice.localhost")
    inside.expect(HTTP_TUNNEL_RE)
    status, response = http_get(server.http_port, "app.alice.localhost", "/scoped")
    assert status == 200, response
    assert response.endswith("hello /scoped for app.alice.localhost\n")
    server.proc.expect_stderr(r"rejected .*invalid token")


def test_config_check_says_what_it_could_not_check(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty.toml", "# nothing yet\n")
    result = run_cli(["config", "check", str(empty)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{empty}: ok, but it has no tables: nothing was checked"
    plugins_only = write(tmp_path / "limits.toml", "[rate_limit]\nper_ip = { rate = 1.0 }\n")
    result = run_cli(["config", "check", str(plugins_only)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"{plugins_only}: ok (rate_limit; with no [server] or [client] table, only their keys "
        "and values were checked)"
    )
