"""TLS, mutual TLS and the HTTPS ingress through the real ``ferrotunnel`` processes.

Each test starts ``ferrotunnel server`` and ``ferrotunnel client`` as users do (certificates
from ``ferrotunnel cert init``), on ephemeral loopback ports, and checks what they print,
how they exit and which bytes come through. Synchronous: the processes are children, the
probes are blocking :mod:`ssl` sockets and curl, every wait is bounded."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from ferrotunnel.plugins.pki import Issued, issue_certificate, new_ca
from ferrotunnel.protocol import ALPN_PROTOCOL
from tests.e2e.helpers import (
    HOST,
    CliProcess,
    EchoServer,
    child_env,
    ferrotunnel_exe,
    free_port,
    run_cli,
    wait_closed,
    wait_for_echo,
)
from tests.http.test_cli import ThreadedOrigin

from .tls_helpers import (
    HTTP_TUNNEL_RE,
    NAME_MISMATCH_RE,
    SKIP_VERIFY_WARNING,
    TLS_CONTROL_RE,
    VERIFY_RE,
    CertDir,
    Launch,
    MiB,
    assert_round_trip,
    cert_init,
    client_args,
    common_name,
    load_cert,
    served_certificate,
    server_args,
    start_server,
    tcp_tunnel_port,
    tls_handshake,
)

CURL = Path("/usr/bin/curl")
needs_curl = pytest.mark.skipif(not CURL.exists(), reason="curl is not installed")

#: a TLS failure must end the client at once: no retry loop (which would take seconds)
PROMPT_EXIT = 8.0


def tls13_context(ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols([ALPN_PROTOCOL])
    return context


def expect_fatal_exit(client: CliProcess, pattern: str) -> re.Match[str]:
    """The client exits non-zero within :data:`PROMPT_EXIT` seconds with one error line
    matching ``pattern``, said once (it did not retry, nor log it too), no traceback."""
    status = client.wait_exit(PROMPT_EXIT)
    assert status != 0, client.describe()
    errors = [line for line in client.stderr.splitlines() if line.startswith("ferrotunnel: error:")]
    assert len(errors) == 1, client.describe()
    match = re.search(pattern, errors[0])
    assert match is not None, client.describe()
    logged = [line for line in client.stderr.splitlines() if re.search(pattern, line)]
    assert len(logged) == 1, client.describe()  # the exit message, not also a log line
    assert "Traceback" not in client.stderr, client.describe()
    assert "retrying" not in client.stderr, client.describe()
    assert "reconnect" not in client.stderr, client.describe()
    assert "ferrotunnel client connected" not in client.stdout, client.describe()
    return match


def write_issued(issued: Issued, cert: Path, key: Path) -> None:
    cert.write_bytes(issued.certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        issued.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key.chmod(0o600)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CURL), "--silent", "--show-error", "--max-time", "10", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )


def curl_json(*args: str) -> tuple[int, dict[str, Any]]:
    result = curl(*args)
    assert result.returncode == 0, result.stderr
    body, _, code = result.stdout.rpartition("\n")
    return int(code), json.loads(body)


# ---------------------------------------------------------------------------- the tunnel


def test_tls_tcp_tunnel_moves_verified_data(
    launch: Launch, echo: EchoServer, certs: CertDir
) -> None:
    server = start_server(launch, *server_args(certs))
    assert re.match(TLS_CONTROL_RE, "  " + server.lines["control plane"]), server.lines
    assert "client certificates required" not in server.lines["control plane"]

    client = launch(*client_args(server.control_port, echo.port, "--tls-ca", str(certs.ca)))
    port = tcp_tunnel_port(client)
    assert port == server.tcp_port
    assert f"connecting to {HOST}:{server.control_port} over TLS" in client.stdout
    assert_round_trip(port)
    assert_round_trip(port, 1000)

    # what is on the wire: TLS 1.3 with the tunnel's ALPN id, the generated certificate
    with tls_handshake(server.control_port, tls13_context(certs.ca), HOST) as tls:
        assert tls.version() == "TLSv1.3"
        assert tls.selected_alpn_protocol() == ALPN_PROTOCOL
        assert tls.getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(
            certs.server.read_text()
        )
    assert "Traceback" not in server.proc.stderr + client.stderr


def test_plain_control_plane_is_not_tls(launch: Launch, echo: EchoServer, certs: CertDir) -> None:
    """A TLS client against a server without TLS fails clearly (and the reverse)."""
    plain = start_server(launch, *server_args(None))
    client = launch(*client_args(plain.control_port, echo.port, "--tls-ca", str(certs.ca)))
    status = client.wait_exit(PROMPT_EXIT + 5)
    assert status != 0, client.describe()
    assert "TLS" in client.stderr, client.describe()
    assert "Traceback" not in client.stderr, client.describe()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_handshake_when_the_client_hello_arrives_with_the_connection(
    launch: Launch, certs: CertDir, loop: str
) -> None:
    """Standard TLS clients (curl, openssl, Python) send their ClientHello right after the
    TCP connect, often before the server has accepted the connection. Each handshake must
    still complete at once, on every event loop the CLI offers."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    server = start_server(launch, *server_args(certs, loop=loop))
    context = tls13_context(certs.ca)
    outcomes = []
    for _ in range(3):
        started = time.monotonic()
        try:
            with tls_handshake(server.control_port, context, HOST, timeout=2.0) as tls:
                outcomes.append(f"ok {tls.version()} {tls.selected_alpn_protocol()}")
        except (OSError, ssl.SSLError) as exc:
            outcomes.append(f"{exc!r} after {time.monotonic() - started:.1f} s")
    assert outcomes == [f"ok TLSv1.3 {ALPN_PROTOCOL}"] * 3, (outcomes, server.proc.stderr)


