"""What a TLS handshake established, in a form authenticators and logs can use.

The kernel never builds SSL contexts itself: a library user passes one to
:class:`~ferrotunnel.core.ServerConfig` / :class:`~ferrotunnel.core.ClientConfig`, and the CLI
asks the plugins for one (the ``tls`` plugin of ``ferrotunnel-plugins`` builds TLS 1.3-only
contexts with the tunnel's ALPN id). This module only reads the result of a handshake.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

__all__ = ["TlsInfo", "escape_dn_value", "tls_info"]

#: OpenSSL's long attribute names, as :meth:`ssl.SSLSocket.getpeercert` gives them, and the
#: short ones RFC 4514 uses
_SHORT_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "emailAddress": "emailAddress",
}


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """The negotiated TLS parameters of one connection.

    ``peer_subject`` is set only when the peer presented a certificate that was *verified*
    (mutual TLS on the server): ``"CN=alice,O=Example"`` (RFC 4514 order: most specific
    first). ``peer_common_name`` is its CN, the usual identity.
    """

    version: str
    cipher: str
    alpn: str | None = None
    peer_subject: str | None = None
    peer_common_name: str | None = None


def tls_info(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> TlsInfo | None:
    """Read a finished handshake (None for a plain connection)."""
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    subject, common_name = _subject(ssl_object.getpeercert())
    return TlsInfo(
        version=ssl_object.version() or "",
        cipher=cipher[0] if cipher else "",
        alpn=ssl_object.selected_alpn_protocol(),
        peer_subject=subject,
        peer_common_name=common_name,
    )


def _subject(cert: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """``getpeercert()`` is empty unless the certificate was verified, so an unverified one
    never yields an identity."""
    if not cert or "subject" not in cert:
        return None, None
    parts: list[str] = []
    common_name = None
    for rdn in cert["subject"]:
        for name, value in rdn:
            if name == "commonName" and common_name is None:
                common_name = value
            parts.append(f"{_SHORT_NAMES.get(name, name)}={escape_dn_value(value)}")
    return ",".join(reversed(parts)) or None, common_name


def escape_dn_value(value: str) -> str:
    """RFC 4514 escaping of the characters that would change a DN's meaning."""
    out = "".join(f"\\{c}" if c in ',+"\\<>;=' else c for c in value)
    if out.startswith(("#", " ")):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out
