"""Warm start: `bucketwise embed --limit 10` and `bucketwise serve` with a full cache.

Each figure is one fresh process against the same full artifact cache (filled first, in a
process of its own). The first start after filling also measures each bucket's resident
memory (one bucket at a time) and is reported apart; best and median are over the later
``--rounds`` - 1 starts, and the targets are judged on the median:

- ``embed --limit 10`` wall time: the real command, as a user runs it (``--no-progress``);
- its breakdown, from a child that takes the command's steps with a clock between them:
  imports (numpy, onnxruntime, bucketwise), tokenizer (``tokenizer.json`` and the model's
  fingerprint), bucket loads (the cached sessions this input uses, and the largest), and
  the first run (embedding the 10 texts);
- ``serve`` ready: from starting the process until ``/readyz`` answers 200 (every bucket
  loaded and warmed up).

    python benchmarks/bench_warm_start.py [--rounds 5]
Writes benchmarks/results/warm_start.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import save, table

TARGETS = {"embed": 1.5, "serve": 2.0}


def child(cache_dir: str) -> dict:
    """The steps of `bucketwise embed --limit 10`, timed."""
    t0 = time.perf_counter()
    import numpy  # noqa: F401
    import onnxruntime  # noqa: F401

    from bucketwise.corpus import stdlib_docstrings
    from bucketwise.models.text import SentenceEmbedder
    from bucketwise.runtime.cache import ArtifactCache

    t1 = time.perf_counter()
    embedder = SentenceEmbedder.default(cache=ArtifactCache(cache_dir), progress=False, build=False, warmup_runs=0)
    texts = stdlib_docstrings(limit=10)
    encoded = embedder.tokenize(texts)
    t2 = time.perf_counter()
    embedder.prepare(progress=False, only=embedder.buckets_for(encoded))
    t3 = time.perf_counter()
    embedder.embed_tokenized(encoded)
    t4 = time.perf_counter()
    return {"imports": t1 - t0, "tokenizer": t2 - t1, "bucket_loads": t3 - t2, "first_run": t4 - t3,
            "buckets_loaded": len(embedder.model.compile_report.builds),
            "sources": sorted({b.source for b in embedder.model.compile_report.builds.values()})}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_ready(env: dict[str, str], timeout: float = 120.0) -> float:
    port = free_port()
    start = time.perf_counter()
    proc = subprocess.Popen([shutil.which("bucketwise") or "bucketwise", "serve", "--port", str(port), "--no-progress"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - start < timeout:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - start
            except OSError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"bucketwise serve exited with {proc.returncode}")
            time.sleep(0.02)
        raise RuntimeError("bucketwise serve was not ready in time")
    finally:
        proc.terminate()
        proc.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    cache = Path(tempfile.mkdtemp(prefix="bench-warm-"))
    env = {**os.environ, "BUCKETWISE_CACHE": str(cache), "PYTHONWARNINGS": "ignore"}
    embed_cmd = [shutil.which("bucketwise") or "bucketwise", "embed", "--limit", "10", "--no-progress", "--quiet"]
    try:
        subprocess.run([*embed_cmd[:2], "--no-progress", "--quiet"], env=env, check=True)  # fills every bucket
        walls, parts, ready = [], [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            subprocess.run(embed_cmd, env=env, check=True)
            walls.append(time.perf_counter() - t)
            out = subprocess.run([sys.executable, __file__, "--child", str(cache)], env=env, check=True,
                                 capture_output=True, text=True)
            parts.append(json.loads(out.stdout.strip().splitlines()[-1]))
            ready.append(serve_ready(env))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    best = min(range(len(parts)), key=lambda i: sum(v for k, v in parts[i].items() if isinstance(v, float)))
    b = parts[best]
    def row(name: str, values: list[float], target: float) -> list[str]:
        rest = sorted(values[1:]) or values
        return [name, f"{values[0]:.2f}", f"{min(rest):.2f}", f"{rest[len(rest) // 2]:.2f}", f"< {target}",
                "met" if rest[len(rest) // 2] < target else "not met"]

    rows = [
        row("embed --limit 10, wall", walls, TARGETS["embed"]),
        ["  imports", "", f"{b['imports']:.2f}", "", "", ""],
        ["  tokenizer and fingerprint", "", f"{b['tokenizer']:.2f}", "", "", ""],
        [f"  bucket loads ({b['buckets_loaded']} of the plan's)", "", f"{b['bucket_loads']:.2f}", "", "", ""],
        ["  first run (10 texts)", "", f"{b['first_run']:.2f}", "", "", ""],
        row("serve, until /readyz is 200", ready, TARGETS["serve"]),
    ]
    print(table(rows, ["step", "first s", "best s", "median s", "target s", ""]))
    print("first: the first start after the cache was filled, which also measures each bucket's memory "
          "(one at a time); best and median: the later starts")
    path = save("warm_start", {"rounds": args.rounds, "embed_wall_s": walls, "breakdown": parts,
                               "serve_ready_s": ready, "targets_s": TARGETS})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
