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
    sizes: Mapping[Bucket, int | None],
    budget: float,
    *,
    backend: str,
    measured: bool = True,
    shared_bytes: int = 0,
) -> int:
    """Raise :class:`MemoryBudgetError` when ``shared_bytes`` (memory every bucket shares,
    such as weights mapped once, counted once) and the known ``sizes`` (what each bucket
    adds, in bytes) add up to more than ``budget``; returns the known total. Buckets of
    unknown size count 0, so before anything is measured the check can only pass; it runs
    again once they are."""
    if budget <= 0:
        raise MemoryBudgetError(f"memory budget must be positive, got {budget!r}; write e.g. 2GB or 512MiB")
    known = {b: int(s) for b, s in sizes.items() if s is not None}
    total = shared_bytes + sum(known.values())
    if total <= budget:
        return total
    largest = sorted(known.items(), key=lambda kv: -kv[1])[:3]
    names = ", ".join(f"{b.label()} ({format_bytes(s)})" for b, s in largest)
    what = "measured resident memory" if measured else "estimated memory"
    fit = 0
    room = budget - shared_bytes
    for _, s in sorted(known.items(), key=lambda kv: kv[1]):
        if s > room:
            break
        room -= s
        fit += 1
    shared = f" ({format_bytes(shared_bytes)} shared by every bucket, once, and the rest per bucket)" if shared_bytes else ""
    raise MemoryBudgetError(
        f"the plan's {len(sizes)} buckets on {backend} need {format_bytes(total)} of {what}{shared}, "
        f"but the memory budget is {format_bytes(budget)}. Largest buckets: {names}. "
        f"Fix: drop buckets (at most about {fit} of these sizes fit; re-plan with "
        f"`bucketwise plan --memory-budget {format_bytes(budget).replace(' ', '')}`, which reads "
        "these measured sizes from the cache), raise the budget, or share more across buckets "
        "(onnxruntime: backend_options prepack=False or --prepack hot keeps only the weights' "
        "one mapped copy)"
    )
