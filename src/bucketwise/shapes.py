"""Dims, buckets, plans and the one route function.

A *shape* is a mapping from dim name to size, e.g. ``{"batch": 3, "seq": 37}``. A
:class:`Bucket` is a frozen, hashable shape that one artifact is compiled for. A
:class:`Plan` is the ordered set of buckets plus the cost model that chose them; it is the
single source of truth for which buckets exist. :func:`route` picks, for a shape, the
cheapest bucket of a plan that *covers* it (is at least as large in every dim).
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .errors import BucketOverflowError, PlanError

__all__ = [
    "Shape",
    "Bucket",
    "CostModel",
    "VolumeCost",
    "TableCost",
    "Plan",
    "covers",
    "route",
    "PLAN_FORMAT",
]

Shape = Mapping[str, int]
"""Sizes of the named dims of one input, e.g. ``{"seq": 37}``."""

PLAN_FORMAT = "bucketwise.plan/1"

# Dims print in this order; other dims follow alphabetically.
_DIM_ORDER = {"batch": 0, "seq": 1, "height": 2, "width": 3}


def _dim_key(dim: str) -> tuple[int, str]:
    return (_DIM_ORDER.get(dim, len(_DIM_ORDER)), dim)


def _check_size(dim: Any, size: Any, what: str) -> int:
    if not isinstance(dim, str) or not dim:
        raise PlanError(f"{what}: dim names must be non-empty strings, got {dim!r}")
    try:
        value = operator.index(size)  # ints and NumPy integers; not floats or strings
    except TypeError:
        value = 0
    if isinstance(size, bool) or value < 1:
        raise PlanError(
            f"{what}: size of dim {dim!r} must be a positive integer, got {size!r}; "
            "sizes count elements along that dim, e.g. seq=128"
        )
    return value


@dataclass(frozen=True, init=False, order=False)
class Bucket:
    """A fixed shape that one artifact is compiled for. Frozen and hashable.

    ``Bucket(batch=8, seq=128)`` or ``Bucket({"batch": 8, "seq": 128})``. Two buckets with
    the same sizes are equal whatever order the dims were given in.
    """

    sizes: tuple[tuple[str, int], ...]

    def __init__(self, sizes: Mapping[str, int] | None = None, /, **dims: int) -> None:
        merged: dict[str, int] = {}
        for source in (sizes or {}, dims):
            for dim, size in source.items():
                if dim in merged:
                    raise PlanError(f"bucket: dim {dim!r} given twice")
                merged[dim] = _check_size(dim, size, "bucket")
        if not merged:
            raise PlanError("bucket: needs at least one dim, e.g. Bucket(seq=128)")
        object.__setattr__(
            self, "sizes", tuple(sorted(merged.items(), key=lambda kv: _dim_key(kv[0])))
        )

    @property
    def dims(self) -> tuple[str, ...]:
        return tuple(d for d, _ in self.sizes)

    def __getitem__(self, dim: str) -> int:
        for d, s in self.sizes:
            if d == dim:
                return s
        raise KeyError(dim)

    def get(self, dim: str, default: int | None = None) -> int | None:
        try:
            return self[dim]
        except KeyError:
            return default

    def as_dict(self) -> dict[str, int]:
        return dict(self.sizes)

    @property
    def volume(self) -> int:
        """Product of the sizes: the number of positions the artifact computes on."""
        return math.prod(s for _, s in self.sizes)

    def covers(self, shape: Shape) -> bool:
        """True when this bucket is at least as large as ``shape`` in every dim."""
        return covers(self, shape)

    def __repr__(self) -> str:
        return "Bucket(" + ", ".join(f"{d}={s}" for d, s in self.sizes) + ")"

    def __str__(self) -> str:
        return "x".join(str(s) for _, s in self.sizes)

    def label(self) -> str:
        """Human-readable label with dim names, e.g. ``batch=8,seq=128``."""
        return ",".join(f"{d}={s}" for d, s in self.sizes)


def covers(bucket: Bucket, shape: Shape) -> bool:
    """True when ``bucket`` is at least as large as ``shape`` in every dim of the bucket.

    Raises :class:`PlanError` when the shape lacks one of the bucket's dims or has one
    the bucket lacks: such a shape cannot be routed at all.
    """
    if set(shape) != set(bucket.dims):
        raise PlanError(
            f"shape {dict(shape)} has dims {sorted(shape)} but bucket {bucket!r} has dims "
            f"{sorted(bucket.dims)}; every bucket of a plan must name exactly the dims of "
            "the model spec"
        )
    return all(shape[d] <= s for d, s in bucket.sizes)


# --------------------------------------------------------------------------------------
# Cost models


@runtime_checkable
class CostModel(Protocol):
    """Expected cost (latency, in any consistent unit) of running one bucket's artifact."""

    def cost(self, bucket: Bucket) -> float: ...

    def to_json(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class VolumeCost:
    """Cost = number of positions computed (product of the bucket sizes). The default."""

    def cost(self, bucket: Bucket) -> float:
        return float(bucket.volume)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "volume"}