def test_silent_connections_neither_block_nor_linger(
    launch: Launch, echo: EchoServer, certs: CertDir
) -> None:
    """Connections that never start their TLS handshake do not delay a good client, and
    are closed after --handshake-timeout."""
    server = start_server(launch, *server_args(certs, "--handshake-timeout", "1.5"))
    silent = [socket.create_connection((HOST, server.control_port), timeout=5) for _ in range(5)]
    try:
        started = time.monotonic()
        client = launch(*client_args(server.control_port, echo.port, "--tls-ca", str(certs.ca)))
        assert_round_trip(tcp_tunnel_port(client), 4096)
        assert time.monotonic() - started < 5, "the silent connections delayed the client"
        for sock in silent:
            assert wait_closed(sock, timeout=6) == b""
        assert time.monotonic() - started >= 1.0, "closed before the handshake timeout"
        server.proc.expect_stderr(r"INFO\s+TLS handshake from 127\.0\.0\.1:\d+ failed: timed out")
    finally:
        for sock in silent:
            sock.close()


# ---------------------------------------------------------------------------- HTTPS ingress


@needs_curl
def test_https_ingress_with_curl(launch: Launch, certs: CertDir) -> None:
    origin = ThreadedOrigin("app")
    try:
        server = start_server(launch, *server_args(certs, "--https-bind", f"{HOST}:0"))
        port = server.https_port
        assert port not in (0, server.control_port)
        client = launch(
            "client", "--server", f"{HOST}:{server.control_port}", "--token", "sec-token",
            "--tls-ca", str(certs.ca), "--no-dashboard",
            "--local-addr", f"{HOST}:{origin.port}", "--tunnel-id", "app.localhost",
        )  # fmt: skip
        client.expect(HTTP_TUNNEL_RE, timeout=15)
        resolve = ["--resolve", f"app.localhost:{port}:{HOST}"]
        url = f"https://app.localhost:{port}/over/tls"
        code, echo = curl_json("--cacert", str(certs.ca), *resolve, url)
        assert code == 200, echo
        assert (echo["origin"], echo["path"], echo["host"]) == (
            "app",
            "/over/tls",
            f"app.localhost:{port}",
        )
        # curl verified the name against the generated certificate: without the CA it fails
        untrusted = curl(*resolve, url)
        assert untrusted.returncode == 60, untrusted  # peer certificate cannot be authenticated
        # and the plain HTTP ingress still serves the same tunnel
        http_port = server.ports["HTTP ingress"]
        code, echo = curl_json("-H", "Host: app.localhost", f"http://{HOST}:{http_port}/plain")
        assert (code, echo["path"]) == (200, "/plain")
        # TLS 1.2 is allowed for visitors (browsers), unlike the control plane
        tls12 = curl("--cacert", str(certs.ca), "--tls-max", "1.2", *resolve, url)
        assert tls12.returncode == 0, tls12.stderr
    finally:
        origin.stop()


