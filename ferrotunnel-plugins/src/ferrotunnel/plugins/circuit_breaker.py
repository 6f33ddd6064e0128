"""``circuit-breaker``: stop sending requests to a failing origin for a while, per tunnel.

::

    [circuit_breaker.tunnels."*"]
    failure_threshold = 5
    open_seconds = 30.0

    [circuit_breaker.tunnels."api.example.com"]
    failure_statuses = [500, 502, 503, 504]

Each tunnel (a tunnel name together with the host visitors ask for) has a circuit:

* **closed** — requests pass. A response whose status is in ``failure_statuses`` is a
  failure; ``failure_threshold`` failures in a row open the circuit (any other status resets
  the count). The ingress answers ``502`` itself when it cannot reach the origin, so that
  is a failure too.
* **open** — requests are answered ``503`` at once, with ``Retry-After`` (the seconds until
  the circuit half-opens), for ``open_seconds``.
* **half-open** — up to ``half_open_max`` requests at a time go through as probes, the rest
  get ``503`` (``Retry-After: 1``). A failed probe re-opens the circuit; ``success_threshold``
  successful probes close it. If a probe's outcome never arrives (its visitor vanished and
  the exchange was not completed), new probes are let through after ``open_seconds``.

``500`` is not a failure by default: it is usually the application's own error, not a sign
that the origin is down or overloaded. Outcomes are taken from ``on_complete``; exchanges
answered by another built-in plugin (401, 403, 429 ... marked in ``ctx.state``) or by the
ingress without the origin (the 503 of a tunnel at its stream limit), started before the
circuit last opened, or left by their visitor before any response (status 0) do not
count. Only circuits with failures take memory: a circuit that closes is forgotten.
"""

from __future__ import annotations

import enum
import itertools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ferrotunnel.core.plugin import (
    Config,
    ConfigSchema,
    ExchangeRecord,
    HttpRequest,
    Reply,
    RequestContext,
    hookimpl,
)

from ._common import OWNER, REPLIED_BY, TunnelMatcher, reply, retry_after, settings_of

__all__ = [
    "BreakerSettings",
    "Circuit",
    "CircuitBreaker",
    "CircuitBreakerSettings",
    "CircuitState",
]

TABLE = "circuit_breaker"
PLUGIN = "circuit-breaker"
#: ``ctx.state`` key of the breaker's admission (named for this plugin: the dict is shared)
STATE_KEY = "ferrotunnel.circuit_breaker"

Clock = Callable[[], float]

#: half-open periods of every circuit, numbered once: a circuit that closes is forgotten, and
#: its successor must not take a late probe of the old one for its own
_PERIODS = itertools.count(1)


