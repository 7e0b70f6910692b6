"""What a bucketed model did: run counts, bucket hits, padding, overflows."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..shapes import Bucket

__all__ = ["BucketStats"]


@dataclass
class BucketStats:
    """What a bucketed model has done since it was built (or since ``reset_stats``).

    ``real_volume`` counts the positions that held input data: for a call, its rows times
    its sizes as the caller handed them; for rows batched by the library (the batcher, the
    text embedder), each row's own size. ``padded_volume`` counts the positions computed
    (the buckets' volumes, summed over runs). :attr:`padding_waste` is the one definition
    of padding waste: the CLI, the server's ``/metrics`` and reports all read it.
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