def _sni_server_certs(tmp_path: Path) -> tuple[Path, dict[str, tuple[Path, Path]]]:
    """A second CA (the library's functions) with three server certificates."""
    ca = new_ca("sni test CA", 2)
    ca_file = tmp_path / "sni-ca.pem"
    ca_file.write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))
    pairs = {}
    for name, hosts in (
        ("alpha", ["alpha.test"]),
        ("beta", ["beta.test", "www.beta.test"]),
        ("wild", ["*.wild.test"]),
    ):
        cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}-key.pem"
        write_issued(issue_certificate(ca, name, hostnames=hosts, days=2), cert, key)
        pairs[name] = (cert, key)
    return ca_file, pairs


def test_https_sni_chooses_the_certificate(launch: Launch, tmp_path: Path) -> None:
    ca, pairs = _sni_server_certs(tmp_path)
    args = ["--https-bind", f"{HOST}:0"]
    for cert, key in pairs.values():
        args += ["--https-cert", str(cert), "--https-key", str(key)]
    server = start_server(launch, *server_args(None, *args))
    port = server.https_port
    for asked, expected in [
        ("alpha.test", "alpha"),
        ("beta.test", "beta"),
        ("www.beta.test", "beta"),
        ("BETA.test", "beta"),
        ("x.wild.test", "wild"),
    ]:
        got = common_name(served_certificate(port, asked, ca))
        assert got == expected, f"SNI {asked}: got {got}"
    # an unknown name gets the first (default) certificate
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    for unknown in ("gamma.test", "a.b.wild.test"):
        with tls_handshake(port, context, unknown) as tls:
            der = tls.getpeercert(binary_form=True)
        assert der == ssl.PEM_cert_to_DER_cert(pairs["alpha"][0].read_text()), unknown

    # openssl s_client agrees (what operators use to check)
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"{HOST}:{port}", "-servername", "beta.test",
         "-CAfile", str(ca), "-verify_return_error", "-brief"],
        input="", capture_output=True, text=True, timeout=15, check=False,
    )  # fmt: skip
    assert re.search(r"Peer certificate: CN ?= ?beta$", result.stderr, re.M), result
    assert "Verification: OK" in result.stderr + result.stdout, result


# ---------------------------------------------------------------------------- verification


def test_client_without_the_ca_fails_at_once(
    launch: Launch, echo: EchoServer, certs: CertDir
) -> None:
    """No --tls-ca: the system's roots, which do not know the private CA. No fallback to an
    unverified connection, no retry loop (reconnecting is on by default)."""
    server = start_server(launch, *server_args(certs))
    client = launch(*client_args(server.control_port, echo.port, "--tls"))
    match = expect_fatal_exit(client, VERIFY_RE)
    assert match["host"] == HOST
    # the server saw a failed handshake, logged at INFO, and is fine
    server.proc.expect_stderr(r"INFO\s+TLS handshake from 127\.0\.0\.1:\d+ failed")
    assert server.proc.popen.poll() is None


def test_wrong_server_name_is_a_verification_error(
    launch: Launch, echo: EchoServer, certs: CertDir
) -> None:
    server = start_server(launch, *server_args(certs))
    wrong = launch(
        *client_args(
            server.control_port, echo.port,
            "--tls-ca", str(certs.ca), "--tls-server-name", "wrong.example",
        )
    )  # fmt: skip
    match = expect_fatal_exit(wrong, NAME_MISMATCH_RE)
    assert match["host"] == "wrong.example"
    # a name the certificate does carry works, whatever address is dialled
    right = launch(
        *client_args(
            server.control_port, echo.port,
            "--tls-ca", str(certs.ca), "--tls-server-name", "localhost",
        )
    )  # fmt: skip
    assert_round_trip(tcp_tunnel_port(right), 4096)


