"""``auth``: named client tokens, each with its own claim scope.

Replaces the server's single ``--token`` with any number of credentials, each naming the
:class:`~ferrotunnel.core.plugin.Identity` a client gets and, optionally, the host patterns
and TCP ports it may claim (the kernel enforces those scopes when the client asks for
tunnels)::

    [auth]
    tokens_file = "tokens.txt"   # relative to the configuration file

    [[auth.tokens]]
    name = "alice"
    token = "alice-secret"
    hosts = ["*.alice.example.com"]
    ports = [[20000, 20010], 8080]

    [[auth.tokens]]
    name = "bob"
    sha256 = "<hex of sha256(bob's token)>"

    [[auth.tokens]]              # mutual TLS: scope a client certificate instead of a token
    name = "carol-laptop"
    subject = "CN=carol"         # its verified subject, or just CN=...
    hosts = ["carol.example.com"]

With credentials configured, a client certificate no ``subject`` entry lists is not a
credential by itself: that client needs a token too (see ``docs/security.md``).

A scoped credential (``hosts`` or ``ports``) does not choose its tunnels' names on the server:
alice's tunnel ``web`` is ``alice/web`` there, which is how other plugins' tables, logs and
metrics name it (key rules for it by host, ``"alice/web"`` or ``"alice/*"``). So a name cannot
contain ``/``.

(or inline: ``tokens = [{ name = "dave", token = "..." }]``)

``tokens_file`` holds one credential a line, ``#`` starts a comment::

    # name:token[:hosts=PATTERN,...][:ports=PORT|LOW-HIGH,...]
    alice:alice-secret:hosts=*.alice.example.com,alice.example.com:ports=20000-20010,8080
    bob:sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08

Tokens cannot contain ``:`` or whitespace there (use ``tokens`` in the TOML file for those).
A token is checked by comparing SHA-256 digests with :func:`hmac.compare_digest` against every
credential (no early exit). A token no credential matches is left to the next authenticator
and finally to the kernel's own ``--token``, if one is set. Tokens never reach a log line.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ferrotunnel.core.errors import ConfigError
from ferrotunnel.core.plugin import Config, ConfigSchema, Identity, Peer, hookimpl
from ferrotunnel.core.tls import escape_dn_value

from ._common import OWNER, parse_sha256, settings_of, sha256

if TYPE_CHECKING:
    from ferrotunnel.protocol import Hello

__all__ = [
    "AuthSettings",
    "Credential",
    "TokenAuthenticator",
    "TokenEntry",
    "load_credentials",
    "parse_tokens_file",
]

log = logging.getLogger("ferrotunnel.plugins.auth")

TABLE = "auth"

PortSpec = int | tuple[int, ...]


@dataclass(frozen=True)
class TokenEntry:
    """One credential of ``[auth] tokens``. Give exactly one of ``token`` and ``sha256``."""

    #: the identity a client with this token gets (owner of its tunnels, shown in logs)
    name: str
    #: the token, in plain text
    token: str | None = None
    #: instead of ``token``: the SHA-256 of the token, 64 hex digits
    #: (``printf %s "$TOKEN" | sha256sum``)
    sha256: str | None = None
    #: instead of a token: a client certificate's subject (mutual TLS), written as the server
    #: logs it (``CN=carol,O=Example``) or just ``CN=carol``
    subject: str | None = None
    #: host patterns (``*.example.com``) the client may claim HTTP tunnels for;
    #: unset: any host, ``[]``: none
    hosts: tuple[str, ...] | None = None
    #: TCP ports the client may claim: a port (``8080``) or an inclusive range
    #: (``[20000, 20010]``); unset: any port, ``[]``: none
    ports: tuple[PortSpec, ...] | None = None

    def __post_init__(self) -> None:
        _check_name(self.name)
        if [self.token, self.sha256, self.subject].count(None) != 2:
            raise ValueError(
                f"token {self.name!r} needs exactly one of 'token', 'sha256' and 'subject'"
            )
        if self.token is not None and not self.token:
            raise ValueError(f"token {self.name!r} is empty")
        if self.sha256 is not None:
            parse_sha256(self.sha256)
        if self.hosts is not None:
            _hosts(self.hosts)
        if self.ports is not None:
            _port_ranges(self.ports)


@dataclass(frozen=True)
class AuthSettings:
    """``[auth]``: client credentials. Unset (no tokens, no file): the plugin does nothing."""

    #: credentials written in the configuration file
    tokens: tuple[TokenEntry, ...] = ()
    #: a file of further credentials, one ``name:token[:hosts=...][:ports=...]`` a line;
    #: a relative path is relative to the configuration file; read once at start-up
    tokens_file: str | None = None


@dataclass(frozen=True, slots=True)
class Credential:
    """A checked credential: the identity it grants and the SHA-256 of its token."""

    identity: Identity
    digest: bytes = field(repr=False)  # b"" for a certificate subject
    source: str  # where it was written, for error messages: "[auth] tokens[1]", "file:3"
    hashed: bool = False
    subject: str | None = None


class TokenAuthenticator:
    """An :class:`~ferrotunnel.core.plugin.Authenticator` over a fixed list of credentials."""

    __slots__ = ("_credentials", "_subjects")

    def __init__(self, credentials: Sequence[Credential]) -> None:
        self._credentials = tuple(c for c in credentials if c.subject is None)
        self._subjects = {c.subject: c.identity for c in credentials if c.subject is not None}

    def __repr__(self) -> str:
        return f"TokenAuthenticator({len(self._credentials)} credentials)"

    async def authenticate(self, hello: Hello, peer: Peer) -> Identity | None:
        """A verified client certificate listed by subject first, then the token."""
        tls = peer.tls
        if self._subjects and tls is not None and tls.peer_subject is not None:
            identity = self._subjects.get(tls.peer_subject)
            if identity is None and tls.peer_common_name is not None:
                # escaped as in the full subject: a CN "carol,O=Example" is not "CN=carol,O=..."
                short = f"CN={escape_dn_value(tls.peer_common_name)}"
                identity = self._subjects.get(short)
            if identity is not None:
                return identity
        return self.identify(hello.token)

    def identify(self, token: str | None) -> Identity | None:
        """The identity ``token`` belongs to, or None."""
        if not token:
            return None
        offered = sha256(token)
        found: Identity | None = None
        for credential in self._credentials:  # every one, matched or not: constant work
            if hmac.compare_digest(credential.digest, offered) and found is None:
                found = credential.identity
        return found


# ---------------------------------------------------------------------------- loading


def _port_ranges(specs: Sequence[PortSpec]) -> tuple[tuple[int, int], ...]:
    ranges = []
    for spec in specs:
        if isinstance(spec, int):
            low = high = spec
        elif len(spec) == 2:
            low, high = spec
        else:
            raise ValueError(f"a port range is [low, high], not {list(spec)!r}")
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"bad port range {low}-{high} (1 <= low <= high <= 65535)")
        ranges.append((low, high))
    return tuple(ranges)


def _hosts(patterns: Sequence[str]) -> tuple[str, ...]:
    hosts = tuple(p.strip().rstrip(".").lower() for p in patterns)
    if any(not h for h in hosts):
        raise ValueError("a host pattern is empty")
    return hosts


def _check_name(name: str) -> None:
    if not name.strip():
        raise ValueError("name must not be empty")
    if "/" in name:  # it prefixes a scoped identity's tunnels: alice/web (Identity.tunnel_name)
        raise ValueError(f"name {name!r} must not contain '/'")


def _entry_credential(entry: TokenEntry, source: str) -> Credential:
    identity = Identity(
        entry.name.strip(),
        _hosts(entry.hosts) if entry.hosts is not None else None,
        _port_ranges(entry.ports) if entry.ports is not None else None,
    )
    if entry.subject is not None:
        return Credential(identity, b"", source, subject=entry.subject.strip())
    if entry.sha256 is not None:
        return Credential(identity, parse_sha256(entry.sha256), source, hashed=True)
    assert entry.token is not None
    return Credential(identity, sha256(entry.token), source)


_PORT_TEXT = re.compile(r"(\d+)(?:-(\d+))?")


def _parse_line(line: str, where: str) -> Credential:
    parts = [p.strip() for p in line.split(":")]
    name = parts[0]
    if not name or len(parts) < 2:
        raise ConfigError(f"{where}: expected name:token or name:sha256:HEX")
    try:
        _check_name(name)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    hashed = parts[1] == "sha256" and len(parts) >= 3
    if hashed:
        try:
            digest = parse_sha256(parts[2])
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        rest = parts[3:]
    else:
        if not parts[1] or any(c.isspace() for c in parts[1]):
            raise ConfigError(f"{where}: the token is empty or contains whitespace")
        digest = sha256(parts[1])
        rest = parts[2:]
    hosts: tuple[str, ...] | None = None
    ports: tuple[tuple[int, int], ...] | None = None
    for part in rest:
        key, eq, value = part.partition("=")
        items = [v.strip() for v in value.split(",") if v.strip()] if eq else []
        if key == "hosts" and eq and hosts is None:
            try:
                hosts = _hosts(items)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        elif key == "ports" and eq and ports is None:
            specs: list[PortSpec] = []
            for item in items:
                match = _PORT_TEXT.fullmatch(item)
                if match is None:
                    raise ConfigError(f"{where}: ports are PORT or LOW-HIGH, not {item!r}")
                low, high = match.group(1), match.group(2) or match.group(1)
                specs.append((int(low), int(high)))
            try:
                ports = _port_ranges(specs)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        else:
            # never echo the field: it may be part of a token that contained ':'
            raise ConfigError(
                f"{where}: unexpected field after the token (tokens cannot contain ':'; "
                "options are hosts=... and ports=..., each once)"
            )
    return Credential(Identity(name, hosts, ports), digest, where, hashed=hashed)


def parse_tokens_file(path: Path) -> list[Credential]:
    """The credentials of a tokens file (see the module documentation for its format)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"[auth] tokens_file {str(path)!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"[auth] tokens_file {str(path)!r} is not UTF-8 text") from None
    credentials = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        credentials.append(_parse_line(line, f"{path}:{number}"))
    if os.name == "posix" and any(not c.hashed for c in credentials):
        try:
            mode = path.stat().st_mode
        except OSError:  # pragma: no cover - it was just read
            mode = 0
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning("%s holds plain-text tokens and is readable by others (chmod 600 it, "
                        "or store sha256 digests)", path)  # fmt: skip
    return credentials


