"""``access-log``: one JSON line per finished HTTP exchange.

::

    [access_log]
    enabled = true                 # to stderr
    # path = "/var/log/ferrotunnel/access.log"   # or to a file (implies enabled)
    # tunnels = ["*.example.com"]  # only these tunnels
    # query = false                # log paths without their query strings

A line looks like (one line; wrapped here)::

    {"time": "2025-01-02T03:04:05.678Z", "tunnel": "app", "host": "app.example.com",
     "method": "GET", "path": "/x?y=1", "status": 200, "bytes_in": 0, "bytes_out": 512,
     "duration_ms": 12.345, "visitor_ip": "192.0.2.7", "request_id": "...",
     "trace_id": "...", "user": "alice", "error": "..."}

``time`` is when the request started (ISO 8601, UTC); ``trace_id`` appears when a plugin put
one in ``ctx.state["trace_id"]``, ``user`` when ``basic-auth`` let the visitor in, ``error``
when the exchange ended with one. The file is opened once, for appending (so ``logrotate``'s
``copytruncate`` works), and written once per batch of finished exchanges, whole lines only;
it stays open until the server stops.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from ferrotunnel.core.errors import ConfigError
from ferrotunnel.core.plugin import (
    Config,
    ConfigSchema,
    ExchangeRecord,
    RequestContext,
    hookimpl,
)

from ._common import OWNER, USER_KEY, TunnelMatcher, settings_of

__all__ = ["AccessLog", "AccessLogSettings", "format_lines", "format_record"]

log = logging.getLogger("ferrotunnel.plugins.access_log")

TABLE = "access_log"


@dataclass(frozen=True)
class AccessLogSettings:
    """``[access_log]``: JSON access log lines. Unset: the plugin does nothing."""

    #: write the log; unset: only if ``path`` is set
    enabled: bool | None = None
    #: append to this file (relative: to the configuration file's folder); unset: stderr
    path: str | None = None
    #: log only the tunnels these patterns match (host or tunnel name; ``"*"``: all)
    tunnels: tuple[str, ...] = ("*",)
    #: include the query string in ``path``
    query: bool = True

    @property
    def active(self) -> bool:
        return bool(self.tunnels) and (
            self.enabled if self.enabled is not None else self.path is not None
        )


#: JSON string literal of a str, as ``json.dumps`` writes it (``ensure_ascii``)
_encode = json.encoder.encode_basestring_ascii
#: the JSON of short strings that recur in every line: the ``"tunnel"``, ``"host"`` and
#: ``"method"`` members together, keyed by their values, and visitor addresses' literals;
#: each cache holds at most 4096 short entries (it is emptied when full)
_members: dict[tuple[str, str, str], str] = {}
_quoted: dict[str, str] = {}


def _quote(text: str) -> str:
    quoted = _quoted.get(text)
    if quoted is None:
        quoted = _encode(text)
        if len(text) <= 64:
            if len(_quoted) >= 4096:
                _quoted.clear()
            _quoted[text] = quoted
    return quoted


def _route_members(key: tuple[str, str, str]) -> str:
    tunnel, host, method = key
    members = f'"tunnel": {_encode(tunnel)}, "host": {_encode(host)}, "method": {_encode(method)}'
    if len(members) <= 512:  # a visitor's odd method or host is not kept
        if len(_members) >= 4096:
            _members.clear()
        _members[key] = members
    return members


class _Clock:
    """ISO 8601 text of wall-clock times: the date and time formatted once per second, the
    whole text once per millisecond (a busy tunnel logs many lines in each), and from the
    millisecond's integer alone wherever rounding cannot move it."""

    __slots__ = ("_ms", "_ms_text", "_second", "_text")

    def __init__(self) -> None:
        self._second = -1
        self._text = ""
        self._ms = -1  # the millisecond last formatted, and its text
        self._ms_text = ""

    def iso(self, moment: float) -> str:
        """``2025-01-02T03:04:05.678Z``: milliseconds truncated, after rounding to
        microseconds, exactly as ``datetime.fromtimestamp(...).isoformat()`` does."""
        scaled = moment * 1000.0
        ms = int(scaled)
        # well inside a millisecond (not within 5 µs of its ends, where rounding to
        # microseconds or the float's own error could move it), the millisecond is certain
        inside = 0.005 < scaled - ms < 0.995
        if inside:
            if ms == self._ms:
                return self._ms_text
            second, millis = divmod(ms, 1000)
            if second == self._second:
                self._ms, self._ms_text = ms, f"{self._text}.{millis:03d}Z"
                return self._ms_text
        fraction, whole = math.modf(moment)
        second, micros = int(whole), round(fraction * 1e6)
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        if second != self._second:
            self._second = second
            self._text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        text = f"{self._text}.{micros // 1000:03d}Z"
        if inside:
            self._ms, self._ms_text = ms, text
        return text


_clock = _Clock()


def format_record(record: ExchangeRecord, ctx: RequestContext, *, query: bool = True) -> str:
    """The JSON line (without its newline) for one exchange (``ctx``: its context, which
    the ingress passes as ``record`` too)."""
    if ctx is not record:  # a record made apart from its context: show the context's state
        record = copy.copy(record)
        record.state = ctx.state
    return format_lines([record], query=query)[:-1]


