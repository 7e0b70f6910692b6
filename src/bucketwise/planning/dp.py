"""Exact 1-D bucket choice: a DP over candidate sizes, O(k·m) with a monotone hull.

Problem: observed sizes with counts; candidate bucket sizes ``t_0 < ... < t_{m-1}`` with
costs ``w``; pick at most ``k`` candidates, always including ``t_{m-1}`` (it covers the
upper bound), to minimise ``Σ count × w(bucket the size routes to)``.

Routing sends a size to the *cheapest* chosen bucket that covers it. A candidate that
costs at least as much as some larger candidate is therefore never worth choosing (route
would send its traffic to the larger, cheaper one, and padding up to it is free), so
those are dropped first. What remains has non-decreasing costs, each size routes to the
smallest chosen bucket that covers it, and with ``P`` the prefix sums of the counts per
candidate cell::

    f[j][i] = min( f[j-1][i],  min_{p<i}  f[j-1][p] + w_i · (P[i+1] − P[p+1]) )

For fixed ``i`` the inner term is a minimum over lines ``y = f[j-1][p] − P[p+1]·x``
evaluated at ``x = w_i``; slopes fall as ``p`` grows and queries ``w_i`` rise with ``i``,
so a monotone convex-hull deque answers each layer in O(m).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Solution1D", "drop_dominated", "optimal_1d", "cell_counts"]


@dataclass(frozen=True)
class Solution1D:
    sizes: tuple[int, ...]  # chosen bucket sizes, ascending
    total_cost: float  # Σ count × cost of the bucket each observation routes to


def drop_dominated(candidates: Sequence[int] | np.ndarray, costs: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the candidates that are strictly cheaper than every larger candidate.

    Candidates must be sorted ascending and distinct. The largest is always kept.
    """
    t = np.asarray(candidates, dtype=np.int64)
    w = np.asarray(costs, dtype=np.float64)
    keep = np.zeros(len(t), dtype=bool)
    cheapest_above = np.inf
    for i in range(len(t) - 1, -1, -1):
        if w[i] < cheapest_above:
            keep[i] = True
            cheapest_above = w[i]
    return t[keep], w[keep]


def cell_counts(sizes: np.ndarray, counts: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Count of observations whose smallest covering candidate is each candidate."""
    idx = np.searchsorted(candidates, sizes, side="left")
    if len(idx) and idx.max() >= len(candidates):
        raise ValueError("the largest candidate must cover every observed size")
    return np.bincount(idx, weights=counts, minlength=len(candidates)).astype(np.float64)


def optimal_1d(
    sizes: Sequence[int] | np.ndarray,
    counts: Sequence[float] | np.ndarray,
    candidates: Sequence[int] | np.ndarray,
    costs: Sequence[float] | np.ndarray,
    k: int,
) -> Solution1D:
    """The exact optimum of the problem in the module docstring.

    ``candidates`` must be sorted, distinct, and the largest must be at least every size.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    t, w = drop_dominated(candidates, costs)
    cnt = cell_counts(np.asarray(sizes), np.asarray(counts, dtype=np.float64), t)
    # Cells no observation routes to, below the top, never help: drop them.
    used = cnt > 0
    used[-1] = True
    t, w, cnt = t[used], w[used], cnt[used]
    m = len(t)
    P = np.concatenate(([0.0], np.cumsum(cnt)))  # P[i+1] = count of cells 0..i

    # Layer 1: one bucket at t_i serves cells 0..i.
    f = w * P[1:]
    parents: list[np.ndarray] = [np.full(m, -1, dtype=np.int64)]
    for _ in range(2, min(k, m) + 1):
        g = f.copy()
        par = np.full(m, -2, dtype=np.int64)  # -2: inherited from the layer below
        hull_m: list[float] = []  # slopes
        hull_b: list[float] = []  # intercepts
        hull_p: list[int] = []
        head = 0
        for i in range(1, m):
            # Add the line for p = i-1: y = f[p] - P[p+1] * x.
            slope, icpt = -P[i], f[i - 1]
            while len(hull_m) - head >= 1 and hull_m[-1] == slope:
                if hull_b[-1] <= icpt:
                    break
                hull_m.pop(), hull_b.pop(), hull_p.pop()
            else:
                while len(hull_m) - head >= 2 and _bad(hull_m[-2], hull_b[-2], hull_m[-1], hull_b[-1], slope, icpt):
                    hull_m.pop()
                    hull_b.pop()
                    hull_p.pop()
                hull_m.append(slope)
                hull_b.append(icpt)
                hull_p.append(i - 1)
            x = w[i]
            while len(hull_m) - head >= 2 and hull_m[head + 1] * x + hull_b[head + 1] <= hull_m[head] * x + hull_b[head]:
                head += 1
            best = hull_m[head] * x + hull_b[head] + w[i] * P[i + 1]
            if best < g[i]:
                g[i] = best
                par[i] = hull_p[head]
        f = g
        parents.append(par)

    chosen = []
    i, layer = m - 1, len(parents) - 1
    while i >= 0 and layer >= 0:
        p = parents[layer][i]
        if p == -2:  # same cost with one bucket fewer
            layer -= 1
            continue
        chosen.append(int(t[i]))
        if p == -1:
            break
        i, layer = int(p), layer - 1
    return Solution1D(tuple(sorted(chosen)), float(f[m - 1]))


def _bad(m1: float, b1: float, m2: float, b2: float, m3: float, b3: float) -> bool:
    """Line 2 never wins a min once line 3 (smaller slope) is added: drop it."""
    # Intersection x(1,3) <= x(1,2)  <=>  (b3-b1)*(m1-m2) <= (b2-b1)*(m1-m3)
    return (b3 - b1) * (m1 - m2) <= (b2 - b1) * (m1 - m3)
