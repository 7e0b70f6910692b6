"""BucketedModel: compile one artifact per bucket, then route → pad → run → unpad."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..backends.base import Artifact, Backend, get_backend
from ..backends.eager import run_eager
from ..errors import BackendError, BucketOverflowError, InputError, SpecError
from ..shapes import Bucket, Plan, route
from ..spec import BATCH, ModelSpec, pad, unpad

__all__ = ["BucketedModel", "BucketStats", "OVERFLOW_POLICIES"]

OverflowPolicy = Literal["error", "truncate", "fallback"]
OVERFLOW_POLICIES: tuple[str, ...] = ("error", "truncate", "fallback")


@dataclass
class BucketStats:
    """What a bucketed model has done since it was built (or since ``reset``).

    ``real_volume`` and ``padded_volume`` count positions (product of the dims) before and
    after padding, summed over every artifact run; ``hits`` counts runs per bucket.
    """

    calls: int = 0
    rows: int = 0
    runs: int = 0
    real_volume: int = 0
    padded_volume: int = 0
    hits: Counter = field(default_factory=Counter)
    overflow: Counter = field(default_factory=Counter)
    compile_seconds: dict[Bucket, float] = field(default_factory=dict)

    @property
    def padding_waste(self) -> float:
        """Share of computed positions that were padding (0 = none)."""
        if not self.padded_volume:
            return 0.0
        return 1.0 - self.real_volume / self.padded_volume

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "rows": self.rows,
            "runs": self.runs,
            "real_volume": self.real_volume,
            "padded_volume": self.padded_volume,
            "padding_waste": self.padding_waste,
            "hits": {b.label(): n for b, n in sorted(self.hits.items(), key=lambda kv: kv[0].sizes)},
            "overflow": dict(self.overflow),
            "compile_seconds": {b.label(): s for b, s in self.compile_seconds.items()},
        }


class BucketedModel:
    """A model compiled once per bucket of a plan.

    ``model(**inputs)`` validates the inputs against the spec, routes their shape to the
    cheapest covering bucket, pads, runs that bucket's artifact and strips the padding from
    the outputs. Batch is a dim like any other: a call with more rows than the largest
    batch bucket is split into chunks, and a call with fewer rows is padded with pad rows
    whose outputs are dropped. Accepts NumPy arrays or torch tensors and returns the same
    kind.

    Args:
        model: a ``torch.nn.Module`` or, for the eager backend, any callable taking the
            spec's inputs by keyword; the ONNX backends also take a path to an ``.onnx``.
        spec: the model's inputs and outputs.
        plan: the buckets to compile. Its dims must be exactly the spec's dims.
        backend: a backend name (see ``bucketwise.backends.backend_names()``) or instance.
        backend_options: keyword options for the named backend.
        overflow: what to do with an input larger than every bucket: ``"error"`` (default)
            raises :class:`BucketOverflowError`; ``"truncate"`` cuts non-batch dims to the
            largest bucket, keeping the first positions; ``"fallback"`` runs the model
            uncompiled (eager) at the exact shape. Each truncation or fallback is counted
            in ``stats.overflow``.
        warmup_runs: runs of each artifact on example inputs right after compiling it.

    Call :meth:`compile` before the first call: nothing compiles on the request path.
    """

    def __init__(
        self,
        model: Any,
        spec: ModelSpec,
        plan: Plan,
        *,
        backend: str | Backend = "eager",
        backend_options: Mapping[str, Any] | None = None,
        overflow: OverflowPolicy = "error",
        warmup_runs: int = 1,
    ) -> None:
        if overflow not in OVERFLOW_POLICIES:
            raise SpecError(f"overflow must be one of {OVERFLOW_POLICIES}, got {overflow!r}")
        if set(plan.dims) != set(spec.dims):
            raise SpecError(
                f"the plan buckets dims {sorted(plan.dims)} but the spec's inputs vary along "
                f"{sorted(spec.dims)}; give every bucket exactly the spec's dims, e.g. "
                f"Plan.grid({', '.join(f'{d}=[...]' for d in spec.dims)})"
            )
        if BATCH in spec.dims:
            for o in spec.outputs:
                if o.hook is None and BATCH not in o.dims.values():
                    raise SpecError(
                        f"output spec {o.name!r} has no 'batch' axis, but the plan buckets "
                        "batch: name the batch axis in its shape so pad rows can be dropped"
                    )
        if overflow == "fallback" and not callable(model):
            raise SpecError(
                "overflow='fallback' runs the model eagerly, so the model must be callable "
                f"(a torch.nn.Module), not {type(model).__name__}"
            )
        if isinstance(backend, str):
            backend = get_backend(backend, **dict(backend_options or {}))
        elif backend_options:
            raise SpecError("backend_options apply only when backend is given by name")
        if warmup_runs < 0:
            raise SpecError(f"warmup_runs must be >= 0, got {warmup_runs}")
        self.model = model
        self.spec = spec
        self.plan = plan
        self.backend = backend
        self.overflow = overflow
        self.warmup_runs = warmup_runs
        self.stats = BucketStats()
        self._artifacts: dict[Bucket, Artifact] = {}
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------

    def compile(self, *, progress: bool = True) -> BucketedModel:
        """Compile and warm up one artifact per bucket, with a progress bar. Returns self."""
        from tqdm.auto import tqdm

        buckets = [b for b in self.plan.buckets if b not in self._artifacts]
        bar = tqdm(buckets, desc=f"compile [{self.backend.name}]", unit="bucket", disable=not progress)
        for bucket in bar:
            bar.set_postfix_str(bucket.label())
            start = time.perf_counter()
            artifact = self.backend.compile(self.model, self.spec, bucket)
            example = self.spec.example_inputs(bucket)
            for _ in range(self.warmup_runs):
                artifact.run(example)
            self.stats.compile_seconds[bucket] = time.perf_counter() - start
            self._artifacts[bucket] = artifact
        bar.close()
        return self

    @property
    def ready(self) -> bool:
        """True when every bucket of the plan is compiled and warm."""
        return all(b in self._artifacts for b in self.plan.buckets)

    def artifact(self, bucket: Bucket) -> Artifact:
        try:
            return self._artifacts[bucket]
        except KeyError:
            raise BackendError(
                f"bucket {bucket!r} is not compiled; call .compile() before the first call "
                "(nothing compiles on the request path)"
            ) from None

    def close(self) -> None:
        self._artifacts.clear()
        self.backend.close()

    def __enter__(self) -> BucketedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset_stats(self) -> None:
        compiled = self.stats.compile_seconds
        self.stats = BucketStats(compile_seconds=compiled)

    # -- calls ----------------------------------------------------------------------------

    def __call__(self, **inputs: Any) -> dict[str, Any]:
        return self.run(inputs)

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Like ``model(**inputs)``; outputs keyed by the spec's output names."""
        as_torch = any(hasattr(v, "detach") for v in inputs.values())
        arrays, shape = self.spec.validate(inputs)
        outputs = self._run_arrays(arrays, shape)
        if as_torch:
            import torch

            outputs = {
                k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
                for k, v in outputs.items()
            }
        return outputs

    def _run_arrays(self, arrays: dict[str, np.ndarray], shape: dict[str, int]) -> dict[str, Any]:
        plan = self.plan
        non_batch = {d: s for d, s in shape.items() if d != BATCH}
        fits = [b for b in plan.buckets if all(s <= b[d] for d, s in non_batch.items())]
        if not fits:
            if self.overflow == "fallback":
                self._count(overflow="fallback", calls=1, rows=shape.get(BATCH, 1))
                return run_eager(self.model, self.spec, arrays)
            if self.overflow == "truncate":
                arrays, shape = self._truncate(arrays, shape)
                non_batch = {d: s for d, s in shape.items() if d != BATCH}
                fits = [b for b in plan.buckets if all(s <= b[d] for d, s in non_batch.items())]
                self._count(overflow="truncate")
            if not fits:
                # Raises with the plan's own overflow message (names the dims and the fix).
                route(plan, {**shape, BATCH: 1} if BATCH in shape else shape)
                raise BucketOverflowError(f"no bucket covers {shape}")  # pragma: no cover
        if BATCH not in shape:
            self._count(calls=1, rows=1)
            return self._run_chunk(arrays, shape)
        rows = shape[BATCH]
        step = max(b[BATCH] for b in fits)
        self._count(calls=1, rows=rows)
        if rows <= step:
            return self._run_chunk(arrays, shape)
        parts = []
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            chunk = {s.name: _take_rows(arrays[s.name], s, start, stop) for s in self.spec.inputs}
            parts.append(self._run_chunk(chunk, {**shape, BATCH: stop - start}))
        return self._concat(parts)

    def _run_chunk(self, arrays: dict[str, np.ndarray], shape: dict[str, int]) -> dict[str, Any]:
        bucket = route(self.plan, shape)
        artifact = self.artifact(bucket)
        raw = artifact.run(pad(self.spec, arrays, bucket))
        real = 1
        for s in shape.values():
            real *= s
        with self._lock:
            self.stats.runs += 1
            self.stats.hits[bucket] += 1
            self.stats.real_volume += real
            self.stats.padded_volume += bucket.volume
        return unpad(self.spec, raw, shape, bucket)

    def _truncate(
        self, arrays: dict[str, np.ndarray], shape: dict[str, int]
    ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        limit = {d: self.plan.max_size(d) for d in shape if d != BATCH}
        new_shape = {d: min(s, limit[d]) if d in limit else s for d, s in shape.items()}
        out = {}
        for s in self.spec.inputs:
            index = tuple(
                slice(0, new_shape[e]) if isinstance(e, str) and e != BATCH else slice(None)
                for e in s.shape
            )
            out[s.name] = arrays[s.name][index]
        return out, new_shape

    def _concat(self, parts: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for o in self.spec.outputs:
            values = [p[o.name] for p in parts]
            if o.hook is not None and isinstance(values[0], list):
                out[o.name] = [item for v in values for item in v]
                continue
            axis = next((a for a, d in o.dims.items() if d == BATCH), 0)
            out[o.name] = np.concatenate(values, axis=axis)
        return out

    def count_overflow(self, policy: str, n: int = 1) -> None:
        """Record ``n`` overflows handled by ``policy`` outside the call path (e.g. a
        tokenizer that truncates), so ``stats.overflow`` counts every use."""
        if policy not in OVERFLOW_POLICIES:
            raise SpecError(f"policy must be one of {OVERFLOW_POLICIES}, got {policy!r}")
        with self._lock:
            self.stats.overflow[policy] += n

    def _count(self, *, overflow: str | None = None, calls: int = 0, rows: int = 0) -> None:
        with self._lock:
            self.stats.calls += calls
            self.stats.rows += rows
            if overflow:
                self.stats.overflow[overflow] += 1

    # -- reference ----------------------------------------------------------------------

    def reference(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The model run eagerly at the inputs' exact shape: no buckets, no padding."""
        if not callable(self.model):
            raise InputError("the reference path needs a callable model (a torch.nn.Module)")
        arrays, _ = self.spec.validate(inputs)
        return run_eager(self.model, self.spec, arrays)

    def __repr__(self) -> str:
        state = "ready" if self.ready else f"{len(self._artifacts)}/{len(self.plan)} compiled"
        return f"BucketedModel(backend={self.backend.name!r}, {self.plan}, {state})"


def _take_rows(arr: np.ndarray, s: Any, start: int, stop: int) -> np.ndarray:
    axes = [i for i, d in enumerate(s.shape) if d == BATCH]
    if not axes:
        return arr  # inputs without a batch axis are shared by every chunk
    index = [slice(None)] * arr.ndim
    index[axes[0]] = slice(start, stop)
    return arr[tuple(index)]
