"""Building blocks of the security tests: certificates made by the real CLI, a TLS server
process with its ports parsed from what it prints, TLS probes written with :mod:`ssl`."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from tests.e2e.helpers import HOST, CliProcess, echo_roundtrip, run_cli

Launch = Callable[..., CliProcess]
MiB = 1 << 20

#: ``  control plane   127.0.0.1:PORT (TLS 1.3)`` or ``(TLS 1.3, client certificates required)``
TLS_CONTROL_RE = (
    r"^\s+control plane\s+(?P<host>[\d.]+):(?P<port>\d+)"
    r" \(TLS 1\.3(?P<mtls>, client certificates required)?\)$"
)
_LISTENER_RE = re.compile(
    r"^\s+(?P<label>control plane|TCP ingress|HTTP ingress|HTTPS ingress)\s+"
    r"(?P<host>[\d.]+):(?P<port>\d+)"
)
TCP_TUNNEL_RE = r"^\s+tcp://(?P<host>[^\s:]+):(?P<port>\d+)\s+->\s+(?P<local>\S+)$"
HTTP_TUNNEL_RE = r"^\s+(?P<public>https?://\S+)\s+->\s+(?P<local>\S+)$"
VERIFY_RE = (
    r"TLS: cannot verify the server's certificate for (?P<host>\S+): .*"
    r"Trust the CA that issued it \(--tls-ca\)"
)
#: a certificate from a trusted CA, for another name: the hint is the name, not the CA
NAME_MISMATCH_RE = (
    r"TLS: cannot verify the server's certificate for (?P<host>\S+): .*"
    r"Connect to a name it carries, or give one with --tls-server-name\.$"
)
SKIP_VERIFY_WARNING = "TLS certificate verification is OFF"


@dataclass(frozen=True)
class CertDir:
    """The six files ``ferrotunnel cert init`` writes."""

    path: Path

    @property
    def ca(self) -> Path:
        return self.path / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.path / "ca-key.pem"

    @property
    def server(self) -> Path:
        return self.path / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.path / "server-key.pem"

    @property
    def client(self) -> Path:
        return self.path / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.path / "client-key.pem"

    def files(self) -> dict[str, Path]:
        names = ("ca", "ca_key", "server", "server_key", "client", "client_key")
        return {name: getattr(self, name) for name in names}


def cert_init(out: Path, *hostnames: str) -> CertDir:
    """Run ``ferrotunnel cert init --out OUT --hostname H...``; fail the test if it fails."""
    args = ["cert", "init", "--out", str(out)]
    for name in hostnames:
        args += ["--hostname", name]
    result = run_cli(args, timeout=30)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return CertDir(out)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# ---------------------------------------------------------------------------- processes


def server_args(
    certs: CertDir | None, *extra: str, token: str | None = "sec-token", loop: str | None = None
) -> list[str]:
    """``ferrotunnel server`` on ephemeral loopback ports, TLS with ``certs``' server pair
    (on the event loop ``loop``, else the CLI's default)."""
    args = ["--loop", loop, "server"] if loop else ["server"]
    if token is not None:
        args += ["--token", token]
    args += ["--bind", f"{HOST}:0", "--http-bind", f"{HOST}:0", "--tcp-bind", f"{HOST}:0"]
    if certs is not None:
        args += ["--tls-cert", str(certs.server), "--tls-key", str(certs.server_key)]
    return [*args, *extra]


def client_args(
    control_port: int, local_port: int, *extra: str, token: str | None = "sec-token"
) -> list[str]:
    """``ferrotunnel client`` exposing ``127.0.0.1:local_port`` over a TCP tunnel."""
    args = ["client", "--server", f"{HOST}:{control_port}"]
    if token is not None:
        args += ["--token", token]
    args += ["--local-addr", f"{HOST}:{local_port}", "--protocol", "tcp", "--no-dashboard"]
    return [*args, *extra]


class ServerProcess:
    """A ready ``ferrotunnel server``: the addresses it printed, by label."""

    def __init__(self, proc: CliProcess, timeout: float = 15.0) -> None:
        self.proc = proc
        proc.expect(r"^Press Ctrl-C to stop\.$", timeout=timeout)
        self.ports: dict[str, int] = {}
        self.lines: dict[str, str] = {}
        for line in proc.stdout.splitlines():
            match = _LISTENER_RE.match(line)
            if match is not None:
                self.ports[match["label"]] = int(match["port"])
                self.lines[match["label"]] = line.strip()

    @property
    def control_port(self) -> int:
        return self.ports["control plane"]

    @property
    def tcp_port(self) -> int:
        return self.ports["TCP ingress"]

    @property
    def https_port(self) -> int:
        return self.ports["HTTPS ingress"]


def start_server(launch: Launch, *args: str) -> ServerProcess:
    return ServerProcess(launch(*args))


def tcp_tunnel_port(client: CliProcess, timeout: float = 15.0) -> int:
    """The public port the client printed once connected."""
    return int(client.expect(TCP_TUNNEL_RE, timeout=timeout)["port"])


def assert_round_trip(port: int, size: int = MiB, timeout: float = 20.0) -> None:
    """``size`` random bytes through ``127.0.0.1:port`` (an echo behind a tunnel) come back
    identical (compared by SHA-256)."""
    data = os.urandom(size)
    reply = echo_roundtrip(port, data, timeout=timeout)
    assert len(reply) == len(data), f"got {len(reply)} of {len(data)} bytes back"
    assert hashlib.sha256(reply).hexdigest() == hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------- TLS probes


def tls_handshake(
    port: int,
    context: ssl.SSLContext,
    server_name: str | None = None,
    timeout: float = 5.0,
) -> ssl.SSLSocket:
    """A completed TLS handshake with ``127.0.0.1:port`` (the caller closes the socket);
    raises :class:`ssl.SSLError` / :class:`OSError` if it fails."""
    sock = socket.create_connection((HOST, port), timeout=timeout)
    try:
        return context.wrap_socket(sock, server_hostname=server_name)
    except BaseException:
        sock.close()
        raise


def served_certificate(port: int, server_name: str, ca: Path) -> x509.Certificate:
    """The certificate the server presents to a visitor asking for ``server_name`` (SNI),
    verified against ``ca`` for that name."""
    context = ssl.create_default_context(cafile=str(ca))
    with tls_handshake(port, context, server_name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def common_name(certificate: x509.Certificate) -> str:
    values = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert len(values) == 1, certificate.subject
    value = values[0].value
    return value if isinstance(value, str) else value.decode()
