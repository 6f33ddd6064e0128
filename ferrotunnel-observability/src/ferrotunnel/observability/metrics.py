"""``metrics``: Prometheus metrics of a server (``--metrics``) or a client.

::

    [metrics]
    enabled = true              # or --metrics
    bind = "127.0.0.1:9090"     # or --metrics-bind; scrape http://127.0.0.1:9090/metrics

Theory of operation
-------------------
Nothing is counted per frame or chunk, and prometheus_client is never called on the request
path. Each finished HTTP exchange is folded into a few plain integers (the ingress delivers
its record once per batch, after the responses went out); sessions, tunnels and handshakes
come from their event hooks; stream and session gauges are read from the live sessions when
Prometheus scrapes. :class:`ServerMetrics` and :class:`ClientMetrics` are custom collectors
that turn that state into metric families at scrape time.

Bytes per tunnel are the HTTP exchanges' bytes (request head and body from visitors,
response head and body to them); raw TCP tunnels are not counted per tunnel.
"""

from __future__ import annotations

import collections
import logging
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import click
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ferrotunnel.core import (
    Address,
    Client,
    ClientStatus,
    ConfigError,
    Role,
    Server,
    Session,
    Stream,
)
from ferrotunnel.core.net import running_asyncio_loop
from ferrotunnel.core.plugin import (
    Config,
    ConfigSchema,
    ExchangeRecord,
    Identity,
    RequestContext,
    hookimpl,
)
from ferrotunnel.protocol import GrantedTunnel, Hello, TunnelKind

from ._exposition import MetricsEndpoint, metrics_app, serve_metrics
from ._options import add_options

__all__ = [
    "DEFAULT_BUCKETS",
    "ClientMetrics",
    "MetricsPlugin",
    "MetricsSettings",
    "ServerMetrics",
    "metrics_app",
    "plugin",
    "serve_metrics",
]

log = logging.getLogger("ferrotunnel.observability.metrics")

TABLE = "metrics"
OWNER = "ferrotunnel-observability"

#: request-duration histogram bounds, in seconds
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: label of ``status // 100``; "none": the exchange ended without a response status
STATUS_CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")


@dataclass(frozen=True)
class MetricsSettings:
    """``[metrics]``: serve Prometheus metrics at ``http://BIND/metrics``."""

    enabled: bool = False
    bind: str = "127.0.0.1:9090"


class _TunnelCounts:
    """One HTTP tunnel's exchange counters: plain numbers, read at scrape time."""

    __slots__ = ("buckets", "bytes_in", "bytes_out", "duration_sum", "requests")

    def __init__(self, n_bounds: int) -> None:
        self.requests = [0] * len(STATUS_CLASSES)
        self.bytes_in = 0
        self.bytes_out = 0
        self.buckets = [0] * (n_bounds + 1)  # per bound, then the overflow (+Inf only)
        self.duration_sum = 0.0


