"""The router: every routing and overflow decision, in one place.

Given a shape, a :class:`Router` answers which bucket runs it, how a call with more rows
than any bucket holds is cut into chunks, and what the overflow policy does with a shape
larger than every bucket. The runner, the batcher, text tokenizing, the server's admission
check and the planner's traffic estimate all ask it; nothing else decides.

Routing contract (tested at the edges): the chosen bucket *covers* the shape (is at least
as large in every dim); among covering buckets it is the cheapest under the plan's cost
model, ties going to the smaller volume; a size equal to a bucket edge goes to that
bucket. The router only ever chooses among buckets that exist in the plan.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .errors import BucketOverflowError, ConfigError, PlanError
from .plans import Plan
from .shapes import BATCH, Bucket, Shape

__all__ = [
    "Router",
    "Route",
    "route",
    "OverflowPolicy",
    "OVERFLOW_POLICIES",
    "COUNTED_OVERFLOWS",
]

OverflowPolicy = Literal["error", "truncate", "fallback"]
OVERFLOW_POLICIES: tuple[str, ...] = ("error", "truncate", "fallback")
# What stats count as overflows: the policies above, plus resizing done before the call
# (images shrunk to fit, see bucketwise.models.vision.ImageModel).
COUNTED_OVERFLOWS: tuple[str, ...] = ("truncate", "fallback", "resize")


@dataclass(frozen=True)
class Route:
    """The router's answer for one call.

    ``policy`` is ``"bucket"`` (the shape fits), ``"truncate"`` (it was cut to fit: run
    ``shape``) or ``"fallback"`` (run the model uncompiled at the exact shape; ``chunks``
    is empty). ``chunks`` lists ``(start_row, stop_row, bucket)``; a plan without a batch
    dim has one chunk with rows ``(0, 1)``.
    """

    policy: Literal["bucket", "truncate", "fallback"]
    shape: Mapping[str, int]
    chunks: tuple[tuple[int, int, Bucket], ...]


class Router:
    """Routing and overflow for one plan.

    Args:
        plan: the buckets that exist, ranked by their cost model.
        overflow: what to do with a shape larger than every bucket: ``"error"`` raises
            :class:`BucketOverflowError`; ``"truncate"`` cuts non-batch dims to the
            largest bucket; ``"fallback"`` runs uncompiled at the exact shape.
    """

    def __init__(self, plan: Plan, *, overflow: OverflowPolicy = "error") -> None:
        if overflow not in OVERFLOW_POLICIES:
            raise ConfigError(f"overflow must be one of {OVERFLOW_POLICIES}, got {overflow!r}")
        self.plan = plan
        self.overflow: OverflowPolicy = overflow
        self.dims = plan.dims
        self.batched = BATCH in self.dims
        self.limits = {d: plan.max_size(d) for d in self.dims if d != BATCH}
        self._ranked = plan.buckets  # cheapest first
        self._edges: tuple[int, ...] = ()
        self._best_from: tuple[Bucket, ...] = ()
        if len(self.dims) == 1:
            by_size = sorted(plan.buckets, key=lambda b: b.sizes[0][1])
            # best[i]: the cheapest of by_size[i:], the buckets covering any size that
            # bisects to i. Ties keep the smaller bucket: equal cost, less padding.
            best = list(by_size)
            for i in range(len(by_size) - 2, -1, -1):
                if plan.cost(best[i + 1]) < plan.cost(by_size[i]):
                    best[i] = best[i + 1]
            self._edges = tuple(b.sizes[0][1] for b in by_size)
            self._best_from = tuple(best)
        # Per-call lookups, memoised (plans are frozen): a fine plan has over 100 buckets.
        self._sizes = {d: plan.sizes(d) for d in self.dims}
        self._routes: dict[tuple[tuple[str, int], ...], Bucket] = {}
        self._max_rows: dict[tuple[tuple[str, int], ...], int] = {}

    # -- one shape ------------------------------------------------------------------------

    def route(self, shape: Shape, *, among: Collection[Bucket] | None = None) -> Bucket:
        """The cheapest bucket that covers ``shape`` (of ``among``, where given: the
        buckets built so far during a lazy start). Raises :class:`BucketOverflowError`."""
        self._check_dims(shape)
        if self._edges and among is None:
            (dim,) = self.dims
            i = bisect.bisect_left(self._edges, shape[dim])
            if i < len(self._edges):
                return self._best_from[i]
        else:
            key = tuple(sorted(shape.items())) if among is None else None
            if key is not None and key in self._routes:
                return self._routes[key]
            for bucket in self._ranked:
                if (among is None or bucket in among) and all(shape[d] <= s for d, s in bucket.sizes):
                    if key is not None and len(self._routes) < 65536:
                        self._routes[key] = bucket
                    return bucket
        raise BucketOverflowError(self.overflow_message(shape))

    def fits(self, shape: Shape) -> bool:
        """True when some bucket covers ``shape``'s non-batch dims (rows are chunked)."""
        return self.max_rows(shape) > 0

    def max_rows(self, shape: Shape) -> int:
        """The most rows one run can take at ``shape``'s non-batch sizes: the largest batch
        among the buckets that cover them (1 without a batch dim; 0 when none covers)."""
        key = tuple(sorted((d, n) for d, n in shape.items() if d != BATCH))
        found = self._max_rows.get(key)
        if found is not None:
            return found
        best = 0
        for bucket in self._ranked:
            if all(shape[d] <= s for d, s in bucket.sizes if d != BATCH):
                best = max(best, bucket[BATCH] if self.batched else 1)
        if len(self._max_rows) < 65536:
            self._max_rows[key] = best
        return best

    def resolve(self, shape: Shape) -> Route:
        """Route a whole call: apply the overflow policy, then cut the rows into chunks.

        Each chunk takes as many rows as the largest batch bucket that covers the shape;
        the last takes the rest, in the cheapest bucket that holds them.
        """
        self._check_dims(shape)
        policy: Literal["bucket", "truncate", "fallback"] = "bucket"
        step = self.max_rows(shape)
        if step == 0:
            if self.overflow == "fallback":
                return Route("fallback", dict(shape), ())
            if self.overflow == "truncate":
                cut = self.truncated(shape)
                step = self.max_rows(cut)
                if step == 0:  # N-D: no one bucket is largest in every dim
                    raise BucketOverflowError(self.overflow_message(cut))
                shape, policy = cut, "truncate"
            else:
                raise BucketOverflowError(self.overflow_message(self._one_row(shape)))
        if not self.batched:
            return Route(policy, dict(shape), ((0, 1, self.route(shape)),))
        rows = shape[BATCH]
        chunks = []
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            chunks.append((start, stop, self.route({**shape, BATCH: stop - start})))
        return Route(policy, dict(shape), tuple(chunks))

    def truncated(self, shape: Shape) -> dict[str, int]:
        """``shape`` with each non-batch dim cut to the largest bucket's size."""
        return {d: min(s, self.limits[d]) if d in self.limits else s for d, s in shape.items()}

    def overflow_message(self, shape: Shape) -> str:
        largest = {d: self.plan.max_size(d) for d in self.dims}
        over = [d for d in self.dims if shape[d] > largest[d]]
        if over:
            detail = ", ".join(f"{d}={shape[d]} > largest {largest[d]}" for d in over)
        else:
            detail = "no single bucket is large enough in every dim at once"
        return (
            f"input shape {dict(shape)} is larger than every bucket ({detail}). Fix: add a bucket "
            f"that covers it to the plan, or opt in to an overflow policy: overflow='truncate' "
            f"(cut sequences to the largest bucket) or overflow='fallback' (run uncompiled at the "
            f"exact shape)"
        )

    # -- batches of waiting rows (the batcher) ------------------------------------------

    def queue_edges(self, dim: str) -> list[int]:
        """The sizes of ``dim`` across the buckets: the batcher keeps one queue per size.

        A row of length ``n`` waits in the queue of the smallest edge ``>= n``. Every row of
        one queue is covered by exactly the same buckets, so a queue routes as its edge.
        """
        return list(self._sizes[dim])

    def queue_edge(self, dim: str, size: int) -> int | None:
        """The queue a row of ``size`` along ``dim`` waits in: the smallest edge that holds
        it, or ``None`` when it is longer than every bucket (the overflow policy's)."""
        edges = self._sizes[dim]
        i = bisect.bisect_left(edges, size)
        return edges[i] if i < len(edges) else None

    def queue_key(self, sizes: Shape) -> tuple[int, ...] | None:
        """The queue a row of ``sizes`` (every non-batch dim) waits in: per dim, in plan
        order, the smallest edge that holds it. Rows with the same key are covered by
        exactly the same buckets. ``None`` when some dim is larger than every bucket."""
        key = []
        for d in self.dims:
            if d == BATCH:
                continue
            edge = self.queue_edge(d, sizes[d])
            if edge is None:
                return None
            key.append(edge)
        return tuple(key)

    def take(self, rows: int, **sizes: int) -> tuple[Bucket, int]:
        """For ``rows`` waiting rows at ``sizes`` (a queue's edge): the bucket to run and
        how many rows it takes. Chooses among the buckets that exist: as many rows as the
        largest covering batch bucket holds, in the cheapest bucket that holds them. Its
        spare batch rows are free for shorter rows to ride along."""
        step = self.max_rows({**sizes, BATCH: 1})
        if step == 0:
            raise BucketOverflowError(self.overflow_message({**sizes, BATCH: 1}))
        n = min(rows, step)
        return self.route({**sizes, BATCH: n}), n

    # -- sets of buckets and many shapes ------------------------------------------------

    def maximal(self) -> list[Bucket]:
        """The buckets no other bucket covers: together they hold every shape the plan holds."""
        return [b for b in self._ranked
                if not any(c != b and all(c[d] >= s for d, s in b.sizes) for c in self._ranked)]

    def serves_all(self, built: Collection[Bucket]) -> bool:
        """True when every bucket of the plan is covered by one of ``built``."""
        return all(any(all(c[d] >= s for d, s in b.sizes) for c in built) for b in self._ranked)

    def route_many(self, shapes: np.ndarray, dims: Sequence[str]) -> np.ndarray:
        """Vectorised :meth:`route`: for each row of ``shapes`` (columns named by ``dims``)
        the index into ``plan.buckets`` of its bucket, or -1 where none covers it."""
        if set(dims) != set(self.dims):
            raise PlanError(f"shapes name dims {list(dims)} but the plan buckets {list(self.dims)}")
        shapes = np.asarray(shapes)
        out = np.full(len(shapes), -1, dtype=np.int64)
        for i, bucket in enumerate(self._ranked):  # cheapest first: the first cover wins
            limit = np.array([bucket[d] for d in dims])
            hit = (out < 0) & np.all(shapes <= limit, axis=1)
            out[hit] = i
        return out

    # -- helpers ----------------------------------------------------------------------------

    def _check_dims(self, shape: Shape) -> None:
        if len(shape) != len(self.dims) or any(d not in shape for d in self.dims):
            raise PlanError(
                f"shape {dict(shape)} has dims {sorted(shape)} but the plan buckets "
                f"{sorted(self.dims)}; shapes and buckets must name the same dims"
            )

    def _one_row(self, shape: Shape) -> dict[str, int]:
        return {**shape, BATCH: 1} if self.batched else dict(shape)


def route(plan: Plan, shape: Shape) -> Bucket:
    """The cheapest bucket of ``plan`` that covers ``shape``: ``Router(plan).route(shape)``.

    A plan's router is built once and kept, so calling this in a loop costs a lookup.
    1-D plans route in O(log k) by bisection; N-D plans scan the k buckets in cost order.
    """
    return router_of(plan).route(shape)


def router_of(plan: Plan) -> Router:
    """The error-policy router of ``plan``, built once and kept on the plan (plans are
    frozen, so it never goes stale)."""
    router = plan.__dict__.get("_router")
    if router is None:
        router = Router(plan)
        object.__setattr__(plan, "_router", router)
    return router
