"""``basic-auth``: HTTP basic authentication of visitors, per tunnel.

::

    [basic_auth.tunnels."app.example.com"]
    users = ["alice:secret", "bob:sha256:<hex of sha256(bob's password)>"]
    realm = "staging"

    [basic_auth.tunnels."*.internal.example.com"]
    users = ["ops:sha256:..."]
    forward_authorization = true   # the origin sees the Authorization header too

A request to a matching tunnel without valid credentials is answered ``401`` with
``WWW-Authenticate: Basic realm="..."``; a valid one is forwarded without its
``Authorization`` header (unless ``forward_authorization``), and ``ctx.state["basic_auth.user"]``
names the user. Passwords are compared as SHA-256 digests with :func:`hmac.compare_digest`,
also for unknown user names. An entry with no ``users`` turns basic auth off for what it
matches (to exempt one host from a wildcard entry). Tunnels no key matches are untouched.

A SHA-256 digest keeps the password out of the configuration file, but is fast to
brute-force: use long random passwords.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

from ferrotunnel.core.plugin import (
    Config,
    ConfigSchema,
    HttpRequest,
    Reply,
    RequestContext,
    hookimpl,
)

from ._common import OWNER, USER_KEY, TunnelMatcher, parse_sha256, reply, settings_of, sha256

__all__ = ["BasicAuth", "BasicAuthSettings", "BasicAuthTunnel", "parse_users"]

TABLE = "basic_auth"
PLUGIN = "basic-auth"

_DUMMY = sha256("\0 no such user \0")


def parse_users(users: tuple[str, ...]) -> dict[str, bytes]:
    """``name:password`` / ``name:sha256:HEX`` entries → name → SHA-256 of the password."""
    parsed: dict[str, bytes] = {}
    for entry in users:
        name, sep, secret = entry.partition(":")
        if not sep or not name:
            raise ValueError("users are 'name:password' or 'name:sha256:HEX'")
        if name in parsed:
            raise ValueError(f"user {name!r} is listed twice")
        kind, sep, digest = secret.partition(":")
        if kind == "sha256" and sep:
            try:
                parsed[name] = parse_sha256(digest)
            except ValueError as exc:
                raise ValueError(f"user {name!r}: {exc}") from None
        else:
            parsed[name] = sha256(secret)
    return parsed


@dataclass(frozen=True)
class BasicAuthTunnel:
    """``[basic_auth.tunnels."PATTERN"]``: who may visit the tunnels PATTERN matches."""

    #: ``"name:password"`` or ``"name:sha256:HEX"`` (HEX: SHA-256 of the password);
    #: empty: no authentication for these tunnels
    users: tuple[str, ...] = ()
    #: the realm of the ``WWW-Authenticate`` challenge (browsers may show it)
    realm: str = "ferrotunnel"
    #: pass the visitor's ``Authorization`` header on to the origin
    forward_authorization: bool = False

    def __post_init__(self) -> None:
        parse_users(self.users)
        if any(c in '"\\' or not " " <= c <= "~" for c in self.realm):
            raise ValueError("realm is printable ASCII without quotes or backslashes")


@dataclass(frozen=True)
class BasicAuthSettings:
    """``[basic_auth]``: per-tunnel basic authentication. Unset: the plugin does nothing."""

    #: settings by tunnel pattern, matched against the host and the tunnel name
    #: (``"*"``: every tunnel; the most specific key applies)
    tunnels: dict[str, BasicAuthTunnel] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Realm:
    users: dict[str, bytes]
    challenge: tuple[tuple[str, str], ...]
    forward: bool

    @classmethod
    def build(cls, settings: BasicAuthTunnel) -> _Realm:
        value = f'Basic realm="{settings.realm}", charset="UTF-8"'
        return cls(parse_users(settings.users), (("WWW-Authenticate", value),),
                   settings.forward_authorization)  # fmt: skip

    def check(self, authorization: str | None) -> str | None:
        """The user whose valid credentials ``authorization`` carries, or None."""
        if not authorization:
            return None
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except ValueError:  # binascii.Error, UnicodeDecodeError, non-ASCII text
            return None
        name, sep, password = decoded.partition(":")
        if not sep:
            return None
        stored = self.users.get(name)
        ok = hmac.compare_digest(_DUMMY if stored is None else stored, sha256(password))
        return name if ok and stored is not None else None


class BasicAuth:
    """The HTTP middleware: challenges visitors of the configured tunnels."""

    __slots__ = ("_matcher",)

    def __init__(self, tunnels: Mapping[str, BasicAuthTunnel]) -> None:
        self._matcher = TunnelMatcher(
            {pattern: _Realm.build(settings) for pattern, settings in tunnels.items()}
        )

    def on_request(self, request: HttpRequest, ctx: RequestContext) -> Reply | None:
        realm = self._matcher.lookup(ctx.host, ctx.tunnel)
        if realm is None or not realm.users:
            return None
        user = realm.check(request.header("Authorization"))
        if user is None:
            return reply(ctx, PLUGIN, 401, "authentication required\n", realm.challenge)
        ctx.state[USER_KEY] = user
        if not realm.forward:
            request.remove_header("Authorization")
        return None


@hookimpl
def ferrotunnel_add_config(schema: ConfigSchema) -> None:
    schema.add_table(
        TABLE,
        BasicAuthSettings,
        owner=OWNER,
        sides=("server",),  # HTTP middlewares, authenticators: a client has none
        help="visitor basic auth",
        example={"tunnels": {"admin.example.com": {"users": ["alice:CHANGE-ME"]}}},
    )


@hookimpl
def ferrotunnel_http_middlewares(config: Config) -> list[BasicAuth]:
    settings = settings_of(config, TABLE, BasicAuthSettings)
    if not any(t.users for t in settings.tunnels.values()):
        return []
    return [BasicAuth(settings.tunnels)]
