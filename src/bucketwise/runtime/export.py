"""The export step: one exported file per model, shared by every bucket (and by every
backend of the same ``export_format``), cached as an artifact-cache entry of its own."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..plans import Plan
from ..shapes import BATCH, Bucket

if TYPE_CHECKING:  # pragma: no cover
    from .builder import Builder

__all__ = ["export_example", "export_source", "EXPORT_FORMAT_VERSION"]

EXPORT_FORMAT_VERSION = 2  # bump when what an export entry holds changes


def export_example(plan: Plan) -> Bucket:
    """The shape an export is traced at: the plan's cheapest bucket with at least 2 rows,
    else its cheapest bucket with the batch raised to 2. A tracer can bake a batch of 1
    into the graph (squeeze, broadcasts); 2 keeps the batch axis general. The exported
    graph keeps every dim free, so the example fixes nothing the buckets see."""
    if BATCH not in plan.dims:
        return plan.buckets[0]
    for bucket in plan.buckets:
        if bucket[BATCH] >= 2:
            return bucket
    return Bucket({**plan.buckets[0].as_dict(), BATCH: 2})


def export_source(builder: Builder, folder: Path | None) -> Any:
    """Export the builder's model once: into ``folder``, or (``None``) into the builder's
    artifact cache as an entry keyed by the model's fingerprint and the backend's
    ``export_key()``. Returns the exported file's path, what ``compile`` takes."""
    backend, spec = builder.backend, builder.spec
    example = export_example(builder.plan)
    if folder is not None:
        start = time.perf_counter()
        path = backend.export(builder.model, spec, example, folder)
        builder.report.export_seconds += time.perf_counter() - start
        return path
    cache = builder.cache
    assert cache is not None
    ident = cache.identity(
        model=builder.fingerprint(),
        backend={"name": f"{backend.export_format}-export", "version": EXPORT_FORMAT_VERSION,
                 "options": backend.export_key()},
        bucket=None,
        kind="export",
    )
    key = cache.key(ident)
    with cache.lock(key):
        entry = cache.get(key)
        if entry is None:
            model = builder.model
            entry, _ = cache.put(
                ident,
                lambda out: backend.export(model, spec, example, out),
                info={"model_name": builder.model_name, "model_load_seconds": builder.report.model_load_seconds},
            )
            builder.report.export_seconds += entry.compile_seconds or 0.0
    return str(entry.path(f"model.{backend.export_format}"))
