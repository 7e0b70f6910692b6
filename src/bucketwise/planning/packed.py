"""Packed plans: choose the row lengths, rows and segment count of packed buckets (issue #30).

A packed bucket is ``rows × L``: each row holds up to ``S`` texts back to back
(:mod:`bucketwise.packer`), and costs what a row of ``L`` positions costs however few
tokens it carries, since attention runs over the whole row (masked). With the transformer
cost form ``α + β·L + γ·L²`` per row, long rows save the per-row ``α`` and the padding of
short texts, but pay ``γ·L²`` of attention over positions no text sees: the best row
length depends on the length distribution and the cost model, which :func:`plan_packed`
weighs.

What is exact and what is not:

- The search is exhaustive over a small candidate set: every set of at most ``k`` row
  lengths drawn from the candidates (multiples of ``grid``: the length quantiles rounded up,
  the powers of two, up to ``cap``), always including ``cap`` itself, the top row, which
  holds the longest text. Lengths off the candidate set are not tried.
- Each set is scored by simulating placement with the runtime's own packer
  (:func:`bucketwise.packer.pack`, first-fit decreasing, a row opened at the shortest
  length that holds its first text) on the observed lengths, then running each row at the
  shortest chosen length its texts fill, as the packed front end does. With more than
  ``sample`` observations the simulation runs on a proportional sample of that many
  lengths. The score is the expected cost per text in bulk: the last, partly empty run of
  each length is not counted. The best few sets by that score (``_RESCORED``) are then
  given their shapes and scored again through the router's own placement
  (:meth:`bucketwise.router.Router.place`: rows cut into runs of the shapes, pad rows and
  a last run in a larger bucket counted), and the cheapest there is the plan; its padding
  and cost per text are those of that placement. (Scoring rows alone had chosen a plan
  that padded 16% of held-out medium texts where it expected 7%.)
- Whether a length range packs or pads is not a separate choice: it follows from the row
  lengths. A text whose row has no room left for another sits alone in it (pads); the
  report says, per range between chosen lengths, which happens to most of its texts.
- Rows per shape are a rule, not an optimum (the cost model is per row, so in bulk the rows
  per call change the cost only through the last run): each length gets the largest offered
  batch size ``b`` with ``b·L ≤ positions_per_call`` and ``b`` no more than the rows of that
  length a call of ``positions_per_call`` positions of the observed traffic fills (at least
  1). Shapes left over when fewer than ``k`` lengths are best go, busiest length first, to
  the next smaller batch size of a length (for its last run, as ``4 × 128`` beside
  ``16 × 128`` in the default packed plan).
- ``S`` (``max_segments``) is given; the plan records it and the most segments any
  simulated row used (``segments_used``), a smaller ``--pack`` that loses nothing here.

:func:`packed_report` sets the packed plan beside the best unpacked plan of as many shapes
and the same top (the exact 1-D planner, :func:`bucketwise.planning.plan`), both under the
same cost model.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..costs import CostModel, PolynomialCost
from ..errors import PlanError
from ..packer import filled, pack
from ..plans import Plan
from ..router import Router
from ..shapes import BATCH, Bucket
from .observe import Observations, observe
from .planner import plan

__all__ = [
    "DEFAULT_PACKED_COST",
    "PACKED_BATCH_SIZES",
    "PackedPlan",
    "PackedRange",
    "PackedReport",
    "PlanStats",
    "packed_report",
    "plan_packed",
]

# α + β·L + γ·L² per row, in units of one position's linear cost (β = 1). γ/β = 0.003 is
# what benchmarks/results/packing.json implies for all-MiniLM-L6-v2 on ONNX Runtime: packed
# rows of 64 ran short texts 11% faster than rows of 128 at 5.2% against 0.8% padding. (The
# batch-1 fit in plan_vs_measured_onnxruntime.json, γ/β = 4.6e-4 with a large α, counts
# the per-call overhead in α, which batched packed rows share.) α = 0: a row's fixed cost
# is small once rows are batched. `bucketwise plan --cost measured` fits your own.
DEFAULT_PACKED_COST = PolynomialCost.transformer(0.0, 1.0, 0.003)
# The rows per shape offered by default: those of the default packed plan (16 × 128,
# 4 × 128, 1 × 256).
PACKED_BATCH_SIZES = (1, 4, 16)
_RESCORED = 12  # the best sets of row lengths by the row-level score, scored again as the router places them
_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


@dataclass(frozen=True)
class PackedRange:
    """Texts of lengths ``low < n ≤ high`` (``high`` a chosen row length): their share of
    the texts, the share of them alone in their row, and so whether the range ``packs``
    (most share a row) or ``pads`` (most fill a row alone)."""

    low: int
    high: int
    share: float
    alone: float

    @property
    def mode(self) -> str:
        return "pads" if self.alone > 0.5 else "packs"

    def as_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "share": self.share, "alone": self.alone, "mode": self.mode}


@dataclass(frozen=True)
class PlanStats:
    """A plan's expected padding (share of computed positions that are pad) and cost per
    text under a cost model, over the observed lengths up to the plan's top."""

    name: str
    shapes: tuple[tuple[int, int], ...]  # (rows, length)
    padding: float
    cost_per_text: float
    ranges: tuple[PackedRange, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shapes": [list(s) for s in self.shapes], "padding": self.padding,
                "cost_per_text": self.cost_per_text, "ranges": [r.as_dict() for r in self.ranges]}


