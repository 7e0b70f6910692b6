"""Profiling: measured latency per bucket on a real backend, for the planner's cost model.

Profiling runs the model, so it belongs to the runtime; the planner only reads the
resulting :class:`~bucketwise.costs.TableCost` (or a curve fitted to it).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import _arrays
from ..backends.base import get_backend
from ..costs import TableCost
from ..plans import Plan
from ..shapes import Bucket
from .export import export_example

__all__ = ["measure_cost", "profile_ladder"]

PROFILE_LADDER = (8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def profile_ladder(limit: int, *, dim: str = "seq", batch: bool = True) -> list[Bucket]:
    """A coarse ladder of candidate buckets to profile, up to the first size >= ``limit``
    (at batch 1 where ``batch``): a fitted curve plans over the sizes in between."""
    sizes = [s for s in PROFILE_LADDER if s < limit] + [next((s for s in PROFILE_LADDER if s >= limit), limit)]
    return [Bucket({dim: s, "batch": 1}) if batch else Bucket({dim: s}) for s in sizes]


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

    be = get_backend(backend, **dict(backend_options or {}))
    buckets = list(candidates)
    workdir = tempfile.TemporaryDirectory(prefix="bucketwise-profile-")
    try:
        source = model
        if be.export_format is not None:
            source = be.export(model, spec, export_example(Plan(tuple(buckets))), Path(workdir.name))
        artifacts = {}
        for bucket in tqdm(buckets, desc=f"compile [{backend}]", unit="bucket", disable=not progress):
            artifact = be.compile(source, spec, bucket)
            example = {k: _arrays.convert(v, artifact.array_kind) for k, v in spec.example_inputs(bucket).items()}
            artifacts[bucket] = (artifact, example)
            for _ in range(3):
                artifact.run(example)
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
        workdir.cleanup()
    return TableCost(best)