@dataclass(frozen=True)
class TableCost:
    """Explicit per-bucket costs, e.g. latencies measured on the target backend.

    Buckets missing from the table fall back to their volume scaled by ``per_position``.
    """

    costs: Mapping[Bucket, float]
    per_position: float = 1.0

    def cost(self, bucket: Bucket) -> float:
        got = self.costs.get(bucket)
        return float(got) if got is not None else self.per_position * bucket.volume

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "table",
            "per_position": self.per_position,
            "costs": [{"bucket": b.as_dict(), "cost": c} for b, c in self.costs.items()],
        }


def _cost_model_from_json(data: Any) -> CostModel:
    if not isinstance(data, Mapping) or "kind" not in data:
        raise PlanError(f"plan JSON: cost_model must be an object with a 'kind', got {data!r}")
    kind = data["kind"]
    if kind == "volume":
        _reject_unknown(data, {"kind"}, "cost_model")
        return VolumeCost()
    if kind == "table":
        _reject_unknown(data, {"kind", "costs", "per_position"}, "cost_model")
        costs = {Bucket(e["bucket"]): float(e["cost"]) for e in data.get("costs", [])}
        return TableCost(costs, float(data.get("per_position", 1.0)))
    if kind == "polynomial":
        from .planning.costs import PolynomialCost

        _reject_unknown(data, {"kind", "terms"}, "cost_model")
        return PolynomialCost.from_terms([(t["exponents"], float(t["coef"])) for t in data.get("terms", [])])
    raise PlanError(
        f"plan JSON: unknown cost_model kind {kind!r}; known: 'volume', 'table', 'polynomial'"
    )


def _reject_unknown(data: Mapping[str, Any], allowed: set[str], what: str) -> None:
    unknown = set(data) - allowed
    if unknown:
        raise PlanError(
            f"plan JSON: unknown key(s) {sorted(unknown)} in {what}; allowed: {sorted(allowed)}"
        )


# --------------------------------------------------------------------------------------
# Plan and routing


@dataclass(frozen=True)
class _RouteTable:
    """Precomputed lookup: sorted 1-D edges with suffix minima, or the N-D bucket list."""

    dims: tuple[str, ...]
    edges: tuple[int, ...]  # 1-D only: sorted sizes
    best_from: tuple[Bucket, ...]  # 1-D only: cheapest bucket among edges[i:]
    ranked: tuple[tuple[float, int, Bucket], ...]  # N-D: (cost, volume, bucket), cheapest first


