"""The recompile cliff: compilers that compile once per input shape, with and without buckets.

300 MRPC sentence pairs (seeded sample of the test split) stream through all-MiniLM-L6-v2
at their natural lengths, one pair at a time, in each configuration:

- ``jax.jit`` naive: XLA compiles once per distinct length;
- bucketed ``jax``: the buckets planned (k=4, padding cost, multiples of 8) from the lengths
  of 1,000 pairs of the *train* split, compiled ahead of time with
  ``BucketedModel(backend="jax")``; and the same with k=8 (more compiles, less padding);
- ``torch.compile(dynamic=False)`` naive: recompiles per shape until dynamo's recompile
  limit (8), then runs the frame eagerly;
- ``torch.compile(dynamic=True)``: symbolic-shape kernels;
- bucketed ``inductor``: the same k=4 plan, one static graph per bucket;
- eager torch: the reference.

Each configuration runs in a fresh process with a fresh inductor cache folder (no compile
is reused across configurations or runs), and no bucketwise artifact cache. Reported:

- compiles: executables (XLA) or graphs (dynamo) compiled;
- whole stream: wall seconds of the first pass over the 300 pairs, including every
  compile (ahead of time for the bucketed configurations, on the fly for the naive ones);
- steady ms/pair: best of ``--rounds`` further passes, every shape compiled by then
  (separate processes differ by up to 20% here, so the bucketed configurations are also
  timed against their exact-shape counterparts in one process, rounds alternated);
- vs eager: the whole-stream and steady speed relative to eager torch;
- max |diff|: the largest difference of a sentence embedding from eager torch.

    python benchmarks/bench_recompile.py [--pairs 300] [--rounds 3] [--configs a,b]
Writes benchmarks/results/recompile_cliff.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, SHARED_DATA, save, table

CONFIGS = ["eager", "jax.jit naive", "bucketed jax", "bucketed jax k=8", "torch.compile naive",
           "torch.compile dynamic", "bucketed inductor"]


def pairs(split: str, n: int, seed: int) -> list[tuple[str, str]]:
    from bucketwise.data import read_mrpc

    rows = read_mrpc(SHARED_DATA / "mrpc" / f"msr_paraphrase_{split}.txt")
    rng = np.random.default_rng(seed)
    return [rows[i] for i in rng.choice(len(rows), min(n, len(rows)), replace=False)]


def encode(tokenizer, spec, items) -> list[dict[str, np.ndarray]]:
    out = []
    for a, b in items:
        enc = tokenizer(a, b, truncation=True, max_length=256, return_tensors="np")
        out.append({k: enc[k].astype(np.int64) for k in spec.input_names})
    return out


def planned(tokenizer, spec, k: int = 4):
    import bucketwise

    train = encode(tokenizer, spec, pairs("train", 1000, 1))
    return bucketwise.plan([s["input_ids"].shape[1] for s in train], k=k, dims=["seq"], grid=8, batch_sizes=[1])


def child(name: str, n: int, rounds: int, out_npy: str) -> dict:
    from bucketwise import BucketedModel
    from bucketwise.models.encoders import lazy_default_encoder

    lazy, tokenizer, spec = lazy_default_encoder(None)
    samples = encode(tokenizer, spec, pairs("test", n, 0))
    compile_s = 0.0
    if name.startswith(("jax.jit", "bucketed jax")):
        import jax

        from bucketwise.models.jax_bert import bert_encoder

        model, _, jspec = bert_encoder()
        # Token ids as the tokenizer gives them (host arrays), as a server or a batch job
        # has them: jax.jit moves them to the device, bucketwise pads them on the host
        # first (padding jax arrays on the device would compile a small pad op per new
        # length, the very cliff buckets avoid).
        inputs = samples
        if name == "jax.jit naive":
            jitted = jax.jit(model.apply)
            params = jax.device_put(model.params)

            def run(x):
                return jitted(params, x)["sentence_embedding"]

            def count() -> int:
                return jitted._cache_size()
        else:
            t = time.perf_counter()
            k = 8 if name.endswith("k=8") else 4
            bm = BucketedModel(model, jspec, planned(tokenizer, spec, k), backend="jax", warmup_runs=1)
            bm.compile(progress=False)
            compile_s = time.perf_counter() - t

            def run(x):
                return bm.run(x)["sentence_embedding"]

            def count() -> int:
                return len(bm.plan)

        def block(v):
            return v.block_until_ready() if hasattr(v, "block_until_ready") else v  # NumPy out: already there
    else:
        import torch

        module = lazy.load()
        inputs = [{k: torch.from_numpy(v) for k, v in s.items()} for s in samples]
        torch._dynamo.reset()
        from torch._dynamo.utils import counters

        if name == "bucketed inductor":
            t = time.perf_counter()
            bm = BucketedModel(module, spec, planned(tokenizer, spec), backend="inductor", warmup_runs=1)
            bm.compile(progress=False)
            compile_s = time.perf_counter() - t

            def run(x):
                return bm.run(x)["sentence_embedding"]
        else:
            fn = {"eager": module,
                  "torch.compile naive": torch.compile(module, dynamic=False),
                  "torch.compile dynamic": torch.compile(module, dynamic=True)}[name]

            def run(x):
                with torch.inference_mode():
                    out = fn(**x)
                return out["sentence_embedding"] if isinstance(out, dict) else out[1]

        def count() -> int:
            return 0 if name == "eager" else int(counters["stats"]["unique_graphs"])

        def block(v):
            return v

    t = time.perf_counter()
    for x in inputs:
        block(run(x))
    first = time.perf_counter() - t
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        outs = [block(run(x)) for x in inputs]
        best = min(best, time.perf_counter() - t)
    np.save(out_npy, np.concatenate([np.asarray(o).reshape(1, -1) for o in outs]))
    lengths = [s["input_ids"].shape[1] for s in samples]
    return {"config": name, "compiles": count(), "compile_s": compile_s, "stream_s": compile_s + first,
            "steady_ms": best / len(inputs) * 1e3, "pairs": len(inputs), "distinct_lengths": len(set(lengths)),
            "mean_tokens": float(np.mean(lengths))}


def steady_child(family: str, n: int, rounds: int) -> dict:
    """Steady state of a bucketed configuration and its exact-shape counterpart in one
    process, rounds alternated (separate processes on this machine differ by up to 20%)."""
    from bucketwise import BucketedModel
    from bucketwise.models.encoders import lazy_default_encoder

    lazy, tokenizer, spec = lazy_default_encoder(None)
    samples = encode(tokenizer, spec, pairs("test", n, 0))
    runners = {}
    if family == "jax":
        import jax

        from bucketwise.models.jax_bert import bert_encoder

        model, _, jspec = bert_encoder()
        jitted, params = jax.jit(model.apply), jax.device_put(model.params)
        runners["jax.jit at exact shapes"] = lambda x: jitted(params, x)["sentence_embedding"].block_until_ready()
        for k in (4, 8):
            bm = BucketedModel(model, jspec, planned(tokenizer, spec, k), backend="jax").compile(progress=False)
            runners[f"bucketed jax k={k}"] = (lambda b: lambda x: b.run(x)["sentence_embedding"])(bm)
    else:
        import torch

        module = lazy.load()
        samples = [{k: torch.from_numpy(v) for k, v in s.items()} for s in samples]
        dynamic = torch.compile(module, dynamic=True)
        bm = BucketedModel(module, spec, planned(tokenizer, spec), backend="inductor").compile(progress=False)

        def run_dynamic(x):
            with torch.inference_mode():
                return dynamic(**x)

        runners["torch.compile dynamic"] = run_dynamic
        runners["bucketed inductor k=4"] = lambda x: bm.run(x)["sentence_embedding"]
    for run in runners.values():  # every shape compiled before timing
        for x in samples:
            run(x)
    best = {name: float("inf") for name in runners}
    for r in range(rounds):
        for name in list(runners)[r % len(runners):] + list(runners)[:r % len(runners)]:
            t = time.perf_counter()
            for x in samples:
                runners[name](x)
            best[name] = min(best[name], time.perf_counter() - t)
    return {name: b / len(samples) * 1e3 for name, b in best.items()}


def steady_runs(families: list[str], pairs_n: int, rounds: int, work: Path) -> dict:
    steady = {}
    for family in families:
        proc = subprocess.run([sys.executable, __file__, "--pairs", str(pairs_n), "--rounds", str(2 * rounds + 1),
                               "--steady-child", family], capture_output=True, text=True,
                              env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(work / f"inductor-steady-{family}"),
                                   "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"})
        if proc.returncode != 0:
            raise RuntimeError(f"steady {family} failed:\n{proc.stderr[-3000:]}")
        steady[family] = json.loads(proc.stdout.strip().splitlines()[-1])
    return steady


def print_steady(steady: dict) -> None:
    print("\nsteady state in one process, rounds alternated (ms/pair):")
    for figures in steady.values():
        ref_name = next(iter(figures))
        for name, ms in figures.items():
            print(f"  {name:<26} {ms:6.2f}  {figures[ref_name] / ms:.2f}× of {ref_name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3, help="steady-state passes (best counts)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {CONFIGS}")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--steady-child", help=argparse.SUPPRESS)
    parser.add_argument("--steady-only", metavar="FAMILIES",
                        help="rerun only the same-process steady state of these families (jax,torch) and update "
                             "the results file")
    args = parser.parse_args(argv)
    if args.steady_child:
        print(json.dumps(steady_child(args.steady_child, args.pairs, args.rounds)))
        return 0
    if args.child:
        name, out_npy = json.loads(args.child)
        print(json.dumps(child(name, args.pairs, args.rounds, out_npy)))
        return 0
    if args.steady_only:
        path = RESULTS / "recompile_cliff.json"
        data = json.loads(path.read_text())
        data["steady_same_process_ms"].update(steady_runs(args.steady_only.split(","), args.pairs, args.rounds,
                                                          Path(tempfile.mkdtemp(prefix="bench-recompile-"))))
        print_steady(data["steady_same_process_ms"])
        save("recompile_cliff", {k: v for k, v in data.items() if k not in ("benchmark", "date", "machine")})
        return 0
    names = [c.strip() for c in args.configs.split(",")]
    if "eager" not in names:
        names.insert(0, "eager")  # the reference for speed and parity
    work = Path(tempfile.mkdtemp(prefix="bench-recompile-"))
    results, embeddings = [], {}
    for name in names:
        out_npy = work / f"{name.replace(' ', '_')}.npy"
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(work / f"inductor-{len(results)}"),
               "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--pairs", str(args.pairs), "--rounds", str(args.rounds),
                               "--child", json.dumps([name, str(out_npy)])], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["process_s"] = time.perf_counter() - t
        embeddings[name] = np.load(out_npy)
        results.append(r)
        print(f"{name:<22} compiles {r['compiles']:>4}  stream {r['stream_s']:7.1f} s  steady {r['steady_ms']:6.2f} ms/pair",
              flush=True)
    eager = next(r for r in results if r["config"] == "eager")
    for r in results:
        r["stream_vs_eager"] = eager["stream_s"] / r["stream_s"]
        r["steady_vs_eager"] = eager["steady_ms"] / r["steady_ms"]
        r["max_abs_diff"] = float(np.abs(embeddings[r["config"]] - embeddings["eager"]).max())
    by = {r["config"]: r for r in results}
    ratios = {}
    for bucketed, naive in (("bucketed jax", "jax.jit naive"), ("bucketed jax k=8", "jax.jit naive"),
                            ("bucketed inductor", "torch.compile naive")):
        if bucketed in by and naive in by:
            ratios[f"{bucketed} vs {naive}, whole stream"] = by[naive]["stream_s"] / by[bucketed]["stream_s"]
    for bucketed in ("bucketed jax", "bucketed jax k=8"):  # naive jit, every length compiled: exact-shape code
        if bucketed in by and "jax.jit naive" in by:
            ratios[f"{bucketed} steady vs exact-shape jax.jit"] = by["jax.jit naive"]["steady_ms"] / by[bucketed]["steady_ms"]
    if "bucketed inductor" in by and "torch.compile dynamic" in by:
        ratios["bucketed inductor steady vs torch.compile dynamic"] = (
            by["torch.compile dynamic"]["steady_ms"] / by["bucketed inductor"]["steady_ms"])
    rows = [[r["config"], r["compiles"], f"{r['stream_s']:.1f}", f"{r['steady_ms']:.2f}",
             f"{r['stream_vs_eager']:.2f}×", f"{r['steady_vs_eager']:.2f}×", f"{r['max_abs_diff']:.1e}"] for r in results]
    print()
    print(f"{eager['pairs']} MRPC pairs at batch 1, {eager['distinct_lengths']} distinct lengths, "
          f"mean {eager['mean_tokens']:.1f} tokens")
    print(table(rows, ["config", "compiles", "whole stream s", "steady ms/pair", "stream vs eager",
                       "steady vs eager", "max |diff|"]))
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}×")
    steady = steady_runs(["jax", "torch"], args.pairs, args.rounds, work)
    print_steady(steady)
    path = save("recompile_cliff", {"pairs": args.pairs, "rounds": args.rounds, "results": results, "ratios": ratios,
                                    "steady_same_process_ms": steady})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
