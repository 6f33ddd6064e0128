"""circuit-breaker: closed → open → half-open → closed, and back to open on a failed probe."""

from __future__ import annotations

from typing import Any

from ferrotunnel.core.plugin import Reply, RequestContext
from ferrotunnel.plugins import circuit_breaker
from ferrotunnel.plugins._common import REPLIED_BY
from ferrotunnel.plugins.circuit_breaker import CircuitBreaker, CircuitState

from .helpers import FakeClock, FakeRequest, config_of, make_ctx, make_record


def breaker(clock: FakeClock, **settings: Any) -> CircuitBreaker:
    config = config_of(
        circuit_breaker, "circuit-breaker", {"circuit_breaker": {"tunnels": {"*": settings}}}
    )
    return CircuitBreaker(config.table("circuit_breaker").tunnels, clock=clock)


def start(mw: CircuitBreaker, host: str = "app.example.com") -> tuple[Reply | None, RequestContext]:
    ctx = make_ctx(host=host)
    return mw.on_request(FakeRequest(host=host), ctx), ctx


def exchange(mw: CircuitBreaker, status: int, host: str = "app.example.com") -> Reply | None:
    """One request; if let through, it completes with ``status``."""
    refused, ctx = start(mw, host)
    if refused is None:
        mw.on_complete(make_record(ctx, status), ctx)
    return refused


def state(mw: CircuitBreaker, host: str = "app.example.com") -> CircuitState:
    return mw.state("app", host)


def test_opens_after_consecutive_failures_and_rejects_fast() -> None:
    clock = FakeClock()
    mw = breaker(clock, failure_threshold=3, open_seconds=10)
    assert exchange(mw, 502) is None
    assert exchange(mw, 503) is None
    assert state(mw) is CircuitState.CLOSED
    assert exchange(mw, 504) is None
    assert state(mw) is CircuitState.OPEN
    clock.advance(2.5)
    refused, ctx = start(mw)
    assert refused is not None
    assert refused.status == 503
    assert dict(refused.headers) == {"Retry-After": "8"}  # 7.5 s until half-open
    assert ctx.state[REPLIED_BY] == "circuit-breaker"
    mw.on_complete(make_record(ctx, 503), ctx)  # its own 503 is not a failure of the origin


def test_a_success_resets_the_count_and_500_is_not_a_failure() -> None:
    mw = breaker(FakeClock(), failure_threshold=2)
    assert exchange(mw, 502) is None
    assert exchange(mw, 200) is None
    assert exchange(mw, 502) is None
    assert exchange(mw, 500) is None  # the application's error, by default
    assert exchange(mw, 502) is None
    assert state(mw) is CircuitState.CLOSED
    assert len(mw) == 1
    assert exchange(mw, 404) is None
    assert len(mw) == 0  # a closed circuit without failures is forgotten


def test_half_opens_after_the_timeout_and_closes_after_successes() -> None:
    clock = FakeClock()
    mw = breaker(clock, failure_threshold=1, open_seconds=5, success_threshold=2)
    assert exchange(mw, 502) is None
    assert exchange(mw, 200) is not None
    clock.advance(5)
    assert state(mw) is CircuitState.HALF_OPEN
    probe, ctx = start(mw)
    assert probe is None
    refused = exchange(mw, 200)  # half_open_max = 1: one probe at a time
    assert refused is not None
    assert dict(refused.headers) == {"Retry-After": "1"}
    mw.on_complete(make_record(ctx, 200), ctx)
    assert state(mw) is CircuitState.HALF_OPEN  # one success of two
    assert exchange(mw, 200) is None
    assert state(mw) is CircuitState.CLOSED
    assert len(mw) == 0
    assert all(exchange(mw, 200) is None for _ in range(5))


def test_a_failed_probe_reopens() -> None:
    clock = FakeClock()
    mw = breaker(clock, failure_threshold=2, open_seconds=5)
    exchange(mw, 502)
    exchange(mw, 502)
    clock.advance(6)
    assert exchange(mw, 503) is None  # the probe, failing
    assert state(mw) is CircuitState.OPEN
    refused = exchange(mw, 200)
    assert refused is not None
    assert dict(refused.headers) == {"Retry-After": "5"}
    clock.advance(5)
    assert exchange(mw, 200) is None
    assert state(mw) is CircuitState.CLOSED


def test_several_probes_when_half_open_max_allows() -> None:
    clock = FakeClock()
    mw = breaker(clock, failure_threshold=1, open_seconds=1, half_open_max=2)
    exchange(mw, 502)
    clock.advance(1)
    first, _ = start(mw)
    second, _ = start(mw)
    third, _ = start(mw)
    assert (first, second) == (None, None)
    assert third is not None
    assert third.status == 503


def test_lost_probes_are_retried_after_open_seconds() -> None:
    clock = FakeClock()
    mw = breaker(clock, failure_threshold=1, open_seconds=3)
    exchange(mw, 502)
    clock.advance(3)
    lost, _ = start(mw)  # never completes
    assert lost is None
    assert exchange(mw, 200) is not None
    clock.advance(3)
    assert exchange(mw, 200) is None
    assert state(mw) is CircuitState.CLOSED


def test_late_outcomes_do_not_count() -> None:
    clock = FakeClock()
    mw = breaker(clock, failure_threshold=1, open_seconds=3)
    _, slow = start(mw)  # admitted while closed
    exchange(mw, 502)
    assert state(mw) is CircuitState.OPEN
    mw.on_complete(make_record(slow, 200), slow)  # started before the circuit opened
    assert state(mw) is CircuitState.OPEN
    clock.advance(3)
    _, old_probe = start(mw)
    clock.advance(3)  # that probe is given up on; a new half-open period starts
    _, new_probe = start(mw)
    mw.on_complete(make_record(old_probe, 502), old_probe)
    assert state(mw) is CircuitState.HALF_OPEN
    mw.on_complete(make_record(new_probe, 200), new_probe)
    assert state(mw) is CircuitState.CLOSED


