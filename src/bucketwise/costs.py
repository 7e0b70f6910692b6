"""Cost models: what running one bucket's artifact is expected to cost.

A plan stores the cost model that chose it, and the router ranks covering buckets by it.
:class:`VolumeCost` (positions computed) is the default; :class:`TableCost` holds measured
latencies; :class:`PolynomialCost` is a fitted curve (:func:`fit_cost`). Measuring costs
on a real backend is the runtime's job (``bucketwise.runtime.measure_cost``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .errors import PlanError
from .shapes import Bucket

__all__ = [
    "CostModel",
    "VolumeCost",
    "TableCost",
    "PolynomialCost",
    "FORMS",
    "fit_cost",
    "cost_model_from_json",
    "costs_of",
]


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


# Named forms: monomials over the dims (exponent maps), each with its own coefficient.
FORMS: dict[str, tuple[dict[str, int], ...]] = {
    # α + β·L + γ·L² per row: attention is quadratic in the sequence length.
    "transformer": ({}, {"seq": 1}, {"seq": 2}),
    # α + β·H·W per image: convolutions are linear in the pixel count.
    "cnn": ({}, {"height": 1, "width": 1}),
}


@dataclass(frozen=True)
class PolynomialCost:
    """``cost = batch × Σ coef_i × Π dim^exp`` (batch factor only where the bucket has it).

    ``PolynomialCost.transformer(α, β, γ)`` is α + β·L + γ·L² per row;
    ``PolynomialCost.cnn(α, β)`` is α + β·H·W per image.
    """

    terms: tuple[tuple[tuple[tuple[str, int], ...], float], ...]

    @classmethod
    def from_terms(cls, terms: Sequence[tuple[Mapping[str, int], float]]) -> PolynomialCost:
        out = []
        for exps, coef in terms:
            if coef < 0 or not math.isfinite(coef):
                raise PlanError(f"polynomial cost: coefficients must be finite and >= 0, got {coef}")
            out.append((tuple(sorted(exps.items())), float(coef)))
        return cls(tuple(out))

    @classmethod
    def transformer(cls, alpha: float, beta: float, gamma: float) -> PolynomialCost:
        return cls.from_terms(list(zip(FORMS["transformer"], (alpha, beta, gamma))))

    @classmethod
    def cnn(cls, alpha: float, beta: float) -> PolynomialCost:
        return cls.from_terms(list(zip(FORMS["cnn"], (alpha, beta))))

    def cost(self, bucket: Bucket) -> float:
        sizes = bucket.as_dict()
        per_row = 0.0
        for exps, coef in self.terms:
            term = coef
            for dim, e in exps:
                term *= sizes.get(dim, 1) ** e
            per_row += term
        return per_row * sizes.get("batch", 1)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "polynomial", "terms": [{"exponents": dict(e), "coef": c} for e, c in self.terms]}


def fit_cost(buckets: Sequence[Bucket], latencies: Sequence[float], *, form: str = "transformer") -> PolynomialCost:
    """Least-squares fit of a named form to measured latencies, coefficients kept >= 0.

    Latencies are per call of the whole bucket; the form is per row, so each is divided
    by the bucket's batch size before fitting.
    """
    from scipy.optimize import nnls

    if form not in FORMS:
        raise PlanError(f"fit_cost: form must be one of {sorted(FORMS)}, got {form!r}")
    if len(buckets) != len(latencies) or len(buckets) < len(FORMS[form]):
        raise PlanError(
            f"fit_cost: need at least {len(FORMS[form])} (bucket, latency) pairs of equal count, "
            f"got {len(buckets)} buckets and {len(latencies)} latencies"
        )
    A = np.array([[math.prod(b.as_dict().get(d, 1) ** e for d, e in exps.items()) for exps in FORMS[form]] for b in buckets], dtype=np.float64)
    y = np.array([lat / b.as_dict().get("batch", 1) for b, lat in zip(buckets, latencies)], dtype=np.float64)
    scale = A.max(axis=0)
    scale[scale == 0] = 1.0
    coefs, _ = nnls(A / scale, y)
    return PolynomialCost.from_terms(list(zip(FORMS[form], (coefs / scale).tolist())))


def costs_of(cost: CostModel, dims: Sequence[str], shapes: np.ndarray) -> np.ndarray:
    """``cost.cost`` of the bucket each row of ``shapes`` names (columns named by ``dims``).

    Volume and polynomial costs are computed on the whole array at once, so a report over
    a million distinct shapes costs a few array passes; other cost models are asked per row.
    """
    arr = np.asarray(shapes, dtype=np.float64).reshape(len(shapes), len(dims))
    col = {d: arr[:, i] for i, d in enumerate(dims)}
    if isinstance(cost, VolumeCost):
        return np.prod(arr, axis=1)
    if isinstance(cost, PolynomialCost):
        per_row = np.zeros(len(arr))
        for exps, coef in cost.terms:
            term = np.full(len(arr), coef)
            for dim, e in exps:
                if dim in col:
                    term = term * col[dim] ** e
            per_row += term
        return per_row * col["batch"] if "batch" in col else per_row
    return np.array([cost.cost(Bucket(dict(zip(dims, map(int, row))))) for row in arr], dtype=np.float64)


def cost_model_from_json(data: Any) -> CostModel:
    if not isinstance(data, Mapping) or "kind" not in data:
        raise PlanError(f"plan JSON: cost_model must be an object with a 'kind', got {data!r}")
    kind = data["kind"]
    if kind == "volume":
        reject_unknown(data, {"kind"}, "cost_model")
        return VolumeCost()
    if kind == "table":
        reject_unknown(data, {"kind", "costs", "per_position"}, "cost_model")
        costs = {Bucket(e["bucket"]): float(e["cost"]) for e in data.get("costs", [])}
        return TableCost(costs, float(data.get("per_position", 1.0)))
    if kind == "polynomial":
        reject_unknown(data, {"kind", "terms"}, "cost_model")
        return PolynomialCost.from_terms([(t["exponents"], float(t["coef"])) for t in data.get("terms", [])])
    raise PlanError(
        f"plan JSON: unknown cost_model kind {kind!r}; known: 'volume', 'table', 'polynomial'"
    )


def reject_unknown(data: Mapping[str, Any], allowed: set[str], what: str) -> None:
    unknown = set(data) - allowed
    if unknown:
        raise PlanError(
            f"plan JSON: unknown key(s) {sorted(unknown)} in {what}; allowed: {sorted(allowed)}"
        )
