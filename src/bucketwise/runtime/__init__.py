"""Running compiled buckets: the bucketed model (route → pad → run → unpad), the artifact
cache and memory accounting."""

from .cache import ArtifactCache, CacheEntry, CacheWarning, LazyModel, default_cache_dir, fingerprint
from .memory import check_memory_budget, format_bytes
from .model import OVERFLOW_POLICIES, BucketBuild, BucketedModel, BucketStats, CompileReport

__all__ = [
    "ArtifactCache",
    "BucketBuild",
    "BucketedModel",
    "BucketStats",
    "CacheEntry",
    "CacheWarning",
    "CompileReport",
    "LazyModel",
    "OVERFLOW_POLICIES",
    "check_memory_budget",
    "default_cache_dir",
    "fingerprint",
    "format_bytes",
]
