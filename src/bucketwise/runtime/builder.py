"""The builder: one artifact per bucket, exported once, cached, warmed up, measured.

Building is everything before the first call: load the model (lazily), export it once
where the backend compiles from an exported file, then per bucket load the artifact from
the cache or compile it, warm it up and install it. Order (expected traffic), lazy start
(the covering buckets first, the rest in the background), parallel compiles and memory
measurement live here too. The runner reads the installed artifacts through
:meth:`Builder.artifact` and :attr:`Builder.built`, and nothing else.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..backends.base import Artifact, Backend, CacheableBackend
from ..errors import BackendError, CacheWarning, ConfigError
from ..plans import Plan
from ..router import Router
from ..shapes import Bucket
from ..spec import ModelSpec
from .cache import ArtifactCache, CacheEntry, LazyModel, fingerprint, mapped_resident_bytes, resident_bytes
from .export import export_source
from .memory import check_memory_budget
from .reports import BucketBuild, CompileReport

__all__ = ["Builder", "BucketBuild", "CompileReport"]



class Builder:
    """Builds and holds the artifacts of one plan on one backend (see the module doc)."""

    def __init__(
        self,
        model: Any,
        spec: ModelSpec,
        plan: Plan,
        backend: Backend,
        *,
        router: Router,
        cache: ArtifactCache | None = None,
        warmup_runs: int = 1,
    ) -> None:
        self._model = model
        self.spec = spec
        self.plan = plan
        self.backend = backend
        self.router = router
        self.cache = cache
        self.warmup_runs = warmup_runs
        self.report = CompileReport(backend.name, str(cache.root) if cache else None)
        self.compile_seconds: dict[Bucket, float] = {}
        self._artifacts: dict[Bucket, Artifact] = {}
        self.built: frozenset[Bucket] = frozenset()
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._source_lock = threading.Lock()
        self._fingerprint: str | None = None
        self._source: Any = None
        self._workdir: tempfile.TemporaryDirectory | None = None
        self._background: threading.Thread | None = None
        self._closing = threading.Event()
        self._corrupt: set[str] = set()  # cache keys found corrupt on this start
        self._warmed: set[Any] = set()  # warm_key of artifacts warmed up (shared runtime state)
        # Warm-up runs one at a time, even where buckets load or compile in parallel: two
        # OpenVINO warm-ups at once (parallel cache loads) once hung for good in
        # InferRequest.infer (docs/decisions.md, Packing). A warm-up is one run per bucket.
        self._warmup_lock = threading.Lock()
        self._measure = True
        # Model load and export seconds recorded by the runs that filled the entries loaded
        # on this start (the largest of each), read from the entries' meta as they load.
        self._recorded_prep = {"model_load_seconds": 0.0, "export_seconds": 0.0}
        if isinstance(model, LazyModel):
            self.model_name = model.name or "model"
        elif isinstance(model, (str, Path)):
            self.model_name = Path(model).name
        else:
            self.model_name = type(model).__name__

    # -- the model and its export ---------------------------------------------------------

    @property
    def model(self) -> Any:
        """The model itself; a :class:`LazyModel` is loaded on first use (timed)."""
        with self._model_lock:
            if isinstance(self._model, LazyModel):
                start = time.perf_counter()
                self._model = self._model.load()
                self.report.model_load_seconds += time.perf_counter() - start
            return self._model

    @property
    def model_loaded(self) -> bool:
        return not isinstance(self._model, LazyModel)

    def fingerprint(self) -> str:
        """The model's cache identity (weights, graph and spec); computed once."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self._model, self.spec)
        return self._fingerprint

    @property
    def cacheable(self) -> bool:
        return self.cache is not None and isinstance(self.backend, CacheableBackend)

    def source(self) -> Any:
        """What the backend compiles from: the model, or the backend's one export of it
        (an entry of its own in the artifact cache, so a new bucket needs neither the
        export nor the model)."""
        with self._source_lock:
            if self._source is None:
                self._source = self._prepare_source()
            return self._source

    def _prepare_source(self) -> Any:
        if self.backend.export_format is None:
            return self.model
        if self.cache is None or isinstance(self._model, (str, Path)):  # an existing file is cheap to (re)name
            if self._workdir is None:
                self._workdir = tempfile.TemporaryDirectory(prefix="bucketwise-export-")
            folder: Path | None = Path(self._workdir.name)
        else:
            folder = None  # an entry of its own in the artifact cache
        return export_source(self, folder)

    # -- building -----------------------------------------------------------------------

    def _open_cache(self) -> None:
        """Sweep what killed builds left in the cache; a cache that cannot be written is
        dropped with one CacheWarning, and the build goes on without it."""
        if self.cache is None:
            return
        try:
            self.cache.check_writable()
        except ConfigError as err:
            warnings.warn(f"{err}; building without the cache", CacheWarning, stacklevel=4)
            self.cache = None
            self.report.cache = None
            return
        self.cache.sweep()

    def build(
        self,
        *,
        progress: bool = True,
        workers: int | None = None,
        lazy: bool = False,
        memory_budget: float | None = None,
        measure_memory: bool | None = None,
        only: Collection[Bucket] | None = None,
    ) -> None:
        """Build every bucket not built yet, or with ``only`` those of them and the ones
        that cover every shape (see ``BucketedModel.compile``)."""
        from tqdm.auto import tqdm

        start = time.perf_counter()
        self._open_cache()
        if workers is None:
            workers = 1 if memory_budget is not None else min(4, os.cpu_count() or 1)
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        # Measuring trims the heap before each bucket (malloc_trim), which costs time in a
        # big process: by default only where the figure is kept (cache) or needed (budget).
        self._measure = (self.cache is not None or memory_budget is not None) if measure_memory is None else measure_memory
        if memory_budget is not None:
            self._check_budget(memory_budget, *self._recorded_resident())
        top = set(self.router.maximal())
        if only is not None:
            unknown = [b for b in only if b not in self.plan.buckets]
            if unknown:
                raise ConfigError(f"only={unknown[0]!r} is not a bucket of the plan ({self.plan}); "
                                  "name buckets from plan.buckets")
        wanted = self.plan.buckets if only is None else [b for b in self.plan.buckets if b in set(only) | top]
        todo = self.build_order([b for b in wanted if b not in self.built])
        now, later = ([b for b in todo if b in top], [b for b in todo if b not in top]) if lazy else (todo, [])
        bar = tqdm(total=len(now), desc=f"compile [{self.backend.name}]", unit="bucket", disable=not progress)
        try:
            self._build_all(now, workers=workers, bar=bar)
        finally:
            bar.close()
        self._note_skipped_prep()
        self.report.seconds += time.perf_counter() - start
        if memory_budget is not None and not later:
            try:
                self._check_budget(memory_budget, self.report.resident(), self.report.shared_bytes)
            except Exception:
                with self._lock:
                    self._artifacts.clear()
                    self.built = frozenset()
                raise
        if later:
            self._background = threading.Thread(
                target=self._build_background, args=(later,), name="bucketwise-compile", daemon=True
            )
            self._background.start()
        else:
            self._evict()

    def _evict(self) -> None:
        """Keep a capped cache under its cap, never evicting what this model uses."""
        if self.cache is None or self.cache.max_bytes is None:
            return
        keep = {b.key for b in self.report.builds.values() if b.key is not None}
        for key in self.cache.evict(keep=keep):
            self.report.evicted.append(key)

    def _check_budget(self, budget: float, sizes: Mapping[Bucket, int | None], shared: Mapping[str, int]) -> None:
        check_memory_budget({b: sizes.get(b) for b in self.plan.buckets}, budget,
                            backend=self.backend.name, measured=True, shared_bytes=sum(shared.values()))

    def _recorded_resident(self) -> tuple[dict[Bucket, int | None], dict[str, int]]:
        """What each bucket adds, and the memory buckets share (once), as measured on
        earlier runs of this model and backend (from the cache)."""
        if not self.cacheable:
            return {}, {}
        assert self.cache is not None
        found = self.cache.measured(model=self.fingerprint(), backend=self.backend.name)
        found = {b: e for b, e in found.items() if b in self.plan.buckets}
        shared: dict[str, int] = {}
        for e in found.values():
            shared.update(e.resident_shared)
        return {b: e.resident_bytes for b, e in found.items()}, shared

    def build_order(self, buckets: Sequence[Bucket]) -> list[Bucket]:
        """``buckets`` in the order they are built: most traffic first (the shares the plan
        records), ties in the plan's order; or the backend's own order where it defines
        ``build_order`` (CUDA graphs share a pool the largest bucket must size first)."""
        traffic = self.plan.meta.get("traffic") or {}
        rank = {b: i for i, b in enumerate(self.plan.buckets)}
        ordered = sorted(buckets, key=lambda b: (-float(traffic.get(b.label(), 0.0)), rank.get(b, 0)))
        own = getattr(self.backend, "build_order", None)  # optional, as shared_files is (backends/base.py)
        return ordered if own is None else list(own(ordered))

    def _build_all(self, buckets: list[Bucket], *, workers: int, bar: Any) -> None:
        # Cache hits whose memory an earlier load measured: loaded in parallel where the
        # backend allows it (nothing to measure). Then the other hits, one at a time so
        # each one's memory is measured on its own.
        parallel_hits = workers > 1 and self.backend.parallel_compile and self.cacheable
        known = [b for b in buckets if self._measured_on_load(b)] if parallel_hits else []
        if len(known) > 1:
            bar.set_postfix_str(f"{len(known)} from the cache in parallel")
            with ThreadPoolExecutor(workers, thread_name_prefix="bucketwise-load") as pool:
                loaded = list(pool.map(lambda b: self._build(b, measure=False, compile_missing=False), known))
            done = {b for b, got in zip(known, loaded) if got is not None}
            bar.update(len(done))
            buckets = [b for b in buckets if b not in done]
        misses = []
        for bucket in buckets:
            bar.set_postfix_str(bucket.label())
            if self.cacheable and self._build(bucket, measure=True, compile_missing=False) is not None:
                bar.update()
            else:
                misses.append(bucket)
        if not misses:
            return
        self.source()  # the model load and export happen once, before any bucket
        parallel = workers > 1 and len(misses) > 1 and self.backend.parallel_compile
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
        self._evict()

    def _build(self, bucket: Bucket, *, measure: bool, compile_missing: bool = True) -> BucketBuild | None:
        """Load ``bucket`` from the cache or compile it, warm it up and install it. Returns
        ``None`` (doing nothing) for a cache miss when ``compile_missing`` is false."""
        # A cache entry whose size was measured on an earlier load is not measured again:
        # trimming the heap for each bucket would double a warm start.
        rss0 = resident_bytes(trim=True) if measure and self._measure and not self._measured_on_load(bucket) else None
        if self.cacheable:
            got = self._from_cache(bucket, compile_missing=compile_missing)
            if got is None:
                return None
            artifact, source, seconds, entry, key = got
        else:
            src = self.source()
            t0 = time.perf_counter()
            artifact = self.backend.compile(src, self.spec, bucket)
            seconds, source, entry, key = time.perf_counter() - t0, "uncached", None, None
        warm = self._warm_up(artifact, bucket)
        shared, paths = self._shared_of(entry)
        with self._lock:
            new = [k for k in shared if k not in self.report.shared_bytes]
            self.report.shared_bytes.update(shared)
            if entry is not None:
                self.report.disk_files.update({str(f["sha256"]): int(f["bytes"])
                                               for f in entry.meta.get("files", {}).values()})
        # The part of the shared files this load made resident (a mapped file is resident
        # only where it was read); counted in the budget at their full size, once.
        newly_shared = sum(_resident_part(paths[k], shared[k]) for k in new)
        resident = None
        if rss0 is not None:
            rss1 = resident_bytes()
            # What this bucket adds: the first bucket to map the shared weights does not own them.
            resident = max(0, rss1 - rss0 - newly_shared) if rss1 is not None else None
        if resident is None and source == "cache" and entry is not None and _counts_shared_once(entry.meta):
            resident = entry.resident_bytes  # measured on an earlier load
        build = BucketBuild(
            bucket, source, seconds, warm,  # type: ignore[arg-type]
            compile_seconds=entry.compile_seconds if source == "cache" and entry is not None else seconds,
            disk_bytes=entry.disk_bytes if entry is not None else None,
            resident_bytes=resident,
            key=key,
        )
        if key is not None and rss0 is not None and resident is not None and entry is not None:
            self._record_resident(key, entry.meta, resident, shared, loaded=source == "cache")
        with self._lock:
            self._artifacts[bucket] = artifact
            self.built = frozenset(self._artifacts)
            self.compile_seconds[bucket] = seconds + warm
            self.report.builds[bucket] = build
        return build

    def uncached(self) -> list[Bucket]:
        """The plan's buckets the cache holds no entry for (a cheap look for each entry's
        folder; an entry found corrupt when loaded is still rebuilt then). All of them
        where nothing is cached."""
        if not self.cacheable:
            return list(self.plan.buckets)
        assert self.cache is not None
        return [b for b in self.plan.buckets if not self.cache.folder(self.cache.key(self._identity(b))).is_dir()]

    def _identity(self, bucket: Bucket) -> dict[str, Any]:
        """What the bucket's cache entry is (its key is the digest of this)."""
        assert self.cache is not None and isinstance(self.backend, CacheableBackend)
        return self.cache.identity(model=self.fingerprint(), backend=self.backend.cache_key(), bucket=bucket)

    def _measured_on_load(self, bucket: Bucket) -> bool:
        if not self.cacheable:
            return False
        assert self.cache is not None
        key = self.cache.key(self._identity(bucket))
        try:
            meta = json.loads((self.cache.folder(key) / "meta.json").read_text())
        except (OSError, ValueError):
            return False
        return (isinstance(meta, dict) and meta.get("resident_measured_on") == "load"
                and meta.get("resident_bytes") is not None and _counts_shared_once(meta))

    def _shared_of(self, entry: CacheEntry | None) -> tuple[dict[str, int], dict[str, Path]]:
        """The entry's files every bucket shares in memory (``backend.shared_files``), by
        SHA-256 (the same weights in every bucket's entry): id -> bytes, and id -> path."""
        names = getattr(self.backend, "shared_files", None)
        if entry is None or names is None:
            return {}, {}
        files = entry.meta.get("files", {})
        found = [(str(files[n]["sha256"]), n) for n in names(entry.folder) if n in files]
        return {k: int(files[n]["bytes"]) for k, n in found}, {k: entry.folder / n for k, n in found}

    def _from_cache(
        self, bucket: Bucket, *, compile_missing: bool
    ) -> tuple[Artifact, str, float, CacheEntry, str] | None:
        cache, backend = self.cache, self.backend
        assert cache is not None and isinstance(backend, CacheableBackend)
        ident = self._identity(bucket)
        key = cache.key(ident)
        if not compile_missing and not cache.folder(key).is_dir():
            return None
        with cache.lock(key):
            t0 = time.perf_counter()
            entry = self._load_entry(key, bucket)
            if entry is not None:
                return entry[0], "cache", time.perf_counter() - t0, entry[1], key
            if not compile_missing:
                return None
            src = self.source()
            t0 = time.perf_counter()
            put, artifact = cache.put(
                ident,
                lambda folder: backend.compile_to(src, self.spec, bucket, folder),
                info={"model_name": self.model_name,
                      "model_load_seconds": self.report.model_load_seconds,
                      "export_seconds": self.report.export_seconds},
            )
            source = "rebuilt" if key in self._corrupt else "compiled"
            return artifact, source, time.perf_counter() - t0, put, key

    def _load_entry(self, key: str, bucket: Bucket) -> tuple[Artifact, CacheEntry] | None:
        cache, backend = self.cache, self.backend
        assert cache is not None and isinstance(backend, CacheableBackend)
        entry, problem = cache.lookup(key)
        if problem:
            self._corrupt.add(key)
        if entry is None:
            return None
        try:
            artifact = backend.load(entry.folder, self.spec, bucket)
        except BackendError as err:
            warnings.warn(f"cache entry {entry.folder} would not load ({err}); rebuilding", CacheWarning, stacklevel=3)
            cache.remove(key)
            self._corrupt.add(key)
            return None
        with self._lock:
            for name in self._recorded_prep:
                value = float(entry.meta.get(name) or 0.0)
                self._recorded_prep[name] = max(self._recorded_prep[name], value)
        return artifact, entry

    def _warm_up(self, artifact: Artifact, bucket: Bucket) -> float:
        from .. import _arrays

        # Artifacts that share their runtime state (one ORT session for every length) warm
        # up once: the first of them.
        key = getattr(artifact, "warm_key", None)
        if key is not None:
            with self._lock:
                if key in self._warmed:
                    return 0.0
                self._warmed.add(key)
        example = {k: _arrays.convert(v, artifact.array_kind) for k, v in self.spec.example_inputs(bucket).items()}
        with self._warmup_lock:  # timed once it is this bucket's turn
            t1 = time.perf_counter()
            for _ in range(self.warmup_runs):
                artifact.run(example)
            return time.perf_counter() - t1

    def _record_resident(self, key: str, meta: Mapping[str, Any], resident: int, shared: Mapping[str, int],
                         *, loaded: bool) -> None:
        """Keep the best-known resident size of a cache entry.

        A load from the cache measures the artifact alone; a compile also counts one-off
        work (the export read into memory), so a load's figure replaces a compile's. A
        process can reuse memory freed earlier, which makes a delta read low, so among
        loads the largest figure stands: the budget check must not under-count.
        """
        assert self.cache is not None
        old, how = meta.get("resident_bytes"), meta.get("resident_measured_on")
        if not _counts_shared_once(meta):
            old = how = None  # measured before shared memory was counted apart: measure afresh
        if loaded:
            value = max(resident, int(old)) if how == "load" and old is not None else resident
        elif old is None:
            value = resident
        else:
            return
        self.cache.update(key, resident_bytes=value, resident_measured_on="load" if loaded else "compile",
                          resident_shared=dict(shared), last_used=time.time())

    def _note_skipped_prep(self) -> None:
        """Model loading and export that the run which filled the cache did, and this one
        skipped (the model was never loaded, or never exported)."""
        skipped = 0.0
        if isinstance(self._model, LazyModel):
            skipped += self._recorded_prep["model_load_seconds"]
        if self._source is None:
            skipped += self._recorded_prep["export_seconds"]
        self.report.skipped_prep_seconds = skipped

    # -- state ------------------------------------------------------------------------------

    def artifact(self, bucket: Bucket) -> Artifact | None:
        return self._artifacts.get(bucket)

    @property
    def ready(self) -> bool:
        """True when every bucket of the plan is compiled and warm."""
        return len(self.built) == len(self.plan)

    @property
    def can_serve(self) -> bool:
        """True when every shape the plan holds has a built bucket."""
        built = self.built
        return bool(built) and self.router.serves_all(built)

    def wait_ready(self, timeout: float | None = None) -> bool:
        if self._background is not None:
            self._background.join(timeout)
        return self.ready

    def release(self) -> None:
        """Stop background builds and drop the artifacts; the backend stays open."""
        self._closing.set()
        if self._background is not None:
            self._background.join()
        with self._lock:
            self._artifacts.clear()
            self.built = frozenset()

    def close(self) -> None:
        self.release()
        self.backend.close()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None


def _counts_shared_once(meta: Mapping[str, Any]) -> bool:
    """True when the entry's recorded ``resident_bytes`` leaves out memory shared with
    other buckets (recorded since ``resident_shared`` exists); older figures included it."""
    return isinstance(meta.get("resident_shared"), dict)


def _resident_part(path: Path, size: int) -> int:
    """How much of a shared file is resident in this process: through memory maps where the
    OS tells, else (read into memory, or not on Linux) its whole size."""
    mapped = mapped_resident_bytes(path)
    return mapped if mapped else size
