"""``ferrotunnel cert``: a private CA and its certificates, in one command.

``cert init`` writes a CA, a server certificate for the given host names and IP addresses,
and one client certificate (for mutual TLS); ``cert client NAME`` issues another client
certificate from that CA. Keys are EC P-256, written with mode 0600 and never printed
(the cryptography is in :mod:`.pki`, imported only when a ``cert`` command runs).
Certificates last ``--days`` (825 by default: what browsers accept for a server).
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import click

__all__ = ["CertError", "cert"]

_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class CertError(click.ClickException):
    """A ``cert`` command that cannot do what it was asked: one line, as the other
    commands' errors are (not click's usage lines), exit status 2."""

    exit_code = 2

    def show(self, file: object = None) -> None:
        click.echo(f"ferrotunnel: error: {self.format_message()}", err=True)


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
        raise CertError(
            f"{out} already holds a CA: use --force to replace it, or "
            f"'ferrotunnel cert client NAME --ca-dir {out}' to issue another client certificate"
        )
    from .pki import issue_certificate, new_ca, save

    out.mkdir(parents=True, exist_ok=True)
    ca = new_ca(f"ferrotunnel CA {os.urandom(4).hex()}", days)
    save(ca, out / "ca.pem", out / "ca-key.pem")
    server = issue_certificate(ca, names[0], hostnames=names, days=days)
    save(server, out / "server.pem", out / "server-key.pem")
    client = issue_certificate(ca, "client", client=True, days=days)
    save(client, out / "client.pem", out / "client-key.pem")
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
@click.option("--force", is_flag=True, help="Replace an existing certificate NAME.")
def client_command(name: str, ca_dir: Path, out: Path | None, days: int, force: bool) -> None:
    """Issue a client certificate NAME (its subject is CN=NAME) from the CA in --ca-dir."""
    if not _CLIENT_NAME.fullmatch(name):
        raise click.BadParameter(
            "use letters, digits, '.', '_' and '-' (at most 64)", param_hint="NAME"
        )
    from .pki import issue_certificate, load_ca, save

    ca = load_ca(ca_dir)
    out = out or ca_dir
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / f"{name}.pem", out / f"{name}-key.pem"
    if cert_path.exists() and not force:
        raise CertError(f"{cert_path} already exists: use --force to replace it")
    save(issue_certificate(ca, name, client=True, days=days), cert_path, key_path)
    click.echo(f"Wrote {cert_path} and {key_path} (subject CN={name}).")
    click.echo(f"  ferrotunnel client ... --tls --tls-ca {_quote(ca_dir / 'ca.pem')} "
               f"--tls-cert {_quote(cert_path)} --tls-key {_quote(key_path)}")  # fmt: skip
