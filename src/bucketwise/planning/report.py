"""How good is a plan? Expected cost, padding waste and speedups, beside the alternatives."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..costs import CostModel, costs_of
from ..errors import PlanError
from ..plans import Plan
from ..router import Router
from ..shapes import Bucket
from .observe import Observations, observe

__all__ = ["PlanReport", "StrategyReport", "report", "alternatives"]


@dataclass
class StrategyReport:
    """One plan evaluated on the observations (inputs above the cap are truncated to it)."""

    name: str
    buckets: list[str]  # the shapes apart from batch, e.g. "64" or "480x640"
    expected_cost: float  # per input, in the cost model's unit
    padding_waste: float  # share of computed positions that are padding
    speedup_vs_max: float  # pad-to-max expected cost / this one
    speedup_vs_exact: float  # exact-shape cost (the lower bound) / this one, <= 1
    traffic: dict[str, float] = field(default_factory=dict)  # share of inputs per bucket
    batch_sizes: list[int] = field(default_factory=list)  # each bucket also exists at these
    left_out: float = 0.0  # share of inputs larger than its top bucket (truncated, or refused)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PlanReport:
    strategies: list[StrategyReport]
    exact_cost: float  # per input, every input at its own shape
    above_cap_share: float
    observations: float

    def __str__(self) -> str:
        head = f"{'strategy':<18}{'k':>4}{'cost/input':>14}{'padding':>9}{'vs max':>9}{'vs exact':>10}{'left out':>10}  buckets"
        lines = [head, "-" * len(head)]
        for s in self.strategies:
            lines.append(
                f"{s.name:<18}{len(s.buckets):>4}{s.expected_cost:>14.4g}{s.padding_waste:>9.1%}"
                f"{s.speedup_vs_max:>8.2f}x{s.speedup_vs_exact:>9.2f}x{s.left_out:>10.2%}  {', '.join(s.buckets)}"
            )
        batches = self.strategies[0].batch_sizes if self.strategies else []
        if batches:
            lines.append(f"each bucket is compiled at batch sizes {', '.join(map(str, batches))}; "
                         "costs are per input at batch 1")
        lines.append(f"exact shapes (lower bound): {self.exact_cost:.4g} per input; "
                     f"{self.above_cap_share:.2%} of {self.observations:g} inputs above the cap")
        return "\n".join(lines)

    def best(self) -> StrategyReport:
        return min(self.strategies, key=lambda s: s.expected_cost)

    def as_dict(self) -> dict[str, Any]:
        return {
            "exact_cost": self.exact_cost,
            "above_cap_share": self.above_cap_share,
            "observations": self.observations,
            "strategies": [s.as_dict() for s in self.strategies],
        }


def alternatives(obs: Observations, plan: Plan, k: int, user: Sequence[int] | None = None) -> dict[str, Plan]:
    """The usual ways to pick buckets, for comparison: pad-to-max, powers of two,
    equal-frequency quantiles (k buckets), and an optional user list. 1-D only, plus batch."""
    dims = [d for d in plan.dims if d != "batch"]
    if len(dims) != 1:
        return {"pad-to-max": _with_batch(plan, [{d: plan.max_size(d) for d in dims}])}
    (dim,) = dims
    top = plan.max_size(dim)
    sizes = obs.column(dim)
    out: dict[str, Plan] = {"pad-to-max": _with_batch(plan, [{dim: top}])}
    # Powers of two from the one that holds the shortest input, capped by the top bucket.
    pows, power = [], 1 << max(0, math.ceil(math.log2(int(sizes.min()))))
    while power < top:
        pows.append(power)
        power *= 2
    pows.append(top)
    out["powers-of-two"] = _with_batch(plan, [{dim: p} for p in pows])
    order = np.argsort(sizes)
    cum = np.cumsum(obs.counts[order]) / obs.total
    qs = sorted({int(sizes[order][min(np.searchsorted(cum, q), len(cum) - 1)]) for q in np.arange(1, k) / k} | {top})
    out[f"quantiles-{k}"] = _with_batch(plan, [{dim: min(q, top)} for q in qs])
    if user:
        bad = [u for u in user if u < 1]
        if bad:
            raise PlanError(f"compared buckets must be positive sizes, got {bad}")
        out["user"] = _with_batch(plan, [{dim: u} for u in sorted(set(user) | ({top} if max(user) < top else set()))])
    return out


def _with_batch(plan: Plan, shapes: list[dict[str, int]]) -> Plan:
    batches = plan.sizes("batch") if "batch" in plan.dims else [None]
    buckets = tuple(Bucket({**s, "batch": b}) if b else Bucket(s) for s in shapes for b in batches)
    return Plan(tuple(dict.fromkeys(buckets)), plan.cost_model)


def report(
    plan: Plan,
    observed: Any,
    *,
    compare: Mapping[str, Plan] | None = None,
    user: Sequence[int] | None = None,
    name: str = "planned",
    cost: CostModel | None = None,
) -> PlanReport:
    """Evaluate ``plan`` and the alternatives on the observations, under ``cost``
    (default: the plan's own cost model)."""
    obs = observe(observed, dims=[d for d in plan.dims if d != "batch"])
    cost = cost or plan.cost_model
    k = len({tuple(kv for kv in b.sizes if kv[0] != "batch") for b in plan.buckets})
    plans = {name: plan, **(compare if compare is not None else alternatives(obs, plan, k, user))}
    caps = {d: plan.max_size(d) for d in obs.dims}
    capped = np.minimum(obs.shapes, np.array([caps[d] for d in obs.dims]))
    total_count = obs.total
    above = float(obs.counts[np.any(obs.shapes > capped, axis=1)].sum() / total_count)
    extra = {"batch": 1} if "batch" in plan.dims else {}
    dims = list(obs.dims) + list(extra)
    shapes = np.hstack([capped, np.ones((len(capped), len(extra)), dtype=capped.dtype)])
    exact = float((costs_of(cost, dims, shapes) * obs.counts).sum()) / total_count
    real = float((np.prod(capped, axis=1) * obs.counts).sum())
    rows = []
    evaluated = {}
    for label, p in plans.items():
        chosen = Router(p).route_many(shapes, dims)
        if (chosen < 0).any():
            shape = dict(zip(dims, map(int, shapes[int(np.argmax(chosen < 0))])))
            raise PlanError(f"strategy {label!r} cannot hold shape {shape}: no bucket covers it")
        # Counts routed to each bucket, then each bucket's cost and volume once.
        routed = np.bincount(chosen, weights=obs.counts, minlength=len(p.buckets))
        total = sum(float(n) * cost.cost(b) for n, b in zip(routed, p.buckets) if n)
        padded = sum(float(n) * b.volume for n, b in zip(routed, p.buckets) if n)
        traffic: dict[str, float] = {}
        for n, b in zip(routed, p.buckets):
            if n:
                traffic[b.label()] = traffic.get(b.label(), 0.0) + float(n) / total_count
        tops = np.array([p.max_size(d) for d in obs.dims])
        left = float(obs.counts[np.any(obs.shapes > tops, axis=1)].sum() / total_count)
        evaluated[label] = (total / total_count, 1 - real / padded, traffic, p, left)
    max_cost = evaluated["pad-to-max"][0] if "pad-to-max" in evaluated else max(v[0] for v in evaluated.values())
    for label, (per, waste, traffic, p, left) in evaluated.items():
        lengths = sorted({tuple(kv for kv in b.sizes if kv[0] != "batch") for b in p.buckets})
        rows.append(StrategyReport(
            name=label,
            buckets=["x".join(str(v) for _, v in shape) for shape in lengths],
            batch_sizes=p.sizes("batch") if "batch" in p.dims else [],
            expected_cost=per,
            padding_waste=waste,
            speedup_vs_max=max_cost / per,
            speedup_vs_exact=exact / per,
            traffic=dict(sorted(traffic.items())),
            left_out=left,
        ))
    return PlanReport(rows, exact, above, total_count)
