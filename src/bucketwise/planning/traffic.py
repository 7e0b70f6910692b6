"""Shapes seen in live traffic: a bounded, exponentially decayed histogram.

A server records the shape of every row it serves (:meth:`TrafficShapes.record`). Old
traffic fades with a half-life, so the histogram follows drift; it holds at most
``max_bins`` distinct shapes (the lightest bin is folded into the smallest covering one,
so the shapes a plan must cover are never dropped). :meth:`TrafficShapes.to_json` writes
the file ``bucketwise plan`` reads, so a plan can be made offline from production
traffic::

    curl -s localhost:8000/shapes > traffic.json
    bucketwise plan traffic.json --k 8
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .observe import Observations

__all__ = ["TrafficShapes", "FORMAT"]

FORMAT = "bucketwise.traffic-shapes/1"


class TrafficShapes:
    """Decayed counts of the shapes (sizes along ``dims``) rows were served at.

    Args:
        dims: the non-batch dims, e.g. ``("seq",)`` or ``("height", "width")``.
        half_life: seconds after which a row's weight halves (default one hour).
        max_bins: distinct shapes kept at most.
        clock: seconds, monotonic (a test passes its own).
    """

    def __init__(self, dims: Sequence[str], *, half_life: float = 3600.0, max_bins: int = 4096,
                 clock: Any = time.monotonic) -> None:
        if not dims:
            raise ConfigError("traffic shapes need at least one dim")
        if not half_life > 0 or max_bins < 1:
            raise ConfigError(f"half_life must be > 0 s and max_bins >= 1; got {half_life}, {max_bins}")
        self.dims = tuple(dims)
        self.half_life = float(half_life)
        self.max_bins = max_bins
        self._clock = clock
        self._rate = math.log(2) / self.half_life
        self._origin = clock()  # weights are stored scaled by exp(rate * (t - origin))
        self._bins: dict[tuple[int, ...], float] = {}
        self._rows = 0  # rows recorded, undecayed
        self._lock = threading.Lock()

    def record(self, sizes: Mapping[str, int], rows: int = 1) -> None:
        """Count ``rows`` rows of ``sizes`` (a mapping with every dim) now."""
        key = tuple(int(sizes[d]) for d in self.dims)
        with self._lock:
            now = self._clock()
            grown = self._rate * (now - self._origin)
            if grown > 27.0:  # rebase before the stored weights lose precision (exp(27) ~ 5e11)
                fade = math.exp(-grown)  # underflows to 0 after a long silence, never overflows
                for k in self._bins:
                    self._bins[k] *= fade
                self._origin, grown = now, 0.0
            scale = math.exp(grown)
            self._bins[key] = self._bins.get(key, 0.0) + rows * scale
            self._rows += rows
            if len(self._bins) > self.max_bins:
                self._fold_lightest()

    def _fold_lightest(self) -> None:
        light = min(self._bins, key=self._bins.__getitem__)
        covers = [k for k in self._bins if k != light and all(a >= b for a, b in zip(k, light))]
        weight = self._bins.pop(light)
        if covers:
            target = min(covers, key=math.prod)
            self._bins[target] += weight
        else:  # nothing covers the lightest: fold the lightest covered bin into it instead
            self._bins[light] = weight
            covered = [k for k in self._bins if k != light and all(a <= b for a, b in zip(k, light))]
            if covered:
                other = min(covered, key=self._bins.__getitem__)
                self._bins[light] += self._bins.pop(other)

    @property
    def rows(self) -> int:
        """Rows recorded since the start (not decayed)."""
        return self._rows

    def weights(self) -> dict[tuple[int, ...], float]:
        """Each shape's decayed weight now (a row recorded now weighs 1)."""
        with self._lock:
            fade = math.exp(-self._rate * (self._clock() - self._origin))
            return {k: v * fade for k, v in self._bins.items()}

    def observations(self) -> Observations:
        """The histogram as :class:`Observations`, what the planner plans from."""
        weights = {k: w for k, w in self.weights().items() if w > 0}
        if not weights:
            raise ConfigError("no traffic recorded yet: serve some requests first")
        return Observations(self.dims, np.array(list(weights), dtype=np.int64), np.array(list(weights.values())))

    def to_json(self) -> dict[str, Any]:
        weights = sorted(self.weights().items())
        return {"format": FORMAT, "dims": list(self.dims), "half_life_seconds": self.half_life,
                "rows_recorded": self._rows, "written_at": time.time(),
                "shapes": [list(k) for k, _ in weights], "counts": [w for _, w in weights]}

    def write(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path`` atomically (a reader never sees half a file)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_json()) + "\n")
        os.replace(tmp, path)
        return path


def read_traffic(data: Mapping[str, Any], source: str) -> Observations:
    """Observations from a :meth:`TrafficShapes.to_json` object (``source`` names it in errors)."""
    from ..errors import InputError

    if data.get("format", FORMAT) != FORMAT:
        raise InputError(f"{source}: format {data.get('format')!r} is not {FORMAT!r}; write it with "
                         "bucketwise serve --traffic-file, or GET /shapes")
    try:
        dims = tuple(str(d) for d in data["dims"])
        # Read as floats and checked, not cast: 20.5 or NaN must not become a size or a count.
        shapes = np.array(data["shapes"], dtype=np.float64).reshape(-1, len(dims))
        counts = np.array(data["counts"], dtype=np.float64).reshape(-1)
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        raise InputError(f"{source}: a traffic-shapes file needs dims, shapes and counts ({err})") from None
    if not dims:
        raise InputError(f"{source}: dims is empty; it names the dims of each shape, e.g. [\"seq\"]")
    if len(counts) != len(shapes):
        raise InputError(f"{source}: {len(shapes)} shapes but {len(counts)} counts")
    bad = ~np.isfinite(counts) | (counts < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"{source}: counts[{i}] is {float(counts[i])}; counts are finite and not negative")
    whole = np.isfinite(shapes) & (shapes == np.round(shapes)) & (shapes >= 1) & (shapes < 2**53)
    if not whole.all():
        i = int(np.flatnonzero(~whole.all(axis=1))[0])
        raise InputError(f"{source}: shapes[{i}] is {shapes[i].tolist()}; sizes are whole numbers of at least 1")
    keep = counts > 0
    if not keep.any():
        raise InputError(f"{source}: no traffic recorded in it (every count is 0)")
    return Observations(dims, shapes[keep].astype(np.int64), counts[keep])
