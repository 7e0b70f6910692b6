"""Ray against one process, on this machine: Ray Serve replicas and Ray Data actors.

Serving, at 64 clients (one held-out sentence per request, ``heldout.py``), rounds
alternated, best round counts:

- ``bucketwise serve``: one server process (the baseline);
- ``ray serve, 1 replica``: ``bucketwise.ray:app`` behind Ray's HTTP proxy;
- ``ray serve, 2 replicas``: the same with two replicas of one CPU each (so one ONNX Runtime
  thread each: two replicas of two threads would fight over two cores); one replica has 2.

Embedding a corpus (held-out sentences and paragraphs, repeated to ``--texts``):

- ``one process``: ``SentenceEmbedder.embed`` (sorted by length, bucketed);
- ``ray data, N actors``: ``bucketwise.ray.embed_texts(..., concurrency=N)``, timed from the
  call to the array in input order (actor start and warm bucket loads included), and the
  same again in the same cluster (actors started anew: Ray Data does not keep them).

    python benchmarks/bench_ray.py [--seconds 15] [--rounds 2] [--texts 20000]
Writes benchmarks/results/ray_scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

import numpy as np
from _common import save, table
from bench_serve import free_port
from bench_serve_peers import cpu_seconds, load, start
from heldout import heldout_sets

SIZES = {"batch_sizes": "1,2,4,8,16,32"}


def serve_cells(args: argparse.Namespace, texts: list[str], cache: str) -> list[dict]:
    import httpx
    import ray
    from ray import serve

    import bucketwise.ray as bwr

    results = []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    try:
        for rnd in range(args.rounds):
            configs = ["bucketwise serve", "ray serve, 1 replica", "ray serve, 2 replicas"]
            for name in configs[rnd % 3:] + configs[:rnd % 3]:
                proc = None
                if name == "bucketwise serve":
                    proc, base, path = start("bucketwise adaptive", args)
                else:
                    replicas = 1 if "1 replica" in name else 2
                    # The cluster's 2 CPUs: one replica of 2 (two ONNX Runtime threads, as the
                    # single process), or two of 1 (one thread each).
                    options = {**SIZES, "num_replicas": replicas, "cache_dir": cache, "num_cpus": 2 // replicas}
                    serve.run(bwr.app(options), name="bucketwise", route_prefix="/")
                    base, path = url, "/v1/embeddings"
                    assert httpx.get(url + "/readyz", timeout=30).status_code == 200
                try:
                    asyncio.run(load(base, path, texts, 8, 2.0, offset=999))  # warm
                    cpu0, t0 = (cpu_seconds(proc.pid) if proc else 0.0), time.perf_counter()
                    r = asyncio.run(load(base, path, texts, 64, args.seconds, offset=rnd * 7919))
                    if proc:
                        r["server_cores_busy"] = (cpu_seconds(proc.pid) - cpu0) / (time.perf_counter() - t0)
                    results.append({"config": name, "round": rnd, **r})
                    print(f"round {rnd} {name:<24} {r['throughput']:7.1f} req/s  p50 {r['p50_ms']:.1f} ms  "
                          f"p99 {r['p99_ms']:.1f} ms  errors {r['errors']}  lost {r['lost']}", flush=True)
                finally:
                    if proc:
                        proc.terminate()
                        proc.wait(120)
                    else:
                        serve.delete("bucketwise")
    finally:
        serve.shutdown()
        ray.shutdown()
    return results


def data_cells(args: argparse.Namespace, texts: list[str], cache: str) -> list[dict]:
    import ray

    import bucketwise.ray as bwr
    from bucketwise.models.text import SentenceEmbedder
    from bucketwise.runtime.cache import ArtifactCache

    plan = bwr.text_plan(bwr.RayServeOptions.parse(SIZES))
    results = []
    local = SentenceEmbedder.default(plan=plan, cache=ArtifactCache(cache), progress=False)
    start_t = time.perf_counter()
    want = local.embed(texts)
    seconds = time.perf_counter() - start_t
    results.append({"config": "one process", "seconds": seconds, "texts_per_second": len(texts) / seconds})
    print(f"one process              {len(texts) / seconds:8.1f} texts/s ({seconds:.1f} s)", flush=True)
    local.model.close()
    del local
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for actors in (1, 2):
            for attempt in ("first", "again"):
                options: dict = {"batch_sizes": (1, 2, 4, 8, 16, 32), "cache_dir": cache, "concurrency": actors,
                                 "batch_size": 2000, "num_cpus": 2 // actors}  # threads follow num_cpus
                start_t = time.perf_counter()
                got = bwr.embed_texts(texts, **options)
                seconds = time.perf_counter() - start_t
                diff = float(np.abs(got - want).max())
                name = f"ray data, {actors} actor{'s' if actors > 1 else ''} ({attempt})"
                results.append({"config": name, "seconds": seconds, "texts_per_second": len(texts) / seconds,
                                "max_abs_diff": diff})
                print(f"{name:<24} {len(texts) / seconds:8.1f} texts/s ({seconds:.1f} s), max diff {diff:.2g}",
                      flush=True)
    finally:
        ray.shutdown()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--texts", type=int, default=20_000)
    parser.add_argument("--skip", choices=("serve", "data"), help="leave one part out")
    args = parser.parse_args(argv)
    args.infinity = args.infinity_model = None  # for bench_serve_peers.start
    sets = heldout_sets(short=3000, medium=600, long=0, seed=0)
    sentences = sets["short"]
    corpus = [(sets["short"] + sets["medium"])[i % 3600] for i in range(args.texts)]
    cache = tempfile.mkdtemp(prefix="bench-ray-cache-")
    os.environ["BUCKETWISE_CACHE"] = cache  # the single server process uses the same cache
    serve_results = [] if args.skip == "serve" else serve_cells(args, sentences, cache)
    data_results = [] if args.skip == "data" else data_cells(args, corpus, cache)

    best: dict[str, dict] = {}
    for r in serve_results:
        if r["config"] not in best or r["throughput"] > best[r["config"]]["throughput"]:
            best[r["config"]] = r
    base = best.get("bucketwise serve")
    if best:
        print()
        print(table([[k, f"{r['throughput']:.1f}", f"{r['p50_ms']:.0f}", f"{r['p99_ms']:.0f}",
                      f"{r['throughput'] / base['throughput']:.2f}×" if base else "-", r["errors"], r["lost"]]
                     for k, r in best.items()],
                    ["64 clients", "req/s", "p50 ms", "p99 ms", "vs one process", "errors", "lost"]))
    if data_results:
        one = data_results[0]["texts_per_second"]
        print()
        print(table([[r["config"], f"{r['texts_per_second']:.1f}", f"{r['seconds']:.1f}",
                      f"{r['texts_per_second'] / one:.2f}×", f"{r.get('max_abs_diff', 0):.2g}"] for r in data_results],
                    [f"{len(corpus):,} texts", "texts/s", "seconds", "vs one process", "max abs diff"]))
    path = save("ray_scale", {"seconds_per_cell": args.seconds, "rounds": args.rounds, "texts": len(corpus),
                              "serve": serve_results, "serve_best": list(best.values()), "data": data_results})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