def test_skip_verify_connects_and_warns_every_start(
    launch: Launch, echo: EchoServer, certs: CertDir, tmp_path: Path
) -> None:
    server = start_server(launch, *server_args(certs))
    client = launch(*client_args(server.control_port, echo.port, "--tls-skip-verify"))
    port = tcp_tunnel_port(client)
    client.expect_stderr(rf"WARNING\s+{SKIP_VERIFY_WARNING}")
    assert_round_trip(port, 64 << 10)
    client.close()

    # the same from the [client] table of a file, and warned about again
    config = tmp_path / "client.toml"
    config.write_text(
        "[client]\n"
        f'server = "{HOST}:{server.control_port}"\n'
        'token = "sec-token"\n'
        f'local_addr = "{HOST}:{echo.port}"\n'
        'protocol = "tcp"\n'
        "dashboard = false\n"
        "tls_skip_verify = true\n"
    )
    again = launch("client", "--config", str(config))
    assert_round_trip(tcp_tunnel_port(again), 4096)
    again.expect_stderr(rf"WARNING\s+{SKIP_VERIFY_WARNING}")


def test_tls12_only_client_is_refused(launch: Launch, echo: EchoServer, certs: CertDir) -> None:
    server = start_server(launch, *server_args(certs))
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([ALPN_PROTOCOL])
    started = time.monotonic()
    with (
        pytest.raises(ssl.SSLError, match=r"(?i)protocol|version"),
        tls_handshake(server.control_port, context, HOST, timeout=5.0),
    ):
        pass
    assert time.monotonic() - started < 3, "refused only after a timeout"
    line = server.proc.expect_stderr(
        r"^\S+ (?P<level>\w+)\s+TLS handshake from 127\.0\.0\.1:\d+ failed: (?P<why>.*)$"
    )
    assert line["level"] == "INFO", line.string
    assert re.search(r"(?i)protocol|version", line["why"]), line.string
    # and it keeps serving: a TLS 1.3 client gets through
    client = launch(*client_args(server.control_port, echo.port, "--tls-ca", str(certs.ca)))
    assert_round_trip(tcp_tunnel_port(client), 64 << 10)
    assert "Traceback" not in server.proc.stderr


# ---------------------------------------------------------------------------- mutual TLS


def mtls_server_args(certs: CertDir, *extra: str) -> list[str]:
    """Mutual TLS and no token at all: the certificate is the credential."""
    return server_args(certs, "--tls-ca", str(certs.ca), "--tls-client-auth", *extra, token=None)


def test_mtls_client_certificate_is_the_credential(
    launch: Launch, echo: EchoServer, certs: CertDir
) -> None:
    server = start_server(launch, *mtls_server_args(certs))
    match = re.match(TLS_CONTROL_RE, "  " + server.lines["control plane"])
    assert match is not None, server.lines
    assert match["mtls"], server.lines
    client = launch(
        *client_args(
            server.control_port, echo.port,
            "--tls-ca", str(certs.ca),
            "--tls-cert", str(certs.client), "--tls-key", str(certs.client_key),
            token=None,
        )
    )  # fmt: skip
    assert_round_trip(tcp_tunnel_port(client))


def test_mtls_server_logs_the_certificate_identity(
    launch: Launch, echo: EchoServer, certs: CertDir
) -> None:
    """The operator can see who connected: the session line names the identity the
    certificate gave (its CN, ``client`` for ``cert init``'s client certificate)."""
    server = start_server(launch, *mtls_server_args(certs))
    client = launch(
        *client_args(
            server.control_port, echo.port,
            "--tls-ca", str(certs.ca),
            "--tls-cert", str(certs.client), "--tls-key", str(certs.client_key),
            token=None,
        )
    )  # fmt: skip
    tcp_tunnel_port(client)
    line = server.proc.expect_stderr(r"INFO\s+session \S+ from 127\.0\.0\.1:\d+ .*")
    assert "identity 'cert:client'" in line.string, server.proc.stderr


def test_mtls_refuses_a_client_without_a_certificate(
    launch: Launch, echo: EchoServer, certs: CertDir
) -> None:
    server = start_server(launch, *mtls_server_args(certs))
    # even with a token: the server requires the certificate
    client = launch(*client_args(server.control_port, echo.port, "--tls-ca", str(certs.ca)))
    expect_fatal_exit(client, r"requires a client certificate \(--tls-cert, --tls-key\)")
    assert server.proc.popen.poll() is None