@dataclass(frozen=True)
class BreakerSettings:
    """``[circuit_breaker.tunnels."PATTERN"]``: the circuit of the tunnels PATTERN matches."""

    #: failures in a row that open the circuit (>= 1)
    failure_threshold: int = 5
    #: response statuses that count as failures
    failure_statuses: tuple[int, ...] = (502, 503, 504)
    #: seconds the circuit stays open before it lets probes through (> 0)
    open_seconds: float = 30.0
    #: probe requests let through at once while half-open (>= 1)
    half_open_max: int = 1
    #: successful probes that close the circuit again (>= 1)
    success_threshold: int = 1

    def __post_init__(self) -> None:
        for name in ("failure_threshold", "half_open_max", "success_threshold"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not (self.open_seconds > 0 and math.isfinite(self.open_seconds)):
            raise ValueError("open_seconds must be a positive number")
        for status in self.failure_statuses:
            if not 100 <= status <= 599:
                raise ValueError(f"failure_statuses: {status} is not an HTTP status")


@dataclass(frozen=True)
class CircuitBreakerSettings:
    """``[circuit_breaker]``: per-tunnel circuit breakers. Unset: the plugin does nothing."""

    #: breakers by tunnel pattern, matched against the host and the tunnel name
    #: (``"*"``: every tunnel; the most specific key applies)
    tunnels: dict[str, BreakerSettings] = field(default_factory=dict)


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class Circuit:
    """One tunnel's circuit (only kept while it is not closed with zero failures)."""

    __slots__ = ("epoch", "failures", "in_flight", "opened_at", "probe_at", "state", "successes")

    def __init__(self) -> None:
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.successes = 0
        self.in_flight = 0
        self.opened_at = 0.0
        self.probe_at = 0.0
        self.epoch = 0  # which half-open period probes belong to (unique, see _PERIODS)

    def open(self, now: float) -> None:
        self.state = CircuitState.OPEN
        self.opened_at = now
        self.in_flight = 0

    def half_open(self, now: float) -> None:
        self.state = CircuitState.HALF_OPEN
        self.epoch = next(_PERIODS)
        self.in_flight = 0
        self.successes = 0
        self.probe_at = now


@dataclass(frozen=True, slots=True)
class _Admitted:
    """What ``on_request`` leaves in ``ctx.state`` for ``on_complete``."""

    settings: BreakerSettings | None  # None: no breaker guards this tunnel
    key: tuple[str, str]
    probe: int | None  # the circuit's epoch, for a half-open probe
    #: the statuses that count as failures (none where no breaker guards the tunnel)
    failing: tuple[int, ...]


class CircuitBreaker:
    """The HTTP middleware: fast ``503`` while a tunnel's circuit is open."""

    __slots__ = ("_admitted", "_cache_size", "_circuits", "_clock", "_matcher")

    def __init__(
        self,
        tunnels: Mapping[str, BreakerSettings],
        *,
        clock: Clock = time.monotonic,
        cache_size: int = 4096,
    ) -> None:
        self._matcher = TunnelMatcher(dict(tunnels))
        self._clock = clock
        self._cache_size = cache_size
        self._circuits: dict[tuple[str, str], Circuit] = {}
        #: the (immutable) admission of a closed circuit, made once per tunnel and host and
        #: dropped each time the circuit opens: it is the closed period's generation, and an
        #: outcome whose admission is no longer the current one started before the circuit
        #: last opened, so it does not count (emptying the cache when full loses a few counts).
        #: A key is here only while its circuit is closed (or no breaker guards it), so a
        #: request that finds its admission here is let through without further ado.
        self._admitted: dict[tuple[str, str], _Admitted] = {}

    def state(self, tunnel: str, host: str) -> CircuitState:
        """The circuit state of a tunnel (for tests and status pages)."""
        circuit = self._circuits.get((tunnel, host))
        if circuit is None:
            return CircuitState.CLOSED
        if circuit.state is CircuitState.OPEN:
            settings = self._matcher.lookup(host, tunnel)
            if settings and self._clock() - circuit.opened_at >= settings.open_seconds:
                return CircuitState.HALF_OPEN
        return circuit.state

    def __len__(self) -> int:
        return len(self._circuits)

    def on_request(self, request: HttpRequest, ctx: RequestContext) -> Reply | None:
        admitted = self._admitted.get((ctx.tunnel, ctx.host))
        if admitted is None:
            return self._admit(ctx)
        ctx.state[STATE_KEY] = admitted
        return None

    def _admit(self, ctx: RequestContext) -> Reply | None:
        """``on_request`` for a tunnel seen for the first time (since the cache was emptied)
        or whose circuit is not closed."""
        key = (ctx.tunnel, ctx.host)
        settings = self._matcher.lookup(ctx.host, ctx.tunnel)
        circuit = self._circuits.get(key)
        if settings is None or circuit is None or circuit.state is CircuitState.CLOSED:
            if len(self._admitted) >= self._cache_size:
                self._admitted.clear()
            failing = () if settings is None else settings.failure_statuses
            admitted = self._admitted[key] = _Admitted(settings, key, None, failing)
            ctx.state[STATE_KEY] = admitted
            return None
        now = self._clock()
        if circuit.state is CircuitState.OPEN:
            remaining = circuit.opened_at + settings.open_seconds - now
            if remaining > 0:
                return self._refuse(ctx, remaining)
            circuit.half_open(now)
        if circuit.in_flight >= settings.half_open_max:
            if now - circuit.probe_at < settings.open_seconds:
                return self._refuse(ctx, 1.0)
            circuit.half_open(now)  # the probes' outcomes never came: try again
        circuit.in_flight += 1
        circuit.probe_at = now
        ctx.state[STATE_KEY] = _Admitted(settings, key, circuit.epoch, settings.failure_statuses)
        return None

    def on_complete(self, record: ExchangeRecord, ctx: RequestContext) -> None:
        admitted: _Admitted | None = ctx.state.get(STATE_KEY)  # type: ignore[assignment]
        if admitted is None:
            return  # not let through by this breaker
        if record.status not in admitted.failing and admitted.key not in self._circuits:
            return  # the common case: a healthy tunnel, and nothing to count
        self._count(record, ctx, admitted)

    def _count(self, record: ExchangeRecord, ctx: RequestContext, admitted: _Admitted) -> None:
        """``on_complete`` for an outcome that may change a circuit: a failure, or any outcome
        while the tunnel has a circuit (failures counted, open or half-open)."""
        settings = admitted.settings
        assert settings is not None  # an unguarded tunnel has neither failures nor a circuit
        circuits = self._circuits
        circuit = circuits.get(admitted.key)
        # another middleware answered (not the origin), or no response head ever came because
        # the visitor left (status 0): neither says anything about the origin's health
        neutral = REPLIED_BY in ctx.state or record.status == 0
        failed = record.status in admitted.failing
        if admitted.probe is not None:
            if (
                circuit is None
                or circuit.state is not CircuitState.HALF_OPEN
                or circuit.epoch != admitted.probe
            ):
                return  # a probe of an earlier half-open period
            circuit.in_flight -= 1
            if neutral:
                return
            if failed:
                self._open(admitted.key, circuit)
            else:
                circuit.successes += 1
                if circuit.successes >= settings.success_threshold:
                    del circuits[admitted.key]
            return
        if neutral or self._admitted.get(admitted.key) is not admitted:
            return  # not the origin's answer, or started before the circuit last opened
        if circuit is None:
            if not failed:
                return
            circuit = circuits[admitted.key] = Circuit()
        if not failed:
            del circuits[admitted.key]
            return
        circuit.failures += 1
        if circuit.failures >= settings.failure_threshold:
            self._open(admitted.key, circuit)

    def _open(self, key: tuple[str, str], circuit: Circuit) -> None:
        circuit.open(self._clock())
        self._admitted.pop(key, None)  # a new generation: see __init__

    @staticmethod
    def _refuse(ctx: RequestContext, seconds: float) -> Reply:
        return reply(ctx, PLUGIN, 503, "service unavailable: the tunnel's origin is failing\n",
                     [("Retry-After", retry_after(seconds))])  # fmt: skip


@hookimpl
def ferrotunnel_add_config(schema: ConfigSchema) -> None:
    schema.add_table(
        TABLE,
        CircuitBreakerSettings,
        owner=OWNER,
        sides=("server",),  # HTTP middlewares, authenticators: a client has none
        help="per-tunnel circuit breakers",
        example={"tunnels": {"*": {"failure_threshold": 5, "open_seconds": 30.0}}},
    )


@hookimpl(trylast=True)
def ferrotunnel_http_middlewares(config: Config) -> list[CircuitBreaker]:
    settings = settings_of(config, TABLE, CircuitBreakerSettings)
    return [CircuitBreaker(settings.tunnels)] if settings.tunnels else []
