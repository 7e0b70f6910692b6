"""The runner: route → pad → run → unpad, once each, with stats.

The runner asks the router what to do with a shape, writes the inputs once into the
bucket's buffer, runs the artifact the builder installed, and crops the outputs once.
Data stays what it is: each artifact gets its own array kind (NumPy, or torch on the
caller's device), and outputs come back in the caller's kind. User inputs are validated
once, at the edge (:meth:`Runner.run`); rows the library built itself are not.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from .. import _arrays
from ..backends.base import Artifact
from ..backends.eager import model_kind, run_eager
from ..errors import ConfigError, NotCompiledError
from ..padding import crop_row, pad, pad_rows, unpad
from ..router import COUNTED_OVERFLOWS, Router
from ..shapes import BATCH, Bucket, Shape
from ..spec import ModelSpec
from .stats import BucketStats

__all__ = ["Runner", "ArtifactSource", "not_compiled"]


class ArtifactSource(Protocol):
    """What the runner needs of the builder: the built buckets and their artifacts."""

    @property
    def built(self) -> frozenset[Bucket]: ...

    def artifact(self, bucket: Bucket) -> Artifact | None: ...


class Runner:
    """Runs calls and batches of rows through the artifacts of ``source``.

    Args:
        spec: the model's inputs and outputs.
        router: decides buckets, chunks and overflow.
        source: the built artifacts (a :class:`~bucketwise.runtime.builder.Builder`).
        eager: returns the model itself, for ``overflow="fallback"`` (loaded on demand).
    """

    def __init__(self, spec: ModelSpec, router: Router, source: ArtifactSource,
                 eager: Callable[[], Any]) -> None:
        self.spec = spec
        self.router = router
        self.source = source
        self._eager = eager
        self.stats = BucketStats()
        self._lock = threading.Lock()

    # -- calls ----------------------------------------------------------------------------

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``inputs`` (the user's edge), run them, return outputs of their kind."""
        arrays, shape = self.spec.validate(inputs)
        first = next(iter(arrays.values()))
        kind = _arrays.kind_of(first)
        device = first.device if kind == "torch" else None
        out = self.run_validated(arrays, shape)
        return {k: _arrays.convert(v, kind, device=device) for k, v in out.items()}

    def run_validated(self, arrays: Mapping[str, Any], shape: Shape) -> dict[str, Any]:
        """Like :meth:`run` for inputs already checked against the spec (and their shape).
        Outputs are of the artifact's array kind."""
        decision = self.router.resolve(shape)
        rows = shape.get(BATCH, 1)
        if decision.policy == "fallback":
            self._count(overflow="fallback", calls=1, rows=rows)
            return self.run_eager(arrays)
        if decision.policy == "truncate":
            arrays, shape = self._truncate(arrays, decision.shape), decision.shape
            self._count(overflow="truncate")
        self._count(calls=1, rows=rows)
        if len(decision.chunks) == 1:
            return self._run_chunk(arrays, shape, decision.chunks[0][2])
        parts = []
        for start, stop, bucket in decision.chunks:
            chunk = {s.name: _take_rows(arrays[s.name], s.shape, start, stop) for s in self.spec.inputs}
            parts.append(self._run_chunk(chunk, {**shape, BATCH: stop - start}, bucket))
        return self._concat(parts)

    def _run_chunk(self, arrays: Mapping[str, Any], shape: Shape, bucket: Bucket) -> dict[str, Any]:
        artifact, bucket = self._artifact(bucket, shape)
        # Padded in the caller's kind, then handed over in the artifact's: host arrays are
        # padded on the host (padding on a jax device would compile a pad op per shape).
        padded = pad(self.spec, arrays, bucket)
        raw = artifact.run({k: _arrays.convert(v, artifact.array_kind) for k, v in padded.items()})
        self._count_run(bucket, math.prod(shape.values()))
        if artifact.array_kind == "jax" and (kind := _arrays.kind_of(next(iter(arrays.values())))) != "jax":
            # Cropped where the caller wants them: slicing on a jax device compiles a slice
            # op per new shape, the cliff buckets are there to avoid.
            raw = {k: _arrays.convert(v, kind) for k, v in raw.items()}
        return unpad(self.spec, raw, shape, bucket)

    def run_eager(self, arrays: Mapping[str, Any]) -> dict[str, Any]:
        """The model itself at the inputs' exact shape (no buckets, no padding): the
        fallback policy and the parity reference. Outputs are of the model's kind."""
        model = self._eager()
        kind = model_kind(model)
        return run_eager(model, self.spec, {k: _arrays.convert(v, kind) for k, v in arrays.items()})

    # -- rows (the batcher and the text embedder) ---------------------------------------

    def run_rows(self, rows: Sequence[Mapping[str, Any]], sizes: Sequence[Shape], bucket: Bucket) -> list[dict[str, Any]]:
        """Run single rows (inputs without the batch axis, built by the library: not
        validated) in ``bucket``, which the router chose for them; ``sizes`` holds each
        row's own sizes (batch excluded). Each row is written once into the bucket's
        buffer and its outputs cropped once. Returns each row's outputs, without the
        batch axis, of the rows' kind."""
        longest = {d: max(s[d] for s in sizes) for d in sizes[0]}
        artifact, bucket = self._artifact(bucket, {**longest, BATCH: len(rows)})
        first = next(iter(rows[0].values()))
        kind = _arrays.kind_of(first)
        padded = pad_rows(self.spec, rows, bucket)
        raw = artifact.run({k: _arrays.convert(v, artifact.array_kind) for k, v in padded.items()})
        raw = {k: _arrays.convert(v, kind, device=first.device if kind == "torch" else None) for k, v in raw.items()}
        self._count(calls=1, rows=len(rows))
        self._count_run(bucket, sum(math.prod(s.values()) for s in sizes))
        return [crop_row(self.spec, raw, i, sizes[i], bucket) for i in range(len(rows))]

    # -- helpers ----------------------------------------------------------------------------

    def _artifact(self, bucket: Bucket, shape: Shape) -> tuple[Artifact, Bucket]:
        artifact = self.source.artifact(bucket)
        if artifact is not None:
            return artifact, bucket
        built = self.source.built
        if not built:
            raise not_compiled(bucket)
        # Lazy start: run on the cheapest built bucket that covers the shape.
        used = self.router.route(shape, among=built)
        with self._lock:
            self.stats.substitutions[(bucket, used)] += 1
        return self.source.artifact(used), used  # type: ignore[return-value]

    def _truncate(self, arrays: Mapping[str, Any], shape: Shape) -> dict[str, Any]:
        out = {}
        for s in self.spec.inputs:
            index = tuple(slice(0, shape[e]) if isinstance(e, str) and e != BATCH else slice(None) for e in s.shape)
            out[s.name] = arrays[s.name][index]
        return out

    def _concat(self, parts: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for o in self.spec.outputs:
            values = [p[o.name] for p in parts]
            if o.hook is not None and isinstance(values[0], list):
                out[o.name] = [item for v in values for item in v]
                continue
            axis = next((a for a, d in o.dims.items() if d == BATCH), 0)
            out[o.name] = _arrays.concat(values, axis)
        return out

    def count_overflow(self, policy: str, n: int = 1) -> None:
        """Record ``n`` overflows handled by ``policy`` outside the call path (a tokenizer
        that truncates, an image resized to fit), so ``stats.overflow`` counts every use."""
        if policy not in COUNTED_OVERFLOWS:
            raise ConfigError(f"policy must be one of {COUNTED_OVERFLOWS}, got {policy!r}")
        with self._lock:
            self.stats.overflow[policy] += n

    def _count(self, *, overflow: str | None = None, calls: int = 0, rows: int = 0) -> None:
        with self._lock:
            self.stats.calls += calls
            self.stats.rows += rows
            if overflow:
                self.stats.overflow[overflow] += 1

    def _count_run(self, bucket: Bucket, real: int) -> None:
        with self._lock:
            self.stats.runs += 1
            self.stats.hits[bucket] += 1
            self.stats.real_volume += real
            self.stats.padded_volume += bucket.volume


def not_compiled(bucket: Bucket) -> NotCompiledError:
    return NotCompiledError(
        f"bucket {bucket!r} is not compiled; call .compile() before the first call "
        "(nothing compiles on the request path)"
    )


def _take_rows(arr: Any, axes: Sequence[Any], start: int, stop: int) -> Any:
    batch_axes = [i for i, d in enumerate(axes) if d == BATCH]
    if not batch_axes:
        return arr  # inputs without a batch axis are shared by every chunk
    index: list[slice] = [slice(None)] * arr.ndim
    index[batch_axes[0]] = slice(start, stop)
    return arr[tuple(index)]