@dataclass(frozen=True)
class PackedPlan:
    """What :func:`plan_packed` returns: the plan (buckets ``batch × seq``: rows × row
    length), and what it was chosen for."""

    plan: Plan
    row_lengths: tuple[int, ...]
    max_segments: int
    segments_used: int
    stats: PlanStats
    k: int
    cap: int
    above_cap_share: float
    candidates: tuple[int, ...]
    evaluated: int

    @property
    def padding(self) -> float:
        return self.stats.padding

    @property
    def cost_per_text(self) -> float:
        return self.stats.cost_per_text


@dataclass(frozen=True)
class PackedReport:
    """The packed plan beside the best unpacked plan of as many shapes."""

    packed: PlanStats
    unpacked: PlanStats
    max_segments: int
    segments_used: int
    observations: float
    above_cap_share: float
    cost_unit: str = "cost"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        """Unpacked cost per text over packed (above 1: packing is cheaper)."""
        return self.unpacked.cost_per_text / self.packed.cost_per_text if self.packed.cost_per_text else math.inf

    def as_dict(self) -> dict[str, Any]:
        return {"packed": self.packed.as_dict(), "unpacked": self.unpacked.as_dict(), "max_segments": self.max_segments,
                "segments_used": self.segments_used, "observations": self.observations,
                "above_cap_share": self.above_cap_share, "unpacked_over_packed": self.speedup}

    def __str__(self) -> str:
        def shapes(s: PlanStats) -> str:
            return ", ".join(f"{b}x{n}" for b, n in s.shapes)

        lines = [f"{'plan':<26} {'shapes':<28} {'padding':>8} {'cost/text':>10}"]
        for label, s in ((f"packed (S={self.max_segments})", self.packed), ("unpacked, same shapes", self.unpacked)):
            lines.append(f"{label:<26} {shapes(s):<28} {s.padding:>8.1%} {s.cost_per_text:>10.4g}")
        lines.append(f"packed: {1 / self.speedup:.3f}x the unpacked plan's expected cost per text")
        lines.append("per length range (packed):")
        for r in self.packed.ranges:
            lines.append(f"  {r.low + 1:>4}-{r.high:<4} tokens  {r.share:>6.1%} of texts  {r.mode:<5} "
                         f"({r.alone:.0%} alone in a row)")
        lines.append(f"segments: at most {self.segments_used} of S={self.max_segments} used in a row")
        if self.above_cap_share:
            lines.append(f"above the top row: {self.above_cap_share:.1%} of inputs (left out of both)")
        return "\n".join(lines)


