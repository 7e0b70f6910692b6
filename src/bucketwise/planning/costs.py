"""Cost models for planning: padding volume, a fitted polynomial, or measured latency.

All are :class:`~bucketwise.shapes.CostModel`\\ s, so a plan stores the model that chose it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PlanError
from ..shapes import Bucket, TableCost, VolumeCost

__all__ = ["PolynomialCost", "fit_cost", "measure_cost", "VolumeCost", "TableCost"]

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


def measure_cost(
    model: Any,
    spec: Any,
    candidates: Sequence[Bucket],
    *,
    backend: str = "onnxruntime",
    backend_options: Mapping[str, Any] | None = None,
    repeats: int = 20,
    rounds: int = 3,
    progress: bool = True,
) -> TableCost:
    """Latency (seconds) of each candidate bucket on the backend.

    Every candidate is compiled and warmed up first; then ``rounds`` rounds time each one
    ``repeats`` times, in an order that rotates per round, and the lowest per-round median
    counts, so that drift on a shared machine does not tilt the curve. Compiles every
    candidate, so keep the list short (a coarse ladder) and fit a polynomial to the result
    with :func:`fit_cost` to plan over finer candidates.
    """
    from tqdm.auto import tqdm

    from ..backends.base import get_backend

    be = get_backend(backend, **dict(backend_options or {}))
    buckets = list(candidates)
    try:
        artifacts = {}
        for bucket in tqdm(buckets, desc=f"compile [{backend}]", unit="bucket", disable=not progress):
            artifacts[bucket] = (be.compile(model, spec, bucket), spec.example_inputs(bucket))
            for _ in range(3):
                artifacts[bucket][0].run(artifacts[bucket][1])
        best = {b: float("inf") for b in buckets}
        bar = tqdm(total=rounds * len(buckets), desc=f"profile [{backend}]", unit="bucket", disable=not progress)
        for r in range(rounds):
            for bucket in buckets[r % len(buckets):] + buckets[: r % len(buckets)]:
                artifact, example = artifacts[bucket]
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    artifact.run(example)
                    times.append(time.perf_counter() - start)
                best[bucket] = min(best[bucket], float(np.median(times)))
                bar.update()
        bar.close()
    finally:
        be.close()
    return TableCost(best)
