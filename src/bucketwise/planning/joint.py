"""One memory budget across several models: how many buckets each one gets.

An accelerator's memory holds every bucketed model a server runs (about 8 GB per Inferentia
chip): an embedder, a reranker and a classifier share it. Planned alone, each model is
sized as if the memory were its own. :func:`split_budget` chooses every model's plan at
once: for each model and each number of buckets ``k`` it takes the exact plan (``plan(...,
k=k)``) and its expected cost per input on that model's traffic; then a dynamic program
over models and memory picks one ``k`` per model, minimising the traffic-weighted sum of
expected costs with all the plans' memory within the budget. The memory is counted in
``unit`` bytes, each plan's rounded up, so the split never exceeds the budget; within that
rounding the optimum is exact.

Costs of different models are added, so they must be in one unit: give each model the cost
model measured on the target (``runtime.measure_cost`` and ``fit_cost``: milliseconds),
not the default padding volume, when the models differ in size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import PlanError
from ..plans import Plan
from .observe import observe
from .planner import plan
from .report import report

__all__ = ["ModelDemand", "JointPlan", "Choice", "plan_choices", "split_budget", "equal_split"]


@dataclass(frozen=True)
class ModelDemand:
    """One model of a shared budget: its traffic, how much of the requests it gets, and
    what its buckets cost in memory.

    Args:
        name: the model's served name.
        observed: its observed shapes (anything :func:`plan` takes; a server's traffic file
            read with ``read_shapes``).
        share: its share of the requests (any positive weight; normalised over models).
        bytes_per_bucket: resident memory one artifact (one bucket) adds.
        shared_bytes: memory its buckets share, counted once (weights shared by buckets).
        max_k: most length buckets to consider.
        options: more keyword arguments of :func:`plan` (``cost``, ``cap``, ``grid``,
            ``batch_sizes``, ...).
    """

    name: str
    observed: Any
    share: float
    bytes_per_bucket: float
    shared_bytes: float = 0.0
    max_k: int = 16
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Choice:
    """One model's plan in a split: ``k`` length buckets, its memory and expected cost."""

    k: int
    plan: Plan
    memory: float
    expected_cost: float  # per input of this model, in its cost model's unit


@dataclass(frozen=True)
class JointPlan:
    """The plan of every model under one budget, and what the split is expected to cost."""

    choices: dict[str, Choice]
    shares: dict[str, float]  # normalised request shares
    memory_budget: float

    @property
    def expected_cost(self) -> float:
        """Per request over the traffic mix: Σ share × expected cost per input."""
        return sum(self.shares[n] * c.expected_cost for n, c in self.choices.items())

    @property
    def memory(self) -> float:
        return sum(c.memory for c in self.choices.values())

    def room_for(self, name: str) -> float:
        """The memory model ``name`` may hold: the budget less what the other models' plans
        hold. A re-plan of one model stays within it, leaving the others theirs."""
        return self.memory_budget - sum(c.memory for n, c in self.choices.items() if n != name)

    @property
    def plans(self) -> dict[str, Plan]:
        return {n: c.plan for n, c in self.choices.items()}

    def as_dict(self) -> dict[str, Any]:
        return {"memory_budget": self.memory_budget, "memory": self.memory, "expected_cost": self.expected_cost,
                "models": {n: {"share": self.shares[n], "k": c.k, "buckets": len(c.plan), "memory": c.memory,
                               "expected_cost": c.expected_cost, "plan": c.plan.to_json()}
                           for n, c in self.choices.items()}}

    def __str__(self) -> str:
        head = f"{'model':<16}{'share':>7}{'k':>4}{'buckets':>9}{'memory MiB':>12}{'cost/input':>13}"
        lines = [head, "-" * len(head)]
        for n, c in self.choices.items():
            lines.append(f"{n:<16}{self.shares[n]:>7.1%}{c.k:>4}{len(c.plan):>9}{c.memory / 2**20:>12.0f}"
                         f"{c.expected_cost:>13.4g}")
        lines.append(f"{'all':<16}{'':>7}{'':>4}{'':>9}{self.memory / 2**20:>12.0f}{self.expected_cost:>13.4g}"
                     f"   (budget {self.memory_budget / 2**20:.0f} MiB)")
        return "\n".join(lines)