class ServerMetrics(Collector):
    """The server's metrics: a collector, an HTTP middleware (``on_complete``) and event
    hooks. Register it with a plugin host, give it to the ingress as a middleware, and
    register it in a ``CollectorRegistry``::

        metrics = ServerMetrics()
        host = PluginHost.with_plugins([metrics])
        registry = CollectorRegistry()
        registry.register(metrics)
    """

    def __init__(self, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        self._bounds = sorted(buckets)
        self._http: dict[str, _TunnelCounts] = {}
        self._sessions: dict[Session, list[GrantedTunnel]] = {}
        #: whose each session is: its streams carry its client's tunnel names, which the
        #: server shows as Identity.tunnel_name gives them
        self._identities: dict[Session, Identity] = {}
        self._sessions_opened = 0
        self._streams_of_closed = 0  # streams of sessions that ended
        self._handshake_failures: collections.Counter[str] = collections.Counter()

    # ---- the request path: once per exchange, after the batch

    def on_complete(self, record: ExchangeRecord, ctx: RequestContext) -> None:
        counts = self._http.get(record.tunnel) or self._new_tunnel(record.tunnel)
        status = record.status
        counts.requests[status // 100 if 100 <= status < 600 else 0] += 1
        counts.bytes_in += record.bytes_in
        counts.bytes_out += record.bytes_out
        duration = record.duration
        counts.buckets[bisect_left(self._bounds, duration)] += 1
        counts.duration_sum += duration

    def _new_tunnel(self, tunnel: str) -> _TunnelCounts:
        counts = self._http[tunnel] = _TunnelCounts(len(self._bounds))
        return counts

    # ---- events

    @hookimpl
    def ferrotunnel_http_middlewares(self, config: Config) -> list[ServerMetrics]:
        return [self]

    @hookimpl
    def ferrotunnel_handshake_done(self, session: Session, failure: str | None) -> None:
        if failure is not None and session.role is Role.SERVER:
            self._handshake_failures[failure] += 1

    @hookimpl
    def ferrotunnel_session_opened(self, session: Session, identity: Identity) -> None:
        self._sessions.setdefault(session, [])
        self._identities[session] = identity
        self._sessions_opened += 1

    @hookimpl
    def ferrotunnel_session_closed(self, session: Session) -> None:
        self._identities.pop(session, None)
        if self._sessions.pop(session, None) is not None:
            self._streams_of_closed += session.streams_opened

    @hookimpl
    def ferrotunnel_tunnel_registered(self, session: Session, tunnel: GrantedTunnel) -> None:
        self._sessions.setdefault(session, []).append(tunnel)

    @hookimpl
    def ferrotunnel_tunnel_closed(self, session: Session, tunnel: GrantedTunnel) -> None:
        tunnels = self._sessions.get(session)
        if tunnels is not None and tunnel in tunnels:
            tunnels.remove(tunnel)

    # ---- scrape

    def collect(self) -> Iterator[Metric]:
        sessions = list(self._sessions.items())
        yield GaugeMetricFamily(
            "ferrotunnel_sessions_active", "Client sessions connected now.", value=len(sessions)
        )
        yield CounterMetricFamily(
            "ferrotunnel_sessions_opened",
            "Client sessions accepted since start.",
            value=self._sessions_opened,
        )
        by_kind = collections.Counter(t.kind for _, tunnels in sessions for t in tunnels)
        tunnels_active = GaugeMetricFamily(
            "ferrotunnel_tunnels_active", "Tunnels registered now, by kind.", labels=["kind"]
        )
        for kind in TunnelKind:
            tunnels_active.add_metric([kind.value], by_kind[kind])
        yield tunnels_active
        failures = CounterMetricFamily(
            "ferrotunnel_handshake_failures",
            "Handshakes that did not end in a session, by reason.",
            labels=["reason"],
        )
        for reason, n in sorted(self._handshake_failures.items()):
            failures.add_metric([reason], n)
        yield failures
        yield from _stream_families(
            "ferrotunnel",
            [self._server_name(s, stream.tunnel) for s, _ in sessions for stream in s.streams],
            self._streams_of_closed + sum(s.streams_opened for s, _ in sessions),
            [t.name for _, tunnels in sessions for t in tunnels],
        )
        yield from self._http_families()

    def _server_name(self, session: Session, tunnel: str) -> str:
        identity = self._identities.get(session)
        return identity.tunnel_name(tunnel) if identity is not None else tunnel

    def _http_families(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "ferrotunnel_http_requests",
            "HTTP exchanges finished, by tunnel and status class.",
            labels=["tunnel", "status_class"],
        )
        bytes_in = CounterMetricFamily(
            "ferrotunnel_tunnel_bytes_in",
            "HTTP request bytes (heads and bodies) from visitors, by tunnel.",
            labels=["tunnel"],
        )
        bytes_out = CounterMetricFamily(
            "ferrotunnel_tunnel_bytes_out",
            "HTTP response bytes (heads and bodies) to visitors, by tunnel.",
            labels=["tunnel"],
        )
        duration = HistogramMetricFamily(
            "ferrotunnel_http_request_duration_seconds",
            "Time from a request head to the end of its response, by tunnel.",
            labels=["tunnel"],
        )
        bounds = [_le(b) for b in self._bounds] + ["+Inf"]
        for tunnel, counts in sorted(self._http.items()):
            for label, n in zip(STATUS_CLASSES, counts.requests, strict=True):
                if n:
                    requests.add_metric([tunnel, label], n)
            bytes_in.add_metric([tunnel], counts.bytes_in)
            bytes_out.add_metric([tunnel], counts.bytes_out)
            cumulative, total = [], 0
            for bound, n in zip(bounds, counts.buckets, strict=True):
                total += n
                cumulative.append((bound, float(total)))
            duration.add_metric([tunnel], cumulative, counts.duration_sum)
        yield from (requests, bytes_in, bytes_out, duration)


class ClientMetrics(Collector):
    """A client's metrics: a collector, a stream observer and the client's handshake hook.
    ``attach`` it to the client it watches (the plugin does so at start-up)."""

    def __init__(self, client: Client | None = None) -> None:
        self.client = client
        self._streams_opened = 0
        self._handshake_failures: collections.Counter[str] = collections.Counter()

    def attach(self, client: Client) -> None:
        self.client = client

    def on_stream(self, stream: Stream) -> None:
        self._streams_opened += 1

    @hookimpl
    def ferrotunnel_stream_observers(self, config: Config) -> list[ClientMetrics]:
        return [self]

    @hookimpl
    def ferrotunnel_handshake_done(self, session: Session, failure: str | None) -> None:
        if failure is not None and session.role is Role.CLIENT:
            self._handshake_failures[failure] += 1

    def collect(self) -> Iterator[Metric]:
        client = self.client
        connected = client is not None and client.status is ClientStatus.CONNECTED
        session = client.session if client is not None and connected else None
        yield GaugeMetricFamily(
            "ferrotunnel_client_connected",
            "1 while the client has a session to its server.",
            value=int(connected),
        )
        yield CounterMetricFamily(
            "ferrotunnel_client_reconnects",
            "Times the session was lost and the client began reconnecting.",
            value=client.reconnects if client is not None else 0,
        )
        tunnels = list(client.tunnels) if client is not None and connected else []
        yield GaugeMetricFamily(
            "ferrotunnel_client_tunnels_active", "Tunnels registered now.", value=len(tunnels)
        )
        failures = CounterMetricFamily(
            "ferrotunnel_client_handshake_failures",
            "Connection attempts whose handshake failed, by reason.",
            labels=["reason"],
        )
        for reason, n in sorted(self._handshake_failures.items()):
            failures.add_metric([reason], n)
        yield failures
        yield from _stream_families(
            "ferrotunnel_client",
            [stream.tunnel for stream in session.streams] if session is not None else [],
            self._streams_opened,
            [t.name for t in tunnels],
        )


def _stream_families(
    prefix: str, streams: Iterable[str], opened: int, tunnels: Iterable[str]
) -> Iterator[Metric]:
    """``streams``: the tunnel of each open stream; ``tunnels``: those registered."""
    yield CounterMetricFamily(
        f"{prefix}_streams_opened", "Streams opened through the tunnels.", value=opened
    )
    active = GaugeMetricFamily(
        f"{prefix}_streams_active", "Streams open now, by tunnel.", labels=["tunnel"]
    )
    per_tunnel = collections.Counter(dict.fromkeys(tunnels, 0))
    per_tunnel.update(streams)
    for tunnel, n in sorted(per_tunnel.items()):
        active.add_metric([tunnel], n)
    yield active


def _le(bound: float) -> str:
    return repr(float(bound))


class MetricsPlugin:
    """The ``metrics`` entry point: with ``[metrics] enabled`` (``--metrics``), the server's
    or the client's metrics, served at ``--metrics-bind``.

    A client's metrics are collected even without ``--metrics`` (an integer per stream), so
    that the client's dashboard can serve them: ``metrics_app(plugin.client_registry(client))``.
    """

    def __init__(self) -> None:
        self.settings = MetricsSettings()
        #: how errors name the bind address: its flag, variable or file line
        self.bind_source = "--metrics-bind"
        self.server = ServerMetrics()
        self.client = ClientMetrics()
        self._client_registry: CollectorRegistry | None = None
        self.endpoint: MetricsEndpoint | None = None

    def client_registry(self, client: Client) -> CollectorRegistry:
        """A registry with ``client``'s metrics (the same one on every call)."""
        self.client.attach(client)
        if self._client_registry is None:
            self._client_registry = CollectorRegistry()
            self._client_registry.register(self.client)
        return self._client_registry

    @hookimpl
    def ferrotunnel_add_config(self, schema: ConfigSchema) -> None:
        schema.add_table(TABLE, MetricsSettings, owner=OWNER, help="Prometheus metrics")

    @hookimpl
    def ferrotunnel_configure(self, config: Config) -> None:
        settings = config.table(TABLE)
        assert isinstance(settings, MetricsSettings)
        self.bind_source = config.source_of(TABLE, "bind", "--metrics-bind")
        Address.parse(settings.bind, what=self.bind_source)  # a bad address: ConfigError now
        self.settings = settings

    @hookimpl
    def ferrotunnel_register_commands(self, cli: Any) -> None:
        add_options(
            cli,
            ("server", "client"),
            [
                click.Option(
                    ["--metrics", "metrics__enabled"],
                    is_flag=True,
                    envvar="FERROTUNNEL_METRICS",
                    help="Serve Prometheus metrics at --metrics-bind.",
                ),
                click.Option(
                    ["--metrics-bind", "metrics__bind"],
                    metavar="HOST:PORT",
                    default=MetricsSettings.bind,
                    show_default=True,
                    envvar="FERROTUNNEL_METRICS_BIND",
                    help="Where --metrics serves /metrics.",
                ),
            ],
        )

    @hookimpl
    def ferrotunnel_http_middlewares(self, config: Config) -> list[ServerMetrics]:
        return [self.server] if self.settings.enabled else []

    @hookimpl
    def ferrotunnel_stream_observers(self, config: Config) -> list[ClientMetrics]:
        return [self.client]

    @hookimpl
    def ferrotunnel_handshake_done(
        self, session: Session, hello: Hello | None, failure: str | None, duration: float
    ) -> None:
        self.client.ferrotunnel_handshake_done(session, failure)
        if self.settings.enabled:
            self.server.ferrotunnel_handshake_done(session, failure)

    @hookimpl
    def ferrotunnel_session_opened(self, session: Session, identity: Identity) -> None:
        if self.settings.enabled:
            self.server.ferrotunnel_session_opened(session, identity)

    @hookimpl
    def ferrotunnel_session_closed(self, session: Session) -> None:
        if self.settings.enabled:
            self.server.ferrotunnel_session_closed(session)

    @hookimpl
    def ferrotunnel_tunnel_registered(self, session: Session, tunnel: GrantedTunnel) -> None:
        if self.settings.enabled:
            self.server.ferrotunnel_tunnel_registered(session, tunnel)

    @hookimpl
    def ferrotunnel_tunnel_closed(self, session: Session, tunnel: GrantedTunnel) -> None:
        if self.settings.enabled:
            self.server.ferrotunnel_tunnel_closed(session, tunnel)

    @hookimpl
    async def ferrotunnel_startup(self, app: object) -> None:
        if not self.settings.enabled or self.endpoint is not None:
            return
        if running_asyncio_loop() is None:
            log.warning("metrics: the endpoint needs the asyncio event loop (--loop); not served")
            return
        if isinstance(app, Server):
            registry = CollectorRegistry()
            registry.register(self.server)
        elif isinstance(app, Client):
            registry = self.client_registry(app)
        else:
            return
        bind = self.settings.bind
        try:
            self.endpoint = await serve_metrics(registry, Address.parse(bind))
        except OSError as exc:
            raise ConfigError(
                f"{self.bind_source} {bind}: cannot listen: {exc.strerror or exc}"
            ) from exc
        log.info("metrics at http://%s/metrics", self.endpoint.address)

    @hookimpl
    async def ferrotunnel_shutdown(self, app: object) -> None:
        endpoint, self.endpoint = self.endpoint, None
        if endpoint is not None:
            await endpoint.aclose()


#: the instance the ``ferrotunnel`` entry point names
plugin = MetricsPlugin()
