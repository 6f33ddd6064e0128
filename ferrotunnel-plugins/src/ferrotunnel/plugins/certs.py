"""``ferrotunnel cert``: a private CA and its certificates, in one command.

``cert init`` writes a CA, a server certificate for the given host names and IP addresses,
and one client certificate (for mutual TLS); ``cert client NAME`` issues another client
certificate from that CA. Keys are EC P-256, written with mode 0600 and never printed.
Certificates last ``--days`` (825 by default: what browsers accept for a server).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Issued", "cert", "issue_certificate", "new_ca"]

Key = ec.EllipticCurvePrivateKey

_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    key: Key


def new_ca(common_name: str, days: int) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(certificate, key)


def issue_certificate(
    ca: Issued,
    common_name: str,
    *,
    hostnames: Sequence[str] = (),
    client: bool = False,
    days: int = 825,
) -> Issued:
    """A leaf certificate signed by ``ca``: a server's (``hostnames`` as SANs) or a
    client's (``client=True``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if hostnames:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(h) for h in hostnames]), critical=False
        )
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host.lower())


# ---------------------------------------------------------------------------- files


def _write(path: Path, data: bytes, *, secret: bool) -> None:
    """Write atomically; a key is created 0600 (never readable by others, not even briefly)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _save(issued: Issued, cert_path: Path, key_path: Path) -> None:
    _write(key_path, issued.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ), secret=True)  # fmt: skip
    _write(cert_path, issued.certificate.public_bytes(serialization.Encoding.PEM), secret=False)


def _load_ca(directory: Path) -> Issued:
    cert_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
    for path in (cert_path, key_path):
        if not path.is_file():
            raise click.UsageError(f"{path} not found: create the CA with 'ferrotunnel cert init'")
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError as exc:
        raise click.UsageError(f"{directory}: cannot read the CA ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise click.UsageError(f"{key_path}: not a key made by 'ferrotunnel cert init'")
    return Issued(certificate, key)


def _quote(path: Path) -> str:
    return shlex.quote(str(path))


# ---------------------------------------------------------------------------- commands


@click.group()
def cert() -> None:
    """Create a private CA and certificates for TLS and mutual TLS."""


@cert.command("init")
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default="certs",
    show_default=True,
    help="Directory to write the files to (created if missing).",
)
@click.option(
    "--hostname",
    "hostnames",
    multiple=True,
    metavar="NAME|IP",
    help="A name or address clients use to reach the server (repeatable). "
    "Default: localhost and 127.0.0.1.",
)
@click.option("--days", type=click.IntRange(1, 3650), default=825, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing CA in --out.")
def init(out: Path, hostnames: tuple[str, ...], days: int, force: bool) -> None:
    """Write ca.pem, ca-key.pem, server.pem, server-key.pem, client.pem, client-key.pem."""
    names = list(dict.fromkeys(hostnames or ("localhost", "127.0.0.1")))
    for name in names:
        if not name or any(c.isspace() for c in name):
            raise click.BadParameter(
                f"{name!r} is not a host name or address", param_hint="--hostname"
            )
    if (out / "ca.pem").exists() and not force:
        raise click.UsageError(
            f"{out} already holds a CA: use --force to replace it, or "
            f"'ferrotunnel cert client NAME --ca-dir {out}' to issue another client certificate"
        )
    out.mkdir(parents=True, exist_ok=True)
    ca = new_ca(f"ferrotunnel CA {os.urandom(4).hex()}", days)
    _save(ca, out / "ca.pem", out / "ca-key.pem")
    server = issue_certificate(ca, names[0], hostnames=names, days=days)
    _save(server, out / "server.pem", out / "server-key.pem")
    client = issue_certificate(ca, "client", client=True, days=days)
    _save(client, out / "client.pem", out / "client-key.pem")
    host = names[0] if ":" not in names[0] else f"[{names[0]}]"
    click.echo(f"Wrote a CA and certificates for {', '.join(names)} to {out}/ (keys: mode 0600).")
    click.echo("Keep ca-key.pem private: whoever has it can issue certificates.\n")
    click.echo("Server (TLS 1.3):")
    click.echo(
        f"  ferrotunnel server --token TOKEN --tls-cert {_quote(out / 'server.pem')} "
        f"--tls-key {_quote(out / 'server-key.pem')}"
    )
    click.echo(f"  mutual TLS: add --tls-ca {_quote(out / 'ca.pem')} --tls-client-auth")
    click.echo("Client:")
    click.echo(
        f"  ferrotunnel client --server {host}:7835 --token TOKEN --local-addr 127.0.0.1:8000 "
        f"--tls --tls-ca {_quote(out / 'ca.pem')}"
    )
    click.echo(
        f"  mutual TLS: add --tls-cert {_quote(out / 'client.pem')} "
        f"--tls-key {_quote(out / 'client-key.pem')}"
    )


@cert.command("client")
@click.argument("name")
@click.option(
    "--ca-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default="certs",
    show_default=True,
    help="Directory of 'cert init' (holds ca.pem and ca-key.pem).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write NAME.pem and NAME-key.pem (default: --ca-dir).",
)
@click.option("--days", type=click.IntRange(1, 3650), default=825, show_default=True)
def client_command(name: str, ca_dir: Path, out: Path | None, days: int) -> None:
    """Issue a client certificate NAME (its subject is CN=NAME) from the CA in --ca-dir."""
    if not _CLIENT_NAME.fullmatch(name):
        raise click.BadParameter(
            "use letters, digits, '.', '_' and '-' (at most 64)", param_hint="NAME"
        )
    ca = _load_ca(ca_dir)
    out = out or ca_dir
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / f"{name}.pem", out / f"{name}-key.pem"
    if cert_path.exists():
        raise click.UsageError(f"{cert_path} already exists")
    _save(issue_certificate(ca, name, client=True, days=days), cert_path, key_path)
    click.echo(f"Wrote {cert_path} and {key_path} (subject CN={name}).")
    click.echo(f"  ferrotunnel client ... --tls --tls-ca {_quote(ca_dir / 'ca.pem')} "
               f"--tls-cert {_quote(cert_path)} --tls-key {_quote(key_path)}")  # fmt: skip