def test_late_outcomes_do_not_count_once_the_circuit_closed_again() -> None:
    """A request admitted before the circuit opened, ending after it closed again, neither
    re-opens the recovered circuit nor starts its failure count."""
    clock = FakeClock()
    mw = breaker(clock, failure_threshold=1, open_seconds=10)
    _, slow = start(mw)  # admitted while closed; its origin hangs
    exchange(mw, 503)
    assert state(mw) is CircuitState.OPEN
    clock.advance(10)
    assert exchange(mw, 200) is None  # the probe: closed again
    assert state(mw) is CircuitState.CLOSED
    mw.on_complete(make_record(slow, 504), slow)  # the old request finally times out
    assert state(mw) is CircuitState.CLOSED
    assert len(mw) == 0
    assert exchange(mw, 502) is None  # a request of the new period does count
    assert state(mw) is CircuitState.OPEN


def test_a_late_probe_of_a_forgotten_circuit_does_not_count() -> None:
    """Half-open periods are numbered across circuits: the circuit that replaces a closed
    (forgotten) one does not take the old one's last probe for its own."""
    clock = FakeClock()
    mw = breaker(clock, failure_threshold=1, open_seconds=1, half_open_max=2)
    exchange(mw, 502)
    clock.advance(1)
    _, first = start(mw)
    _, second = start(mw)
    mw.on_complete(make_record(first, 200), first)
    assert state(mw) is CircuitState.CLOSED
    exchange(mw, 502)  # a new circuit opens, then half-opens
    clock.advance(1)
    _, probe = start(mw)
    mw.on_complete(make_record(second, 502), second)
    assert state(mw) is CircuitState.HALF_OPEN
    mw.on_complete(make_record(probe, 200), probe)
    assert state(mw) is CircuitState.CLOSED


def test_answers_of_other_middlewares_do_not_count() -> None:
    clock = FakeClock()
    mw = breaker(clock, failure_threshold=1, open_seconds=1)
    _, ctx = start(mw)
    ctx.state[REPLIED_BY] = "rate-limit"
    mw.on_complete(make_record(ctx, 503), ctx)
    assert state(mw) is CircuitState.CLOSED
    exchange(mw, 502)
    clock.advance(1)
    _, probe = start(mw)
    probe.state[REPLIED_BY] = "basic-auth"
    mw.on_complete(make_record(probe, 401), probe)  # frees the probe slot, decides nothing
    assert state(mw) is CircuitState.HALF_OPEN
    assert exchange(mw, 200) is None
    assert state(mw) is CircuitState.CLOSED


def test_custom_failure_statuses_and_per_tunnel_circuits() -> None:
    config = config_of(
        circuit_breaker,
        "circuit-breaker",
        {
            "circuit_breaker": {
                "tunnels": {
                    "api.example.com": {"failure_threshold": 1, "failure_statuses": [500]},
                }
            }
        },
    )
    mw = CircuitBreaker(config.table("circuit_breaker").tunnels, clock=FakeClock())
    assert exchange(mw, 502, host="api.example.com") is None
    assert exchange(mw, 500, host="api.example.com") is None
    assert exchange(mw, 200, host="api.example.com") is not None
    assert all(exchange(mw, 500, host="www.example.com") is None for _ in range(5))  # no entry
    assert len(mw) == 1


def test_not_configured_means_no_middleware() -> None:
    config = config_of(circuit_breaker, "circuit-breaker", {})
    assert circuit_breaker.ferrotunnel_http_middlewares(config) == []


def test_trips_after_failures_following_many_successes() -> None:
    """Healthy outcomes leave nothing behind, and do not keep later failures from counting."""
    clock = FakeClock()
    mw = breaker(clock, failure_threshold=3, open_seconds=10)
    assert all(exchange(mw, 200) is None for _ in range(1000))
    assert len(mw) == 0
    assert [exchange(mw, 502) for _ in range(3)] == [None, None, None]
    assert state(mw) is CircuitState.OPEN
    assert exchange(mw, 200) is not None


def test_unguarded_tunnels_are_let_through_and_never_counted() -> None:
    config = config_of(
        circuit_breaker,
        "circuit-breaker",
        {"circuit_breaker": {"tunnels": {"api.example.com": {"failure_threshold": 1}}}},
    )
    mw = CircuitBreaker(config.table("circuit_breaker").tunnels, clock=FakeClock())
    assert all(exchange(mw, 502, host="www.example.com") is None for _ in range(5))
    assert state(mw, "www.example.com") is CircuitState.CLOSED
    assert len(mw) == 0
    assert exchange(mw, 502, host="api.example.com") is None
    assert exchange(mw, 200, host="api.example.com") is not None


def test_the_admission_cache_is_bounded_and_circuits_still_trip() -> None:
    clock = FakeClock()
    config = config_of(
        circuit_breaker,
        "circuit-breaker",
        {"circuit_breaker": {"tunnels": {"*": {"failure_threshold": 2}}}},
    )
    mw = CircuitBreaker(config.table("circuit_breaker").tunnels, clock=clock, cache_size=8)
    for i in range(50):
        assert exchange(mw, 200, host=f"h{i}.example.com") is None
        assert len(mw._admitted) <= 8
    assert exchange(mw, 502) is None
    for i in range(20):  # the cache is emptied meanwhile: the count so far is kept
        exchange(mw, 200, host=f"x{i}.example.com")
    assert exchange(mw, 502) is None
    assert state(mw) is CircuitState.OPEN
    assert exchange(mw, 200) is not None