def test_mtls_refuses_certificates_it_did_not_issue(
    launch: Launch, echo: EchoServer, certs: CertDir, tmp_path: Path
) -> None:
    server = start_server(launch, *mtls_server_args(certs))
    other = cert_init(tmp_path / "other", "127.0.0.1")
    refused = [
        (other.client, other.client_key),  # another CA
        (certs.server, certs.server_key),  # the right CA, but a server certificate
    ]
    for cert, key in refused:
        client = launch(
            *client_args(
                server.control_port, echo.port,
                "--tls-ca", str(certs.ca), "--tls-cert", str(cert), "--tls-key", str(key),
                token=None,
            )
        )  # fmt: skip
        expect_fatal_exit(client, r"issued by its CA, or does not accept this client's")
    assert server.proc.popen.poll() is None
    assert "session" not in "\n".join(
        line for line in server.proc.stderr.splitlines() if "closed" not in line
    ), server.proc.stderr


def test_mtls_subject_scopes_the_hosts(launch: Launch, certs: CertDir, tmp_path: Path) -> None:
    issued = run_cli(
        ["cert", "client", "alice", "--ca-dir", str(certs.path), "--out", str(tmp_path)]
    )
    assert issued.returncode == 0, issued.stderr
    alice = [
        "--tls-cert",
        str(tmp_path / "alice.pem"),
        "--tls-key",
        str(tmp_path / "alice-key.pem"),
    ]
    config = tmp_path / "server.toml"
    config.write_text(
        "[[auth.tokens]]\n"
        'name = "alice-laptop"\n'
        'subject = "CN=alice"\n'
        'hosts = ["alice.localhost"]\n'
    )
    server = start_server(launch, *mtls_server_args(certs, "--config", str(config)))
    origin = ThreadedOrigin("alice")
    try:

        def claim(host: str, cert: list[str] = alice) -> CliProcess:
            return launch(
                "client", "--server", f"{HOST}:{server.control_port}", "--no-dashboard",
                "--tls-ca", str(certs.ca), *cert,
                "--local-addr", f"{HOST}:{origin.port}", "--tunnel-id", host,
            )  # fmt: skip

        allowed = claim("alice.localhost")
        allowed.expect(HTTP_TUNNEL_RE, timeout=15)
        server.proc.expect_stderr(r"session \S+ from .*alice\.localhost")
        http_port = server.ports["HTTP ingress"]
        code, echo = curl_json("-H", "Host: alice.localhost", f"http://{HOST}:{http_port}/a")
        assert (code, echo["origin"]) == (200, "alice")

        forbidden = claim("bob.localhost")
        match = expect_fatal_exit(forbidden, r"server rejected the session: (?P<why>.*)")
        assert "forbidden" in match["why"], match.string
        assert "bob.localhost" in match["why"], match.string
        assert "(forbidden)" in match["why"], match.string
        assert re.search(
            r"WARNING\s+rejected 127\.0\.0\.1:\d+ .*'alice-laptop' may not claim bob\.localhost",
            server.proc.stderr,
        ), server.proc.stderr

        # the CA's other client certificate is not listed: not a credential on its own here
        unlisted = ["--tls-cert", str(certs.client), "--tls-key", str(certs.client_key)]
        match = expect_fatal_exit(claim("bob.localhost", unlisted), r"rejected the session: (.*)")
        assert "requires a token, or a client certificate listed by subject" in match[1]
    finally:
        origin.stop()


# ---------------------------------------------------------------------------- configuration


def assert_config_error(
    result: subprocess.CompletedProcess[str], *names: str, secrets: tuple[Path, ...] = ()
) -> str:
    """Exit status 2 and exactly one line on stderr naming one of ``names``; never the
    contents of a key file."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ferrotunnel: error:"), result.stderr
    assert any(name in lines[0] for name in names), (names, lines[0])
    assert "ferrotunnel server ready" not in result.stdout
    for key in secrets:
        for body in key.read_text().splitlines()[1:-1]:
            assert body not in result.stderr + result.stdout
    return lines[0]


def _server_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(server_args(None, *args), timeout=10)


def _run_all(commands: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    """``ferrotunnel`` with each argument list, a few at a time (each is short-lived)."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(lambda args: run_cli(args, timeout=20), commands))


