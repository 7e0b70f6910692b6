"""Dynamic batching over bucket shapes (batch × length, batch × height × width, ...), on asyncio.

Each request (one row: a dict of arrays without the batch axis, e.g. the token ids of one
text, or one CHW image) waits in the queue of its key (:meth:`Router.queue_key`: per dim,
the smallest bucket edge that holds it; every row of one queue is covered by the same
buckets). A queue flushes when it holds as many rows as the largest batch bucket covering
it, or when its oldest request has waited ``max_delay`` seconds. The router places the
run (:meth:`Router.next_run`): the bucket among the buckets that exist, and the slot of
each row; each row is written once into that bucket's buffer, and each row's outputs,
cropped once, go back to its caller.

Placement is the router's alone. The spare room of the chosen bucket is computed anyway,
so the router fills it with the oldest requests waiting in other queues that fit within
the bucket, which then cost nothing extra and leave sooner. A request is never put into a
larger batch at the price of an extra run, and a larger request never waits on a smaller
queue; so the batcher never makes more runs than flushing each queue alone would.

A packed model (``model.packer``, issue #30) queues sequences, not rows: the router packs
a due queue's sequences into rows of its length, several to a row, and shorter waiting
sequences ride in the room the rows leave; the packer writes the rows and reads each
sequence's outputs back from its segment.

Rows whose caller has gone (its future cancelled: a client that disconnected, a request
that timed out) are dropped when their queue flushes, not computed. :meth:`Batcher.drain`
stops admission and, at a deadline, fails the rows that have not started with
:class:`QueueFullError` (a 503 to retry elsewhere) instead of computing them.

Inference runs off the event loop, in one worker thread per stream (``streams``): with
one, a model run at a time keeps the cores for the runtime's own threads; with two (the
server's default), a second batch starts only beside small running ones, whose runs leave
cores idle.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError, QueueFullError
from ..router import Run, Slot
from ..shapes import BATCH, Bucket
from .model import BucketedModel

__all__ = ["Batcher", "QueueFullError", "BatchEvent"]

Key = tuple[int, ...]


@dataclass
class _Pending:
    row: dict[str, Any]  # arrays without the batch axis
    sizes: dict[str, int]  # the row's own size along each non-batch dim
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchEvent:
    """What one flushed batch did; passed to ``on_batch`` (metrics)."""

    rows: int  # requests in the batch (packed: sequences, several to a row of the bucket)
    bucket: Bucket  # the bucket that ran
    real_positions: int
    queue_seconds: list[float]
    inference_seconds: float
    sizes: list[dict[str, int]] = field(default_factory=list)  # each row's own size per non-batch dim


class Batcher:
    """Groups concurrent single-row requests into bucketed batches.

    Args:
        model: a compiled :class:`BucketedModel` whose plan has a ``batch`` dim and at
            least one more, with the batch on the first axis of every input; requests
            carry the other axes.
        max_delay: seconds the oldest request of a queue may wait before it flushes.
        adaptive: wait only while waiting pays. A queue that cannot fill a batch flushes
            as soon as requests stop arriving: at once when they come further apart than
            a quarter of a run (a lone client, whose next request follows the answer),
            else once none has come for twice the recent gap between requests of a burst,
            and never later than ``max_delay``. Off: every such queue waits
            ``max_delay``.
        max_queue: most rows waiting at once; beyond it ``submit`` raises QueueFullError.
        on_batch: called after each batch with a :class:`BatchEvent`.
        on_alone: called with a row's sizes (per non-batch dim) after it ran alone: a row
            larger than every bucket, run under the router's overflow policy.
        streams: batches run at once, each in its own worker thread (1: one at a time).
            A second batch starts beside a running one only while the batches running
            hold at most ``overlap_rows`` rows and ``overlap_positions`` padded positions
            (bucket volume): small runs leave cores idle (a runtime splits them poorly
            over its threads), which a second run fills; large ones use the cores
            already, and a run beside them would only slow them down.
        overlap_rows, overlap_positions: see ``streams``.
    """

    def __init__(
        self,
        model: BucketedModel,
        *,
        max_delay: float = 0.005,
        max_queue: int = 1024,
        on_batch: Callable[[BatchEvent], None] | None = None,
        on_alone: Callable[[dict[str, int]], None] | None = None,
        adaptive: bool = False,
        streams: int = 1,
        overlap_rows: int = 4,
        overlap_positions: int = 128,
    ) -> None:
        dims = tuple(d for d in model.plan.dims if d != BATCH)
        self.packer = model.packer
        if self.packer is not None and len(dims) != 1:
            raise ConfigError(f"a packed model needs a plan over batch and one length dim, got {model.plan.dims}")
        if BATCH not in model.plan.dims or not dims:
            raise ConfigError(f"the batcher needs a plan over batch and at least one more dim, got {model.plan.dims}")
        for s in model.spec.inputs:
            if s.shape[0] != BATCH:
                raise ConfigError(f"the batcher needs the batch on the first axis of every input; "
                                  f"input {s.name!r} has axes {s.shape}")
        if max_delay < 0 or max_queue < 1 or streams < 1:
            raise ConfigError(f"max_delay must be >= 0, max_queue and streams >= 1; got {max_delay}, {max_queue}, "
                              f"{streams}")
        self.streams = streams
        self.model = model
        self.router = model.router
        self.dims = dims
        self.max_delay = max_delay
        self.adaptive = adaptive
        self._last_arrival = float("-inf")
        self._gap = float("inf")  # recent seconds between requests inside a burst (moving average)
        self._run = 0.0  # recent seconds per run (moving average)
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.on_alone = on_alone
        # One queue per key, made when first used (a 2-D plan has up to |heights|×|widths|).
        self._queues: dict[Key, deque[_Pending]] = {}
        self._full: dict[Key, int] = {}  # rows one run can take at a key
        self._queued = 0
        self._wake = asyncio.Event()
        self._closing = False
        # One thread per stream, and a batch takes the lowest free one, so batches that run
        # one at a time always run on the same thread (a shared pool hands work to its
        # threads in turn). With a shared pool, a lone client's batches ran 7.5-9.1 ms
        # against 6.2-6.9 ms for one stream; this and the lone-arrival flush in _arrived
        # together made the two level (not measured apart).
        self._executors = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"bucketwise-infer-{i}")
                           for i in range(streams)]
        self._free = list(range(streams))  # streams not running a batch (a heap)
        self._slots = asyncio.Semaphore(streams)  # batches running at once
        self._running: set[asyncio.Task] = set()
        self.overlap_rows = overlap_rows
        self.overlap_positions = overlap_positions
        self._rows_running = 0
        self._volume_running = 0
        self._task: asyncio.Task | None = None
        self._expiry: asyncio.TimerHandle | None = None

# -- public ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    @property
    def queued(self) -> int:
        return self._queued

    def admit(self, rows: int) -> None:
        """Raise QueueFullError unless ``rows`` more rows fit in the queue right now.

        Check a whole request before submitting its rows, so that a refused request
        leaves nothing behind in the queue.
        """
        if self._closing:
            raise QueueFullError("the server is shutting down; retry on another replica")
        if self._queued + rows > self.max_queue:
            raise QueueFullError(
                f"{self._queued} rows are queued and this request adds {rows} (limit {self.max_queue}); retry shortly"
            )

    async def submit(self, row: Mapping[str, Any], *, validated: bool = False) -> dict[str, Any]:
        """Queue one row (inputs without the batch axis); await its outputs (no batch axis).

        A row is checked against the spec here, at the edge, unless ``validated`` says the
        caller built it from the spec itself (e.g. ``SentenceEmbedder.rows``).
        """
        self.admit(1)
        self._arrived()
        return await self._enqueue(row, validated)

    async def submit_many(self, rows: Sequence[Mapping[str, Any]], *, validated: bool = False) -> list[dict[str, Any]]:
        """Queue a whole request's rows at once, or none of them: raises
        :class:`QueueFullError` before queueing anything when they do not all fit, and no
        other request can take the room between the check and the queueing."""
        self.admit(len(rows))
        self._arrived()  # one request, however many rows
        waits = [self._enqueue(row, validated) for row in rows]  # no await in between
        return list(await asyncio.gather(*waits))

    def _enqueue(self, row: Mapping[str, Any], validated: bool) -> Awaitable[dict[str, Any]]:
        if self.packer is not None:  # one sequence, written into a packed row when its run is placed
            arrays = dict(row)
            sizes = self.packer.size(arrays)
        elif validated:
            arrays = {s.name: row[s.name] for s in self.model.spec.inputs}
            sizes = self._sizes(arrays)
        else:
            batch, shape = self.model.spec.validate({k: np.asarray(v)[None] for k, v in row.items()})
            arrays = {k: v[0] for k, v in batch.items()}
            sizes = {d: shape[d] for d in self.dims}
        key = self.router.queue_key(sizes)
        if key is None:
            # Larger than every bucket: the router's overflow policy decides, alone.
            return self._run_alone(arrays, sizes)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        if key not in self._queues:
            self._queues[key] = deque()
            rows = self.router.max_rows({**dict(zip(self.dims, key)), BATCH: 1})
            # Packed, a run is full when the queue's sequences fill its rows' segments.
            self._full[key] = rows * (self.packer.max_segments if self.packer is not None else 1)
        self._queues[key].append(_Pending(arrays, sizes, future))
        self._queued += 1
        self._wake.set()
        self.start()
        return future

    def _sizes(self, arrays: Mapping[str, Any]) -> dict[str, int]:
        """A row's size along each non-batch dim, read from its axes as the spec names them."""
        sizes: dict[str, int] = {}
        for s in self.model.spec.inputs:
            for axis, entry in enumerate(s.shape[1:]):
                if isinstance(entry, str):
                    sizes[entry] = int(arrays[s.name].shape[axis])
        return sizes

    def drain(self, timeout: float) -> None:
        """Stop admitting rows; the queued ones keep running. Those that have not started
        ``timeout`` seconds from now fail with :class:`QueueFullError` (retry elsewhere),
        never computed. Await :meth:`close` to finish."""
        self._closing = True
        self._wake.set()
        if self._expiry is None:
            self._expiry = asyncio.get_running_loop().call_later(max(0.0, timeout), self._expire)

    def _expire(self) -> None:
        err = QueueFullError("the server is shutting down and this request had not started by its drain "
                             "deadline; retry it on another replica")
        for q in self._queues.values():
            while q:
                p = q.popleft()
                if not p.future.done():
                    p.future.set_exception(err)
        self._queued = 0
        self._wake.set()

    async def close(self) -> None:
        """Stop taking requests, finish every queued one, then stop the worker."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._expiry is not None:
            self._expiry.cancel()
        for executor in self._executors:
            executor.shutdown(wait=True)

    # -- internals ------------------------------------------------------------------------

    async def _run_alone(self, arrays: dict[str, np.ndarray], sizes: dict[str, int]) -> dict[str, Any]:
        batch = {k: v[None] for k, v in arrays.items()}
        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(self._executors[0], self.model.run, batch)
        if self.on_alone is not None:
            self.on_alone(sizes)
        return {k: v[0] for k, v in out.items()}

    def _arrived(self) -> None:
        now = time.perf_counter()
        gap = now - self._last_arrival
        self._last_arrival = now
        if self._queued == 0 and not self._running:
            # Nothing queued or running: no burst under way (a lone client, whose request
            # follows its answer), however short the gaps of an earlier burst were.
            self._gap = float("inf")
            return
        # Only gaps inside a burst count (shorter than a quarter of a run): clients that
        # send when their answer comes back arrive in bursts after each run, and the pause
        # between bursts says nothing about how soon the next request of a burst comes.
        if gap < 0.25 * self._run:
            self._gap = gap if self._gap == float("inf") else 0.8 * self._gap + 0.2 * gap
        elif gap > 4 * self._run:
            self._gap = float("inf")  # a lull: no burst under way

    def _hold(self) -> float:
        """Adaptive: how long after the last arrival a partial batch waits for another."""
        if self._run <= 0 or self._gap >= 0.25 * self._run:
            return 0.0  # requests come too far apart for waiting to fill a batch
        return 2 * self._gap

    def _due(self, now: float) -> tuple[Key | None, float]:
        """The queue to flush now, and how long until the next one is due.

        A queue is due when it holds a full batch, or its oldest request has waited
        ``max_delay``, or (adaptive) requests have stopped arriving. Among due queues the
        one whose oldest request has waited longest goes first, so a busy small bucket
        cannot starve a large one.
        """
        due_key, due_time = None, float("inf")
        next_deadline = float("inf")
        quiet_at = self._last_arrival + self._hold() if self.adaptive else float("inf")
        for key, q in self._queues.items():
            self._drop_gone(q)
            if not q:
                continue
            head = q[0].enqueued
            deadline = min(head + self.max_delay, quiet_at)
            if len(q) >= self._full[key] or self._closing or now >= deadline or self._fills(key, q):
                if head < due_time:
                    due_key, due_time = key, head
            else:
                next_deadline = min(next_deadline, deadline - now)
        if due_key is not None:
            return due_key, 0.0
        return None, next_deadline

    def _fills(self, key: Key, q: deque[_Pending]) -> bool:
        """Packed: the queue's sequences hold as many positions as the rows of its largest
        run (so waiting longer would not fill the run more)."""
        if self.packer is None:
            return False
        room = self._full[key] // self.packer.max_segments * key[0]
        return sum(p.sizes[self.dims[0]] for p in q) >= room

    def _drop_gone(self, q: deque[_Pending]) -> None:
        """Forget rows whose caller is gone (future cancelled or already answered)."""
        if any(p.future.done() for p in q):
            live = [p for p in q if not p.future.done()]
            self._queued -= len(q) - len(live)
            q.clear()
            q.extend(live)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()  # a free stream, before choosing what runs on it
            if self._rows_running > self.overlap_rows or self._volume_running > self.overlap_positions:
                # The running batches are large enough to use the cores: wait for one to end.
                self._slots.release()
                self._wake.clear()
                await self._wake.wait()
                continue
            key, wait = self._due(time.perf_counter())
            if key is None:
                self._slots.release()
                if self._closing and self._queued == 0:
                    if self._running:
                        await asyncio.gather(*self._running)
                    return
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=None if wait == float("inf") else wait)
                except asyncio.TimeoutError:
                    pass
                continue
            batch, run = self._take(key)
            stream = heapq.heappop(self._free)
            self._rows_running += len(run.rows)
            self._volume_running += run.bucket.volume if run.bucket is not None else 0
            task = loop.create_task(self._run_guarded(batch, run, loop, stream))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            if self.streams == 1:
                await task  # one at a time: what runs next is chosen after this one ends

    async def _run_guarded(self, batch: list[_Pending], run: Run, loop: asyncio.AbstractEventLoop,
                           stream: int) -> None:
        try:
            await self._run_batch(batch, run, loop, self._executors[stream])
        except Exception as err:  # never lose a request: each caller gets the error
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(err)
        finally:
            self._rows_running -= len(run.rows)
            self._volume_running -= run.bucket.volume if run.bucket is not None else 0
            heapq.heappush(self._free, stream)
            self._slots.release()
            self._wake.set()  # a stream is free: queues that waited for one may run

    def _take(self, key: Key) -> tuple[list[_Pending], Run]:
        """Take the run the router places for the due queue ``key`` off the queues: the
        requests in :attr:`Run.items` order, and the run with its slots renumbered to them."""
        for qq in self._queues.values():
            self._drop_gone(qq)
        due = list(self._queues[key])
        others = sorted((p for k, qq in self._queues.items() if k != key for p in qq), key=lambda p: p.enqueued)
        run = self.router.next_run([p.sizes for p in due], [p.sizes for p in others],
                                   max_segments=self.packer.max_segments if self.packer is not None else 1)
        waiting = due + others  # oldest riders first
        batch = [waiting[i] for i in run.items]
        taken = {id(p) for p in batch}
        for qq in self._queues.values():
            if any(id(p) in taken for p in qq):
                kept = [p for p in qq if id(p) not in taken]
                qq.clear()
                qq.extend(kept)
        self._queued -= len(batch)
        slots, at = [], 0
        for row in run.rows:
            slots.append(tuple(Slot(at + k, s.offset, s.length) for k, s in enumerate(row)))
            at += len(row)
        return batch, Run(run.bucket, tuple(slots))

    async def _run_batch(self, batch: list[_Pending], run: Run, loop: asyncio.AbstractEventLoop,
                         executor: ThreadPoolExecutor) -> None:
        bucket = run.bucket
        assert bucket is not None  # next_run always places a bucket
        sizes = [p.sizes for p in batch]
        start = time.perf_counter()
        outs = await loop.run_in_executor(executor, self._compute, batch, run)
        took = time.perf_counter() - start
        self._run = took if self._run == 0 else 0.8 * self._run + 0.2 * took
        for p, out in zip(batch, outs):
            if not p.future.done():  # a caller that gave up is skipped, not an error
                p.future.set_result(out)
        if self.on_batch is not None:
            self.on_batch(BatchEvent(len(batch), bucket, sum(math.prod(p.sizes.values()) for p in batch),
                                     [start - p.enqueued for p in batch], took, sizes))

    def _compute(self, batch: list[_Pending], run: Run) -> list[dict[str, Any]]:
        """Run one placed run (in a worker thread): each request's outputs, in batch order."""
        assert run.bucket is not None
        if self.packer is None:
            return self.model.run_rows([p.row for p in batch], [p.sizes for p in batch], run.bucket)
        rows, sizes = self.packer.write(run, [p.row for p in batch])
        return self.packer.read(run, self.model.run_rows(rows, sizes, run.bucket))
