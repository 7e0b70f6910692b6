"""Weights once: MiniLM buckets on ONNX Runtime and OpenVINO, before and after sharing the weights.

For 1, 4, 10 and 20 buckets, each measured in a fresh process that starts from a full
artifact cache (a warm start):

- resident: growth of the process's RSS over the build (the weights, the sessions, the
  prepacked copies and the warm-up activations);
- disk: bytes of the cache folder, each hard-linked file counted once;
- latency: best of 5 rounds of 20 runs at the plan's smallest and largest bucket;
- start: seconds inside ``compile()`` (loading and warming every bucket).

ONNX Runtime: "before" is the code at ``--before REV`` (default: the commit before weights
were shared), run from a git worktree; "after" is this checkout with one fixed-shape
session per bucket (``free_dims=()``; ``share_weights=True, prepack=True``), with
``prepack=False`` and with only the hot buckets prepacked; "free length" is the default,
one session per batch size with the length free. OpenVINO: "blob" is this checkout's ``layout="blob"`` (a compiled blob
per bucket, as every OpenVINO entry was before), "shared-ir" the default layout. The
one-shape MiniLM weights are 87 MiB. TorchScript: "torchscript before" is the code at
``--ts-before REV`` (each cached bucket frozen with its own weights), "torchscript" this
checkout (unfrozen traces whose weights are shared on load, then frozen).

    python benchmarks/bench_weights.py [--before REV] [--ts-before REV] [--sizes 1,4,10,20]
Writes benchmarks/results/weights_once.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import RESULTS, save, table

ROOT = Path(__file__).resolve().parents[1]
LADDERS = {
    1: {"batch": [1], "seq": [256]},
    4: {"batch": [1], "seq": [32, 64, 128, 256]},
    10: {"batch": [1, 8], "seq": [16, 32, 64, 128, 256]},
    20: {"batch": [1, 2, 4, 8], "seq": [16, 32, 64, 128, 256]},
}


def child(src: str, n: int, options: dict, cache_dir: str, backend: str = "onnxruntime") -> dict:
    sys.path.insert(0, src)
    import time

    import numpy as np

    from bucketwise import BucketedModel, Plan
    from bucketwise.backends.base import get_backend
    from bucketwise.models.text import lazy_default_encoder
    from bucketwise.runtime.cache import ArtifactCache, resident_bytes

    module, _, spec = lazy_default_encoder(None)
    if backend == "torchscript":
        import torch  # noqa: F401  (imported before measuring: torch itself is not a bucket's memory)
    plan = Plan.grid(**LADDERS[n])
    if isinstance(options.get("prepack"), list):
        from bucketwise import Bucket

        options = {**options, "prepack": [Bucket(b) for b in options["prepack"]]}
    before = resident_bytes(trim=True)
    start = time.perf_counter()
    bm = BucketedModel(module, spec, plan, backend=get_backend(backend, **options), cache=ArtifactCache(cache_dir))
    bm.compile(progress=False)
    seconds = time.perf_counter() - start
    resident = resident_bytes(trim=True) - before
    lat = {}
    buckets = sorted(plan.buckets, key=lambda b: b.volume)
    for bucket in (buckets[0], buckets[-1]):
        inputs = spec.example_inputs(bucket)
        artifact = bm.artifact(bucket)
        if artifact.array_kind == "torch":
            import torch

            inputs = {k: torch.from_numpy(v) for k, v in inputs.items()}
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(20):
                artifact.run(inputs)
            best = min(best, (time.perf_counter() - t) / 20)
        lat[bucket.label()] = best * 1e3
    sources = sorted({b.source for b in bm.compile_report.builds.values()})
    bm.close()
    return {"resident_mib": resident / 2**20, "start_s": seconds, "latency_ms": lat, "sources": sources,
            "np": np.__version__}


def disk_mib(folder: Path) -> float:
    from bucketwise.runtime.cache import ArtifactCache

    return ArtifactCache(folder).disk_bytes() / 2**20  # each hard-linked file once


def run_child(src: Path, n: int, options: dict, cache: Path, backend: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps([str(src), n, options, str(cache), backend])],
                         capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="57378b5~1", help="the code before sharing (a git revision)")
    parser.add_argument("--ts-before", default="2d5c6b2", help="TorchScript before its weights were shared on load")
    parser.add_argument("--sizes", default="1,4,10,20")
    parser.add_argument("--configs", help="only these configs, separated by ';' (e.g. 'after;openvino shared-ir')")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*json.loads(args.child))))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-weights-"))
    old, ts_old = work / "before", work / "ts-before"
    # "hot": prepack only the short batch-1 buckets, where most single short texts land
    # (MRPC's median is about 25 tokens); the rest run unpacked.
    hot = [{"batch": 1, "seq": 16}, {"batch": 1, "seq": 32}]
    static: dict = {"free_dims": []}  # one session per bucket, every dim fixed
    configs = [("before", old / "src", "onnxruntime", {}), ("after", ROOT / "src", "onnxruntime", static),
               ("after, prepack=False", ROOT / "src", "onnxruntime", {**static, "prepack": False}),
               ("after, prepack hot", ROOT / "src", "onnxruntime", {**static, "prepack": hot}),
               ("after, free length (default)", ROOT / "src", "onnxruntime", {}),
               ("openvino blob", ROOT / "src", "openvino", {"layout": "blob"}),
               ("openvino shared-ir", ROOT / "src", "openvino", {}),
               ("torchscript before", ts_old / "src", "torchscript", {}),
               ("torchscript", ROOT / "src", "torchscript", {})]
    if args.configs:
        configs = [c for c in configs if c[0] in args.configs.split(";")]
    for tree, rev in ((old, args.before), (ts_old, args.ts_before)):
        if any(c[1] == tree / "src" for c in configs):
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev],
                           check=True, capture_output=True)
    results = []
    try:
        for name, src, backend, options in configs:
            for n in sizes:
                shared = not name.startswith(("before", "openvino", "torchscript"))  # one cache for "after" configs
                cache = work / f"cache-{'after' if shared else name.replace(' ', '-')}-{n}"
                run_child(src, n, options, cache, backend)  # fills the cache (a no-op when already full)
                r = run_child(src, n, options, cache, backend)
                r.update(config=name, backend=backend, buckets=n, disk_mib=disk_mib(cache))
                results.append(r)
                print(f"{name:<22} {n:>2} buckets: resident {r['resident_mib']:6.0f} MiB, disk {r['disk_mib']:6.0f} MiB, "
                      f"start {r['start_s']:5.2f} s, {r['latency_ms']} ({r['sources']})", flush=True)
    finally:
        for tree in (old, ts_old):
            if tree.exists():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
    by = {(r["config"], r["buckets"]): r for r in results}
    rows = []
    for r in results:
        items = list(r["latency_ms"].items())
        short, long = items[0], items[-1]
        baseline = {"openvino": "openvino blob", "torchscript": "torchscript before"}.get(r["backend"], "before")
        base = by.get((baseline, r["buckets"]))
        ratio = " / ".join(f"{r['latency_ms'][k] / base['latency_ms'][k]:.2f}×" for k in r["latency_ms"]) if base else "-"
        rows.append([r["config"], r["buckets"], f"{r['resident_mib']:.0f}", f"{r['disk_mib']:.0f}", f"{r['start_s']:.2f}",
                     f"{short[0]} {short[1]:.2f}", f"{long[0]} {long[1]:.1f}", ratio])
    print()
    print(table(rows, ["config", "buckets", "resident MiB", "disk MiB", "start s", "short ms", "long ms",
                       "latency vs before"]))
    if args.configs and (RESULTS / "weights_once.json").exists():  # a partial rerun replaces its own rows
        kept = json.loads((RESULTS / "weights_once.json").read_text())["results"]
        results = [r for r in kept if r["config"] not in {c[0] for c in configs}] + results
    path = save("weights_once", {"sizes": sizes, "before": args.before, "results": results})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
