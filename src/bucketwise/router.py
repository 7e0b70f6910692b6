"""The router: every routing and overflow decision, in one place.

Given a shape, a :class:`Router` answers which bucket runs it, how a call with more rows
than any bucket holds is cut into chunks, and what the overflow policy does with a shape
larger than every bucket. The runner, the batcher, text tokenizing, the server's admission
check and the planner's traffic estimate all ask it; nothing else decides.

Placement (issue #30): for many inputs at once, the router answers with runs (:class:`Run`):
each a bucket and its rows, each row a tuple of :class:`~bucketwise.packer.Slot`
(input index, offset in the row, length). Unpacked, a row holds one slot at offset 0;
packed, several inputs share a row. Bulk jobs ask :meth:`Router.place` for every run of
a list of lengths; the batcher asks :meth:`Router.next_run` for the run of a due queue,
with the rows of smaller queues riding in its spare room.

Routing contract (tested at the edges): the chosen bucket *covers* the shape (is at least
as large in every dim); among covering buckets it is the cheapest under the plan's cost
model, ties going to the smaller volume; a size equal to a bucket edge goes to that
bucket. The router only ever chooses among buckets that exist in the plan.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .errors import BucketOverflowError, ConfigError, PlanError
from .packer import Slot, filled, pack
from .plans import Plan
from .shapes import BATCH, Bucket, Shape

__all__ = [
    "Router",
    "Route",
    "Run",
    "Slot",
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


@dataclass(frozen=True)
class Run:
    """One run the router placed: ``bucket`` and its ``rows``, each row a tuple of
    :class:`~bucketwise.packer.Slot` (``sequence``: the input's index in the caller's list,
    ``offset`` in the row, ``length``). Unpacked, every row holds one slot at offset 0.
    ``bucket`` is ``None`` for an input longer than every bucket: it runs alone, under the
    overflow policy."""

    bucket: Bucket | None
    rows: tuple[tuple[Slot, ...], ...]

    @property
    def items(self) -> list[int]:
        """The inputs of the run, row by row, in slot order."""
        return [s.sequence for row in self.rows for s in row]

    @property
    def filled(self) -> list[int]:
        """Each row's filled length: where its last slot ends."""
        return [filled(row) for row in self.rows]


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

    # -- placement: many inputs at once ---------------------------------------------------

    def place(self, lengths: Sequence[int], *, max_segments: int = 1, dim: str = "seq") -> list[Run]:
        """Every run for inputs of ``lengths`` along ``dim`` (a plan over batch and
        ``dim``), in bulk.

        Unpacked (``max_segments=1``): inputs are sorted by length and grouped by the
        edge they fit (:meth:`queue_edge`: every input of a group is covered by the same
        buckets), and each group is cut by :meth:`take`, except that a group's last run
        fills a smaller batch bucket exactly, where that bucket holds at least half of the
        rows left, rather than pad over 1/8 of a larger one. An input longer than every
        bucket gets a run of its own with ``bucket=None`` (the overflow policy's).

        Packed (``max_segments > 1``): inputs are first packed first-fit decreasing into
        rows of the plan's lengths, at most ``max_segments`` to a row
        (:func:`~bucketwise.packer.pack`); the rows are then placed as inputs are, by the
        length they fill, and a group's last run is split into smaller full buckets
        wherever that computes fewer positions (a packed plan's few batch sizes are far
        apart). An input longer than every bucket raises :class:`BucketOverflowError`.
        """
        if max_segments < 1:
            raise ConfigError(f"max_segments must be >= 1, got {max_segments}")
        if max_segments == 1:
            return [Run(bucket, tuple((Slot(i, 0, int(lengths[i])),) for i in part))
                    for bucket, part in self._groups(lengths, dim, few_shapes=False)]
        over = next((i for i, n in enumerate(lengths) if self.queue_edge(dim, n) is None), None)
        if over is not None:
            raise BucketOverflowError(f"text {over} has {lengths[over]} tokens; the longest packed row holds "
                                      f"{self.limits[dim]}")
        rows = pack(lengths, self.queue_edges(dim), max_segments).rows
        return [Run(bucket, tuple(rows[r] for r in part))
                for bucket, part in self._groups([filled(row) for row in rows], dim, few_shapes=True)
                if bucket is not None]

    def _groups(self, lengths: Sequence[int], dim: str, *, few_shapes: bool) -> list[tuple[Bucket | None, list[int]]]:
        """(bucket, indices) per run for rows of ``lengths``: see :meth:`place`."""
        groups: dict[int | None, list[int]] = {}
        for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
            groups.setdefault(self.queue_edge(dim, lengths[i]), []).append(i)
        out: list[tuple[Bucket | None, list[int]]] = []
        for edge, idx in groups.items():
            if edge is None:
                out.extend((None, [i]) for i in idx)
                continue
            while idx:
                bucket, n = self.take(len(idx), **{dim: edge})
                if n == len(idx) and bucket[BATCH] - n > bucket[BATCH] // 8:
                    # The group's last, partial run would be over 1/8 pad rows, which cost
                    # as much as real ones: run a full smaller bucket now, the rest next,
                    # where it takes at least half the rows (not many small runs instead).
                    full = self._full_run(n, dim, edge)
                    if full is not None and (2 * full[1] >= n or (
                            few_shapes and -(-n // full[1]) * full[0].volume < bucket.volume)):
                        bucket, n = full
                part, idx = idx[:n], idx[n:]
                out.append((bucket, part))
        return out

    def _full_run(self, rows: int, dim: str, edge: int) -> tuple[Bucket, int] | None:
        """The largest bucket at ``dim`` = ``edge`` that ``rows`` rows fill exactly, if any."""
        for size in reversed(self.queue_edges(BATCH)):
            if size <= rows:
                bucket = self.route({BATCH: size, dim: edge})
                if bucket[BATCH] == size:
                    return bucket, size
        return None

    def next_run(self, due: Sequence[Shape], riders: Sequence[Shape] = (), *, max_segments: int = 1) -> Run:
        """The run for the rows of one due queue (the batcher's), oldest first: each of
        ``due`` has the queue's sizes per non-batch dim, all within the same edges
        (:meth:`queue_key`). ``riders`` are rows waiting in other queues, oldest first;
        slots index ``due`` then ``riders`` (rider ``j`` is ``len(due) + j``).

        The bucket is the one :meth:`take` chooses for the due rows. Its spare room is
        computed anyway, so it is filled with the oldest riders that fit within it, which
        then cost nothing extra and leave sooner; a rider never makes the run larger.

        Unpacked, a row is one input and riders fill spare batch rows. Packed
        (``max_segments > 1``, a plan over batch and one more dim), due rows are packed
        first-fit decreasing into rows of the queue's edge, as many of the oldest as the
        largest covering bucket's rows hold; riders then fill, first fit and oldest
        first, the room left in those rows (up to the bucket's length and
        ``max_segments``) and the spare rows.
        """
        if not due:
            raise ConfigError("next_run needs at least one due row")
        key = self._edges_of(due[0])
        if max_segments <= 1:
            bucket, n = self.take(len(due), **key)
            rows = [(Slot(i, 0, math.prod(due[i].values())),) for i in range(n)]
            free = bucket[BATCH] - n
            for j, sizes in enumerate(riders):
                if free == 0:
                    break
                if all(sizes[d] <= bucket[d] for d in key):
                    rows.append((Slot(len(due) + j, 0, math.prod(sizes[d] for d in key)),))
                    free -= 1
            return Run(bucket, tuple(rows))
        (dim,) = key
        edge = key[dim]
        lengths = [int(s[dim]) for s in due]
        step = self.max_rows({dim: edge, BATCH: 1})
        if step == 0:
            raise BucketOverflowError(self.overflow_message({dim: edge, BATCH: 1}))
        # The oldest prefix of the due rows whose packing fits the largest covering bucket:
        # all of them, usually; else the longest such prefix, by bisection.
        layout = pack(lengths, edge, max_segments).rows
        if len(layout) > step:
            lo, hi = 1, len(lengths) - 1
            layout = pack(lengths[:1], edge, max_segments).rows  # layout: always the packing of the first lo
            while lo < hi:
                mid = (lo + hi + 1) // 2
                tried = pack(lengths[:mid], edge, max_segments).rows
                if len(tried) <= step:
                    lo, layout = mid, tried
                else:
                    hi = mid - 1
        packed = [list(row) for row in layout]
        bucket, _ = self.take(len(packed), **key)
        width = bucket[dim]
        used = [filled(row) for row in packed]
        for j, sizes in enumerate(riders):
            n = int(sizes[dim])
            if n > width:
                continue
            r = next((r for r in range(len(packed)) if used[r] + n <= width and len(packed[r]) < max_segments), None)
            if r is None:
                if len(packed) == bucket[BATCH]:
                    continue
                packed.append([])
                used.append(0)
                r = len(packed) - 1
            packed[r].append(Slot(len(due) + j, used[r], n))
            used[r] += n
        return Run(bucket, tuple(tuple(row) for row in packed))

    def _edges_of(self, sizes: Shape) -> dict[str, int]:
        key = self.queue_key(sizes)
        if key is None:
            raise BucketOverflowError(self.overflow_message({**sizes, BATCH: 1} if self.batched else sizes))
        return dict(zip((d for d in self.dims if d != BATCH), key))

    def padded(self, sizes: np.ndarray, dim: str) -> np.ndarray:
        """Each of ``sizes`` padded to the smallest edge of ``dim`` that holds it (the
        queue it waits in); a size above every edge stays as it is (the overflow
        policy's). Vectorised :meth:`queue_edge`."""
        edges = np.asarray(self._sizes[dim])
        sizes = np.asarray(sizes)
        at = np.searchsorted(edges, sizes)
        return np.where(at < len(edges), edges[np.minimum(at, len(edges) - 1)], sizes)

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
