"""``tls``: TLS 1.3 for the control connection, mutual TLS, the HTTPS ingress, certificates.

The CLI gathers the user's TLS flags (``--tls-cert``, ``--tls-ca``, ``--tls-client-auth``,
``--tls``, ``--tls-skip-verify``, ``--https-cert``...; the same keys in ``[server]`` and
``[client]``) into a :class:`~ferrotunnel.core.plugin.TlsOptions` and asks the plugins for a
context through ``ferrotunnel_ssl_context``; this plugin answers. Library users call
:func:`server_context` / :func:`client_context` / :func:`ingress_context` directly.

What it promises:

- the control connection speaks TLS 1.3 only, with the ALPN id ``ferrotunnel/1``;
- a client always verifies the server: against ``--tls-ca`` or else the system's roots.
  ``--tls-skip-verify`` turns that off only when asked, and says so on every start;
- ``--tls-client-auth`` requires a client certificate issued by ``--tls-ca``; its subject
  becomes the session's identity (``[[auth.tokens]] subject = "CN=..."`` can scope it);
- the HTTPS ingress serves visitors TLS 1.2 or 1.3 (browsers and curl), choosing among
  several certificates by SNI.

It also adds ``ferrotunnel cert init`` and ``ferrotunnel cert client`` (see
:mod:`ferrotunnel.plugins.certs`).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ferrotunnel.core.errors import ConfigError
from ferrotunnel.core.plugin import TlsOptions, TlsPurpose, hookimpl
from ferrotunnel.protocol import ALPN_PROTOCOL

__all__ = ["client_context", "ingress_context", "server_context"]

log = logging.getLogger("ferrotunnel.plugins.tls")


def server_context(
    cert: str, key: str, *, ca: str | None = None, client_auth: bool = False
) -> ssl.SSLContext:
    """The control plane's context: TLS 1.3, ALPN ``ferrotunnel/1``; with ``client_auth``,
    a certificate issued by ``ca`` is required of every client."""
    if client_auth and ca is None:
        raise ConfigError(
            "--tls-client-auth needs --tls-ca (the CA that issues client certificates)"
        )
    if ca is not None and not client_auth:
        raise ConfigError(
            "--tls-ca on the server is the CA of client certificates: add --tls-client-auth "
            "to require them (it is never turned on silently)"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    _load_chain(context, cert, key, "--tls-cert", "--tls-key")
    context.set_alpn_protocols([ALPN_PROTOCOL])
    if client_auth:
        assert ca is not None
        _load_ca(context, ca, "--tls-ca")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    *,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    skip_verify: bool = False,
) -> ssl.SSLContext:
    """The client's context: TLS 1.3, ALPN ``ferrotunnel/1``, the server verified against
    ``ca`` (or the system's roots); ``cert``/``key`` for mutual TLS."""
    if (cert is None) != (key is None):
        raise ConfigError("give --tls-cert and --tls-key together (mutual TLS)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols([ALPN_PROTOCOL])
    if skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        log.warning(
            "TLS certificate verification is OFF (--tls-skip-verify): anyone between this "
            "client and the server can read and change the tunnel's traffic"
        )
    elif ca is not None:
        _load_ca(context, ca, "--tls-ca")
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert is not None and key is not None:
        _load_chain(context, cert, key, "--tls-cert", "--tls-key")
    return context


def ingress_context(certificates: Sequence[tuple[str, str]]) -> ssl.SSLContext:
    """The HTTPS ingress's context: one (certificate, key) pair, or several chosen by the
    host name the visitor asks for (SNI); the first is the default."""
    if not certificates:
        raise ConfigError("--https-bind needs a certificate (--https-cert and --https-key)")
    contexts = []
    for cert, key in certificates:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        _load_chain(context, cert, key, "--https-cert", "--https-key")
        contexts.append((_certificate_names(cert), context))
    default = contexts[0][1]
    if len(contexts) > 1:
        by_name = _SniTable(contexts)

        def choose(sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
            if server_name:
                chosen = by_name.lookup(server_name)
                if chosen is not None:
                    sock.context = chosen
            return None

        default.sni_callback = choose
    return default


class _SniTable:
    """Host name → context, honouring ``*.example.com`` wildcards (one label)."""

    def __init__(self, contexts: Sequence[tuple[list[str], ssl.SSLContext]]) -> None:
        self._exact: dict[str, ssl.SSLContext] = {}
        self._wild: dict[str, ssl.SSLContext] = {}
        for names, context in contexts:
            for name in names:
                table = self._wild if name.startswith("*.") else self._exact
                table.setdefault(name.removeprefix("*.").lower(), context)

    def lookup(self, server_name: str) -> ssl.SSLContext | None:
        name = server_name.lower().rstrip(".")
        found = self._exact.get(name)
        if found is None and "." in name:
            found = self._wild.get(name.split(".", 1)[1])
        return found


def _certificate_names(path: str) -> list[str]:
    """The DNS names (and IPs) a certificate is for, read with ``cryptography``."""
    from cryptography import x509

    certificate = x509.load_pem_x509_certificate(Path(path).read_bytes())
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    names: list[str] = list(san.value.get_values_for_type(x509.DNSName))
    names += [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)]
    return names


def _load_chain(
    context: ssl.SSLContext, cert: str, key: str, cert_flag: str, key_flag: str
) -> None:
    for flag, path in ((cert_flag, cert), (key_flag, key)):
        if not Path(path).is_file():
            raise ConfigError(f"{flag} {path!r}: no such file")
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        # never echo file contents: the key is a secret
        raise ConfigError(
            f"{cert_flag} {cert!r} / {key_flag} {key!r}: not a PEM certificate and its "
            f"matching private key ({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{cert_flag} {cert!r}: {exc.strerror or exc}") from None


def _load_ca(context: ssl.SSLContext, ca: str, flag: str) -> None:
    if not Path(ca).is_file():
        raise ConfigError(f"{flag} {ca!r}: no such file")
    try:
        context.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{flag} {ca!r}: not a PEM CA certificate ({exc.reason or exc})"
        ) from None


# ---------------------------------------------------------------------------- hooks


@hookimpl
def ferrotunnel_ssl_context(options: TlsOptions) -> ssl.SSLContext | None:
    if options.purpose is TlsPurpose.SERVER:
        if not options.certificates:
            raise ConfigError("TLS on the server needs --tls-cert and --tls-key")
        cert, key = options.certificates[0]
        return server_context(cert, key, ca=options.ca, client_auth=options.client_auth)
    if options.purpose is TlsPurpose.CLIENT:
        pair = options.certificates[0] if options.certificates else None
        return client_context(
            ca=options.ca,
            cert=pair[0] if pair else None,
            key=pair[1] if pair else None,
            skip_verify=options.skip_verify,
        )
    return ingress_context(options.certificates)


@hookimpl
def ferrotunnel_register_commands(cli: Any) -> None:
    from .certs import cert

    cli.add_command(cert)
