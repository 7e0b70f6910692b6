"""Dims and buckets: the bottom layer.

A *shape* is a mapping from dim name to size, e.g. ``{"batch": 3, "seq": 37}``. A
:class:`Bucket` is a frozen, hashable shape that one artifact is compiled for. A bucket
*covers* a shape when it is at least as large in every dim. Plans (``bucketwise.plan``)
hold buckets; the router (``bucketwise.router``) picks among them.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import PlanError

__all__ = ["Shape", "Bucket", "BATCH", "covers", "dim_key"]

Shape = Mapping[str, int]
"""Sizes of the named dims of one input, e.g. ``{"seq": 37}``."""

BATCH = "batch"
"""The dim whose pad rows are dropped whole; always padded at the end."""

# Dims print in this order; other dims follow alphabetically.
_DIM_ORDER = {"batch": 0, "seq": 1, "height": 2, "width": 3}


def dim_key(dim: str) -> tuple[int, str]:
    return (_DIM_ORDER.get(dim, len(_DIM_ORDER)), dim)


def _check_size(dim: Any, size: Any, what: str) -> int:
    if not isinstance(dim, str) or not dim:
        raise PlanError(f"{what}: dim names must be non-empty strings, got {dim!r}")
    try:
        value = operator.index(size)  # ints and NumPy integers; not floats or strings
    except TypeError:
        value = 0
    if isinstance(size, bool) or value < 1:
        raise PlanError(
            f"{what}: size of dim {dim!r} must be a positive integer, got {size!r}; "
            "sizes count elements along that dim, e.g. seq=128"
        )
    return value


@dataclass(frozen=True, init=False, order=False)
class Bucket:
    """A fixed shape that one artifact is compiled for. Frozen and hashable.

    ``Bucket(batch=8, seq=128)`` or ``Bucket({"batch": 8, "seq": 128})``. Two buckets with
    the same sizes are equal whatever order the dims were given in.
    """

    sizes: tuple[tuple[str, int], ...]

    def __init__(self, sizes: Mapping[str, int] | None = None, /, **dims: int) -> None:
        merged: dict[str, int] = {}
        for source in (sizes or {}, dims):
            for dim, size in source.items():
                if dim in merged:
                    raise PlanError(f"bucket: dim {dim!r} given twice")
                merged[dim] = _check_size(dim, size, "bucket")
        if not merged:
            raise PlanError("bucket: needs at least one dim, e.g. Bucket(seq=128)")
        object.__setattr__(
            self, "sizes", tuple(sorted(merged.items(), key=lambda kv: dim_key(kv[0])))
        )

    @property
    def dims(self) -> tuple[str, ...]:
        return tuple(d for d, _ in self.sizes)

    def __getitem__(self, dim: str) -> int:
        for d, s in self.sizes:
            if d == dim:
                return s
        raise KeyError(dim)

    def get(self, dim: str, default: int | None = None) -> int | None:
        try:
            return self[dim]
        except KeyError:
            return default

    def as_dict(self) -> dict[str, int]:
        return dict(self.sizes)

    @property
    def volume(self) -> int:
        """Product of the sizes: the number of positions the artifact computes on."""
        return math.prod(s for _, s in self.sizes)

    def covers(self, shape: Shape) -> bool:
        """True when this bucket is at least as large as ``shape`` in every dim."""
        return covers(self, shape)

    def __repr__(self) -> str:
        return "Bucket(" + ", ".join(f"{d}={s}" for d, s in self.sizes) + ")"

    def __str__(self) -> str:
        return "x".join(str(s) for _, s in self.sizes)

    def label(self) -> str:
        """Human-readable label with dim names, e.g. ``batch=8,seq=128``."""
        return ",".join(f"{d}={s}" for d, s in self.sizes)


def covers(bucket: Bucket, shape: Shape) -> bool:
    """True when ``bucket`` is at least as large as ``shape`` in every dim of the bucket.

    Raises :class:`PlanError` when the shape lacks one of the bucket's dims or has one
    the bucket lacks: such a shape cannot be routed at all.
    """
    if set(shape) != set(bucket.dims):
        raise PlanError(
            f"shape {dict(shape)} has dims {sorted(shape)} but bucket {bucket!r} has dims "
            f"{sorted(bucket.dims)}; every bucket of a plan must name exactly the dims of "
            "the model spec"
        )
    return all(shape[d] <= s for d, s in bucket.sizes)
