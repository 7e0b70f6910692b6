"""Per-call overhead of the runtime (validate + route + pad + run bookkeeping + unpad)
against the model's own time, at the smallest default bucket (batch 1 x seq 16).

For each input kind, all-MiniLM-L6-v2 is compiled for that bucket, then timed two ways,
alternating in rounds (best round's median counts):

  model     the artifact alone, on inputs already padded to the bucket
  overhead  a full bucketed call whose artifact replays the model's outputs at once,
            so what is left is the library's own work per call

Input kinds: NumPy into ONNX Runtime (a NumPy artifact), torch tensors into TorchScript
(a torch artifact: no NumPy round trip), and torch tensors into ONNX Runtime (converted
at the edge). Target: overhead under 2% of model time. Prints a table and writes
benchmarks/results/runtime_overhead.json.

    python benchmarks/bench_overhead.py [--calls 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import numpy as np
from _common import save, table

from bucketwise import Bucket, BucketedModel, Plan, Router
from bucketwise.models.text import load_default_encoder
from bucketwise.padding import pad
from bucketwise.runtime import Runner

BUCKET = Bucket(batch=1, seq=16)


class Replay:
    """An artifact that returns outputs computed earlier: it costs (almost) nothing."""

    def __init__(self, artifact: Any, outputs: dict[str, Any]) -> None:
        self.bucket, self.array_kind, self.outputs = artifact.bucket, artifact.array_kind, outputs

    def run(self, inputs: Any) -> dict[str, Any]:
        return self.outputs


class OneArtifact:
    def __init__(self, artifact: Any) -> None:
        self.built, self._artifact = frozenset({artifact.bucket}), artifact

    def artifact(self, bucket: Bucket) -> Any:
        return self._artifact if bucket == self._artifact.bucket else None


def median_seconds(fn: Any, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per round and way (default 300)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (best round's median counts)")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/runtime_overhead.json)")
    args = parser.parse_args(argv)

    import torch

    module, tokenizer, spec = load_default_encoder()
    enc = tokenizer("A short sentence about bucketed inference.", return_tensors="np")
    as_np = {k: enc[k].astype(np.int64) for k in spec.input_names}
    print(f"input: {as_np['input_ids'].shape[1]} tokens, bucket {BUCKET.label()}")
    cases = {
        "NumPy -> onnxruntime": ("onnxruntime", as_np),
        "torch -> torchscript": ("torchscript", {k: torch.from_numpy(v) for k, v in as_np.items()}),
        "torch -> onnxruntime": ("onnxruntime", {k: torch.from_numpy(v) for k, v in as_np.items()}),
    }
    rows, results = [], []
    for name, (backend, inputs) in cases.items():
        plan = Plan((BUCKET,))
        bm = BucketedModel(module, spec, plan, backend=backend, warmup_runs=3).compile(progress=False)
        artifact = bm.artifact(BUCKET)
        padded = pad(spec, {k: v if artifact.array_kind == "torch" else np.asarray(v) for k, v in inputs.items()}, BUCKET)
        if artifact.array_kind == "numpy":
            padded = {k: np.asarray(v) for k, v in padded.items()}
        replay = Replay(artifact, artifact.run(padded))
        runner = Runner(spec, Router(plan), OneArtifact(replay), eager=lambda: module)
        out = runner.run(inputs)
        assert type(out["sentence_embedding"]) is type(next(iter(inputs.values())))  # kind kept
        model_s, overhead_s = float("inf"), float("inf")
        for _ in range(args.rounds):
            model_s = min(model_s, median_seconds(lambda a=artifact, p=padded: a.run(p), args.calls))
            overhead_s = min(overhead_s, median_seconds(lambda r=runner, i=inputs: r.run(i), args.calls))
        share = overhead_s / model_s
        rows.append([name, f"{model_s * 1e3:.3f}", f"{overhead_s * 1e6:.1f}", f"{share:.2%}",
                     "yes" if share < 0.02 else "NO"])
        results.append({"case": name, "backend": backend, "bucket": BUCKET.as_dict(),
                        "model_ms": model_s * 1e3, "overhead_us": overhead_s * 1e6, "overhead_share": share})
        bm.close()
    print(table(rows, ["inputs -> backend", "model ms", "overhead us", "overhead / model", "< 2%"]))
    path = save("runtime_overhead", {"calls": args.calls, "rounds": args.rounds, "results": results}, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
