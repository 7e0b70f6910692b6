"""Does the planner's predicted speedup hold on a real runtime?

1. Profile all-MiniLM-L6-v2 on ONNX Runtime at batch 1 over a ladder of sequence lengths
   and fit latency = a + b·L + c·L² (per row).
2. Plan k = 4 buckets for MRPC *train* pairs under that cost model; report the expected
   cost of the plan, powers of two and pad-to-128 on the MRPC *test* pairs that get timed.
3. Time those test pairs at batch 1 through bucketed ORT sessions for each plan, side by
   side in rotated rounds, and compare measured speedups with predicted ones.

Target: predicted speedup of the plan over pad-to-128 within 15% of the measured one.
Prints a table and writes benchmarks/results/plan_vs_measured_onnxruntime.json.

    python benchmarks/bench_plan_vs_measured.py [--pairs 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from _common import SHARED_DATA, save, table, time_rounds

from bucketwise import Bucket, BucketedModel, Plan
from bucketwise.backends.onnxruntime import OnnxRuntimeBackend
from bucketwise.data import read_mrpc
from bucketwise.models.text import load_default_encoder
from bucketwise.planning import Observations, fit_cost, plan, report
from bucketwise.runtime import measure_cost

PROFILE = (8, 16, 32, 48, 64, 96, 128)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--k", type=int, default=4)
    args = parser.parse_args(argv)

    module, tokenizer, spec = load_default_encoder()
    table_cost = measure_cost(module, spec, [Bucket(batch=1, seq=s) for s in PROFILE], backend="onnxruntime", repeats=30)
    cost = fit_cost(list(table_cost.costs), list(table_cost.costs.values()), form="transformer")
    fit_rows = [[b["seq"], f"{1e3 * t:.2f}", f"{1e3 * cost.cost(b):.2f}"] for b, t in table_cost.costs.items()]
    print(table(fit_rows, ["seq", "measured ms", "fitted ms"]))

    train = Observations.from_texts(read_mrpc(SHARED_DATA / "mrpc" / "msr_paraphrase_train.txt"), tokenizer)
    planned = plan(train, k=args.k, cost=cost, cap=128, batch_sizes=[1])
    test_pairs = read_mrpc(SHARED_DATA / "mrpc" / "msr_paraphrase_test.txt")
    rng = np.random.default_rng(0)
    test_pairs = [test_pairs[i] for i in rng.choice(len(test_pairs), min(args.pairs, len(test_pairs)), replace=False)]
    samples = []
    for a, b in test_pairs:
        enc = tokenizer(a, b, return_tensors="np")
        samples.append({k: enc[k].astype(np.int64) for k in spec.input_names})
    test_obs = Observations.from_sizes([s["input_ids"].shape[1] for s in samples])
    plans = {
        "planned": planned,
        "powers-of-two": Plan.grid(batch=[1], seq=[16, 32, 64, 128], cost_model=cost),
        "pad-to-128": Plan.grid(batch=[1], seq=[128], cost_model=cost),
    }
    rep = report(planned, test_obs, compare={k: v for k, v in plans.items() if k != "planned"})
    predicted = {s.name: s.expected_cost for s in rep.strategies}

    backend = OnnxRuntimeBackend()
    models = {name: BucketedModel(module, spec, p, backend=backend, warmup_runs=3).compile() for name, p in plans.items()}
    best = time_rounds({n: m.run for n, m in models.items()}, samples, args.rounds)
    rows, results = [], []
    for name in plans:
        pred = predicted["pad-to-128"] / predicted[name]
        meas = best["pad-to-128"] / best[name]
        results.append({
            "strategy": name,
            "buckets": [b["seq"] for b in sorted(plans[name].buckets, key=lambda b: b["seq"])],
            "predicted_ms_per_pair": 1e3 * predicted[name],
            "measured_ms_per_pair": 1e3 * best[name] / len(samples),
            "predicted_speedup_vs_pad128": pred,
            "measured_speedup_vs_pad128": meas,
            "error": pred / meas - 1,
        })
        rows.append([name, " ".join(map(str, results[-1]["buckets"])), f"{results[-1]['predicted_ms_per_pair']:.2f}",
                     f"{results[-1]['measured_ms_per_pair']:.2f}", f"{pred:.2f}x", f"{meas:.2f}x", f"{pred / meas - 1:+.1%}"])
    print()
    print(table(rows, ["strategy", "buckets", "predicted ms", "measured ms", "predicted vs pad-128", "measured vs pad-128", "error"]))
    err = next(r["error"] for r in results if r["strategy"] == "planned")
    verdict = "within" if abs(err) <= 0.15 else "OUTSIDE"
    print(f"\nplanned vs pad-to-128: predicted/measured speedup error {err:+.1%} ({verdict} the 15% target)")
    path = save("plan_vs_measured_onnxruntime", {
        "pairs": len(samples), "rounds": args.rounds, "k": args.k, "backend": "onnxruntime", "batch": 1,
        "fitted_cost_ms": {"terms": [[dict(e), c * 1e3] for e, c in cost.terms]},
        "profile_ms": {str(b["seq"]): 1e3 * t for b, t in table_cost.costs.items()},
        "results": results, "planned_error": float(err), "within_15_percent": bool(abs(err) <= 0.15),
    })
    print(f"wrote {path}")
    backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
