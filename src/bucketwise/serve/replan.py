"""Re-planning from live traffic, and a hot swap of the embedder's buckets.

Every ``every`` seconds (``bucketwise serve --replan-every``), :class:`Replanner` plans the
length buckets again from the traffic the server has served (its decayed histogram,
``GET /shapes``): the same number of lengths and the same batch sizes as the plan in
service, the top length kept (every text served before still fits). When the new plan's
expected padded positions per row, on that traffic, beat the current plan's by more than
``min_gain``, it builds the new plan's buckets in a worker thread (the cache serves what
it holds; the batcher keeps serving from the old buckets meanwhile), then swaps on the
event loop: new requests go to a new batcher over the new buckets, and the old batcher
finishes what it had queued before its buckets are released. Each generation's plan is
written to ``plans_dir`` as ``plan.gen<N>.json`` when one is given.

Not done here (issue 18): a memory or compile-time budget for the build, and a limit on
how much CPU the build may take from inference while it runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..planning import plan as make_plan
from ..shapes import BATCH

__all__ = ["Replanner", "expected_padding"]

log = logging.getLogger("bucketwise.serve")


def expected_padding(plan: Any, sizes: np.ndarray, weights: np.ndarray, dim: str = "seq") -> tuple[float, float]:
    """(expected positions computed per row, expected padding waste) of ``plan``'s ``dim``
    buckets on rows of ``sizes`` weighted by ``weights``; rows above the top bucket count
    at their own size (they run under the overflow policy, not padded)."""
    edges = np.array(sorted(plan.sizes(dim)))
    at = np.searchsorted(edges, sizes)
    padded = np.where(at < len(edges), edges[np.minimum(at, len(edges) - 1)], sizes)
    total = float(weights.sum())
    per_row = float((padded * weights).sum() / total)
    return per_row, 1.0 - float((sizes * weights).sum() / total) / per_row


class Replanner:
    """Periodic re-planning and hot swap of one served :class:`SentenceEmbedder`."""

    def __init__(self, service: Any, embedder: Any, *, every: float, min_gain: float = 0.1, min_rows: int = 100,
                 plans_dir: str | None = None) -> None:
        self.service, self.embedder = service, embedder
        self.every, self.min_gain, self.min_rows = every, min_gain, min_rows
        self.plans_dir = Path(plans_dir) if plans_dir else None
        self.generation = 0
        self._rows_at_last = 0
        self._retiring: set[asyncio.Task] = set()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.step()
            except Exception:  # a failed re-plan leaves the plan in service as it was
                log.exception("bucketwise: re-planning failed; the current plan stays")
                self.service.metrics.replan_failures.inc()

    def propose(self) -> tuple[Any, float, float, float] | None:
        """(new plan, its expected positions per row, the current plan's, the new plan's
        expected padding waste) when the traffic since the last plan is enough and the gain
        beats ``min_gain``; else None."""
        model = self.embedder.model
        traffic = self.service.traffic[id(model)]
        if traffic.rows - self._rows_at_last < self.min_rows:
            return None
        obs = traffic.observations()
        sizes, weights = obs.column("seq"), obs.counts
        current_plan = model.plan
        now, waste = expected_padding(current_plan, sizes, weights)
        self.service.metrics.expected_waste.set(waste)
        seqs = sorted(current_plan.sizes("seq"))
        batches = sorted(current_plan.sizes(BATCH)) if BATCH in current_plan.dims else None
        proposal = make_plan(obs, k=len(seqs), cap=seqs[-1], grid="auto", batch_sizes=batches,
                             cost=current_plan.cost_model)
        new, new_waste = expected_padding(proposal, sizes, weights)
        self._rows_at_last = traffic.rows
        if new > (1.0 - self.min_gain) * now:
            return None
        return proposal, new, now, new_waste

    async def step(self) -> bool:
        """One re-plan: propose, build in a thread, swap. True when a new plan went into service."""
        planning = time.perf_counter()
        found = self.propose()
        self.service.metrics.planner_seconds.inc(time.perf_counter() - planning)
        if found is None:
            return False
        proposal, new, now, new_waste = found
        old = self.embedder.model
        started = time.perf_counter()
        fresh = old.with_plan(proposal)
        await asyncio.to_thread(fresh.compile, progress=False)  # off the event loop and the inference thread
        build_s = time.perf_counter() - started
        self.swap(fresh)
        m = self.service.metrics
        m.plan_generation.set(self.generation)
        m.plan_swaps.inc()
        m.build_seconds.set(build_s)
        m.expected_waste.set(new_waste)
        if self.plans_dir is not None:
            self.plans_dir.mkdir(parents=True, exist_ok=True)
            proposal.save(self.plans_dir / f"plan.gen{self.generation}.json")
        log.warning("bucketwise: plan generation %d in service (expected positions per row %.1f -> %.1f; "
                    "built in %.1f s): %s", self.generation, now, new, build_s, proposal)
        return True

    def swap(self, fresh: Any) -> None:
        """Put ``fresh`` (compiled) into service at once; the old model's batcher finishes
        its queue, then its buckets are released. Runs on the event loop: no request sees
        half a swap."""
        service, old = self.service, self.embedder.model
        service.add_model(fresh, like=old)
        self.embedder.model = fresh
        self.generation += 1
        retired = service.batchers[id(old)]
        task = asyncio.get_running_loop().create_task(self._retire(old, retired))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, old: Any, batcher: Any) -> None:
        await batcher.close()  # every request it admitted is answered first
        self.service.remove_model(old)
        # Released, not closed: the new model shares its backend (ONNX Runtime sessions).
        await asyncio.to_thread(old.release)
