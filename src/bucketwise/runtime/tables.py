"""Plain-text tables of what the runtime did: bucket hits, builds, the cache listing.

The command line prints them; a notebook or a log can too.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from ..plans import Plan
from .cache import CacheEntry
from .memory import format_bytes
from .reports import CompileReport
from .stats import BucketStats

__all__ = ["hits_table", "compile_table", "cache_table", "cache_rows", "age"]


def hits_table(stats: BucketStats, plan: Plan, *, all_rows: int = 12) -> list[str]:
    """Runs and share of runs per bucket of the plan, smallest first. A plan of more than
    ``all_rows`` buckets lists only those that ran, and counts the rest."""
    lines = [f"  {'bucket':<22}{'runs':>8}{'share':>9}"]
    idle = 0
    for bucket in sorted(plan.buckets, key=lambda b: b.sizes):
        hits = stats.hits.get(bucket, 0)
        if hits == 0 and len(plan) > all_rows:
            idle += 1
            continue
        lines.append(f"  {bucket.label():<22}{hits:>8}{hits / max(stats.runs, 1):>9.1%}")
    if idle:
        lines.append(f"  ({idle} other buckets did not run)")
    return lines


def compile_table(report: CompileReport, *, wall_seconds: float, budget: float | None = None) -> list[str]:
    """Per bucket: source, seconds, compile seconds, size on disk, resident; then totals."""
    builds = list(report.builds.values())
    lines = [f"  {'bucket':<20}{'source':<10}{'seconds':>9}{'compile s':>11}{'on disk':>12}{'resident':>12}"]
    for b in builds:
        compile_s = f"{b.compile_seconds:.2f}" if b.compile_seconds is not None else "-"
        lines.append(f"  {b.bucket.label():<20}{b.source:<10}{b.seconds:>9.2f}{compile_s:>11}"
                     f"{format_bytes(b.disk_bytes):>12}{format_bytes(b.resident_bytes):>12}")
    disk = report.disk_bytes
    resident = [b.resident_bytes for b in builds if b.resident_bytes is not None]
    compiled = sum(1 for b in builds if b.source != "cache")
    shared = sum(report.shared_bytes.values())
    total = shared + sum(resident)
    lines.append(
        f"total    {len(builds)} buckets in {wall_seconds:.1f} s ({report.hits} from the cache, {compiled} compiled); "
        f"{format_bytes(disk)} on disk (files shared by buckets once); {format_bytes(total) if resident else '-'} resident"
        + (f" ({format_bytes(shared)} of weights shared by every bucket, once)" if shared and resident else "")
        + (f" ({len(builds) - len(resident)} compiled in parallel, measured on the next load)"
           if len(resident) < len(builds) else ""))
    if report.hits:
        lines.append(
            f"saved    {report.saved_seconds:.1f} s against compiling: {report.hits} buckets loaded from the cache"
            + (f", model loading and export ({report.skipped_prep_seconds:.1f} s) skipped"
               if report.skipped_prep_seconds else ""))
    else:
        lines.append(f"cached   {compiled} buckets (model load {report.model_load_seconds:.1f} s, export "
                     f"{report.export_seconds:.1f} s); the next start loads them instead of compiling")
    if budget is not None:
        lines.append(f"budget   {format_bytes(total)} resident of {format_bytes(budget)} allowed")
    return lines


def age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _version(entry: CacheEntry) -> Any:
    version = entry.identity.get("backend", {}).get("version")
    if isinstance(version, dict):
        version = version.get("torch")
    return version


def cache_table(entries: Iterable[CacheEntry], *, now: float | None = None) -> list[str]:
    """One line per cache entry: model, backend and version, bucket, sizes, compile time, age."""
    now = time.time() if now is None else now
    lines = [f"  {'model':<40}{'backend':<24}{'bucket':<20}{'on disk':>11}{'resident':>11}{'compile s':>10}{'age':>6}"]
    for e in entries:
        version = _version(e)
        backend = f"{e.backend} {version}" if version else e.backend
        bucket = e.bucket.label() if e.bucket else "(model export)"
        compile_s = f"{e.compile_seconds:.2f}" if e.compile_seconds is not None else "-"
        lines.append(f"  {e.model_name[:39]:<40}{backend[:23]:<24}{bucket:<20}{format_bytes(e.disk_bytes):>11}"
                     f"{format_bytes(e.resident_bytes):>11}{compile_s:>10}{age(now - e.created):>6}")
    return lines


def cache_rows(entries: Iterable[CacheEntry]) -> list[dict[str, Any]]:
    """The cache listing as JSON-ready rows."""
    return [{"key": e.key, "model": e.model_name, "fingerprint": e.identity.get("model"),
             "backend": e.backend, "backend_version": _version(e), "kind": e.identity.get("kind"),
             "bucket": e.bucket.as_dict() if e.bucket else None, "disk_bytes": e.disk_bytes,
             "resident_bytes": e.resident_bytes, "compile_seconds": e.compile_seconds,
             "created": e.created, "host": e.identity.get("host")} for e in entries]