def plan_packed(
    observed: Any,
    *,
    k: int = 3,
    max_segments: int = 16,
    cost: CostModel | None = None,
    batch_sizes: Sequence[int] = PACKED_BATCH_SIZES,
    cap: int | None = None,
    grid: int | None = 16,
    positions_per_call: int = 2048,
    sample: int = 2048,
) -> PackedPlan:
    """Choose at most ``k`` packed shapes (rows × row length) for the observed lengths.

    Args:
        observed: token lengths (a list or array), a histogram ``{length: count}``, or
            1-D :class:`Observations` (any dim name; the plan's is ``seq``).
        k: the most shapes (compiled artifacts); default 3, as the default packed plan.
        max_segments: ``S``, the most texts in a row (``--pack S``).
        cost: the cost of one row of each length, ``cost.cost(Bucket({"seq": L}))``,
            whatever the row carries; default :data:`DEFAULT_PACKED_COST`, α + β·L + γ·L².
        batch_sizes: the rows per shape to offer.
        cap: the top row length (always a shape; it holds the longest text, alone where
            need be). Default: the longest observed length rounded up onto ``grid``.
            Longer inputs are left out and their share reported.
        grid: row lengths are multiples of this (``None`` or 1: any length).
        positions_per_call: the most positions one call of a shape holds (rows × L).
        sample: simulate placement on a proportional sample of this many lengths when
            there are more observations.

    See the module docstring for what is exhaustive and what is a rule. Raises
    :class:`~bucketwise.errors.PlanError` on arguments out of range.
    """
    cost = cost or DEFAULT_PACKED_COST
    _check_int("k", k, "the most shapes, e.g. 3")
    _check_int("max_segments", max_segments, "the most texts in a row, e.g. 16")
    _check_int("positions_per_call", positions_per_call, "e.g. 2048")
    _check_int("sample", sample, "e.g. 2048")
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or any(isinstance(b, bool) or b < 1 for b in batch_sizes):
        raise PlanError(f"batch_sizes must be positive integers (rows per shape), e.g. {list(PACKED_BATCH_SIZES)}; "
                        f"got {list(batch_sizes)}")
    step = _grid(grid)
    lengths, counts, top, above = _lengths(observed, cap, step)

    row_cost = {L: float(cost.cost(Bucket({"seq": L}))) for L in range(step, top + 1, step)}
    row_cost[top] = float(cost.cost(Bucket({"seq": top})))
    sim = _sample(lengths, counts, sample)
    cands = _candidates(lengths, counts, top, step)
    below = [c for c in cands if c < top]
    scored: list[tuple[float, int, tuple[int, ...], dict[int, int], dict[str, Any]]] = []
    for r in range(0, min(k, len(below) + 1)):
        for subset in itertools.combinations(below, r):
            edges = (*subset, top)
            row_score, by_length, info = _simulate(sim, edges, max_segments, row_cost)
            scored.append((row_score, len(edges), edges, by_length, info))
    evaluated = len(scored)
    # The row-level score leaves out how rows are cut into runs of the shapes (pad rows,
    # a last run in a larger bucket): the best few are scored again through the router's
    # own placement, over their shapes, and the cheapest there wins.
    best: tuple[float, float, tuple[int, ...], list[tuple[int, int]], dict[str, Any]] | None = None
    for _, _, edges, by_length, info in sorted(scored, key=lambda c: c[:3])[:_RESCORED]:
        shapes = _shapes(edges, by_length, sizes, k, positions_per_call)
        per_text, padding = _placed(sim, shapes, max_segments, cost)
        if best is None or (per_text, padding) < best[:2]:
            best = (per_text, padding, edges, shapes, info)
    assert best is not None
    per_text, padding, edges, shapes, info = best
    ranges = _ranges(edges, sim, info["alone"])
    stats = PlanStats("packed", tuple(shapes), padding, per_text, ranges)
    texts_at = info["texts_at"]
    traffic = {}
    for b, L in shapes:
        per_len = sum(1 for _, n in shapes if n == L)
        traffic[Bucket({BATCH: b, "seq": L}).label()] = texts_at[L] / len(sim) / per_len
    buckets = tuple(Bucket({BATCH: b, "seq": L}) for b, L in shapes)
    meta = {
        "planner": "packed",
        "k": k,
        "observations": float(np.sum(counts)) + above[1],
        "cap": {"seq": top},
        "above_cap_share": above[0],
        "grid": {"seq": step} if step > 1 else {},
        "traffic": traffic,
        "pack": {"max_segments": max_segments, "segments_used": info["segments_used"], "row_lengths": list(edges),
                 "padding": stats.padding, "cost_per_text": per_text,
                 "ranges": [r.as_dict() for r in ranges]},
    }
    return PackedPlan(Plan(buckets, cost, meta), tuple(edges), max_segments, info["segments_used"], stats, k, top,
                      above[0], tuple(cands), evaluated)


