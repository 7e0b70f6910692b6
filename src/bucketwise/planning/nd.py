"""N-D bucket choice (height×width, batch×seq): greedy + local search, or an exact MILP.

A bucket covers a shape when it is at least as large in every dim, and each shape routes
to the cheapest chosen bucket covering it. Candidate buckets are the product of the
observed values per dim (rounded up to the grid; thinned to quantiles when there are very
many), so shrinking a bucket to the per-dim maximum of its members is always a candidate.
Shapes are first rounded up per dim to the next candidate value, which changes no cost:
a bucket covers a shape exactly when it covers its rounded shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..costs import CostModel
from ..errors import PlanError
from ..shapes import Bucket
from .observe import Observations, unique_rows

__all__ = ["optimal_nd", "candidates_nd", "greedy_local_search", "exact_milp", "assignment_cost"]

MAX_VALUES_PER_DIM = 48
EXACT_LIMIT = 6_000  # covering (shape, candidate) pairs up to which the MILP runs by default


def candidates_nd(obs: Observations, caps: dict[str, int], grids: Mapping[str, int | None] | int | None) -> list[np.ndarray]:
    values = []
    for d in obs.dims:
        grid = grids.get(d) if isinstance(grids, Mapping) else grids
        col = obs.column(d)
        v = col if grid is None else -(-col // grid) * grid
        v = np.unique(v[v <= caps[d]])
        if len(v) > MAX_VALUES_PER_DIM - 1:
            # Weighted quantiles of the observed values, rounded up to observed values.
            order = np.argsort(col)
            cum = np.cumsum(obs.counts[order]) / obs.total
            qs = np.linspace(0, 1, MAX_VALUES_PER_DIM)[1:-1]
            picks = col[order][np.searchsorted(cum, qs)]
            if grid is not None:
                picks = -(-picks // grid) * grid
            v = np.unique(picks[picks <= caps[d]])
        values.append(np.unique(np.append(v, caps[d])))
    return values


def _cells(obs: Observations, values: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    rounded = np.stack([values[i][np.searchsorted(values[i], obs.shapes[:, i])] for i in range(len(values))], axis=1)
    cells, inverse = unique_rows(rounded)
    counts = np.bincount(inverse, weights=obs.counts, minlength=len(cells))
    return cells, counts


def assignment_cost(cover: np.ndarray, w: np.ndarray, counts: np.ndarray, chosen: Sequence[int]) -> float:
    """Σ count × cost of the cheapest chosen candidate covering each shape (inf if none)."""
    per = np.where(cover[:, chosen], w[chosen][None, :], np.inf).min(axis=1)
    return float((per * counts).sum())


def greedy_local_search(cover: np.ndarray, w: np.ndarray, counts: np.ndarray, k: int, top: int, *, max_rounds: int = 50) -> list[int]:
    """Greedy additions by largest saving, then swaps until no swap lowers the cost."""
    chosen = [top]
    cur = np.full(len(counts), w[top])
    while len(chosen) < k:
        gain = (np.clip(cur[:, None] - w[None, :], 0, None) * cover * counts[:, None]).sum(axis=0)
        gain[chosen] = 0
        j = int(np.argmax(gain))
        if gain[j] <= 0:
            break
        chosen.append(j)
        cur = np.minimum(cur, np.where(cover[:, j], w[j], np.inf))
    total = float((cur * counts).sum())
    masked = np.where(cover, w[None, :], np.inf)  # cost of each candidate for each shape
    for _ in range(max_rounds):
        improved = False
        for pos in range(1, len(chosen)):  # the top bucket stays: it covers the upper bound
            rest = [c for i, c in enumerate(chosen) if i != pos]
            base = masked[:, rest].min(axis=1)
            totals = (np.minimum(base[:, None], masked) * counts[:, None]).sum(axis=0)
            totals[chosen] = np.inf
            j = int(np.argmin(totals))
            if totals[j] < total * (1 - 1e-12):
                chosen[pos] = j
                total = float(totals[j])
                improved = True
        if not improved:
            break
    return chosen


def exact_milp(cover: np.ndarray, w: np.ndarray, counts: np.ndarray, k: int, top: int) -> list[int]:
    """The optimum by mixed-integer programming (scipy's HiGHS). For small instances."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix, csr_matrix

    n, m = cover.shape
    rows, cols = np.nonzero(cover)  # x variables: one per covering (shape, candidate) pair
    nx = len(rows)
    c = np.concatenate([counts[rows] * w[cols], np.zeros(m)])
    # Each shape assigned once: Σ_j x_sj = 1.
    a1 = coo_matrix((np.ones(nx), (rows, np.arange(nx))), shape=(n, nx + m))
    # x_sj <= y_j.
    a2 = coo_matrix(
        (np.concatenate([np.ones(nx), -np.ones(nx)]), (np.tile(np.arange(nx), 2), np.concatenate([np.arange(nx), nx + cols]))),
        shape=(nx, nx + m),
    )
    # At most k buckets.
    a3 = csr_matrix((np.ones(m), (np.zeros(m, dtype=int), nx + np.arange(m))), shape=(1, nx + m))
    lower = np.zeros(nx + m)
    lower[nx + top] = 1.0  # the top bucket is always chosen
    res = milp(
        c,
        constraints=[LinearConstraint(a1, 1, 1), LinearConstraint(a2, -np.inf, 0), LinearConstraint(a3, 0, k)],
        integrality=np.concatenate([np.zeros(nx), np.ones(m)]),
        bounds=Bounds(lower, np.ones(nx + m)),
    )
    if not res.success:
        raise PlanError(f"the exact N-D planner failed: {res.message}")
    return [int(j) for j in np.nonzero(res.x[nx:] > 0.5)[0]]


def optimal_nd(
    obs: Observations,
    cost: CostModel,
    k: int,
    *,
    caps: dict[str, int],
    grid: Mapping[str, int | None] | int | None,
    exact: bool | None,
    batch_sizes: Sequence[int] | None,
) -> tuple[list[dict[str, int]], str]:
    values = candidates_nd(obs, caps, grid)
    cells, counts = _cells(obs, values)
    mesh = np.stack(np.meshgrid(*values, indexing="ij"), axis=-1).reshape(-1, len(values))
    extra = {"batch": 1} if batch_sizes else {}
    w = np.array([cost.cost(Bucket({**dict(zip(obs.dims, map(int, row))), **extra})) for row in mesh])
    cover = np.all(cells[:, None, :] <= mesh[None, :, :], axis=2)
    top = int(np.flatnonzero(np.all(mesh == np.array([caps[d] for d in obs.dims]), axis=1))[0])
    use_exact = exact if exact is not None else int(cover.sum()) <= EXACT_LIMIT
    if use_exact:
        chosen, name = exact_milp(cover, w, counts, k, top), "exact-milp"
    else:
        chosen, name = greedy_local_search(cover, w, counts, k, top), "greedy+local-search"
    # Drop chosen buckets that no shape routes to (they only cost compile time).
    per = np.where(cover[:, chosen], w[chosen][None, :], np.inf)
    used = sorted({chosen[i] for i in np.argmin(per, axis=1)} | {top})
    return [dict(zip(obs.dims, map(int, mesh[j]))) for j in used], name
