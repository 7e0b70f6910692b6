"""Memory accounting of compiled buckets: sizes, and the budget check."""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import MemoryBudgetError
from ..shapes import Bucket

__all__ = ["check_memory_budget", "format_bytes"]


def format_bytes(n: float | None) -> str:
    """``123456789`` -> ``"117.7 MiB"``; ``None`` -> ``"-"``."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def check_memory_budget(
    sizes: Mapping[Bucket, int | None], budget: float, *, backend: str, measured: bool = True
) -> int:
    """Raise :class:`MemoryBudgetError` when the known ``sizes`` (bytes per bucket) add up
    to more than ``budget``; returns the known total. Buckets of unknown size count 0, so
    before anything is measured the check can only pass; it runs again once they are."""
    if budget <= 0:
        raise MemoryBudgetError(f"memory budget must be positive, got {budget!r}; write e.g. 2GB or 512MiB")
    known = {b: int(s) for b, s in sizes.items() if s is not None}
    total = sum(known.values())
    if total <= budget:
        return total
    largest = sorted(known.items(), key=lambda kv: -kv[1])[:3]
    names = ", ".join(f"{b.label()} ({format_bytes(s)})" for b, s in largest)
    what = "measured resident memory" if measured else "estimated memory"
    fit = 0
    room = budget
    for _, s in sorted(known.items(), key=lambda kv: kv[1]):
        if s > room:
            break
        room -= s
        fit += 1
    raise MemoryBudgetError(
        f"the plan's {len(sizes)} buckets on {backend} need {format_bytes(total)} of {what}, "
        f"but the memory budget is {format_bytes(budget)}. Largest buckets: {names}. "
        f"Fix: drop buckets (at most about {fit} of these sizes fit; re-plan with "
        f"`bucketwise plan --memory-budget {format_bytes(budget).replace(' ', '')}`, which reads "
        "these measured sizes from the cache), raise the budget, or use a backend that shares "
        "weights across buckets (openvino)"
    )
