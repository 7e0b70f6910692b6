"""The plan: which buckets exist, and the cost model that ranks them. JSON round-trips.

The plan is the single source of truth for which buckets exist: building, routing, the
cache and the metrics all read it.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .costs import CostModel, VolumeCost, cost_model_from_json, reject_unknown
from .errors import PlanError
from .shapes import Bucket

__all__ = ["Plan", "PLAN_FORMAT"]

PLAN_FORMAT = "bucketwise.plan/1"


@dataclass(frozen=True)
class Plan:
    """The buckets to compile, and the cost model that ranks them. JSON round-trips.

    Buckets are kept sorted by cost (cheapest first; ties by volume, then sizes), the order
    the router ranks them in. All buckets name the same dims.
    ``Plan.grid(batch=[1, 8], seq=[32, 64, 128])`` builds the cartesian product.
    """

    buckets: tuple[Bucket, ...]
    cost_model: CostModel = field(default_factory=VolumeCost)
    meta: Mapping[str, Any] = field(default_factory=dict)

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
        cost = self.cost_model.cost
        ranked = sorted(buckets, key=lambda b: (cost(b), b.volume, b.sizes))
        object.__setattr__(self, "buckets", tuple(ranked))
        object.__setattr__(self, "meta", dict(self.meta))

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
        return self.buckets[0].dims

    def sizes(self, dim: str) -> list[int]:
        """Distinct sizes of ``dim`` across the buckets, ascending."""
        return sorted({b[dim] for b in self.buckets})

    def max_size(self, dim: str) -> int:
        return max(b[dim] for b in self.buckets)

    def cost(self, bucket: Bucket) -> float:
        return self.cost_model.cost(bucket)

    def hot_buckets(self, share: float = 0.9) -> list[Bucket]:
        """The fewest buckets that carry at least ``share`` of the planned traffic (the
        shares ``bucketwise plan`` records in ``meta["traffic"]``), busiest first: the ones
        worth their memory, e.g. ONNX Runtime's ``prepack``."""
        if not 0 < share <= 1:
            raise PlanError(f"share must be in (0, 1], got {share}")
        traffic = self.meta.get("traffic") or {}
        if not traffic:
            raise PlanError("this plan records no traffic shares; make it with `bucketwise plan` (or "
                            "bucketwise.planning.plan) from observed inputs, or name the buckets yourself")
        ranked = sorted(self.buckets, key=lambda b: -float(traffic.get(b.label(), 0.0)))
        hot, total = [], 0.0
        for bucket in ranked:
            if total >= share - 1e-9:
                break
            hot.append(bucket)
            total += float(traffic.get(bucket.label(), 0.0))
        return hot

    def __len__(self) -> int:
        return len(self.buckets)

    def __iter__(self) -> Iterator[Bucket]:
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
        reject_unknown(data, {"format", "dims", "buckets", "cost_model", "meta"}, "plan")
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
        cost = cost_model_from_json(data.get("cost_model", {"kind": "volume"}))
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
        """Every bucket, or for a full grid of more than 12, the sizes of each dim."""
        head = f"Plan({len(self.buckets)} buckets over {'x'.join(self.dims)}: "
        per_dim = [self.sizes(d) for d in self.dims]
        if len(self.buckets) > 12 and len(self.buckets) == math.prod(len(s) for s in per_dim):
            return head + " x ".join(f"{d} {','.join(map(str, s))}" for d, s in zip(self.dims, per_dim)) + ")"
        return head + ", ".join(str(b) for b in sorted(self.buckets, key=lambda b: b.sizes)) + ")"
