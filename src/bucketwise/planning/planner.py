"""plan(): choose buckets from observed shapes under count, memory and compile-time budgets."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..costs import CostModel, TableCost, VolumeCost
from ..errors import PlanError
from ..plans import Plan
from ..router import Router
from ..shapes import BATCH, Bucket
from .dp import optimal_1d
from .nd import optimal_nd
from .observe import Observations, observe

__all__ = ["plan", "bucket_budget", "neuron_bucket_count"]


def neuron_bucket_count(n_weights: int) -> int:
    """The AWS Neuron rule of thumb: about round(10^9 / number of weights) buckets per NeuronCore."""
    if n_weights < 1:
        raise PlanError(f"number of weights must be positive, got {n_weights}")
    return max(1, round(1e9 / n_weights))


def bucket_budget(
    *,
    k: int | None = None,
    memory_budget: float | None = None,
    bytes_per_bucket: float | None = None,
    compile_budget: float | None = None,
    seconds_per_bucket: float | None = None,
    batch_sizes: int = 1,
    shared_bytes: float = 0.0,
) -> int:
    """The most buckets every budget allows: count, memory (bytes) and compile time (s).

    Memory and compile time are per compiled artifact, so each length bucket costs
    ``batch_sizes`` of them. ``shared_bytes`` is memory every bucket shares, counted once
    (weights mapped once: ``bytes_per_bucket`` is then what one more bucket adds), so
    ``memory_budget`` holds ``shared_bytes + n × bytes_per_bucket``. Raises
    :class:`PlanError` when no plan fits.
    """
    limits: dict[str, int] = {}
    if k is not None:
        if k < 1:
            raise PlanError(f"k (the bucket count) must be at least 1, got {k}")
        limits["k"] = k
    for name, budget, per in (
        ("memory_budget", memory_budget, bytes_per_bucket),
        ("compile_budget", compile_budget, seconds_per_bucket),
    ):
        if budget is None:
            continue
        if per is None or per <= 0:
            raise PlanError(f"{name} needs the cost of one bucket ({'bytes_per_bucket' if 'memory' in name else 'seconds_per_bucket'} > 0)")
        room = budget - shared_bytes if name == "memory_budget" else budget
        limits[name] = math.floor(max(0.0, room) / (per * batch_sizes))
    if not limits:
        raise PlanError("give a budget: k, memory_budget with bytes_per_bucket, or compile_budget with seconds_per_bucket")
    most = min(limits.values())
    if most < 1:
        tight = min(limits, key=limits.get)  # type: ignore[arg-type]
        raise PlanError(
            f"no plan meets the budget: {tight} allows {limits[tight]} buckets, and a plan needs at "
            f"least 1 ({batch_sizes} artifact(s) per length bucket). Raise the budget or lower the cost per bucket"
        )
    return most


def plan(
    observed: Any,
    *,
    k: int | None = 4,
    dims: Sequence[str] | None = None,
    cost: CostModel | None = None,
    cap: int | dict[str, int] | None = None,
    grid: int | str | Mapping[str, int] | None = None,
    headroom: float = 0.0,
    batch_sizes: Sequence[int] | None = None,
    memory_budget: float | None = None,
    bytes_per_bucket: float | None = None,
    compile_budget: float | None = None,
    seconds_per_bucket: float | None = None,
    exact: bool | None = None,
    shared_bytes: float = 0.0,
) -> Plan:
    """Choose at most ``k`` buckets minimising the expected cost of the observed shapes.

    Args:
        observed: sizes (list/array), a histogram ``{size: count}``, shape dicts, an
            ``(n, d)`` array with ``dims``, :class:`Observations`, or an image folder.
        k: most buckets; memory and compile budgets may lower it (:func:`bucket_budget`).
        cost: cost model (default: padding volume). Measured costs may be non-monotone; a
            candidate slower than a larger one is never chosen.
        cap: upper bound per dim (an int for 1-D); the top bucket sits at the cap and the
            share of inputs above it is reported in ``plan.meta``. Default: the largest
            observed size, plus ``headroom``, rounded up onto the grid.
        grid: restrict bucket sizes to multiples of this: an int for every dim (8, 16,
            64 ...), a mapping per dim, or ``"auto"`` for what compilers like: multiples of
            8 for ``seq``, of 32 for ``height`` and ``width``. ``None``: any size.
        headroom: without a cap, the top bucket holds this much more than the largest
            observed size (0.25: 25% more), so slightly longer inputs in production still
            fit.
        batch_sizes: also bucket the batch: the plan is every batch size × every planned
            length bucket (one artifact each, which the budgets count).
        exact: N-D only: solve exactly with a MILP (small instances) instead of greedy +
            local search. Default: exact when the instance is small.
        shared_bytes: memory the buckets share, counted once against ``memory_budget``
            (see :func:`bucket_budget`).

    1-D plans are exact (dynamic programming). The returned plan's ``meta`` records the
    planner, the observation count, the cap and the share of inputs above it.
    """
    obs = observe(observed, dims=dims)
    cost = cost or VolumeCost()
    n_batch = len(batch_sizes) if batch_sizes else 1
    budget = bucket_budget(
        k=k, memory_budget=memory_budget, bytes_per_bucket=bytes_per_bucket,
        compile_budget=compile_budget, seconds_per_bucket=seconds_per_bucket, batch_sizes=n_batch,
        shared_bytes=shared_bytes,
    )
    grids = _grids(obs.dims, grid)
    if isinstance(headroom, bool) or not isinstance(headroom, (int, float)) or not 0 <= headroom <= 10:
        raise PlanError(f"headroom must be a fraction from 0 to 10 (0.25 = 25% above the largest input), got {headroom!r}")
    caps = _caps(obs, cap, grids, headroom)
    inside = np.all(obs.shapes <= np.array([caps[d] for d in obs.dims]), axis=1)
    above_share = float(obs.counts[~inside].sum() / obs.total)
    if not inside.any():
        raise PlanError(f"every observed shape is above the cap {caps}; raise the cap")
    kept = Observations(obs.dims, obs.shapes[inside], obs.counts[inside])

    if len(obs.dims) == 1:
        shapes = _plan_1d(kept, cost, budget, caps=caps, cap_given=cap is not None, grid=grids[obs.dims[0]],
                          batch_sizes=batch_sizes)
        planner = "exact-1d"
    else:
        shapes, planner = optimal_nd(kept, cost, budget, caps=caps, grid=grids, exact=exact, batch_sizes=batch_sizes)

    buckets = [Bucket({**s, "batch": b}) if b is not None else Bucket(s) for s in shapes for b in _batches(batch_sizes)]
    share = _traffic(kept, shapes, cost, batched=bool(batch_sizes))
    meta = {
        "planner": planner,
        "k": budget,
        "observations": obs.total,
        "cap": caps,
        "above_cap_share": above_share,
        "grid": {d: g for d, g in grids.items() if g},
        "headroom": headroom,
        # Expected share of inputs per bucket (the batch sizes of a length bucket split its
        # share evenly, so the shares sum to 1): compile order follows it.
        "traffic": {b.label(): share[i // n_batch] / n_batch for i, b in enumerate(buckets)},
    }
    return Plan(tuple(buckets), cost, meta)


def _plan_1d(
    kept: Observations,
    cost: CostModel,
    budget: int,
    *,
    caps: dict[str, int],
    cap_given: bool,
    grid: int | None,
    batch_sizes: Sequence[int] | None,
) -> list[dict[str, int]]:
    """The exact 1-D plan over the candidate sizes (dynamic programming). With measured
    costs, only measured sizes are candidates; ``caps`` may be raised to the smallest
    measured size that holds the top."""
    (dim,) = kept.dims
    sizes = kept.column(dim)
    top = caps[dim]
    if isinstance(cost, TableCost):
        # Measured costs: plan over the measured shapes only (others would be guesses);
        # the top bucket is the smallest measured one that holds the upper bound.
        cands = np.array(sorted({b[dim] for b in cost.costs if dim in b.dims}), dtype=np.int64)
        if not cap_given:
            if not len(cands) or cands.max() < top:
                raise PlanError(
                    f"measured costs cover {dim} up to {int(cands.max()) if len(cands) else 0}, but "
                    f"inputs reach {top}; measure a bucket of at least {top} or give a cap"
                )
            top = int(cands[cands >= top].min())
            caps[dim] = top
    elif grid is None:
        cands = np.unique(sizes)
    else:
        cands = np.unique(-(-sizes // grid) * grid)
    cands = np.unique(np.append(cands[cands <= top], top))
    w = [_cost_of(cost, {dim: int(t)}, batch_sizes) for t in cands]
    sol = optimal_1d(sizes, kept.counts, cands, w, budget)
    return [{dim: int(s)} for s in sol.sizes]


def _traffic(obs: Observations, shapes: Sequence[dict[str, int]], cost: CostModel, *, batched: bool) -> list[float]:
    """Share of the observed inputs the router sends to each shape (one row at a time)."""
    extra = {BATCH: 1} if batched else {}
    router = Router(Plan(tuple(Bucket({**s, **extra}) for s in shapes), cost))
    index = {b: i for i, b in enumerate(Bucket({**s, **extra}) for s in shapes)}
    dims = list(obs.dims) + list(extra)
    rows = np.hstack([obs.shapes, np.ones((len(obs.shapes), len(extra)), dtype=obs.shapes.dtype)])
    chosen = router.route_many(rows, dims)
    inside = chosen >= 0
    routed = np.bincount(chosen[inside], weights=obs.counts[inside], minlength=len(router.plan.buckets)) / obs.total
    share = [0.0] * len(shapes)
    for i, b in enumerate(router.plan.buckets):
        share[index[b]] += float(routed[i])
    return share


AUTO_GRID = {"seq": 8, "height": 32, "width": 32}


def _grids(dims: Sequence[str], grid: int | str | Mapping[str, int] | None) -> dict[str, int | None]:
    """The grid of each dim: ``None`` (any size) or a positive multiple."""
    if grid is None:
        return {d: None for d in dims}
    if grid == "auto":
        return {d: AUTO_GRID.get(d) for d in dims}
    given = dict(grid) if isinstance(grid, Mapping) else {d: grid for d in dims}
    unknown = set(given) - set(dims)
    if unknown:
        raise PlanError(f"grid names dims {sorted(unknown)} that the observations lack ({list(dims)})")
    for d, g in given.items():
        if g is not None and (isinstance(g, bool) or not isinstance(g, (int, np.integer)) or g < 1):
            raise PlanError(f"grid must be a positive integer (e.g. 8, 16, 64), 'auto' or one per dim, got {g!r} for {d!r}")
    out: dict[str, int | None] = {}
    for d in dims:
        size = given.get(d)
        out[d] = int(size) if isinstance(size, (int, np.integer)) and size > 1 else None
    return out


def _caps(obs: Observations, cap: int | dict[str, int] | None, grids: Mapping[str, int | None],
          headroom: float = 0.0) -> dict[str, int]:
    # Without a cap the top bucket holds the largest input plus the headroom, rounded up
    # onto the grid.
    caps = {}
    for d in obs.dims:
        top = math.ceil(obs.max(d) * (1 + headroom))
        g = grids.get(d)
        caps[d] = top if not g else -(-top // g) * g
    if cap is None:
        return caps
    if isinstance(cap, dict):
        unknown = set(cap) - set(obs.dims)
        if unknown:
            raise PlanError(f"cap names dims {sorted(unknown)} that the observations lack ({obs.dims})")
        given = cap
    else:
        if len(obs.dims) != 1:
            raise PlanError(f"an int cap applies to 1-D plans; give a dict per dim for {obs.dims}")
        given = {obs.dims[0]: cap}
    for d, c in given.items():
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1:
            raise PlanError(f"cap for {d!r} must be a positive integer, got {c!r}")
        caps[d] = int(c)
    return caps


def _cost_of(cost: CostModel, shape: dict[str, int], batch_sizes: Sequence[int] | None) -> float:
    # With batch buckets, a length bucket's cost is that of a single row (batch 1).
    return cost.cost(Bucket({**shape, "batch": 1}) if batch_sizes else Bucket(shape))


def _batches(batch_sizes: Sequence[int] | None) -> list[int | None]:
    return list(batch_sizes) if batch_sizes else [None]