def _choices(demand: ModelDemand) -> list[Choice]:
    """The model's plan for each k from 1 to ``max_k``, fewer when a larger k adds no bucket."""
    if demand.bytes_per_bucket <= 0 or demand.shared_bytes < 0 or demand.max_k < 1:
        raise PlanError(f"model {demand.name!r}: bytes_per_bucket must be > 0, shared_bytes >= 0 and max_k >= 1")
    obs = observe(demand.observed, dims=demand.options.get("dims"))
    out: list[Choice] = []
    for k in range(1, demand.max_k + 1):
        p = plan(obs, k=k, **{key: v for key, v in demand.options.items() if key != "dims"})
        if out and len(p) == len(out[-1].plan):
            break  # no more distinct sizes to add: larger k gives the same plan
        cost = report(p, obs, compare={}).strategies[0].expected_cost
        out.append(Choice(k, p, demand.shared_bytes + len(p) * demand.bytes_per_bucket, cost))
    return out


def plan_choices(demands: Sequence[ModelDemand]) -> dict[str, list[Choice]]:
    """Each model's plan for every k it can use: what a split chooses from. Plan them once
    and pass them to :func:`split_budget` and :func:`equal_split` to try several budgets."""
    return {d.name: _choices(d) for d in demands}


def split_budget(demands: Sequence[ModelDemand], memory_budget: float, *, unit: float = 2**20,
                 choices: Mapping[str, list[Choice]] | None = None) -> JointPlan:
    """Every model's plan under one ``memory_budget`` (bytes), minimising the expected cost
    per request over the traffic mix (``choices``: :func:`plan_choices`, planned here when
    not given). Raises :class:`PlanError` when even one bucket per model does not fit,
    naming what the smallest plans need."""
    shares = _shares(demands)
    return _best(choices or plan_choices(demands), shares, memory_budget, unit)


def equal_split(demands: Sequence[ModelDemand], memory_budget: float, *,
                choices: Mapping[str, list[Choice]] | None = None) -> JointPlan:
    """The comparison: each model sized alone within an equal part of the budget (what
    planning each model by itself gives)."""
    shares = _shares(demands)
    options = choices or plan_choices(demands)
    part = memory_budget / len(demands)
    chosen = {}
    for d in demands:
        fitting = [c for c in options[d.name] if c.memory <= part]
        if not fitting:
            raise PlanError(f"model {d.name!r}: one bucket needs {options[d.name][0].memory / 2**20:.0f} MiB, more than "
                            f"an equal part of the budget ({part / 2**20:.0f} MiB)")
        chosen[d.name] = min(fitting, key=lambda c: c.expected_cost)
    return JointPlan(chosen, shares, memory_budget)


def _shares(demands: Sequence[ModelDemand]) -> dict[str, float]:
    if not demands:
        raise PlanError("split_budget needs at least one model")
    names = [d.name for d in demands]
    if len(set(names)) != len(names):
        raise PlanError(f"models are named more than once: {names}")
    if any(not math.isfinite(d.share) or d.share <= 0 for d in demands):
        raise PlanError(f"every model's share of the requests must be > 0, got {[d.share for d in demands]}")
    total = sum(d.share for d in demands)
    return {d.name: d.share / total for d in demands}


def _best(options: Mapping[str, list[Choice]], shares: Mapping[str, float], budget: float, unit: float) -> JointPlan:
    """The dynamic program over models × memory units: ``best[u]`` is the lowest weighted
    cost of the models so far within ``u`` units, with the choices that give it."""
    units = int(budget // unit)
    need = {n: [math.ceil(c.memory / unit) for c in cs] for n, cs in options.items()}
    smallest = sum(min(v) for v in need.values())
    if smallest > units:
        least = ", ".join(f"{n} {min(cs, key=lambda c: c.memory).memory / 2**20:.0f} MiB" for n, cs in options.items())
        raise PlanError(f"one bucket per model needs {smallest * unit / 2**20:.0f} MiB ({least}), more than the budget "
                        f"of {budget / 2**20:.0f} MiB; raise the budget or serve fewer models")
    inf = math.inf
    best: list[tuple[float, tuple[int, ...]]] = [(0.0, ())] * (units + 1)
    for name, cs in options.items():
        nxt: list[tuple[float, tuple[int, ...]]] = [(inf, ())] * (units + 1)
        for u in range(units + 1):
            for i, c in enumerate(cs):
                rest = u - need[name][i]
                if rest < 0 or best[rest][0] == inf:
                    continue
                value = best[rest][0] + shares[name] * c.expected_cost
                if value < nxt[u][0]:
                    nxt[u] = (value, (*best[rest][1], i))
        best = nxt
    picked = min(best, key=lambda t: t[0])[1]
    choices = {n: options[n][i] for n, i in zip(options, picked)}
    return JointPlan(choices, dict(shares), budget)
