"""The SDK's own samplers' decisions, without calling them.

``Sampler.should_sample`` wants a ``Context`` holding the parent span and returns a
``SamplingResult``: about 1 µs per request of objects the ingress does not need, since it only
wants the decision. The samplers ``OTEL_TRACES_SAMPLER`` names are simple functions of the
parent's sampled flag and the trace id, so :func:`fast_sampler` turns a sampler built from them
into a :class:`FastSampler` that gives the same decisions (the tests check them against the
SDK's, for random trace ids and parents). Any other sampler, or a subclass that changes
``should_sample``, gets None: the caller asks the sampler itself. Only "sampled" matters here
(a span that is recorded but not sampled is not exported), so ``RECORD_ONLY`` counts as no.

The requests this is used for have either no parent or a remote one (the visitor's
``traceparent``), so the local-parent delegates of ``ParentBased`` never matter.
"""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    StaticSampler,
    TraceIdRatioBased,
)

__all__ = ["FastSampler", "Rule", "fast_sampler"]

#: ``(mask, bound)``: a trace is sampled when ``trace_id & mask < bound``
Rule = tuple[int, int]

ALWAYS: Rule = (0, 1)
NEVER: Rule = (0, 0)


@dataclass(frozen=True, slots=True)
class FastSampler:
    """A sampler's decisions for a new trace, a sampled remote parent and an unsampled one."""

    root: Rule
    sampled_parent: Rule
    unsampled_parent: Rule

    def sampled(self, trace_id: int, parent_flags: int | None) -> bool:
        """Whether a span of trace ``trace_id`` is sampled; ``parent_flags``: the remote
        parent's trace flags, None for a root span."""
        if parent_flags is None:
            mask, bound = self.root
        elif parent_flags & 1:
            mask, bound = self.sampled_parent
        else:
            mask, bound = self.unsampled_parent
        return trace_id & mask < bound

    @property
    def never(self) -> bool:
        """Whether no span is ever sampled, whatever the request."""
        return self.root == self.sampled_parent == self.unsampled_parent == NEVER


def _rule(sampler: Sampler) -> Rule | None:
    """The rule of a sampler that ignores the parent, or None."""
    method = type(sampler).should_sample
    if method is StaticSampler.should_sample:  # its decision ignores the arguments: ask once
        decision = sampler.should_sample(None, 1, "").decision
        return ALWAYS if decision is Decision.RECORD_AND_SAMPLE else NEVER
    if method is TraceIdRatioBased.should_sample:
        assert isinstance(sampler, TraceIdRatioBased)
        mask, bound = sampler.TRACE_ID_LIMIT, sampler.bound
        return NEVER if bound <= 0 else ALWAYS if bound > mask else (mask, bound)
    return None


def fast_sampler(sampler: Sampler) -> FastSampler | None:
    """The :class:`FastSampler` deciding as ``sampler`` does, or None if it cannot.

    ``ParentBased`` exposes its delegates only as private attributes (``_root``,
    ``_remote_parent_sampled``, ``_remote_parent_not_sampled``, unchanged since SDK 1.0): a
    version that renamed them gets None here, and its sampler is called as usual.
    """
    rule = _rule(sampler)
    if rule is not None:
        return FastSampler(rule, rule, rule)
    if type(sampler).should_sample is not ParentBased.should_sample:
        return None
    delegates = [
        getattr(sampler, name, None)
        for name in ("_root", "_remote_parent_sampled", "_remote_parent_not_sampled")
    ]
    rules = [_rule(d) if isinstance(d, Sampler) else None for d in delegates]
    root, sampled_parent, unsampled_parent = rules
    if root is None or sampled_parent is None or unsampled_parent is None:
        return None
    return FastSampler(root, sampled_parent, unsampled_parent)
