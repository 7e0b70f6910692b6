"""BucketedModel: a builder and a runner over one router, behind one object."""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

from ..backends.base import Artifact, Backend, get_backend
from ..errors import ConfigError, InputError, SpecError
from ..plans import Plan
from ..router import OVERFLOW_POLICIES, OverflowPolicy, Router, Run
from ..shapes import BATCH, Bucket, Shape
from ..spec import ModelSpec
from .builder import Builder, CompileReport
from .cache import ArtifactCache, LazyModel
from .runner import Runner, not_compiled
from .stats import BucketStats

__all__ = ["BucketedModel", "OVERFLOW_POLICIES", "RowPacker"]


class RowPacker(Protocol):
    """How a packed model's rows are written and read (issue #30), for the batcher and
    bulk runs: :class:`bucketwise.models.packing.PackedModel` is one.

    Inputs arrive one per sequence (``input_ids``, and ``token_type_ids`` where the model
    takes them); the router places them into the slots of a :class:`~bucketwise.router.Run`;
    :meth:`write` builds that run's packed rows and :meth:`read` gives each sequence its
    outputs back."""

    max_segments: int

    def size(self, item: Mapping[str, Any]) -> dict[str, int]:
        """One sequence's size per non-batch dim (its length)."""
        ...

    def write(self, run: Run, items: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, int]]]:
        """The run's packed rows (no batch axis, each as long as it is filled) and their
        sizes; ``items[slot.sequence]`` is each slot's sequence."""
        ...

    def read(self, run: Run, outputs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Each slot's outputs, in :attr:`Run.items` order, from the run's rows' outputs."""
        ...


class BucketedModel:
    """A model compiled once per bucket of a plan.

    ``model(**inputs)`` validates the inputs against the spec, routes their shape to the
    cheapest covering bucket, pads, runs that bucket's artifact and strips the padding from
    the outputs. Batch is a dim like any other: a call with more rows than the largest
    batch bucket is split into chunks, and a call with fewer rows is padded with pad rows
    whose outputs are dropped. NumPy in gives NumPy out; torch tensors in give torch
    tensors out, on the same device.

    Args:
        model: a ``torch.nn.Module`` or, for the eager backend, any callable taking the
            spec's inputs by keyword; the ONNX backends also take a path to an ``.onnx``.
        spec: the model's inputs and outputs.
        plan: the buckets to compile. Its dims must be exactly the spec's dims.
        backend: a backend name (see ``bucketwise.backend_names()``) or instance.
        backend_options: keyword options for the named backend.
        overflow: what to do with an input larger than every bucket: ``"error"`` (default)
            raises :class:`BucketOverflowError`; ``"truncate"`` cuts non-batch dims to the
            largest bucket, keeping the first positions; ``"fallback"`` runs the model
            uncompiled (eager) at the exact shape. Each truncation or fallback is counted
            in ``stats.overflow``.
        warmup_runs: runs of each artifact on example inputs right after compiling it.
        cache: an :class:`ArtifactCache` (or its folder) to load compiled buckets from and
            save them to; ``None`` (default) compiles everything in memory. The model is
            then identified by :func:`~bucketwise.runtime.cache.fingerprint`; pass a
            :class:`LazyModel` to skip even loading it when every bucket is cached.

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
        cache: ArtifactCache | str | os.PathLike[str] | None = None,
    ) -> None:
        router = Router(plan, overflow=overflow)  # checks the policy
        _check_fit(spec, plan)
        if overflow == "fallback" and not (callable(model) or isinstance(model, LazyModel)):
            raise ConfigError(
                "overflow='fallback' runs the model eagerly, so the model must be callable "
                f"(a torch.nn.Module), not {type(model).__name__}"
            )
        if isinstance(backend, str):
            backend = get_backend(backend, **dict(backend_options or {}))
        elif backend_options:
            raise ConfigError("backend_options apply only when backend is given by name")
        if warmup_runs < 0:
            raise ConfigError(f"warmup_runs must be >= 0, got {warmup_runs}")
        if cache is not None and not isinstance(cache, ArtifactCache):
            cache = ArtifactCache(cache)
        self.spec = spec
        self.plan = plan
        self.router = router
        self.backend = backend
        self.cache = cache
        self.builder = Builder(model, spec, plan, backend, router=router, cache=cache, warmup_runs=warmup_runs)
        self.runner = Runner(spec, router, self.builder, eager=lambda: self.builder.model)
        self.runner.stats.compile_seconds = self.builder.compile_seconds  # one dict, kept current
        # Set when the model's rows are packed (several sequences a row): the batcher then
        # queues sequences and writes packed rows through it.
        self.packer: RowPacker | None = None

    # -- what it is -------------------------------------------------------------------------

    @property
    def overflow(self) -> OverflowPolicy:
        return self.router.overflow

    @property
    def model(self) -> Any:
        """The model itself; a :class:`LazyModel` is loaded on first use (timed)."""
        return self.builder.model

    @property
    def model_name(self) -> str:
        """A name for listings: the :class:`LazyModel`'s name, the file's, or the class's."""
        return self.builder.model_name

    def fingerprint(self) -> str:
        """The model's cache identity (weights, graph and spec); computed once."""
        return self.builder.fingerprint()

    @property
    def stats(self) -> BucketStats:
        return self.runner.stats

    @property
    def compile_report(self) -> CompileReport:
        return self.builder.report

    # -- lifecycle ------------------------------------------------------------------------

    def compile(
        self,
        *,
        progress: bool = True,
        workers: int | None = None,
        lazy: bool = False,
        memory_budget: float | None = None,
        measure_memory: bool | None = None,
        only: Collection[Bucket] | None = None,
    ) -> BucketedModel:
        """Compile (or load from the cache) and warm up one artifact per bucket. Returns self.

        Buckets are built in order of expected traffic (``plan.meta["traffic"]``, written by
        the planner; else the plan's order). Details land in :attr:`compile_report`.

        Args:
            progress: show a progress bar.
            workers: compile this many cache misses at once where the backend allows it
                (``parallel_compile``); default: up to 4, or 1 with a ``memory_budget`` so
                every bucket's memory is measured on its own.
            lazy: build only the buckets that cover every shape (the largest) now, and the
                rest in a background thread. Until a bucket is built, its inputs run on the
                cheapest built bucket that covers them, counted in ``stats.substitutions``.
                Nothing ever compiles on the request path.
            memory_budget: bytes the artifacts may hold resident. Sizes measured on earlier
                runs (in the cache) are checked before building, and measured sizes after;
                either way an over-budget plan raises :class:`MemoryBudgetError` naming the
                largest buckets.
            measure_memory: measure each bucket's resident memory (serial builds only).
                Default: with a cache (where it is recorded) or a memory budget.
            only: build just these buckets and those that cover every shape, for a job
                that knows its inputs (``SentenceEmbedder.buckets_for``). Inputs routed to
                a bucket left unbuilt run on the cheapest built bucket that covers them,
                counted in ``stats.substitutions``; a later ``compile()`` builds the rest.
        """
        self.builder.build(progress=progress, workers=workers, lazy=lazy, memory_budget=memory_budget,
                           measure_memory=measure_memory, only=only)
        return self

    @property
    def ready(self) -> bool:
        """True when every bucket of the plan is compiled and warm."""
        return self.builder.ready

    @property
    def can_serve(self) -> bool:
        """True when every shape the plan holds has a built bucket (in lazy mode, before
        :attr:`ready`, some run on a larger bucket)."""
        return self.builder.can_serve

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait for a lazy compile's background builds; returns :attr:`ready`."""
        return self.builder.wait_ready(timeout)

    def artifact(self, bucket: Bucket) -> Artifact:
        artifact = self.builder.artifact(bucket)
        if artifact is None:
            raise not_compiled(bucket)
        return artifact

    def close(self) -> None:
        self.builder.close()

    def release(self) -> None:
        """Drop this model's artifacts without closing its backend, which a model made by
        :meth:`with_plan` shares (closing it would close the artifacts both use): what a
        swapped-out model does. Memory no other model holds is freed as it is collected."""
        self.builder.release()

    def with_plan(self, plan: Plan) -> BucketedModel:
        """A new, uncompiled BucketedModel of the same model, spec, backend, cache and
        overflow policy over ``plan`` (a lazily loaded model stays unloaded until a bucket
        must be compiled): what a re-plan builds before it swaps."""
        return BucketedModel(self.builder._model, self.spec, plan, backend=self.backend, overflow=self.overflow,
                             warmup_runs=self.builder.warmup_runs, cache=self.cache)

    def __enter__(self) -> BucketedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset_stats(self) -> None:
        self.runner.stats = BucketStats(compile_seconds=self.builder.compile_seconds)

    # -- calls ----------------------------------------------------------------------------

    def __call__(self, **inputs: Any) -> dict[str, Any]:
        return self.runner.run(inputs)

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Like ``model(**inputs)``; outputs keyed by the spec's output names."""
        return self.runner.run(inputs)

    def run_rows(self, rows: Sequence[Mapping[str, Any]], sizes: Sequence[Shape], bucket: Bucket) -> list[dict[str, Any]]:
        """Run rows the library built (see :meth:`Runner.run_rows`)."""
        return self.runner.run_rows(rows, sizes, bucket)

    def count_overflow(self, policy: str, n: int = 1) -> None:
        """Record ``n`` overflows handled outside the call path (see :class:`Runner`)."""
        self.runner.count_overflow(policy, n)

    def reference(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The model run eagerly at the inputs' exact shape: no buckets, no padding.
        Outputs are NumPy arrays."""
        from .. import _arrays

        if not callable(self.model):
            raise InputError("the reference path needs a callable model (a torch.nn.Module)")
        arrays, _ = self.spec.validate(inputs)
        return {k: _arrays.convert(v, "numpy") for k, v in self.runner.run_eager(arrays).items()}

    def __repr__(self) -> str:
        built = len(self.builder.built)
        state = "ready" if self.ready else f"{built}/{len(self.plan)} compiled"
        return f"BucketedModel(backend={self.backend.name!r}, {self.plan}, {state})"


def _check_fit(spec: ModelSpec, plan: Plan) -> None:
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
