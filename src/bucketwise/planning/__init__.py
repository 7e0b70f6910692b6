"""Planners: choose buckets from observed shapes, and report how good a plan is.

``plan(sizes, k=4)`` is exact in 1-D (dynamic programming); N-D plans use greedy + local
search, or an exact MILP on small instances. ``report(plan, sizes)`` compares a plan with
pad-to-max, powers of two and equal-frequency quantiles. ``plan_packed(lengths, k=3,
max_segments=16)`` chooses packed shapes (rows × row length) and ``packed_report`` sets them
beside the best unpacked plan of as many shapes. Cost models live in
``bucketwise.costs``; measuring them on a backend is the runtime's
(``bucketwise.runtime.measure_cost``).
"""

from ..costs import PolynomialCost, fit_cost
from .dp import Solution1D, optimal_1d
from .observe import Observations, observe
from .packed import PackedPlan, PackedReport, packed_report, plan_packed
from .planner import bucket_budget, neuron_bucket_count, plan
from .report import PlanReport, StrategyReport, alternatives, report

__all__ = [
    "Observations",
    "PackedPlan",
    "PackedReport",
    "PlanReport",
    "PolynomialCost",
    "Solution1D",
    "StrategyReport",
    "alternatives",
    "bucket_budget",
    "fit_cost",
    "neuron_bucket_count",
    "observe",
    "optimal_1d",
    "packed_report",
    "plan",
    "plan_packed",
    "report",
]
