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
when the exchange ended with one. The file is opened once, for appending, line-buffered (so
``logrotate``'s ``copytruncate`` works); it stays open until the process ends.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from ferrotunnel.core.errors import ConfigError
from ferrotunnel.core.plugin import (
    Config,
    ConfigSchema,
    ExchangeRecord,
    RequestContext,
    hookimpl,
)

from ._common import OWNER, USER_KEY, TunnelMatcher, resolve_path, settings_of

__all__ = ["AccessLog", "AccessLogSettings", "format_record"]

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


def format_record(record: ExchangeRecord, ctx: RequestContext, *, query: bool = True) -> str:
    """The JSON line (without its newline) for one exchange."""
    moment = datetime.fromtimestamp(record.time, UTC).isoformat(timespec="milliseconds")
    path = record.path if query else record.path.partition("?")[0]
    line: dict[str, Any] = {
        "time": moment.replace("+00:00", "Z"),
        "tunnel": record.tunnel,
        "host": record.host,
        "method": record.method,
        "path": path,
        "status": record.status,
        "bytes_in": record.bytes_in,
        "bytes_out": record.bytes_out,
        "duration_ms": round(record.duration * 1000.0, 3),
        "visitor_ip": record.visitor_ip,
        "request_id": record.request_id,
    }
    state = ctx.state
    trace_id = state.get("trace_id")
    if trace_id is not None:
        line["trace_id"] = str(trace_id)
    user = state.get(USER_KEY)
    if user is not None:
        line["user"] = str(user)
    if record.error is not None:
        line["error"] = record.error
    return json.dumps(line, separators=(", ", ": "))


class AccessLog:
    """The HTTP middleware: writes a line in ``on_complete``.

    ``stream`` is a text file; None means ``sys.stderr`` at the time of each write.
    """

    __slots__ = ("_failed", "_matcher", "_query", "_stream")

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

    def close(self) -> None:
        """Close the log file (not stderr). The server has no hook that would call this at
        shutdown: the file stays open until the process ends."""
        if self._stream is not None:
            self._stream.close()

    def on_complete(self, record: ExchangeRecord, ctx: RequestContext) -> None:
        if self._matcher is not None and not self._matcher.lookup(record.host, record.tunnel):
            return
        text = format_record(record, ctx, query=self._query) + "\n"
        stream = self._stream if self._stream is not None else sys.stderr
        try:
            stream.write(text)
        except (OSError, ValueError) as exc:  # disk full, closed file ...
            if not self._failed:
                self._failed = True
                log.warning("access log: cannot write: %s (further failures not reported)", exc)
        else:
            self._failed = False


def open_log(config: Config, path: str) -> IO[str]:
    resolved = resolve_path(config, path)
    try:
        return open(resolved, "a", buffering=1, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"[access_log] path {str(resolved)!r}: {exc.strerror}") from None


@hookimpl
def ferrotunnel_add_config(schema: ConfigSchema) -> None:
    schema.add_table(TABLE, AccessLogSettings, owner=OWNER, help="JSON access log")


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