def _build_table(buckets: Sequence[Bucket], cost: CostModel) -> _RouteTable:
    ranked = tuple(
        sorted(((cost.cost(b), b.volume, b) for b in buckets), key=lambda t: (t[0], t[1], t[2].sizes))
    )
    dims = buckets[0].dims
    if len(dims) != 1:
        return _RouteTable(dims, (), (), ranked)
    by_size = sorted(buckets, key=lambda b: b.sizes[0][1])
    # best[i]: the cheapest of by_size[i:], i.e. of the buckets that cover any size that
    # bisects to i. Ties keep the smaller bucket: equal cost, less padding.
    best = list(by_size)
    for i in range(len(by_size) - 2, -1, -1):
        if cost.cost(best[i + 1]) < cost.cost(by_size[i]):
            best[i] = best[i + 1]
    return _RouteTable(dims, tuple(b.sizes[0][1] for b in by_size), tuple(best), ranked)


@dataclass(frozen=True)
class Plan:
    """The buckets to compile, and the cost model that ranks them. JSON round-trips.

    Buckets are kept sorted by cost (cheapest first). All buckets name the same dims.
    ``Plan.grid(batch=[1, 8], seq=[32, 64, 128])`` builds the cartesian product.
    """

    buckets: tuple[Bucket, ...]
    cost_model: CostModel = field(default_factory=VolumeCost)
    meta: Mapping[str, Any] = field(default_factory=dict)
    _table: _RouteTable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        buckets = tuple(self.buckets)
        if not buckets:
            raise PlanError("plan: needs at least one bucket, e.g. Plan.grid(seq=[64, 128])")
        for b in buckets:
            if not isinstance(b, Bucket):
                raise PlanError(f"plan: buckets must be Bucket objects, got {b!r}")
        dims = set(buckets[0].dims)
        for b in buckets:
            if set(b.dims) != dims:
                raise PlanError(
                    f"plan: bucket {b!r} has dims {sorted(b.dims)} but {buckets[0]!r} has "
                    f"{sorted(dims)}; all buckets of a plan name the same dims"
                )
        if len(set(buckets)) != len(buckets):
            dupes = sorted({repr(b) for b in buckets if buckets.count(b) > 1})
            raise PlanError(f"plan: duplicate buckets {dupes}; list each bucket once")
        if not isinstance(self.cost_model, CostModel):
            raise PlanError(f"plan: cost_model must have cost() and to_json(), got {self.cost_model!r}")
        table = _build_table(buckets, self.cost_model)
        object.__setattr__(self, "buckets", tuple(b for _, _, b in table.ranked))
        object.__setattr__(self, "meta", dict(self.meta))
        object.__setattr__(self, "_table", table)

    # -- construction -----------------------------------------------------------------

    @classmethod
    def grid(cls, *, cost_model: CostModel | None = None, **sizes: Iterable[int]) -> Plan:
        """Every combination of the given sizes, e.g. ``Plan.grid(batch=[1, 8], seq=[64, 128])``."""
        if not sizes:
            raise PlanError("Plan.grid: give at least one dim, e.g. Plan.grid(seq=[64, 128])")
        dims = list(sizes)
        values = []
        for d in dims:
            vals = sorted(set(sizes[d]))
            if not vals:
                raise PlanError(f"Plan.grid: dim {d!r} has no sizes; give at least one")
            values.append(vals)
        buckets = tuple(Bucket(dict(zip(dims, combo))) for combo in itertools.product(*values))
        return cls(buckets, cost_model or VolumeCost())

    # -- queries ------------------------------------------------------------------------

    @property
    def dims(self) -> tuple[str, ...]:
        return self._table.dims

    def sizes(self, dim: str) -> list[int]:
        """Distinct sizes of ``dim`` across the buckets, ascending."""
        return sorted({b[dim] for b in self.buckets})

    def max_size(self, dim: str) -> int:
        return max(b[dim] for b in self.buckets)

    def cost(self, bucket: Bucket) -> float:
        return self.cost_model.cost(bucket)

    def route(self, shape: Shape) -> Bucket:
        """Same as :func:`route` (``route(self, shape)``)."""
        return route(self, shape)

    def __len__(self) -> int:
        return len(self.buckets)

    def __iter__(self):
        return iter(self.buckets)

    def __contains__(self, bucket: object) -> bool:
        return bucket in self.buckets

    # -- JSON -----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "dims": list(self.dims),
            "buckets": [b.as_dict() for b in self.buckets],
            "cost_model": self.cost_model.to_json(),
            "meta": dict(self.meta),
        }

    @classmethod
    def from_json(cls, data: Any) -> Plan:
        if not isinstance(data, Mapping):
            raise PlanError(f"plan JSON: expected an object, got {type(data).__name__}")
        _reject_unknown(data, {"format", "dims", "buckets", "cost_model", "meta"}, "plan")
        fmt = data.get("format", PLAN_FORMAT)
        if fmt != PLAN_FORMAT:
            raise PlanError(f"plan JSON: format {fmt!r} is not supported; expected {PLAN_FORMAT!r}")
        raw = data.get("buckets")
        if not isinstance(raw, list):
            raise PlanError("plan JSON: 'buckets' must be a list of objects like {\"seq\": 128}")
        buckets = []
        for i, b in enumerate(raw):
            if not isinstance(b, Mapping):
                raise PlanError(f"plan JSON: buckets[{i}] must be an object like {{\"seq\": 128}}, got {b!r}")
            buckets.append(Bucket(b))
        cost = _cost_model_from_json(data.get("cost_model", {"kind": "volume"}))
        plan = cls(tuple(buckets), cost, data.get("meta") or {})
        if "dims" in data and set(data["dims"]) != set(plan.dims):
            raise PlanError(
                f"plan JSON: 'dims' says {data['dims']} but the buckets name {list(plan.dims)}"
            )
        return plan

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as err:
            raise PlanError(f"plan file {str(p)!r} cannot be read: {err.strerror}") from err
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise PlanError(f"plan file {str(p)!r} is not valid JSON: {err}") from err
        return cls.from_json(data)

    def __str__(self) -> str:
        return f"Plan({len(self.buckets)} buckets over {'x'.join(self.dims)}: " + ", ".join(
            str(b) for b in sorted(self.buckets, key=lambda b: b.sizes)
        ) + ")"


