"""What a build did: per bucket (:class:`BucketBuild`) and in all (:class:`CompileReport`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..shapes import Bucket

__all__ = ["BucketBuild", "CompileReport"]


@dataclass
class BucketBuild:
    """How one bucket's artifact came to be on this start.

    ``source`` is ``"compiled"`` (a cache miss, now cached), ``"cache"`` (loaded from the
    cache), ``"rebuilt"`` (its cache entry was corrupt, so it was compiled again) or
    ``"uncached"`` (no cache, or a backend whose artifacts cannot be saved). ``seconds`` is
    the compile or load time of this start, warm-up not included; ``compile_seconds`` what
    compiling it cost, now or when its cache entry was written. ``resident_bytes`` is the
    growth of the process's resident memory while building and warming it up, less the
    memory it shares with other buckets (the report's ``shared_bytes``, counted once);
    ``None`` where it could not be told apart: parallel or background builds.
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
    """What a build did: per bucket, and the model-level steps.

    ``saved_seconds`` is what the cache spared this start: for each bucket loaded from the
    cache, its recorded compile time less its load time, plus the model loading and export
    recorded by the run that filled the cache, where this start skipped them.
    """

    backend: str
    cache: str | None = None
    builds: dict[Bucket, BucketBuild] = field(default_factory=dict)
    evicted: list[str] = field(default_factory=list)  # cache entries removed to keep under the cap
    model_load_seconds: float = 0.0
    export_seconds: float = 0.0
    skipped_prep_seconds: float = 0.0
    seconds: float = 0.0
    shared_bytes: dict[str, int] = field(default_factory=dict)  # shared by buckets, resident once: id -> bytes
    disk_files: dict[str, int] = field(default_factory=dict)  # the entries' files by SHA-256 (stored once) -> bytes

    @property
    def disk_bytes(self) -> int:
        """Bytes the built buckets' cache entries hold on disk, identical files counted once."""
        if self.disk_files:
            return sum(self.disk_files.values())
        return sum(b.disk_bytes or 0 for b in self.builds.values())

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
            "shared_bytes": sum(self.shared_bytes.values()),
            "disk_bytes": self.disk_bytes,
            "buckets": [b.as_dict() for b in self.builds.values()],
        }