def test_server_tls_flag_errors(certs: CertDir, tmp_path: Path) -> None:
    other = cert_init(tmp_path / "other", "127.0.0.1")
    cert, key = str(certs.server), str(certs.server_key)
    cases: list[tuple[list[str], tuple[str, ...]]] = [
        (["--tls-cert", cert], ("--tls-key",)),
        (["--tls-key", key], ("--tls-cert",)),
        (["--tls-cert", cert, "--tls-key", key, "--tls-client-auth"], ("--tls-ca",)),
        (["--tls-cert", cert, "--tls-key", key, "--tls-ca", str(certs.ca)], ("--tls-client-auth",)),
        (["--tls-client-auth", "--tls-ca", str(certs.ca)], ("--tls-cert",)),
        (["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", key], ("--tls-cert",)),
        (["--tls-cert", cert, "--tls-key", str(tmp_path / "missing.pem")], ("--tls-key",)),
        (["--tls-cert", cert, "--tls-key", key, "--tls-client-auth",
          "--tls-ca", str(tmp_path / "missing.pem")], ("--tls-ca",)),
        (["--https-cert", cert, "--https-key", key], ("--https-bind",)),
        (["--https-bind", f"{HOST}:0"], ("--https-cert",)),
        (["--https-bind", f"{HOST}:0", "--https-cert", cert], ("--https-key",)),
    ]  # fmt: skip
    results = _run_all([server_args(None, *args) for args, _ in cases])
    for (_, names), result in zip(cases, results, strict=True):
        assert_config_error(result, *names, secrets=(certs.server_key,))

    # a key that does not belong to the certificate; a key given as the certificate
    mismatch = assert_config_error(
        _server_cli("--tls-cert", cert, "--tls-key", str(other.server_key)),
        "--tls-key", secrets=(other.server_key,),
    )  # fmt: skip
    assert "--tls-cert" in mismatch
    assert_config_error(
        _server_cli("--tls-cert", key, "--tls-key", key), "--tls-cert", secrets=(certs.server_key,)
    )
    assert_config_error(
        _server_cli(
            "--https-bind", f"{HOST}:0",
            "--https-cert", cert, "--https-key", str(other.server_key),
        ),
        "--https-key", "--https-cert", secrets=(other.server_key,),
    )  # fmt: skip


def test_server_tls_toml_errors(certs: CertDir, tmp_path: Path) -> None:
    other = cert_init(tmp_path / "other", "127.0.0.1")
    cert, key, ca = (json.dumps(str(p)) for p in (certs.server, certs.server_key, certs.ca))
    cases: list[tuple[str, tuple[str, ...]]] = [
        (f"tls_cert = {cert}", ("tls_key", "--tls-key")),
        (f"tls_cert = {cert}\ntls_key = {key}\ntls_client_auth = true", ("tls_ca", "--tls-ca")),
        (f"tls_cert = {cert}\ntls_key = {key}\ntls_ca = {ca}",
         ("tls_client_auth", "--tls-client-auth")),
        (f"tls_cert = {json.dumps(str(tmp_path / 'missing.pem'))}\ntls_key = {key}",
         ("tls_cert", "--tls-cert")),
        (f"tls_cert = {cert}\ntls_key = {json.dumps(str(other.server_key))}",
         ("tls_key", "--tls-key")),
        (f"https_cert = [{cert}]\nhttps_key = [{key}]", ("https_bind", "--https-bind")),
        (f"tls_certificate = {cert}", ("tls_certificate",)),
    ]  # fmt: skip
    commands = []
    for number, (table, _) in enumerate(cases):
        config = tmp_path / f"server{number}.toml"
        config.write_text(f"[server]\n{table}\n")
        commands.append(server_args(None, "--config", str(config)))
    for (_, names), result in zip(cases, _run_all(commands), strict=True):
        assert_config_error(result, *names, secrets=(other.server_key,))


