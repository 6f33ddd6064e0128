"""The sampler fast path decides exactly as the SDK's samplers do, and declines the samplers
it does not know."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    AlwaysRecordSampler,
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    SamplingResult,
    StaticSampler,
    TraceIdRatioBased,
    _get_from_env_or_default,
)
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.util.types import Attributes

from ferrotunnel.observability._sampling import fast_sampler

SAMPLERS: list[Sampler] = [
    ALWAYS_ON,
    ALWAYS_OFF,
    DEFAULT_ON,
    DEFAULT_OFF,
    StaticSampler(Decision.RECORD_ONLY),
    TraceIdRatioBased(0.0),
    TraceIdRatioBased(0.1),
    TraceIdRatioBased(0.5),
    TraceIdRatioBased(1.0),
    ParentBasedTraceIdRatio(0.25),
    ParentBased(ALWAYS_OFF, remote_parent_sampled=TraceIdRatioBased(0.5)),
    ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON),
    ParentBased(TraceIdRatioBased(0.3), remote_parent_sampled=ALWAYS_OFF),
]


def sdk_decision(sampler: Sampler, trace_id: int, parent_flags: int | None) -> bool:
    if parent_flags is None:
        context = Context()
    else:
        parent = SpanContext(trace_id, 0x1234, is_remote=True, trace_flags=TraceFlags(parent_flags))
        context = trace.set_span_in_context(NonRecordingSpan(parent))
    result = sampler.should_sample(context, trace_id, "GET", SpanKind.SERVER)
    return result.decision is Decision.RECORD_AND_SAMPLE


def trace_ids(rng: random.Random, sampler: Sampler) -> list[int]:
    """Random ids, and ids on either side of every ratio sampler's bound."""
    ids = [rng.getrandbits(128) or 1 for _ in range(3000)]
    for bound in (0, 1, 2**62, 2**63, 2**64 - 1, TraceIdRatioBased(0.1).bound):
        for low in (bound - 1, bound, bound + 1):
            if 0 <= low < 2**64:
                ids.append(rng.getrandbits(64) << 64 | low)
    return ids


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: s.get_description())
def test_the_fast_path_decides_as_the_sdk_sampler(sampler: Sampler) -> None:
    fast = fast_sampler(sampler)
    assert fast is not None
    rng = random.Random(sampler.get_description())
    for trace_id in trace_ids(rng, sampler):
        for parent_flags in (None, 0x00, 0x01, 0x02, 0x03):
            expected = sdk_decision(sampler, trace_id, parent_flags)
            assert fast.sampled(trace_id, parent_flags) is expected, (trace_id, parent_flags)


@pytest.mark.parametrize(
    ("variable", "argument"),
    [
        ("always_on", None),
        ("always_off", None),
        ("parentbased_always_on", None),
        ("parentbased_always_off", None),
        ("traceidratio", "0.2"),
        ("parentbased_traceidratio", "0.1"),
        (None, None),
    ],
)
def test_every_sampler_otel_traces_sampler_names_has_a_fast_path(
    variable: str | None, argument: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in (("OTEL_TRACES_SAMPLER", variable), ("OTEL_TRACES_SAMPLER_ARG", argument)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    sampler = _get_from_env_or_default()
    fast = fast_sampler(sampler)
    assert fast is not None
    rng = random.Random(4)
    for _ in range(500):
        trace_id, parent_flags = rng.getrandbits(128) or 1, rng.choice([None, 0, 1])
        assert fast.sampled(trace_id, parent_flags) is sdk_decision(sampler, trace_id, parent_flags)


class Custom(Sampler):
    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        return SamplingResult(Decision.RECORD_AND_SAMPLE if name == "GET" else Decision.DROP)

    def get_description(self) -> str:
        return "Custom"


class Overriding(TraceIdRatioBased):
    """A subclass deciding differently: not the SDK's rule any more."""

    def should_sample(self, *args: object, **kwargs: object) -> SamplingResult:
        return SamplingResult(Decision.DROP)


@pytest.mark.parametrize(
    "sampler",
    [
        Custom(),
        Overriding(0.5),
        ParentBased(Custom()),
        ParentBased(ALWAYS_ON, remote_parent_sampled=Custom()),
        AlwaysRecordSampler(ALWAYS_ON),
    ],
    ids=lambda s: s.get_description(),
)
def test_other_samplers_are_asked_themselves(sampler: Sampler) -> None:
    assert fast_sampler(sampler) is None


def test_a_sampler_that_never_samples_is_known() -> None:
    assert fast_sampler(ALWAYS_OFF).never  # type: ignore[union-attr]
    assert fast_sampler(TraceIdRatioBased(0.0)).never  # type: ignore[union-attr]
    assert not fast_sampler(DEFAULT_OFF).never  # type: ignore[union-attr]  # a sampled parent
    assert not fast_sampler(TraceIdRatioBased(1e-9)).never  # type: ignore[union-attr]