def packed_report(packed: PackedPlan, observed: Any, *, sample: int = 2048) -> PackedReport:
    """``packed`` beside the best unpacked plan of as many shapes with the same top (the
    exact 1-D planner under the same cost model, each text alone in a row of the shortest
    length that holds it), over the same observed lengths."""
    cost = packed.plan.cost_model
    step = int(packed.plan.meta.get("grid", {}).get("seq", 1))
    lengths, counts, top, above = _lengths(observed, packed.cap, step)
    unpacked = plan(Observations(("seq",), lengths.reshape(-1, 1), counts), k=packed.k, cost=cost, cap=top,
                    grid=step if step > 1 else None)
    edges = np.array(unpacked.sizes("seq"), dtype=np.int64)
    at = edges[np.searchsorted(edges, lengths, side="left")]
    per_row = {int(L): float(cost.cost(Bucket({"seq": int(L)}))) for L in edges}
    total = float(counts.sum())
    cost_per_text = float(sum(per_row[int(L)] * c for L, c in zip(at, counts)) / total)
    padding = 1.0 - float((lengths * counts).sum()) / float((at * counts).sum())
    sim = _sample(lengths, counts, sample)
    ranges = _ranges(tuple(int(e) for e in edges), sim, np.ones(len(sim), dtype=bool))
    stats = PlanStats("unpacked", tuple((1, int(L)) for L in edges), padding, cost_per_text, ranges)
    return PackedReport(packed.stats, stats, packed.max_segments, packed.segments_used, total + above[1], above[0])


# ---------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, example: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise PlanError(f"{name} must be a positive integer ({example}), got {value!r}")


def _grid(grid: int | None) -> int:
    if grid is None:
        return 1
    _check_int("grid", grid, "row lengths are multiples of it, e.g. 8 or 16; 1 for any length")
    return int(grid)


