"""Planning time at scale (issue targets: 1-D under 1 s, N-D under 10 s on this machine).

  1-D: 10^6 observations over 2,000 distinct sizes, k = 8, exact DP (volume and transformer costs)
  N-D: 10^5 image shapes (height, width uniform in [240, 800]), k = 6, greedy + local search
  N-D exact: 2,000 image shapes with buckets on a grid of 64, k = 6, HiGHS MILP
  CLI: ``bucketwise plan FILE`` end to end in a fresh process (read, plan, report, write)
       on 200k and 2M observations: token lengths as a server's traffic file, and image
       shapes as CSV (issue #28: 2M shapes under 30 s, and near linear in the count)

Prints a table and writes benchmarks/results/planner_timing.json.

    python benchmarks/bench_planner.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import save, table

from bucketwise.planning import PolynomialCost, plan


def timed(fn, repeats=3):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def cli_case(tmp: Path, case: str, n: int, rng: np.random.Generator, *, two_d: bool) -> dict:
    """``bucketwise plan`` on a file of ``n`` observations, timed as a user runs it."""
    if two_d:
        shapes = np.stack([rng.integers(64, 1025, n), rng.integers(64, 1025, n)], axis=1)
        path = tmp / f"shapes{n}.csv"
        path.write_text("height,width\n" + "\n".join(f"{h},{w}" for h, w in shapes.tolist()) + "\n")
    else:
        shapes = rng.integers(1, 10_000, (n, 1))  # past the model's 256: capped there
        path = tmp / f"traffic{n}.json"
        path.write_text(json.dumps({"format": "bucketwise.traffic-shapes/1", "dims": ["seq"],
                                    "shapes": shapes.tolist(), "counts": [1] * n}))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bucketwise.cli", "plan", str(path), "--output", str(tmp / "plan.json"),
                    "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    secs = time.perf_counter() - start
    return {"case": case, "observations": n, "distinct": len(np.unique(shapes, axis=0)), "k": 4,
            "seconds": secs, "planner": json.loads((tmp / "plan.json").read_text())["meta"]["planner"],
            "file_mb": round(path.stat().st_size / 1e6, 1), "target_seconds": 30.0 if n >= 2_000_000 else None}


def main() -> int:
    rng = np.random.default_rng(0)
    rows = []
    sizes = rng.integers(1, 2001, 1_000_000)
    sizes[:2000] = np.arange(1, 2001)  # every one of the 2,000 sizes occurs
    distinct = len(np.unique(sizes))
    for label, cost in (("volume", None), ("transformer", PolynomialCost.transformer(50.0, 1.0, 0.002))):
        secs, p = timed(lambda cost=cost: plan(sizes, k=8, cost=cost))
        rows.append({"case": f"1-D exact DP, {label} cost", "observations": len(sizes), "distinct": distinct,
                     "k": 8, "seconds": secs, "planner": p.meta["planner"], "target_seconds": 1.0})
    images = np.stack([rng.integers(240, 801, 100_000), rng.integers(240, 801, 100_000)], axis=1)
    secs, p = timed(lambda: plan(images, dims=("height", "width"), k=6, exact=False), repeats=1)
    rows.append({"case": "N-D greedy + local search", "observations": len(images),
                 "distinct": len(np.unique(images, axis=0)), "k": 6, "seconds": secs,
                 "planner": p.meta["planner"], "target_seconds": 10.0})
    small = images[:2000]
    secs, p = timed(lambda: plan(small, dims=("height", "width"), k=6, grid=64, exact=True), repeats=1)
    rows.append({"case": "N-D exact MILP, grid 64", "observations": len(small),
                 "distinct": len(np.unique(small, axis=0)), "k": 6, "seconds": secs,
                 "planner": p.meta["planner"], "target_seconds": None})
    with tempfile.TemporaryDirectory() as tmp:
        for n in (200_000, 2_000_000):
            rows.append(cli_case(Path(tmp), "CLI: traffic file of token lengths", n, rng, two_d=False))
            rows.append(cli_case(Path(tmp), "CLI: CSV of image shapes", n, rng, two_d=True))
    print(table([[r["case"], f"{r['observations']:,}", f"{r['distinct']:,}", r["k"], f"{r['seconds']:.3f}",
                  "-" if r["target_seconds"] is None else f"< {r['target_seconds']:g} s"] for r in rows],
                ["case", "observations", "distinct", "k", "seconds", "target"]))
    path = save("planner_timing", {"results": rows})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
