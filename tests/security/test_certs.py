"""``ferrotunnel cert init`` and ``ferrotunnel cert client``, run as users run them.

Every certificate is parsed with ``cryptography`` and verified as a TLS peer would verify it
(``cryptography.x509.verification``: chain, validity, SAN and extended key usage)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shlex
import ssl
import stat
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from tests.e2e.helpers import run_cli

from .tls_helpers import CertDir, cert_init, common_name, load_cert

KEYS = ("ca_key", "server_key", "client_key")
CERTS = ("ca", "server", "client")


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def _eku(certificate: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def verify_server(ca: Path, leaf: Path, name: str) -> None:
    """Verify ``leaf`` as a TLS server certificate for ``name`` (DNS name or IP) under ``ca``;
    raises :class:`VerificationError` if a TLS client would refuse it."""
    try:
        subject: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        subject = x509.DNSName(name)
    verifier = (
        PolicyBuilder().store(Store([load_cert(ca)])).time(_now()).build_server_verifier(subject)  # type: ignore[arg-type]
    )
    verifier.verify(load_cert(leaf), [])


def verify_client(ca: Path, leaf: Path, key: Path | None = None) -> None:
    """Verify ``leaf`` as a TLS client certificate under ``ca`` as OpenSSL does it on a
    server with ``CERT_REQUIRED`` (a mutual TLS handshake in memory, TLS 1.3); raises
    :class:`ssl.SSLError` if the server side refuses it."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    _SERVER_CERT.configure_cert(server_ctx)
    server_ctx.load_verify_locations(cafile=str(ca))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _SERVER_CA.configure_trust(client_ctx)
    client_ctx.load_cert_chain(str(leaf), str(key or _key_of(leaf)))
    _memory_handshake(client_ctx, server_ctx)


def _key_of(cert: Path) -> Path:
    return cert.with_name(cert.name.removesuffix(".pem") + "-key.pem")


#: the server side of :func:`verify_client`: an unrelated identity from its own CA
_SERVER_CA = trustme.CA()
_SERVER_CERT = _SERVER_CA.issue_cert("server.test")


