"""Padding cost on CPU: MRPC sentence pairs at batch 1 through ONNX Runtime.

Compared side by side in one run, on the same pairs in the same order:
  pad-to-128       one bucket of 128 tokens (the classic BERT MRPC setup)
  pad-to-512       one bucket of 512 tokens (the model's maximum)
  default buckets  bucketwise's default plan (seq 16/32/64/128/256; batch 1 calls use batch-1 buckets)
  exact shapes     one dynamic ORT session run at each pair's exact length: no padding at all

Each configuration runs every pair once per round; rounds rotate the order of the
configurations, and the best round counts. Prints a table and writes
benchmarks/results/padding_mrpc_onnxruntime.json.

    python benchmarks/bench_padding.py [--pairs 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from _common import SHARED_DATA, exact_session, save, table, time_rounds

from bucketwise import BucketedModel, Plan
from bucketwise.backends.onnxruntime import OnnxRuntimeBackend
from bucketwise.data import read_mrpc
from bucketwise.models.text import default_text_plan, load_default_encoder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=300, help="MRPC test pairs to run (seeded sample; default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per configuration (best counts)")
    parser.add_argument("--data", default=str(SHARED_DATA / "mrpc" / "msr_paraphrase_test.txt"))
    parser.add_argument("--out", help="results JSON (default benchmarks/results/padding_mrpc_onnxruntime.json)")
    args = parser.parse_args(argv)

    pairs = read_mrpc(args.data)
    rng = np.random.default_rng(0)
    pairs = [pairs[i] for i in rng.choice(len(pairs), min(args.pairs, len(pairs)), replace=False)]
    module, tokenizer, spec = load_default_encoder()
    samples = []
    for a, b in pairs:
        enc = tokenizer(a, b, return_tensors="np")
        samples.append({k: enc[k].astype(np.int64) for k in spec.input_names})
    lengths = np.array([s["input_ids"].shape[1] for s in samples])
    tokens = int(lengths.sum())
    print(f"{len(samples)} MRPC pairs, tokens per pair: mean {lengths.mean():.1f}, max {lengths.max()}")

    backend = OnnxRuntimeBackend()  # one export, shared by every configuration
    configs: dict[str, tuple[str, object]] = {}
    for name, plan in (
        ("pad-to-128", Plan.grid(batch=[1], seq=[128])),
        ("pad-to-512", Plan.grid(batch=[1], seq=[512])),
        ("default buckets", default_text_plan()),
    ):
        bm = BucketedModel(module, spec, plan, backend=backend, warmup_runs=3).compile(progress=True)
        configs[name] = (str(plan), bm)
    exact = exact_session(backend, module, spec, default_text_plan())
    names = list(spec.output_names)
    for s in samples[:5]:
        exact.run(names, s)
    configs["exact shapes"] = ("dynamic session", exact)

    runners = {}
    for name, (_, obj) in configs.items():
        runners[name] = obj.run if isinstance(obj, BucketedModel) else (lambda s: exact.run(names, s))
    for _, obj in configs.values():
        if isinstance(obj, BucketedModel):
            obj.reset_stats()
    best = time_rounds(runners, samples, args.rounds)
    for _, obj in configs.values():  # stats per pass through the samples
        if isinstance(obj, BucketedModel):
            for key in ("padded_volume", "real_volume"):
                setattr(obj.stats, key, getattr(obj.stats, key) // args.rounds)

    results = []
    for name, (desc, obj) in configs.items():
        seconds = best[name]
        computed = obj.stats.padded_volume if isinstance(obj, BucketedModel) else tokens
        results.append({
            "config": name,
            "buckets": desc,
            "seconds": seconds,
            "pairs_per_second": len(samples) / seconds,
            "ms_per_pair": 1e3 * seconds / len(samples),
            "computed_positions": computed,
            "padding_waste": 1 - tokens / computed,
            "hits_per_pass": {b: n // args.rounds for b, n in obj.stats.as_dict()["hits"].items()} if isinstance(obj, BucketedModel) else None,
        })
    by = {r["config"]: r for r in results}
    for r in results:
        r["speedup_vs_pad512"] = by["pad-to-512"]["seconds"] / r["seconds"]
        r["speedup_vs_pad128"] = by["pad-to-128"]["seconds"] / r["seconds"]
        r["relative_to_exact"] = r["seconds"] / by["exact shapes"]["seconds"]
    rows = [[r["config"], f"{r['pairs_per_second']:.1f}", f"{r['ms_per_pair']:.2f}", f"{r['padding_waste']:.1%}",
             f"{r['speedup_vs_pad512']:.2f}x", f"{r['speedup_vs_pad128']:.2f}x", f"{r['relative_to_exact']:.2f}x"] for r in results]
    print()
    print(table(rows, ["config", "pairs/s", "ms/pair", "padding", "vs pad-512", "vs pad-128", "time vs exact"]))
    path = save("padding_mrpc_onnxruntime", {
        "pairs": len(samples), "rounds": args.rounds, "batch": 1, "backend": "onnxruntime",
        "tokens_per_pair_mean": float(lengths.mean()), "tokens_per_pair_max": int(lengths.max()),
        "results": results,
    }, args.out)
    print(f"\nwrote {path}")
    backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