def route(plan: Plan, shape: Shape) -> Bucket:
    """The cheapest bucket of ``plan`` that covers ``shape``.

    Covers means at least as large in every dim, so a size equal to a bucket edge goes to
    that bucket. Among covering buckets the one with the lowest cost under the plan's cost
    model wins; ties go to the smaller volume. One-dim plans route in O(log k) by bisection
    over the sorted edges; N-dim plans scan the k buckets in cost order.

    Raises :class:`BucketOverflowError` when no bucket covers the shape.
    """
    table = plan._table
    if set(shape) != set(table.dims):
        raise PlanError(
            f"shape {dict(shape)} has dims {sorted(shape)} but the plan buckets "
            f"{sorted(table.dims)}; shapes and buckets must name the same dims"
        )
    if table.edges:
        (dim,) = table.dims
        i = bisect.bisect_left(table.edges, shape[dim])
        if i < len(table.edges):
            return table.best_from[i]
    else:
        for _, _, bucket in table.ranked:
            if all(shape[d] <= s for d, s in bucket.sizes):
                return bucket
    raise BucketOverflowError(_overflow_message(plan, shape))


def _overflow_message(plan: Plan, shape: Shape) -> str:
    over = [d for d in plan.dims if shape[d] > plan.max_size(d)]
    if over:
        detail = ", ".join(f"{d}={shape[d]} > largest {plan.max_size(d)}" for d in over)
    else:
        detail = "no single bucket is large enough in every dim at once"
    return (
        f"input shape {dict(shape)} is larger than every bucket ({detail}). Fix: add a bucket "
        f"that covers it to the plan, or opt in to an overflow policy: overflow='truncate' "
        f"(cut sequences to the largest bucket) or overflow='fallback' (run uncompiled at the "
        f"exact shape)"
    )