def format_lines(records: list[ExchangeRecord], *, query: bool = True) -> str:
    """The JSON lines for a batch of exchanges, each ending in a newline.

    Written out field by field rather than through ``json.dumps`` of a dict, and a batch at a
    time with the helpers' work inline (the strings are still escaped by ``json``): this runs
    for every request, and a call per field was a third of its cost.
    """
    iso, encode, quote, members = _clock.iso, _encode, _quoted.get, _members.get
    last_ms, last_time = -1, ""
    lines = []
    for record in records:
        # "time": the clock's text, asked for only when the millisecond changes (and away
        # from its ends, where the clock's own rounding decides: see _Clock.iso)
        scaled = record.time * 1000.0
        ms = int(scaled)
        inside = 0.005 < scaled - ms < 0.995
        if ms != last_ms or not inside:
            last_time = iso(record.time)
            last_ms = ms if inside else -1
        path = record.path if query else record.path.partition("?")[0]
        route = (record.tunnel, record.host, record.method)
        # duration_ms as repr(round(ms, 3)), what json.dumps writes, without round()'s cost:
        # both round correctly to three decimals; repr then drops trailing zeros
        duration = f"{record.duration * 1000.0:.3f}".rstrip("0")
        if duration[-1] == ".":
            duration += "0"
        line = (
            f'{{"time": "{last_time}", {members(route) or _route_members(route)}, '
            f'"path": {encode(path)}, "status": {record.status}, '
            f'"bytes_in": {record.bytes_in}, "bytes_out": {record.bytes_out}, '
            f'"duration_ms": {duration}, '
            f'"visitor_ip": {quote(record.visitor_ip) or _quote(record.visitor_ip)}, '
            f'"request_id": {encode(record.request_id)}'
        )
        state = record.state
        if state:
            trace_id = state.get("trace_id")
            if trace_id is not None:
                line += ', "trace_id": ' + encode(str(trace_id))
            user = state.get(USER_KEY)
            if user is not None:
                line += ', "user": ' + _quote(str(user))
        if record.error is not None:
            line += ', "error": ' + encode(record.error)
        lines.append(line)
    lines.append("")
    return "}\n".join(lines)


class AccessLog:
    """The HTTP middleware: keeps each finished exchange in ``on_complete``.

    ``stream`` is a text file; None means ``sys.stderr`` at the time of each write. Lines are
    formatted and written (and flushed) once per batch of completed exchanges — one ``write``
    system call for all of them, at the end of the event loop's current iteration — or at
    once when no event loop runs. A line shows its record as the batch ends: after every
    plugin's ``on_complete`` for it.
    """

    __slots__ = ("_failed", "_matcher", "_pending", "_query", "_stream")

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        tunnels: tuple[str, ...] = ("*",),
        query: bool = True,
    ) -> None:
        self._stream = stream
        self._matcher = None if "*" in tunnels else TunnelMatcher(dict.fromkeys(tunnels, True))
        self._query = query
        self._failed = False
        self._pending: list[ExchangeRecord] = []

    def close(self) -> None:
        """Write what is pending and close the log file (not stderr)."""
        self.flush()
        if self._stream is not None:
            self._stream.close()

    def on_complete(self, record: ExchangeRecord, ctx: RequestContext) -> None:
        if self._matcher is not None and not self._matcher.lookup(record.host, record.tunnel):
            return
        pending = self._pending
        pending.append(record)  # formatted with the rest of the batch, in flush()
        if len(pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no event loop: write now
                self.flush()

    def _lines_of_each(self, records: list[ExchangeRecord]) -> Iterator[str]:
        for record in records:
            try:
                yield format_lines([record], query=self._query)
            except Exception:
                log.exception("access log: cannot write the line of request %s", record.request_id)

    def flush(self) -> None:
        """Write the pending lines."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        try:
            text = format_lines(pending, query=self._query)
        except Exception:  # a record that cannot be written must not cost the others theirs
            text = "".join(self._lines_of_each(pending))
        stream = self._stream if self._stream is not None else sys.stderr
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError) as exc:  # disk full, closed file ...
            if not self._failed:
                self._failed = True
                log.warning("access log: cannot write: %s (further failures not reported)", exc)
        else:
            self._failed = False


def open_log(config: Config, path: str) -> IO[str]:
    resolved = config.path(path)
    try:
        return open(resolved, "a", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"[access_log] path {str(resolved)!r}: {exc.strerror}") from None


@hookimpl
def ferrotunnel_add_config(schema: ConfigSchema) -> None:
    schema.add_table(
        TABLE,
        AccessLogSettings,
        owner=OWNER,
        sides=("server",),  # HTTP middlewares, authenticators: a client has none
        help="JSON access log",
        example={"enabled": True, "path": "access.log"},
    )


@hookimpl
def ferrotunnel_configure(config: Config) -> None:
    settings = settings_of(config, TABLE, AccessLogSettings)
    if settings.active and settings.path is not None:
        open_log(config, settings.path).close()  # report a bad path as a configuration error


@hookimpl(trylast=True)
def ferrotunnel_http_middlewares(config: Config) -> list[AccessLog]:
    settings = settings_of(config, TABLE, AccessLogSettings)
    if not settings.active:
        return []
    stream = open_log(config, settings.path) if settings.path is not None else None
    return [AccessLog(stream, tunnels=settings.tunnels, query=settings.query)]
