"""Running compiled buckets: the builder (export, compile, cache, warm up), the runner
(route → pad → run → unpad), the bucketed model that joins them, the batcher, the artifact
cache, memory accounting and profiling."""

from .builder import Builder
from .cache import ArtifactCache, CacheEntry, LazyModel, default_cache_dir, fingerprint
from .memory import check_memory_budget, format_bytes
from .model import OVERFLOW_POLICIES, BucketedModel
from .profile import measure_cost, profile_ladder
from .reports import BucketBuild, CompileReport
from .runner import Runner
from .stats import BucketStats

__all__ = [
    "ArtifactCache",
    "BucketBuild",
    "BucketedModel",
    "BucketStats",
    "Builder",
    "CacheEntry",
    "CompileReport",
    "LazyModel",
    "OVERFLOW_POLICIES",
    "Runner",
    "check_memory_budget",
    "default_cache_dir",
    "fingerprint",
    "format_bytes",
    "measure_cost",
    "profile_ladder",
]
