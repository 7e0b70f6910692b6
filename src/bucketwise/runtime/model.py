"""BucketedModel: compile one artifact per bucket, then route → pad → run → unpad."""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..backends.base import Artifact, Backend, CacheableBackend, get_backend
from ..backends.eager import run_eager
from ..errors import BackendError, BucketOverflowError, InputError, SpecError
from ..shapes import Bucket, Plan, route
from ..spec import BATCH, ModelSpec, pad, unpad
from .cache import ArtifactCache, CacheWarning, LazyModel, fingerprint, resident_bytes
from .memory import check_memory_budget

__all__ = ["BucketedModel", "BucketBuild", "BucketStats", "CompileReport", "OVERFLOW_POLICIES"]

OverflowPolicy = Literal["error", "truncate", "fallback"]
OVERFLOW_POLICIES: tuple[str, ...] = ("error", "truncate", "fallback")
# What count_overflow records: the policies above, plus resizing done before the call
# (images shrunk to fit, see bucketwise.models.vision.ImageModel).
COUNTED_OVERFLOWS: tuple[str, ...] = ("truncate", "fallback", "resize")


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
    substitutions: Counter = field(default_factory=Counter)
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
            "substitutions": {f"{w.label()}->{u.label()}": n for (w, u), n in self.substitutions.items()},
            "compile_seconds": {b.label(): s for b, s in self.compile_seconds.items()},
        }


@dataclass
class BucketBuild:
    """How one bucket's artifact came to be on this start.

    ``source`` is ``"compiled"`` (a cache miss, now cached), ``"cache"`` (loaded from the
    cache), ``"rebuilt"`` (its cache entry was corrupt, so it was compiled again) or
    ``"uncached"`` (no cache, or a backend whose artifacts cannot be saved). ``seconds`` is
    the compile or load time of this start, warm-up not included; ``compile_seconds`` what
    compiling it cost, now or when its cache entry was written. ``resident_bytes`` is the
    growth of the process's resident memory while building and warming it up (``None``
    where it could not be told apart: parallel or background builds).
    """

    bucket: Bucket
    source: Literal["compiled", "cache", "rebuilt", "uncached"]
    seconds: float
    warmup_seconds: float = 0.0
    compile_seconds: float | None = None
    disk_bytes: int | None = None
    resident_bytes: int | None = None
    key: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket.label(),
            "source": self.source,
            "seconds": self.seconds,
            "warmup_seconds": self.warmup_seconds,
            "compile_seconds": self.compile_seconds,
            "disk_bytes": self.disk_bytes,
            "resident_bytes": self.resident_bytes,
            "key": self.key,
        }


