"""``headers``: set, add and remove request and response headers, per tunnel.

::

    [headers.tunnels."*"]
    response_set = { Strict-Transport-Security = "max-age=31536000" }
    response_remove = ["Server", "X-Powered-By"]

    [headers.tunnels."api.example.com"]
    request_set = { X-Tunnel = "api" }
    request_add = { Via = "1.1 ferrotunnel" }
    request_remove = ["Cookie"]

For each message, ``*_remove`` runs first, then ``*_set`` (replaces any value), then
``*_add`` (adds one more header line, which for a list-valued header means the same as
appending ``, value``; existing lines are kept).
Header names are case-insensitive. Framing and routing headers (``Host``, ``Content-Length``,
``Transfer-Encoding``, ``Connection``, ``Upgrade``, ``TE``, ``Trailer``, ``Keep-Alive``) cannot
be changed here, nor can the forwarding headers of requests (``X-Forwarded-For``,
``X-Forwarded-Proto``, ``X-Forwarded-Host``, ``Forwarded``): the ingress writes those after the
plugins, so an edit would be silently undone (``--trust-proxy`` decides what is kept). One
entry applies per tunnel — the most specific key; entries are not merged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from operator import methodcaller

from ferrotunnel.core.plugin import (
    Config,
    ConfigSchema,
    HttpRequest,
    HttpResponse,
    Reply,
    RequestContext,
    hookimpl,
)

from ._common import OWNER, TunnelMatcher, settings_of

__all__ = ["HeaderOps", "HeaderRules", "HeadersSettings", "RequestHeaders", "ResponseHeaders"]

TABLE = "headers"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORBIDDEN_IN_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_PROTECTED = frozenset(
    [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "trailer",
        "keep-alive",
    ]
)
#: request headers the ingress replaces after the middlewares ran (see ``forwarded.py``)
_SET_BY_INGRESS = frozenset(
    ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded"]
)


def _check_name(name: str, key: str) -> None:
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"{key}: {name!r} is not a header name")
    if name.lower() in _PROTECTED:
        raise ValueError(f"{key}: {name!r} cannot be changed by the headers plugin")
    if key.startswith("request_") and name.lower() in _SET_BY_INGRESS:
        raise ValueError(
            f"{key}: {name!r} is set by the ingress after the plugins (see --trust-proxy), "
            "so the headers plugin cannot change it"
        )


def _check_values(values: Mapping[str, str], key: str) -> None:
    for name, value in values.items():
        _check_name(name, key)
        if _FORBIDDEN_IN_VALUE.search(value):
            raise ValueError(
                f"{key}: the value of {name!r} contains a line break or control character"
            )
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"{key}: the value of {name!r} is not Latin-1 text") from None


@dataclass(frozen=True)
class HeaderRules:
    """``[headers.tunnels."PATTERN"]``: header edits for the tunnels PATTERN matches."""

    #: request headers to set (replacing any value), name → value
    request_set: dict[str, str] = field(default_factory=dict)
    #: request headers to append to (``old, value``) or set when absent, name → value
    request_add: dict[str, str] = field(default_factory=dict)
    #: request headers to remove
    request_remove: tuple[str, ...] = ()
    #: response headers to set (replacing any value), name → value
    response_set: dict[str, str] = field(default_factory=dict)
    #: response headers to append to (``old, value``) or set when absent, name → value
    response_add: dict[str, str] = field(default_factory=dict)
    #: response headers to remove
    response_remove: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for direction in ("request", "response"):
            _check_values(getattr(self, f"{direction}_set"), f"{direction}_set")
            _check_values(getattr(self, f"{direction}_add"), f"{direction}_add")
            for name in getattr(self, f"{direction}_remove"):
                _check_name(name, f"{direction}_remove")


@dataclass(frozen=True)
class HeadersSettings:
    """``[headers]``: per-tunnel header edits. Unset: the plugin does nothing."""

    #: edits by tunnel pattern, matched against the host and the tunnel name
    #: (``"*"``: every tunnel; the most specific key applies)
    tunnels: dict[str, HeaderRules] = field(default_factory=dict)


#: header edits as calls to make on a message, in the order they run
Edits = tuple[methodcaller, ...]


@dataclass(frozen=True, slots=True)
class HeaderOps:
    """The edits of one direction, ready to apply."""

    remove: tuple[str, ...]
    set: tuple[tuple[str, str], ...]
    add: tuple[tuple[str, str], ...]
    #: the same edits, made into calls once: a message then costs one short loop (the
    #: middlewares run it on every request)
    edits: Edits = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        edits = [methodcaller("remove_header", name) for name in self.remove]
        edits += [methodcaller("set_header", name, value) for name, value in self.set]
        edits += [methodcaller("add_header", name, value) for name, value in self.add]
        object.__setattr__(self, "edits", tuple(edits))

    def __bool__(self) -> bool:
        return bool(self.edits)

    @classmethod
    def of(cls, rules: HeaderRules, direction: str) -> HeaderOps:
        return cls(
            tuple(getattr(rules, f"{direction}_remove")),
            tuple(getattr(rules, f"{direction}_set").items()),
            tuple(getattr(rules, f"{direction}_add").items()),
        )

    def apply(self, message: HttpRequest | HttpResponse) -> None:
        for edit in self.edits:
            edit(message)


def _matcher(tunnels: Mapping[str, HeaderRules], direction: str) -> TunnelMatcher[Edits | None]:
    """Edits by tunnel pattern; a pattern with no edits in this direction looks up as None."""
    ops = {pattern: HeaderOps.of(r, direction) for pattern, r in tunnels.items()}
    return TunnelMatcher({pattern: op.edits or None for pattern, op in ops.items()})


class RequestHeaders:
    """The HTTP middleware editing request headers."""

    __slots__ = ("_matcher",)

    def __init__(self, tunnels: Mapping[str, HeaderRules]) -> None:
        self._matcher = _matcher(tunnels, "request")

    def on_request(self, request: HttpRequest, ctx: RequestContext) -> Reply | None:
        edits = self._matcher.lookup(ctx.host, ctx.tunnel)
        if edits is not None:
            for edit in edits:  # HeaderOps.apply, inline: it runs on every request
                edit(request)
        return None


class ResponseHeaders:
    """The HTTP middleware editing response headers."""

    __slots__ = ("_matcher",)

    def __init__(self, tunnels: Mapping[str, HeaderRules]) -> None:
        self._matcher = _matcher(tunnels, "response")

    def on_response(self, response: HttpResponse, ctx: RequestContext) -> None:
        edits = self._matcher.lookup(ctx.host, ctx.tunnel)
        if edits is not None:
            for edit in edits:  # HeaderOps.apply, inline: it runs on every response
                edit(response)


@hookimpl
def ferrotunnel_add_config(schema: ConfigSchema) -> None:
    schema.add_table(
        TABLE,
        HeadersSettings,
        owner=OWNER,
        sides=("server",),  # HTTP middlewares, authenticators: a client has none
        help="per-tunnel header edits",
        example={
            "tunnels": {
                "*": {
                    "response_set": {"Strict-Transport-Security": "max-age=31536000"},
                    "response_remove": ["Server", "X-Powered-By"],
                }
            }
        },
    )


@hookimpl(trylast=True)
def ferrotunnel_http_middlewares(config: Config) -> list[RequestHeaders | ResponseHeaders]:
    tunnels = settings_of(config, TABLE, HeadersSettings).tunnels
    middlewares: list[RequestHeaders | ResponseHeaders] = []
    if any(HeaderOps.of(rules, "request") for rules in tunnels.values()):
        middlewares.append(RequestHeaders(tunnels))
    if any(HeaderOps.of(rules, "response") for rules in tunnels.values()):
        middlewares.append(ResponseHeaders(tunnels))
    return middlewares
