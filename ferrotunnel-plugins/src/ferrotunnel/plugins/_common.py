"""Pieces the built-in plugins share: tunnel patterns, settings lookup, replies, digests."""

from __future__ import annotations

import fnmatch
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from typing import Generic, TypeVar

from ferrotunnel.core.plugin import REPLIED_BY, Config, Reply, RequestContext

__all__ = [
    "OWNER",
    "REPLIED_BY",
    "USER_KEY",
    "TunnelMatcher",
    "parse_sha256",
    "reply",
    "retry_after",
    "settings_of",
    "sha256",
]

T = TypeVar("T")

#: the ``owner`` of every table the built-ins declare
OWNER = "ferrotunnel-plugins"

#: ``ctx.state`` key under which ``basic-auth`` leaves the name of the visitor it let in
USER_KEY = "basic_auth.user"

_WILDCARDS = frozenset("*?[")
_MISSING = object()


class TunnelMatcher(Generic[T]):
    """Per-tunnel settings keyed by patterns, looked up by a request's host and tunnel name.

    A key is a shell pattern (``fnmatch``, case-insensitive) matched against both the host the
    visitor asked for and the tunnel's name; ``"*"`` matches every tunnel. One entry applies —
    the most specific: a key equal to the host, then a key equal to the tunnel name, then the
    wildcard key with the most literal characters (ties: the one written first), ``"*"`` last.
    Entries are not merged. Results are cached per (host, tunnel), at most ``cache_size`` of
    them (the cache is emptied when full).

    The tunnel name is the server's (``RequestContext.tunnel``): a client whose token is scoped
    to hosts or ports has its tunnels named ``IDENTITY/NAME``, so it cannot pick up a rule
    meant for another tunnel by naming its own alike (see ``Identity.tunnel_name``).
    """

    __slots__ = ("_cache", "_cache_size", "_everywhere", "_exact", "_wild")

    def __init__(self, entries: Mapping[str, T], *, cache_size: int = 4096) -> None:
        self._exact: dict[str, T] = {}
        wild: list[tuple[int, int, re.Pattern[str], T]] = []
        for index, (pattern, value) in enumerate(entries.items()):
            key = pattern.lower()
            if _WILDCARDS.isdisjoint(key):
                self._exact.setdefault(key, value)
            else:
                literal = sum(1 for c in key if c not in _WILDCARDS)
                wild.append((-literal, index, re.compile(fnmatch.translate(key)), value))
        wild.sort(key=lambda item: (item[0], item[1]))
        self._wild = [(regex, value) for _, _, regex, value in wild]
        self._cache: dict[tuple[str, str], T | None] = {}
        self._cache_size = cache_size
        #: the settings of every tunnel when ``"*"`` is the only key (the usual table, such
        #: as ``[ip_filter.tunnels."*"]``): no look-up at all, on every request
        self._everywhere: T | object = (
            entries["*"] if len(entries) == 1 and "*" in entries else _MISSING
        )

    def __bool__(self) -> bool:
        return bool(self._exact or self._wild)

    def lookup(self, host: str, tunnel: str) -> T | None:
        """The settings that apply to ``host``/``tunnel``, or None if no key matches."""
        if self._everywhere is not _MISSING:
            return self._everywhere  # type: ignore[return-value]
        key = (host, tunnel)
        found = self._cache.get(key, _MISSING)
        if found is _MISSING:
            found = self._find(host.lower(), tunnel.lower())
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[key] = found
        return found  # type: ignore[return-value]

    def _find(self, host: str, tunnel: str) -> T | None:
        exact = self._exact
        if host and host in exact:
            return exact[host]
        if tunnel and tunnel in exact:
            return exact[tunnel]
        for regex, value in self._wild:
            if (host and regex.match(host)) or (tunnel and regex.match(tunnel)):
                return value
        return None


def settings_of(config: Config, name: str, settings: type[T]) -> T:
    """Table ``[name]`` of ``config``; its defaults if the schema did not declare it."""
    try:
        value = config.table(name)
    except KeyError:
        return settings()
    if not isinstance(value, settings):
        raise TypeError(f"table [{name}] is a {type(value).__name__}, not {settings.__name__}")
    return value


def sha256(data: str) -> bytes:
    return hashlib.sha256(data.encode("utf-8")).digest()


_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


def parse_sha256(text: str) -> bytes:
    """The 32 bytes a 64-digit hexadecimal SHA-256 digest spells; ValueError otherwise.

    Checked digit by digit: ``bytes.fromhex`` skips spaces, so a mistyped digest would give a
    shorter one that no secret ever matches."""
    text = text.strip()
    if not _SHA256_HEX.fullmatch(text):
        raise ValueError("a sha256 digest is 64 hexadecimal digits")
    return bytes.fromhex(text)


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))


def reply(
    ctx: RequestContext,
    plugin: str,
    status: int,
    body: str,
    headers: Sequence[tuple[str, str]] = (),
) -> Reply:
    """A :class:`Reply`, with ``ctx`` marked as answered by ``plugin`` (its short name, rather
    than the label the kernel would write; see :data:`REPLIED_BY`)."""
    ctx.state[REPLIED_BY] = plugin
    return Reply(status, body, headers)