def load_credentials(config: Config) -> list[Credential]:
    """Every credential of ``[auth]``: ``tokens`` first, then ``tokens_file``'s lines."""
    settings = settings_of(config, TABLE, AuthSettings)
    credentials = [
        _entry_credential(entry, f"[auth] tokens[{i}]") for i, entry in enumerate(settings.tokens)
    ]
    if settings.tokens_file is not None:
        credentials += parse_tokens_file(config.path(settings.tokens_file))
    seen: dict[bytes | str, Credential] = {}
    for credential in credentials:
        key = credential.subject or credential.digest
        first = seen.setdefault(key, credential)
        if first is not credential:
            what = "subject" if credential.subject else "token"
            raise ConfigError(
                f"{credential.source}: the same {what} as {first.source} "
                f"({credential.identity.name!r} and {first.identity.name!r})"
            )
    return credentials


# ---------------------------------------------------------------------------- hooks


@hookimpl
def ferrotunnel_add_config(schema: ConfigSchema) -> None:
    schema.add_table(
        TABLE,
        AuthSettings,
        owner=OWNER,
        sides=("server",),  # HTTP middlewares, authenticators: a client has none
        help="client tokens with scopes",
        example={
            "tokens": [{"name": "alice", "token": "CHANGE-ME", "hosts": ["*.alice.example.com"]}],
            "tokens_file": "tokens.txt",
        },
    )


@hookimpl
def ferrotunnel_configure(config: Config) -> None:
    # read tokens_file now, so that a mistake in it is reported as a configuration error
    load_credentials(config)


@hookimpl
def ferrotunnel_authenticators(config: Config) -> list[TokenAuthenticator]:
    credentials = load_credentials(config)
    if not credentials:
        return []
    log.info("auth: %d client credentials for %d identities", len(credentials),
             len({c.identity.name for c in credentials}))  # fmt: skip
    return [TokenAuthenticator(credentials)]