def _memory_handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext) -> None:
    """Run a TLS handshake between two contexts over memory BIOs, then one application
    byte each way (TLS 1.3 reports a refused client certificate only after the handshake)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="server.test")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, side in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values()), "the in-memory handshake did not finish"
    client.write(b"x")
    s_in.write(c_out.read())
    assert server.read(1) == b"x"


# ---------------------------------------------------------------------------- cert init


def test_init_writes_six_files_with_safe_modes(tmp_path: Path) -> None:
    certs = cert_init(tmp_path / "certs", "127.0.0.1")
    expected = {p.name for p in certs.files().values()}
    assert expected == {
        "ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem",
    }  # fmt: skip
    # nothing else (no temporary file left behind)
    assert {p.name for p in certs.path.iterdir()} == expected
    for name in KEYS:
        mode = stat.S_IMODE(getattr(certs, name).stat().st_mode)
        assert mode == 0o600, f"{name}: {oct(mode)}"
        assert b"PRIVATE KEY" in getattr(certs, name).read_bytes()
    for name in CERTS:
        mode = stat.S_IMODE(getattr(certs, name).stat().st_mode)
        assert mode == 0o644 & ~_umask(), f"{name}: {oct(mode)}"
        assert b"PRIVATE KEY" not in getattr(certs, name).read_bytes()


def test_init_sans_usages_and_chain(tmp_path: Path) -> None:
    certs = cert_init(tmp_path / "certs", "127.0.0.1", "Tunnel.Example.com", "::1", "localhost")
    server = load_cert(certs.server)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["tunnel.example.com", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert _eku(server) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    client = load_cert(certs.client)
    assert common_name(client) == "client"
    assert _eku(client) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not client.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    ca = load_cert(certs.ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for leaf in (server, client):
        assert leaf.issuer == ca.subject
        leaf.verify_directly_issued_by(ca)
        assert leaf.not_valid_before_utc <= _now() < leaf.not_valid_after_utc

    # as a TLS peer would check them: every name, and only the right purpose
    for name in ("127.0.0.1", "tunnel.example.com", "::1", "localhost"):
        verify_server(certs.ca, certs.server, name)
    with pytest.raises(VerificationError):
        verify_server(certs.ca, certs.server, "other.example.com")
    verify_client(certs.ca, certs.client)
    with pytest.raises(VerificationError):
        verify_server(certs.ca, certs.client, "127.0.0.1")  # clientAuth only
    with pytest.raises(ssl.SSLError, match="certificate purpose"):
        verify_client(certs.ca, certs.server)  # serverAuth only


def test_init_days(tmp_path: Path) -> None:
    certs = cert_init(tmp_path / "certs", "127.0.0.1")
    result = run_cli(["cert", "init", "--out", str(tmp_path / "short"), "--days", "3"])
    assert result.returncode == 0, result.stderr
    short = load_cert(tmp_path / "short" / "server.pem")
    remaining = short.not_valid_after_utc - _now()
    assert datetime.timedelta(days=2, hours=23) < remaining <= datetime.timedelta(days=3)
    default = load_cert(certs.server).not_valid_after_utc - _now()
    assert datetime.timedelta(days=824) < default <= datetime.timedelta(days=825)


def test_init_default_hostnames(tmp_path: Path) -> None:
    result = run_cli(["cert", "init", "--out", str(tmp_path / "certs")])
    assert result.returncode == 0, result.stderr
    verify_server(tmp_path / "certs" / "ca.pem", tmp_path / "certs" / "server.pem", "localhost")
    verify_server(tmp_path / "certs" / "ca.pem", tmp_path / "certs" / "server.pem", "127.0.0.1")


def test_init_prints_commands_with_the_paths(tmp_path: Path) -> None:
    out = tmp_path / "my certs"  # a space: the printed commands must quote it
    result = run_cli(["cert", "init", "--out", str(out), "--hostname", "127.0.0.1"])
    assert result.returncode == 0, result.stderr
    certs = CertDir(out)
    commands = [
        shlex.split(line.strip())
        for line in result.stdout.splitlines()
        if line.strip().startswith(("ferrotunnel server", "ferrotunnel client", "mutual TLS"))
    ]
    assert len(commands) == 4, result.stdout
    server, server_mtls, client, client_mtls = commands

    def value(args: list[str], flag: str) -> str:
        assert flag in args, args
        return args[args.index(flag) + 1]

    assert server[:2] == ["ferrotunnel", "server"]
    assert value(server, "--tls-cert") == str(certs.server)
    assert value(server, "--tls-key") == str(certs.server_key)
    assert value(server_mtls, "--tls-ca") == str(certs.ca)
    assert "--tls-client-auth" in server_mtls
    assert client[:2] == ["ferrotunnel", "client"]
    assert "--tls" in client
    assert value(client, "--tls-ca") == str(certs.ca)
    assert value(client, "--server").startswith("127.0.0.1:")
    assert value(client_mtls, "--tls-cert") == str(certs.client)
    assert value(client_mtls, "--tls-key") == str(certs.client_key)
    # keys are never printed
    for key in (certs.ca_key, certs.server_key, certs.client_key):
        body = key.read_text().splitlines()[1]
        assert body not in result.stdout + result.stderr


def test_second_init_needs_force(tmp_path: Path) -> None:
    certs = cert_init(tmp_path / "certs", "127.0.0.1")
    before = {name: path.read_bytes() for name, path in certs.files().items()}

    again = run_cli(["cert", "init", "--out", str(certs.path), "--hostname", "127.0.0.1"])
    assert again.returncode == 2, again.stdout
    assert "already holds a CA" in again.stderr
    assert "--force" in again.stderr
    assert {name: path.read_bytes() for name, path in certs.files().items()} == before

    forced = run_cli(
        ["cert", "init", "--out", str(certs.path), "--hostname", "new.example", "--force"]
    )
    assert forced.returncode == 0, forced.stderr
    after = {name: path.read_bytes() for name, path in certs.files().items()}
    assert all(after[name] != before[name] for name in before), "--force replaced nothing"
    verify_server(certs.ca, certs.server, "new.example")
    verify_client(certs.ca, certs.client)
    # the old certificates do not chain to the new CA
    old_client = tmp_path / "old-client.pem"
    old_client.write_bytes(before["client"])
    old_key = tmp_path / "old-client-key.pem"
    old_key.write_bytes(before["client_key"])
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        verify_client(certs.ca, old_client, old_key)


@pytest.mark.parametrize("hostname", ["", "bad host"])
def test_init_rejects_a_bad_hostname(tmp_path: Path, hostname: str) -> None:
    result = run_cli(["cert", "init", "--out", str(tmp_path / "certs"), "--hostname", hostname])
    assert result.returncode == 2
    assert "--hostname" in result.stderr
    assert not (tmp_path / "certs" / "ca-key.pem").exists()


# ---------------------------------------------------------------------------- cert client


def test_cert_client_issues_a_named_certificate(tmp_path: Path) -> None:
    certs = cert_init(tmp_path / "certs", "127.0.0.1")
    result = run_cli(["cert", "client", "alice", "--ca-dir", str(certs.path)])
    assert result.returncode == 0, result.stderr
    cert, key = certs.path / "alice.pem", certs.path / "alice-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    alice = load_cert(cert)
    assert common_name(alice) == "alice"
    assert _eku(alice) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    verify_client(certs.ca, cert)
    assert str(cert) in result.stdout
    assert key.read_text().splitlines()[1] not in result.stdout

    # --out elsewhere
    elsewhere = tmp_path / "issued"
    result = run_cli(
        ["cert", "client", "bob.laptop", "--ca-dir", str(certs.path), "--out", str(elsewhere)]
    )
    assert result.returncode == 0, result.stderr
    assert common_name(load_cert(elsewhere / "bob.laptop.pem")) == "bob.laptop"
    verify_client(certs.ca, elsewhere / "bob.laptop.pem")
    assert stat.S_IMODE((elsewhere / "bob.laptop-key.pem").stat().st_mode) == 0o600

    # never overwritten silently
    before = cert.read_bytes()
    again = run_cli(["cert", "client", "alice", "--ca-dir", str(certs.path)])
    assert again.returncode != 0
    assert "already exists" in again.stderr
    assert cert.read_bytes() == before


def test_cert_client_rejects_a_bad_name(tmp_path: Path) -> None:
    certs = cert_init(tmp_path / "d" / "certs", "127.0.0.1")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for name in ("bad name", "../escape", "a/b", ".hidden", "x" * 65, "é", "-"):
        result = run_cli(["cert", "client", "--ca-dir", str(certs.path), "--", name])
        assert result.returncode == 2, (name, result.stdout)
        assert "Invalid value for NAME" in result.stderr, (name, result.stderr)
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, name


def test_cert_client_without_a_ca(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = run_cli(["cert", "client", "alice", "--ca-dir", str(missing)])
    assert result.returncode == 2
    assert f"{missing / 'ca.pem'} not found" in result.stderr
    assert "ferrotunnel cert init" in result.stderr
    assert "Traceback" not in result.stderr
    assert not missing.exists()


def test_cert_client_again_needs_force_and_says_so_in_one_line(tmp_path: Path) -> None:
    certs = cert_init(tmp_path / "certs", "127.0.0.1")
    assert run_cli(["cert", "client", "alice", "--ca-dir", str(certs.path)]).returncode == 0
    before = (certs.path / "alice.pem").read_bytes()
    again = run_cli(["cert", "client", "alice", "--ca-dir", str(certs.path)])
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"ferrotunnel: error: {certs.path / 'alice.pem'} already exists: use --force to replace it"
    ]
    forced = run_cli(["cert", "client", "alice", "--ca-dir", str(certs.path), "--force"])
    assert forced.returncode == 0, forced.stderr
    assert (certs.path / "alice.pem").read_bytes() != before


def test_cert_client_without_a_ca_is_one_line(tmp_path: Path) -> None:
    result = run_cli(["cert", "client", "bob", "--ca-dir", str(tmp_path / "none")])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"ferrotunnel: error: {tmp_path / 'none' / 'ca.pem'} not found: "
        "create the CA with 'ferrotunnel cert init'"
    ]
