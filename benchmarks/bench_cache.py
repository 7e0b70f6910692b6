"""Cold and warm starts of the default model through the artifact cache.

For each backend, in fresh processes (so imports, model loading and runtime start-up all
count, as they do for a server starting):

- no cache: load the model, export, compile every bucket in memory;
- cold:     the same with an empty cache, which is filled on the way;
- warm:     the cache is full: load every bucket from it (the weights never reach torch).

Each start is `bucketwise compile` (or, for "no cache", the library without a cache) on
all-MiniLM-L6-v2 with 4 buckets, batch 1 × seq 32/64/128/256. Wall time is the whole
process; "build" is the time inside compile(); resident is the sum over buckets of the
process's memory growth while each bucket was built and warmed up (serial builds).
Repeats alternate the order of the configurations; the best of each is reported.

    python benchmarks/bench_cache.py [--backends onnxruntime,openvino] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save, table  # noqa: E402

from bucketwise.runtime.cache import ArtifactCache  # noqa: E402

SEQS = "32,64,128,256"

NO_CACHE = """
import json, sys, time
from bucketwise import BucketedModel, Plan
from bucketwise.models.text import lazy_default_encoder
lazy, _, spec = lazy_default_encoder()
bm = BucketedModel(lazy, spec, Plan.grid(batch=[1], seq=[32, 64, 128, 256]), backend=sys.argv[1])
start = time.perf_counter()
bm.compile(progress=False, workers=1, measure_memory=True)
r = bm.compile_report
print(json.dumps({"build": time.perf_counter() - start,
                  "resident": sum(b.resident_bytes or 0 for b in r.builds.values())}))
"""


def start(kind: str, backend: str, cache: Path, out: Path) -> dict:
    t = time.perf_counter()
    if kind == "no cache":
        proc = subprocess.run([sys.executable, "-c", NO_CACHE, backend], capture_output=True, text=True)
    else:
        proc = subprocess.run(
            [sys.executable, "-m", "bucketwise.cli", "compile", "--backend", backend, "--batch-sizes", "1",
             "--seq-sizes", SEQS, "--cache-dir", str(cache), "--no-progress", "--workers", "1", "--json", str(out)],
            capture_output=True, text=True,
        )
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"{kind} {backend} failed:\n{proc.stderr[-3000:]}")
    if kind == "no cache":
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        return {"wall": wall, "build": data["build"], "resident": data["resident"], "hits": 0, "saved": 0.0}
    data = json.loads(out.read_text())
    return {
        "wall": wall,
        "build": data["seconds"],
        "resident": sum(b["resident_bytes"] or 0 for b in data["buckets"]),
        # Bytes of the whole cache folder (the export included), each hard-linked file once.
        "disk": ArtifactCache(cache).disk_bytes(),
        "hits": data["hits"],
        "saved": data["saved_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="onnxruntime,openvino")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", help="results JSON (default benchmarks/results/cache_starts.json)")
    args = parser.parse_args()

    results: dict[str, dict[str, dict]] = {}
    for backend in args.backends.split(","):
        best: dict[str, dict] = {}
        for r in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="bucketwise-bench-cache-") as tmp:
                cache, out = Path(tmp) / "cache", Path(tmp) / "report.json"
                order = ["no cache", "cold", "warm"]
                if r % 2:  # "warm" must follow "cold"; move "no cache" from first to last
                    order = ["cold", "warm", "no cache"]
                for kind in order:
                    res = start(kind, backend, cache, out)
                    print(f"{backend:<12} {kind:<9} wall {res['wall']:6.2f} s  build {res['build']:6.2f} s", flush=True)
                    if kind not in best or res["wall"] < best[kind]["wall"]:
                        best[kind] = res
        results[backend] = best

    rows = []
    for backend, best in results.items():
        base = best["no cache"]["wall"]
        for kind in ("no cache", "cold", "warm"):
            b = best[kind]
            rows.append([backend, kind, f"{b['wall']:.2f}", f"{b['build']:.2f}", f"{base / b['wall']:.2f}x",
                         f"{b['resident'] / 2**20:.0f}", f"{b.get('disk', 0) / 2**20:.0f}" if kind != "no cache" else "-",
                         f"{b['saved']:.2f}" if kind == "warm" else "-"])
    print()
    print(table(rows, ["backend", "start", "wall s", "build s", "vs no cache", "resident MiB", "disk MiB", "saved s"]))
    path = save("cache_starts", {"buckets": f"batch 1 x seq {SEQS}", "repeats": args.repeats, "results": results}, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
