"""Re-planning from live traffic, and a hot swap of a text model's buckets.

Every ``every`` seconds (``bucketwise serve --replan-every``), :class:`Replanner` plans the
length buckets again from the traffic the server has served (its decayed histogram,
``GET /shapes``): the same number of lengths and the same batch sizes as the plan in
service, the top length kept (every text served before still fits). When the new plan's
expected padded positions per row, on that traffic, beat the current plan's by more than
``min_gain``, it builds the new plan's buckets in a worker thread (the cache serves what
it holds; the batcher keeps serving from the old buckets meanwhile), then swaps on the
event loop: new requests go to a new batcher over the new buckets, and the old batcher
finishes what it had queued before its buckets are released. Each generation's plan is
written to ``plans_dir`` as ``plan.gen<N>.json`` when one is given (``plan.NAME.gen<N>.json``
when the server serves several models). A server re-plans each of its text models, the
embedder and every head, with a :class:`Replanner` of its own; their series in
``/metrics`` carry ``model="NAME"``.

The build is held to what the server can spare:

- ``compile_budget``: seconds the buckets new to a proposal are expected to take to
  build, estimated from what this model's buckets cost (each one's compile or load time
  and warm-up, from its compile report); a proposal over it is not built, and counted in
  ``bucketwise_replans_rejected_total{reason="compile_budget"}``;
- ``memory_budget``: bytes the new plan's artifacts may hold resident, measured bucket by
  bucket as they build; over it, the build is dropped and the plan in service stays;
- ``build_share``: the build pauses after each bucket so that it runs at most this share
  of the wall time (0.5: a bucket that took 2 s is followed by a 2 s pause), leaving the
  cores to inference between buckets.

The build runs in its own thread, ``bucketwise-replan``; requests never compile (a bucket
is served only once built and warm).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, MemoryBudgetError
from ..planning import plan as make_plan
from ..router import router_of
from ..runtime.cache import resident_bytes
from ..shapes import BATCH

if TYPE_CHECKING:
    from ..models.frontend import TextModel
    from .app import Service

__all__ = ["Replanner", "expected_padding"]

log = logging.getLogger("bucketwise.serve")


def expected_padding(plan: Any, sizes: np.ndarray, weights: np.ndarray, dim: str = "seq") -> tuple[float, float]:
    """(expected positions computed per row, expected padding waste) of ``plan``'s ``dim``
    buckets on rows of ``sizes`` weighted by ``weights``; rows above the top bucket count
    at their own size (they run under the overflow policy, not padded)."""
    padded = router_of(plan).padded(sizes, dim)
    total = float(weights.sum())
    per_row = float((padded * weights).sum() / total)
    return per_row, 1.0 - float((sizes * weights).sum() / total) / per_row


class Replanner:
    """Periodic re-planning and hot swap of one served :class:`SentenceEmbedder`."""

    def __init__(self, service: Service, embedder: TextModel, *, every: float, min_gain: float = 0.1, min_rows: int = 100,
                 plans_dir: str | None = None, compile_budget: float | None = None,
                 memory_budget: float | None = None, build_share: float = 0.5, name: str | None = None) -> None:
        if not 0 < build_share <= 1:
            raise ConfigError(f"build_share must be a fraction in (0, 1], got {build_share}")
        self.service, self.embedder = service, embedder
        # The served name whose model it re-plans (no service: a build alone, in tests).
        self.name = name or (service.config.model_name if service is not None else "")
        self.every, self.min_gain, self.min_rows = every, min_gain, min_rows
        self.plans_dir = Path(plans_dir) if plans_dir else None
        self.compile_budget, self.memory_budget, self.build_share = compile_budget, memory_budget, build_share
        self.generation = 0
        self._rows_at_last = 0
        self._retiring: set[asyncio.Task] = set()
        # Builds run here, never on the event loop or an inference thread.
        self._builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bucketwise-replan")
        self._stop = threading.Event()  # set by close(): a build stops at its next bucket

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.every)
                try:
                    await self.step()
                except Exception:  # a failed re-plan leaves the plan in service as it was
                    log.exception("bucketwise: re-planning failed; the current plan stays")
                    self.service.metrics.replan_failures.labels(model=self.name).inc()
        finally:
            self._stop.set()
            self._builder.shutdown(wait=False, cancel_futures=True)

    async def close(self) -> None:
        """Stop re-planning: a build under way stops before its next bucket (its buckets
        released) and this returns once it has, so no build outlives the server (nor, at
        exit, holds the process up until it ends)."""
        self._stop.set()
        await asyncio.to_thread(self._builder.shutdown, wait=True, cancel_futures=True)

    def propose(self) -> tuple[Any, float, float, float] | None:
        """(new plan, its expected positions per row, the current plan's, the new plan's
        expected padding waste) when the traffic since the last plan is enough and the gain
        beats ``min_gain``; else None. Thread-safe: the traffic histogram is read under its
        lock, and the planner touches nothing shared."""
        model = self.embedder.model
        traffic = self.service.served[self.name].traffic
        if traffic.rows - self._rows_at_last < self.min_rows:
            return None
        obs = traffic.observations()
        sizes, weights = obs.column("seq"), obs.counts
        current_plan = model.plan
        now, waste = expected_padding(current_plan, sizes, weights)
        self.service.metrics.expected_waste.labels(model=self.name).set(waste)
        seqs = sorted(current_plan.sizes("seq"))
        batches = sorted(current_plan.sizes(BATCH)) if BATCH in current_plan.dims else None
        proposal = make_plan(obs, k=len(seqs), cap=seqs[-1], grid="auto", batch_sizes=batches,
                             cost=current_plan.cost_model)
        new, new_waste = expected_padding(proposal, sizes, weights)
        self._rows_at_last = traffic.rows
        if new > (1.0 - self.min_gain) * now:
            return None
        return proposal, new, now, new_waste

    def build_estimate(self, proposal: Any) -> float:
        """Seconds the buckets of ``proposal`` that the model in service lacks are expected
        to take to build: their count times the mean cost of a bucket of this model (its
        compile or load time plus warm-up, from the compile report)."""
        model = self.embedder.model
        builds = list(model.compile_report.builds.values())
        if not builds:
            return 0.0
        per_bucket = sum(b.seconds + b.warmup_seconds for b in builds) / len(builds)
        have = set(model.plan.buckets)
        return sum(b not in have for b in proposal.buckets) * per_bucket

    async def step(self) -> bool:
        """One re-plan: propose, build in a thread, swap. True when a new plan went into service."""
        loop = asyncio.get_running_loop()
        m = self.service.metrics
        planning = time.perf_counter()
        found = await loop.run_in_executor(self._builder, self.propose)
        m.planner_seconds.labels(model=self.name).inc(time.perf_counter() - planning)
        if found is None:
            return False
        proposal, new, now, new_waste = found
        if self.compile_budget is not None:
            estimate = self.build_estimate(proposal)
            if estimate > self.compile_budget:
                m.replans_rejected.labels(model=self.name, reason="compile_budget").inc()
                log.warning("bucketwise: a re-plan (expected positions per row %.1f -> %.1f) would take about %.1f s "
                            "to build, over the compile budget of %.1f s; the current plan stays (raise "
                            "--replan-compile-budget to allow it)", now, new, estimate, self.compile_budget)
                return False
        old = self.embedder.model
        fresh = old.with_plan(proposal)
        before = resident_bytes()
        reset_peak()
        started = time.perf_counter()
        try:
            if not await loop.run_in_executor(self._builder, self._build, fresh):
                return False  # closed while building
        except MemoryBudgetError as err:
            m.replans_rejected.labels(model=self.name, reason="memory_budget").inc()
            log.warning("bucketwise: a re-plan's buckets did not fit the memory budget; the current plan stays: %s",
                        err)
            await loop.run_in_executor(self._builder, fresh.release)
            return False
        build_s = time.perf_counter() - started
        after, peak = resident_bytes(), peak_resident_bytes()
        self.swap(fresh)
        m.plan_generation.labels(model=self.name).set(self.generation)
        m.plan_swaps.labels(model=self.name).inc()
        m.build_seconds.labels(model=self.name).set(build_s)
        if before is not None and after is not None:
            m.build_resident.labels(model=self.name).set(after - before)
        if peak is not None:
            m.build_peak_resident.labels(model=self.name).set(peak)
        m.expected_waste.labels(model=self.name).set(new_waste)
        if self.plans_dir is not None:
            self.plans_dir.mkdir(parents=True, exist_ok=True)
            several = len(self.service.served) > 1
            proposal.save(self.plans_dir / (f"plan.{self.name}.gen{self.generation}.json" if several
                                             else f"plan.gen{self.generation}.json"))
        log.warning("bucketwise: plan generation %d in service (expected positions per row %.1f -> %.1f; "
                    "built in %.1f s): %s", self.generation, now, new, build_s, proposal)
        return True

    def _build(self, fresh: Any) -> bool:
        """Build ``fresh`` bucket by bucket (most traffic first), pausing after each so the
        build takes at most ``build_share`` of the wall time; then check the memory budget
        over what was measured. Runs in the ``bucketwise-replan`` thread. False, with
        ``fresh`` released, when :meth:`close` stopped it."""
        measure = self.memory_budget is not None
        for bucket in fresh.builder.build_order(fresh.plan.buckets):
            if self._stop.is_set():
                fresh.release()
                return False
            if bucket in fresh.builder.built:
                continue  # built with an earlier one (the buckets that cover every shape come first)
            took = time.perf_counter()
            fresh.compile(progress=False, workers=1, only=[bucket], measure_memory=measure)
            took = time.perf_counter() - took
            if self.build_share < 1:
                self._stop.wait(took * (1 - self.build_share) / self.build_share)
        if self._stop.is_set():
            fresh.release()
            return False
        if self.memory_budget is not None:
            fresh.compile(progress=False, workers=1, memory_budget=self.memory_budget)
        return True

    def swap(self, fresh: Any) -> None:
        """Put ``fresh`` (compiled) into service at once; the old model's batcher finishes
        its queue, then its buckets are released. Runs on the event loop: no request sees
        half a swap."""
        service, old = self.service, self.embedder.model
        retired = service.swap(self.name, fresh)
        self.embedder.model = fresh
        self.generation += 1
        task = asyncio.get_running_loop().create_task(self._retire(old, retired))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, old: Any, batcher: Any) -> None:
        await batcher.close()  # every request it admitted is answered first
        self.service.retire(self.name, old)
        # Released, not closed: the new model shares its backend (ONNX Runtime sessions).
        await asyncio.to_thread(old.release)


def reset_peak() -> None:
    """Start a new peak of this process's resident memory (Linux: ``/proc/self/clear_refs``
    5 resets ``VmHWM``); elsewhere nothing."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_resident_bytes() -> int | None:
    """This process's peak resident memory since :func:`reset_peak` (Linux ``VmHWM``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