def test_tls_paths_in_a_file_are_relative_to_it_and_named_where_they_came_from(
    certs: CertDir, tmp_path: Path
) -> None:
    """A relative certificate path in the configuration file is taken from the file's folder
    (as ``[auth] tokens_file`` is), whatever the working directory (a service's is often /);
    a missing one is named by the file's table, key and line (not by a flag the user never
    typed); from the environment by its variable, a relative one with the directory it was
    looked for in."""
    folder, elsewhere = tmp_path / "etc", tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(certs.path, folder / "certs")
    configs = {
        "server": '[server]\ntoken = "t"\ntls_cert = "certs/server.pem"\n'
        'tls_key = "certs/server-key.pem"\n',
        "https": f'[server]\ntoken = "t"\nhttps_bind = "{HOST}:0"\n'
        'https_cert = ["certs/server.pem"]\nhttps_key = ["certs/server-key.pem"]\n',
        "client": f'[client]\nserver = "{HOST}:9"\ntoken = "t"\ntls_ca = "certs/ca.pem"\n'
        'tls_cert = "certs/client.pem"\ntls_key = "certs/client-key.pem"\n',
    }  # fmt: skip
    missing = {
        "server": ("certs/server.pem", "certs/gone.pem", "3: [server] tls_cert"),
        "https": ('["certs/server.pem"]', '["certs/gone.pem"]', "4: [server] https_cert"),
        "client": ("certs/ca.pem", "certs/gone.pem", "4: [client] tls_ca"),
    }
    for kind, text in configs.items():
        command = "client" if kind == "client" else "server"
        path = folder / f"{kind}.toml"
        path.write_text(text, encoding="utf-8")
        for args in (["config", "check", str(path)], [command, "--check", "--config", str(path)]):
            result = run_cli(args, cwd=elsewhere)
            assert result.returncode == 0, (kind, result.stdout, result.stderr)
        good, bad, where = missing[kind]
        path.write_text(text.replace(good, bad), encoding="utf-8")
        for args in (["config", "check", str(path)], [command, "--check", "--config", str(path)]):
            line = assert_config_error(run_cli(args, cwd=elsewhere), where)
            assert line == (
                f"ferrotunnel: error: {path}:{where} '{folder / 'certs/gone.pem'}': no such file"
            ), line
    # from the environment: its variable, and a relative path says where it was looked for
    env = child_env(FERROTUNNEL_TLS_CA="certs/ca.pem")
    args = ["client", "--check", "--server", f"{HOST}:9", "--token", "t", "--tls"]
    line = assert_config_error(run_cli(args, env=env, cwd=elsewhere), "FERROTUNNEL_TLS_CA")
    assert line == (
        "ferrotunnel: error: FERROTUNNEL_TLS_CA 'certs/ca.pem': no such file "
        f"(relative to the working directory {elsewhere})"
    ), line
    assert run_cli(args, env=env, cwd=folder).returncode == 0


def test_client_tls_flag_errors(certs: CertDir, tmp_path: Path) -> None:
    base = ["client", "--server", f"{HOST}:9", "--token", "t", "--no-dashboard"]
    cases: list[tuple[list[str], tuple[str, ...]]] = [
        (["--tls-cert", str(certs.client)], ("--tls-key",)),
        (["--tls-key", str(certs.client_key)], ("--tls-cert",)),
        (["--tls-ca", str(tmp_path / "missing.pem")], ("--tls-ca",)),
        (["--tls-ca", str(certs.ca), "--tls-skip-verify"], ("--tls-skip-verify",)),
        (["--tls-cert", str(certs.client), "--tls-key", str(certs.server_key)], ("--tls-key",)),
    ]
    results = _run_all([[*base, *args] for args, _ in cases])
    for (_, names), result in zip(cases, results, strict=True):
        assert_config_error(result, *names, secrets=(certs.server_key, certs.client_key))


# ---------------------------------------------------------------------------- secrets in logs