def _lengths(observed: Any, cap: int | None, step: int) -> tuple[np.ndarray, np.ndarray, int, tuple[float, float]]:
    """Observed lengths and counts up to the top row, the top row's length, and the share
    and count of inputs above it."""
    obs = observed if isinstance(observed, Observations) else observe(observed)
    if len(obs.dims) != 1:
        raise PlanError(f"a packed plan is over token lengths (one dim); these observations have dims {list(obs.dims)}")
    lengths = obs.shapes[:, 0].astype(np.int64)
    counts = obs.counts.astype(np.float64)
    if len(lengths) and lengths.min() < 1:
        raise PlanError(f"token lengths must be at least 1, got {int(lengths.min())}; drop empty texts")
    if cap is None:
        top = int(-(-int(lengths.max()) // step) * step)
    else:
        _check_int("cap", cap, "the top row length, e.g. 256")
        top = int(cap)
    inside = lengths <= top
    if not inside.any():
        raise PlanError(f"every observed length is above the top row ({top}); raise the cap")
    above_count = float(counts[~inside].sum())
    return lengths[inside], counts[inside], top, (above_count / float(counts.sum()), above_count)


def _sample(lengths: np.ndarray, counts: np.ndarray, n: int) -> np.ndarray:
    """The lengths as a multiset: exact where the counts are whole and sum to at most ``n``,
    else ``n`` lengths in proportion to the counts (largest remainders)."""
    total = float(counts.sum())
    whole = np.allclose(counts, np.round(counts))
    if whole and total <= n:
        reps = np.round(counts).astype(np.int64)
    else:
        quota = counts / total * n
        reps = np.floor(quota).astype(np.int64)
        short = n - int(reps.sum())
        if short > 0:
            reps[np.argsort(-(quota - reps), kind="stable")[:short]] += 1
    return np.repeat(lengths, reps)


def _candidates(lengths: np.ndarray, counts: np.ndarray, top: int, step: int) -> list[int]:
    """Row lengths to try: the length quantiles, the powers of two from 16 and eighths of
    the top, rounded up onto the grid, up to the top."""
    order = np.argsort(lengths)
    cum = np.cumsum(counts[order]) / counts.sum()
    picks = {int(lengths[order][min(len(order) - 1, int(np.searchsorted(cum, q - 1e-12)))]) for q in _QUANTILES}
    picks |= {2 ** e for e in range(4, 16) if 2 ** e < top}
    picks |= {top * i // 8 for i in range(1, 8)}  # an even ladder: rows longer than most texts pack them
    out = {int(-(-p // step) * step) for p in picks}
    return sorted({p for p in out if 0 < p < top} | {top})


def _simulate(sim: np.ndarray, edges: tuple[int, ...], max_segments: int,
              row_cost: dict[int, float]) -> tuple[float, dict[int, int], dict[str, Any]]:
    """Expected cost per text of packing ``sim`` into rows of ``edges``; each row runs at
    the shortest edge its texts fill (as the packed front end groups rows)."""
    layout = pack(sim.tolist(), edges, max_segments)
    ends = np.array(edges, dtype=np.int64)
    used = np.array([filled(row) for row in layout.rows], dtype=np.int64)
    runs_at = ends[np.searchsorted(ends, used, side="left")]
    total = sum(row_cost[int(L)] for L in runs_at)
    by_length = {int(L): int(n) for L, n in zip(*np.unique(runs_at, return_counts=True))}
    alone = np.zeros(len(sim), dtype=bool)
    texts_at = dict.fromkeys(edges, 0)
    for row, L in zip(layout.rows, runs_at):
        texts_at[int(L)] += len(row)
        if len(row) == 1:
            alone[row[0].sequence] = True
    info = {
        "padding": 1.0 - float(used.sum()) / float(runs_at.sum()),
        "segments_used": max(len(row) for row in layout.rows),
        "alone": alone,
        "texts_at": texts_at,
    }
    return total / len(sim), by_length, info


def _placed(sim: np.ndarray, shapes: list[tuple[int, int]], max_segments: int,
            cost: CostModel) -> tuple[float, float]:
    """(cost per text, padding) of running ``sim`` on ``shapes`` as the runtime places it
    (:meth:`~bucketwise.router.Router.place`: packed rows cut into runs of the shapes),
    every run at its bucket's cost and volume."""
    plan_ = Plan(tuple(Bucket({BATCH: b, "seq": L}) for b, L in shapes), cost)
    runs = Router(plan_).place(sim.tolist(), max_segments=max_segments)
    volume = sum(run.bucket.volume for run in runs if run.bucket is not None)
    total = sum(float(cost.cost(run.bucket)) for run in runs if run.bucket is not None)
    return total / len(sim), 1.0 - float(sim.sum()) / volume


def _shapes(edges: tuple[int, ...], by_length: dict[int, int], sizes: list[int], k: int,
            positions_per_call: int) -> list[tuple[int, int]]:
    """Rows per shape by the rule in the module docstring; spare shapes to the busiest lengths."""
    positions = {L: by_length.get(L, 0) * L for L in edges}
    total = sum(positions.values()) or 1
    shapes: list[tuple[int, int]] = []
    for L in edges:
        fill = max(1.0, positions[L] / total * positions_per_call / L)
        fits = [b for b in sizes if b <= fill and b * L <= positions_per_call] or [sizes[0]]
        shapes.append((max(fits), L))
    added = True
    while len(shapes) < k and added:
        added = False
        for L in sorted(edges, key=lambda n: -positions[n]):
            have = min(b for b, n in shapes if n == L)
            smaller = [b for b in sizes if b < have]
            if smaller and len(shapes) < k:
                shapes.append((max(smaller), L))
                added = True
    return sorted(shapes, key=lambda s: (s[1], -s[0]))


def _ranges(edges: tuple[int, ...], sim: np.ndarray, alone: np.ndarray) -> tuple[PackedRange, ...]:
    out = []
    low = 0
    for L in edges:
        inside = (sim > low) & (sim <= L)
        n = int(inside.sum())
        if n:
            out.append(PackedRange(low, L, n / len(sim), float(alone[inside].mean())))
        low = L
    return tuple(out)