@dataclass
class CompileReport:
    """What :meth:`BucketedModel.compile` did: per bucket, and the model-level steps.

    ``saved_seconds`` is what the cache spared this start: for each bucket loaded from the
    cache, its recorded compile time less its load time, plus the model loading and ONNX
    export recorded by the run that filled the cache, where this start skipped them.
    """

    backend: str
    cache: str | None = None
    builds: dict[Bucket, BucketBuild] = field(default_factory=dict)
    model_load_seconds: float = 0.0
    export_seconds: float = 0.0
    skipped_prep_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def hits(self) -> int:
        return sum(1 for b in self.builds.values() if b.source == "cache")

    @property
    def saved_seconds(self) -> float:
        saved = self.skipped_prep_seconds
        for b in self.builds.values():
            if b.source == "cache" and b.compile_seconds is not None:
                saved += b.compile_seconds - b.seconds
        return saved

    def resident(self) -> dict[Bucket, int | None]:
        return {b: r.resident_bytes for b, r in self.builds.items()}

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "cache": self.cache,
            "seconds": self.seconds,
            "model_load_seconds": self.model_load_seconds,
            "export_seconds": self.export_seconds,
            "skipped_prep_seconds": self.skipped_prep_seconds,
            "saved_seconds": self.saved_seconds,
            "hits": self.hits,
            "buckets": [b.as_dict() for b in self.builds.values()],
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
        if overflow == "fallback" and not (callable(model) or isinstance(model, LazyModel)):
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
        self._model = model
        if isinstance(model, LazyModel):
            self._name = model.name or "model"
        elif isinstance(model, (str, Path)):
            self._name = Path(model).name
        else:
            self._name = type(model).__name__
        self.spec = spec
        self.plan = plan
        self.backend = backend
        self.overflow = overflow
        self.warmup_runs = warmup_runs
        self.cache = ArtifactCache(cache) if cache is not None and not isinstance(cache, ArtifactCache) else cache
        self.stats = BucketStats()
        self.compile_report = CompileReport(backend.name, str(self.cache.root) if self.cache else None)
        self._artifacts: dict[Bucket, Artifact] = {}
        self._compiled_plan: Plan | None = None
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._fingerprint: str | None = None
        self._source: Any = None
        self._background: threading.Thread | None = None
        self._closing = threading.Event()
        self._corrupt: set[str] = set()  # cache keys found corrupt on this start
        # Model load and export seconds recorded by the runs that filled the entries loaded
        # on this start (the largest of each), read from the entries' meta as they load.
        self._recorded_prep = {"model_load_seconds": 0.0, "export_seconds": 0.0}

    # -- the model -------------------------------------------------------------------------

    @property
    def model(self) -> Any:
        """The model itself; a :class:`LazyModel` is loaded on first use (timed)."""
        with self._model_lock:
            if isinstance(self._model, LazyModel):
                start = time.perf_counter()
                self._model = self._model.load()
                self.compile_report.model_load_seconds += time.perf_counter() - start
            return self._model

    @property
    def model_name(self) -> str:
        """A name for listings: the :class:`LazyModel`'s name, the file's, or the class's."""
        return self._name

    def fingerprint(self) -> str:
        """The model's cache identity (weights, graph and spec); computed once."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self._model, self.spec)
        return self._fingerprint

    @property
    def _cacheable(self) -> bool:
        return self.cache is not None and isinstance(self.backend, CacheableBackend)

    def _compile_source(self) -> Any:
        """What the backend compiles from: the model, or for ONNX backends with a cache,
        the cached ONNX export (so a new bucket needs neither the export nor the model)."""
        if self._source is not None:
            return self._source
        backend = self.backend
        m = self._model
        onnx_path = isinstance(m, (str, Path)) and str(m).endswith(".onnx")
        if not (self._cacheable and getattr(backend, "exports_onnx", False)) or onnx_path:
            self._source = self.model
            return self._source
        from importlib.metadata import PackageNotFoundError, version

        from .. import __version__
        from ..backends._onnx import to_onnx

        try:
            torch_version = version("torch")
        except PackageNotFoundError:
            torch_version = None
        opset = getattr(backend, "opset", 17)
        cache = self.cache
        assert cache is not None
        ident = cache.identity(
            model=self.fingerprint(),
            backend={"name": "onnx-export", "version": {"torch": torch_version, "bucketwise": __version__},
                     "options": {"opset": opset}},
            bucket=None,
            kind="export",
        )
        key = cache.key(ident)
        with cache.lock(key):
            entry = cache.get(key)
            if entry is None:
                model = self.model
                entry, _ = cache.put(
                    ident,
                    lambda folder: to_onnx(model, self.spec, self.plan.buckets[0], folder, opset=opset),
                    info={"model_name": self.model_name,
                          "model_load_seconds": self.compile_report.model_load_seconds},
                )
                self.compile_report.export_seconds += entry.compile_seconds or 0.0
        self._source = str(entry.path("model.onnx"))
        return self._source

    # -- lifecycle ------------------------------------------------------------------------

    def compile(
        self,
        *,
        progress: bool = True,
        workers: int | None = None,
        lazy: bool = False,
        memory_budget: float | None = None,
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
        """
        from tqdm.auto import tqdm

        start = time.perf_counter()
        if workers is None:
            workers = 1 if memory_budget is not None else min(4, os.cpu_count() or 1)
        if workers < 1:
            raise SpecError(f"workers must be >= 1, got {workers}")
        if memory_budget is not None:
            self._check_budget(memory_budget, self._recorded_resident(), measured=True)
        todo = self._ordered([b for b in self.plan.buckets if b not in self._artifacts])
        now, later = (self._cover_first(todo) if lazy else (todo, []))
        bar = tqdm(total=len(now), desc=f"compile [{self.backend.name}]", unit="bucket", disable=not progress)
        try:
            self._build_all(now, workers=workers, bar=bar)
        finally:
            bar.close()
        self._note_skipped_prep()
        self.compile_report.seconds += time.perf_counter() - start
        if memory_budget is not None and not later:
            try:
                self._check_budget(memory_budget, self.compile_report.resident(), measured=True)
            except Exception:
                self._artifacts.clear()
                self._compiled_plan = None
                raise
        if later:
            self._background = threading.Thread(
                target=self._build_background, args=(later,), name="bucketwise-compile", daemon=True
            )
            self._background.start()
        return self

    def _check_budget(self, budget: float, sizes: Mapping[Bucket, int | None], *, measured: bool) -> None:
        check_memory_budget({b: sizes.get(b) for b in self.plan.buckets}, budget,
                            backend=self.backend.name, measured=measured)

    def _recorded_resident(self) -> dict[Bucket, int | None]:
        """Resident sizes measured on earlier runs of this model and backend (from the cache)."""
        if not self._cacheable:
            return {}
        assert self.cache is not None
        found = self.cache.measured(model=self.fingerprint(), backend=self.backend.name)
        return {b: e.resident_bytes for b, e in found.items()}

    def _ordered(self, buckets: Sequence[Bucket]) -> list[Bucket]:
        traffic = self.plan.meta.get("traffic") or {}
        rank = {b: i for i, b in enumerate(self.plan.buckets)}
        return sorted(buckets, key=lambda b: (-float(traffic.get(b.label(), 0.0)), rank.get(b, 0)))

    def _cover_first(self, buckets: list[Bucket]) -> tuple[list[Bucket], list[Bucket]]:
        """Split into the buckets that no other bucket covers (they hold every shape the plan
        holds) and the rest."""
        top = [b for b in self.plan.buckets
               if not any(c != b and all(c[d] >= b[d] for d in b.dims) for c in self.plan.buckets)]
        now = [b for b in buckets if b in top]
        return now, [b for b in buckets if b not in top]

    def _build_all(self, buckets: list[Bucket], *, workers: int, bar: Any) -> None:
        # Cache hits first, one at a time so each one's memory is measured on its own.
        misses = []
        for bucket in buckets:
            bar.set_postfix_str(bucket.label())
            if self._build(bucket, measure=True, compile_missing=False) is None:
                misses.append(bucket)
            else:
                bar.update()
        if not misses:
            return
        self._compile_source()  # the model load and export happen once, before any bucket
        parallel = workers > 1 and len(misses) > 1 and getattr(self.backend, "parallel_compile", False)
        first, rest = (misses[:1], misses[1:]) if parallel else (misses, [])
        for bucket in first:
            bar.set_postfix_str(bucket.label())
            self._build(bucket, measure=True)
            bar.update()
        if rest:
            bar.set_postfix_str(f"{len(rest)} in parallel")
            with ThreadPoolExecutor(workers, thread_name_prefix="bucketwise-compile") as pool:
                for _ in pool.map(lambda b: self._build(b, measure=False), rest):
                    bar.update()

    def _build_background(self, buckets: list[Bucket]) -> None:
        for bucket in buckets:
            if self._closing.is_set():
                return
            try:
                self._build(bucket, measure=False)
            except Exception as err:  # keep serving from the larger buckets
                warnings.warn(f"background compile of bucket {bucket!r} failed: {err}", RuntimeWarning, stacklevel=1)

    def _build(self, bucket: Bucket, *, measure: bool, compile_missing: bool = True) -> BucketBuild | None:
        """Load ``bucket`` from the cache or compile it, warm it up and install it. Returns
        ``None`` (doing nothing) for a cache miss when ``compile_missing`` is false."""
        if not compile_missing and not self._cacheable:
            return None  # nothing to load: every bucket is a miss
        rss0 = resident_bytes(trim=True) if measure else None
        key = entry = None
        source = "uncached"
        if self._cacheable:
            cache, backend = self.cache, self.backend
            assert cache is not None and isinstance(backend, CacheableBackend)
            ident = cache.identity(model=self.fingerprint(), backend=backend.cache_key(), bucket=bucket)
            key = cache.key(ident)
            if not compile_missing and not cache.folder(key).is_dir():
                return None
            with cache.lock(key):
                t0 = time.perf_counter()
                entry, problem = cache.lookup(key)
                if problem:
                    self._corrupt.add(key)
                if entry is not None:
                    try:
                        artifact = backend.load(entry.folder, self.spec, bucket)
                        source = "cache"
                        with self._lock:
                            for field_ in self._recorded_prep:
                                value = float(entry.meta.get(field_) or 0.0)
                                self._recorded_prep[field_] = max(self._recorded_prep[field_], value)
                    except BackendError as err:
                        warnings.warn(f"cache entry {entry.folder} would not load ({err}); rebuilding",
                                      CacheWarning, stacklevel=2)
                        cache.remove(key)
                        self._corrupt.add(key)
                        entry = None
                if entry is None:
                    if not compile_missing:
                        return None
                    src = self._compile_source()
                    t0 = time.perf_counter()
                    entry, artifact = cache.put(
                        ident,
                        lambda folder: backend.compile_to(src, self.spec, bucket, folder),
                        info={"model_name": self.model_name,
                              "model_load_seconds": self.compile_report.model_load_seconds,
                              "export_seconds": self.compile_report.export_seconds},
                    )
                    source = "rebuilt" if key in self._corrupt else "compiled"
                seconds = time.perf_counter() - t0
        else:
            src = self._compile_source()
            t0 = time.perf_counter()
            artifact = self.backend.compile(src, self.spec, bucket)
            seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        example = self.spec.example_inputs(bucket)
        for _ in range(self.warmup_runs):
            artifact.run(example)
        warm = time.perf_counter() - t1
        resident = None
        if rss0 is not None:
            rss1 = resident_bytes()
            resident = max(0, rss1 - rss0) if rss1 is not None else None
        build = BucketBuild(
            bucket,
            source,  # type: ignore[arg-type]
            seconds,
            warm,
            compile_seconds=seconds if entry is None or source != "cache" else entry.compile_seconds,
            disk_bytes=entry.disk_bytes if entry is not None else None,
            resident_bytes=resident,
            key=key,
        )
        if key is not None and resident is not None and entry is not None and self.cache is not None:
            self._record_resident(key, entry.meta, resident, loaded=source == "cache")
        with self._lock:
            self._artifacts[bucket] = artifact
            self._compiled_plan = Plan(tuple(self._artifacts), self.plan.cost_model)
            self.stats.compile_seconds[bucket] = seconds + warm
            self.compile_report.builds[bucket] = build
        return build

    def _record_resident(self, key: str, meta: Mapping[str, Any], resident: int, *, loaded: bool) -> None:
        """Keep the best-known resident size of a cache entry.

        A load from the cache measures the artifact alone; a compile also counts one-off
        work (the export read into memory), so a load's figure replaces a compile's. A
        process can reuse memory freed earlier, which makes a delta read low, so among
        loads the largest figure stands: the budget check must not under-count.
        """
        assert self.cache is not None
        old, how = meta.get("resident_bytes"), meta.get("resident_measured_on")
        if loaded:
            value = max(resident, int(old)) if how == "load" and old is not None else resident
        elif old is None:
            value = resident
        else:
            return
        self.cache.update(key, resident_bytes=value, resident_measured_on="load" if loaded else "compile",
                          last_used=time.time())

    def _note_skipped_prep(self) -> None:
        """Model loading and export that the run which filled the cache did, and this one
        skipped (the model was never loaded, or never exported)."""
        skipped = 0.0
        if isinstance(self._model, LazyModel):
            skipped += self._recorded_prep["model_load_seconds"]
        if self._source is None:
            skipped += self._recorded_prep["export_seconds"]
        self.compile_report.skipped_prep_seconds = skipped

    @property
    def ready(self) -> bool:
        """True when every bucket of the plan is compiled and warm."""
        return all(b in self._artifacts for b in self.plan.buckets)

    @property
    def can_serve(self) -> bool:
        """True when every shape the plan holds has a built bucket (in lazy mode, before
        :attr:`ready`, some run on a larger bucket)."""
        compiled = self._compiled_plan
        if compiled is None:
            return False
        return all(any(all(c[d] >= b[d] for d in b.dims) for c in compiled.buckets) for b in self.plan.buckets)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait for a lazy compile's background builds; returns :attr:`ready`."""
        if self._background is not None:
            self._background.join(timeout)
        return self.ready

    def artifact(self, bucket: Bucket) -> Artifact:
        try:
            return self._artifacts[bucket]
        except KeyError:
            raise BackendError(
                f"bucket {bucket!r} is not compiled; call .compile() before the first call "
                "(nothing compiles on the request path)"
            ) from None

    def close(self) -> None:
        self._closing.set()
        if self._background is not None:
            self._background.join()
        self._artifacts.clear()
        self._compiled_plan = None
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
        artifact = self._artifacts.get(bucket)
        if artifact is None:
            # Lazy compile: run on the cheapest built bucket that covers the shape.
            wanted, compiled = bucket, self._compiled_plan
            if compiled is None:
                self.artifact(bucket)  # raises: nothing is compiled
            bucket = route(compiled, shape)
            artifact = self._artifacts[bucket]
            with self._lock:
                self.stats.substitutions[(wanted, bucket)] += 1
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
        """Record ``n`` overflows handled by ``policy`` outside the call path (a tokenizer
        that truncates, an image resized to fit), so ``stats.overflow`` counts every use."""
        if policy not in COUNTED_OVERFLOWS:
            raise SpecError(f"policy must be one of {COUNTED_OVERFLOWS}, got {policy!r}")
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
