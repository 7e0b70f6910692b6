"""Reading observed shapes from files, and drawing a plan over them."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..plans import Plan
from .observe import Observations

__all__ = ["MAX_SHAPES_BYTES", "read_shapes", "parse_bytes", "plot_plan"]

MAX_SHAPES_BYTES = 256 << 20  # a shapes file larger than this is refused at once

_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> float:
    """``"2GB"``, ``"87MiB"``, ``"1.5e9"`` -> bytes."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise InputError(f"cannot read {text!r} as a size in bytes; write e.g. 2GB, 87MB or 512MiB")
    try:
        return float(m.group(1)) * _UNITS[m.group(2).lower()]
    except ValueError:
        raise InputError(f"cannot read {text!r} as a size in bytes; write e.g. 2GB, 87MB or 512MiB") from None


def read_shapes(path: str | Path, *, dims: tuple[str, ...] | None = None) -> Observations:
    """Observed shapes from CSV, JSON or NPY (a folder is read as images).

    - CSV: one column of sizes, or a header naming the dims (plus an optional ``count``).
    - JSON: a list of sizes, a list of shape objects, ``{"size": count}``,
      ``{"histogram": [[size, count], ...]}``, or a server's traffic shapes
      (``{"dims": [...], "shapes": [[...], ...], "counts": [...]}``: ``GET /shapes``).
    - NPY: a 1-D array of sizes, or an ``(n, d)`` array with ``dims``.
    """
    p = Path(path)
    if p.is_dir():
        return Observations.from_images(p)
    if not p.is_file():
        raise InputError(f"shapes file {str(p)!r} does not exist")
    dim = (dims or ("seq",))[0]
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise InputError(f"{str(p)!r} is not a NumPy array file ({err}); give a .npy of sizes") from None
        if arr.ndim == 1:
            return Observations.from_sizes(arr, dim=dim)
        if arr.ndim == 2 and dims and arr.shape[1] == len(dims):
            return Observations.from_shapes(arr, dims=dims)
        raise InputError(f"{str(p)!r} holds an array of shape {arr.shape}; give a 1-D array, or (n, d) with --dims naming d dims")
    size = p.stat().st_size
    if size > MAX_SHAPES_BYTES:
        raise InputError(f"shapes file {str(p)!r} is {size / 2**20:.0f} MiB; bucketwise plan reads at most "
                         f"{MAX_SHAPES_BYTES >> 20} MiB. Give a histogram of sizes and counts instead (a traffic file "
                         "from bucketwise serve --traffic-file is one)")
    if suffix == ".json":
        try:
            data = json.loads(p.read_bytes().decode("utf-8-sig"))
        except UnicodeDecodeError as err:
            raise InputError(f"{str(p)!r} is not UTF-8 text ({err.reason} at byte {err.start}); give a JSON shapes file") from None
        except json.JSONDecodeError as err:
            raise InputError(f"{str(p)!r} is not valid JSON: {err}") from None
        except RecursionError:
            raise InputError(f"{str(p)!r} nests JSON arrays or objects too deeply to be a shapes file") from None
        if isinstance(data, dict) and ("shapes" in data and "dims" in data):
            from .traffic import read_traffic

            return read_traffic(data, repr(str(p)))
        if isinstance(data, dict) and "histogram" in data:
            return Observations.from_histogram([tuple(x) for x in data["histogram"]], dim=dim)
        if isinstance(data, dict):
            try:
                return Observations.from_histogram({int(k): v for k, v in data.items()}, dim=dim)
            except ValueError:
                raise InputError(f"{str(p)!r}: a JSON object must map sizes to counts, or hold 'histogram'") from None
        if isinstance(data, list) and data and isinstance(data[0], dict):
            return Observations.from_shapes(data, dims=dims)
        if isinstance(data, list):
            return Observations.from_sizes(data, dim=dim)
        raise InputError(f"{str(p)!r}: expected a list of sizes or shapes, or a histogram object")
    if suffix == ".csv":
        return _read_csv(p, dims)
    raise InputError(f"{str(p)!r}: shapes are read from .csv, .json or .npy files, or an image folder")


def _read_csv(p: Path, dims: tuple[str, ...] | None) -> Observations:
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except UnicodeDecodeError as err:
        raise InputError(f"{str(p)!r} is not UTF-8 text ({err.reason} at byte {err.start}); give a CSV of sizes") from None
    except csv.Error as err:
        raise InputError(f"{str(p)!r} is not a CSV of sizes ({err})") from None
    if not rows:
        raise InputError(f"{str(p)!r} holds no rows")
    header = None
    try:
        float(rows[0][0])
    except ValueError:
        header, rows = [h.strip() for h in rows[0]], rows[1:]
    try:
        values = np.array([[float(c) for c in r] for r in rows])
    except ValueError as err:
        raise InputError(f"{str(p)!r}: every value must be a number ({err})") from None
    if values.size == 0:
        raise InputError(f"{str(p)!r} holds no rows")
    if header is None:
        names = list(dims or ("seq",))
        if values.shape[1] != len(names):
            raise InputError(f"{str(p)!r} has {values.shape[1]} columns; name them in a header or pass --dims")
        return Observations(tuple(names), values, np.ones(len(values)))
    counts = np.ones(len(values))
    if "count" in header:
        i = header.index("count")
        counts = values[:, i]
        values = np.delete(values, i, axis=1)
        header = [h for h in header if h != "count"]
    if dims:
        missing = [d for d in dims if d not in header]
        if missing:
            raise InputError(f"{str(p)!r} has columns {header}, not {missing}")
        values = values[:, [header.index(d) for d in dims]]
        header = list(dims)
    return Observations(tuple(header), values, counts)


def plot_plan(obs: Observations, plans: dict[str, Plan], path: str | Path) -> Path:
    """Histogram (1-D) or scatter (2-D) of the observations with each plan's bucket edges."""
    from .._optional import require

    matplotlib = require("matplotlib", "plot", purpose="--plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    colors = ["tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown"]
    dims = obs.dims
    if len(dims) == 1:
        (dim,) = dims
        ax.bar(obs.column(dim), obs.counts, width=1.0, color="tab:blue", alpha=0.6, label="observed")
        for (name, plan), color in zip(plans.items(), colors):
            for i, size in enumerate(plan.sizes(dim)):
                ax.axvline(size, color=color, linestyle="--" if i else "-", alpha=0.8, label=name if i == 0 else None)
        ax.set_xlabel(dim)
        ax.set_ylabel("inputs")
    elif len(dims) == 2:
        y, x = obs.column(dims[0]), obs.column(dims[1])
        ax.scatter(x, y, s=4 + 20 * obs.counts / obs.counts.max(), alpha=0.5, label="observed")
        for (name, plan), color in zip(plans.items(), colors):
            for i, b in enumerate(plan.buckets):
                ax.add_patch(plt.Rectangle((0, 0), b[dims[1]], b[dims[0]], fill=False, color=color,
                                           label=name if i == 0 else None))
        ax.set_xlabel(dims[1])
        ax.set_ylabel(dims[0])
        ax.set_xlim(0, max(p.max_size(dims[1]) for p in plans.values()) * 1.05)
        ax.set_ylim(0, max(p.max_size(dims[0]) for p in plans.values()) * 1.05)
    else:
        raise InputError(f"--plot draws 1-D or 2-D observations, not {len(dims)}-D")
    ax.set_title("observed shapes and bucket edges")
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