@needs_curl
def test_no_token_in_any_output_at_debug(launch: Launch, certs: CertDir) -> None:
    token = f"tok-{secrets.token_hex(16)}"
    wrong = f"bad-{secrets.token_hex(16)}"
    origin = ThreadedOrigin("app")
    try:
        server = start_server(
            launch,
            *server_args(certs, "--https-bind", f"{HOST}:0", "--log-level", "debug", token=token),
        )
        common = [
            "--tls-ca", str(certs.ca), "--log-level", "debug", "--no-dashboard",
            "--local-addr", f"{HOST}:{origin.port}", "--tunnel-id", "app.localhost",
        ]  # fmt: skip
        client = launch(
            "client", "--server", f"{HOST}:{server.control_port}", "--token", token, *common
        )
        client.expect(HTTP_TUNNEL_RE, timeout=15)
        port = server.https_port
        code, echo = curl_json(
            "--cacert", str(certs.ca), "--resolve", f"app.localhost:{port}:{HOST}",
            "-H", f"Authorization: Bearer {secrets.token_hex(4)}",
            f"https://app.localhost:{port}/secret-check",
        )  # fmt: skip
        assert (code, echo["path"]) == (200, "/secret-check")
        # a client with a wrong token is refused (and its token is not logged either)
        rejected = launch(
            "client", "--server", f"{HOST}:{server.control_port}", "--token", wrong,
            "--no-reconnect", *common,
        )  # fmt: skip
        assert rejected.wait_exit(PROMPT_EXIT) != 0, rejected.describe()
        assert "invalid token" in rejected.stderr, rejected.describe()
        # graceful stops: whatever is logged on the way out is captured too
        for proc in (client, server.proc):
            proc.signal(signal.SIGINT)
            proc.wait_exit(15)
    finally:
        origin.stop()
    outputs = {
        "server": server.proc.stdout + server.proc.stderr,
        "client": client.stdout + client.stderr,
        "rejected client": rejected.stdout + rejected.stderr,
    }
    assert "DEBUG" in outputs["server"], outputs
    assert re.search(r"session \S+ from 127\.0\.0\.1:\d+ .*app\.localhost", outputs["server"])
    forbidden = {
        token, wrong, hashlib.sha256(token.encode()).hexdigest(), token[4:],
        certs.server_key.read_text().splitlines()[1],
    }  # fmt: skip
    for name, text in outputs.items():
        for needle in forbidden:
            assert needle not in text, f"{name} output contains a secret:\n{text}"


# ---------------------------------------------------------------------------- the benchmark

BENCH = Path("/work/shared/bench/tunnelbench.py")


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tunnelbench_under_test", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not BENCH.exists(), reason="the shared benchmark is not here")
def test_bench_tls_entry_runs_as_written(launch: Launch, echo: EchoServer, tmp_path: Path) -> None:
    """The "ferrotunnel tcp tls" Tunnel of tunnelbench.py: its setup (``cert init --out
    {tmp}/certs --hostname 127.0.0.1``), then its server and client templates, formatted
    and split exactly as the harness does, move data."""
    bench = _load_bench()
    (entry,) = [t for t in bench.TUNNELS if t.name == "ferrotunnel tcp tls"]
    ctx: dict[str, Any] = {
        "py": bench.PY, "here": bench.HERE, "tmp": str(tmp_path), "lt": bench.LT_DIR,
        "token": "bench-token", "local_host": HOST, "local_port": echo.port,
        "public_port": free_port(), "control_port": free_port(), "aux_port": free_port(),
        "ft": ferrotunnel_exe(),
    }  # fmt: skip
    entry.setup(ctx)
    certs = CertDir(tmp_path / "certs")
    assert all(path.is_file() for path in certs.files().values())
    assert common_name(load_cert(certs.server)) == HOST

    server_argv = shlex.split(entry.server.format(**ctx))
    client_argv = shlex.split(entry.client.format(**ctx))
    assert server_argv[0] == client_argv[0] == ctx["ft"]
    server = start_server(launch, *server_argv[1:])
    assert server.control_port == ctx["control_port"]
    assert server.tcp_port == ctx["public_port"]
    assert "(TLS 1.3)" in server.lines["control plane"]
    client = launch(*client_argv[1:])
    assert tcp_tunnel_port(client) == ctx["public_port"]
    wait_for_echo(ctx["public_port"], timeout=10)
    assert_round_trip(ctx["public_port"], 4 * MiB, timeout=30)
    # what the harness checks before each measurement: both processes still up
    assert server.proc.popen.poll() is None
    assert client.popen.poll() is None
