"""Packed buckets against unpacked ones and exact shapes (issue #30), all-MiniLM-L6-v2 on
held-out text (heldout.py: prose from installed packages' READMEs, which no default is
fitted on), in bulk.

Side by side in one run, each configuration in a fresh process per round (rounds rotate the
order); only the passes after a first, untimed one are timed (compiling is not):

  exact (reference)     one ONNX Runtime session with every dim free, over the same export:
                        texts sorted by length, batches of 32 padded only to their longest
  exact (jax.jit)       JAX's own exact-shape reference (with --backends jax): the JAX BERT
                        under jax.jit, texts sorted by length and batched by 32 as above;
                        each distinct shape is compiled once, in the untimed first pass, so
                        the timed passes are steady state
  default               SentenceEmbedder's default plan on the backend (ONNX Runtime: 114
                        buckets sharing one session; OpenVINO and JAX: 10 compiled shapes)
  unpacked k=3          batch 32 x the 3 lengths planned exactly on the set itself (an
                        oracle plan: the best 3 unpacked shapes can do no better)
  packed default        16 texts to a row at most: 16 and 4 rows x 128, 1 row x 256 (the
                        default packed plan, bucketwise embed --pack): 3 shapes
  packed planned        3 shapes chosen by `bucketwise plan --pack` (plan_packed, 16 texts
                        to a row at most, the model's 256 as the top row) from the lengths
                        of another draw of the same kind of text (heldout_sets(seed=1),
                        without the measured texts): fitted on data it is not measured on

on ONNX Runtime, on OpenVINO with every dim static (one compiled model per shape), and on
JAX (its own BERT, packed in its graph; one executable per shape).

Per set (short, medium, long) and configuration: bulk texts/s (best of --repeats passes in
each of --rounds processes) and against the reference, and, on a backend with its own
exact-shape reference (JAX), against that one too; padding (share of computed positions
that are padding), compiled shapes, the process's peak RSS, and the largest difference of
any embedding from the reference's.

    python benchmarks/bench_packing.py [--rounds 2] [--repeats 2] [--sets short,medium,long]
        [--backends onnxruntime,openvino,jax] [--limit N] [--out FILE]
Writes benchmarks/results/packing.json (or --out); --limit N takes the first N texts of each
set (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import run_child as in_child
from _common import save, table
from bench_exact import exact_batches, reference
from heldout import heldout_sets

from bucketwise import Plan
from bucketwise.backends.onnxruntime import OnnxRuntimeBackend
from bucketwise.models.text import SentenceEmbedder
from bucketwise.runtime.cache import ArtifactCache
from bucketwise.shapes import BATCH, Bucket

SEGMENTS = 16
PACKED = {"packed default": ((16, 128), (4, 128), (1, 256))}
PLANNED = "packed planned"
TARGETS = {"bulk_vs_exact": 0.95, "padding": 0.05, "shapes": 3}
REFERENCE = "exact (reference)"  # ONNX Runtime with every dim free: every configuration's yardstick
OWN_EXACT = {"jax": "exact (jax.jit)"}  # a backend's own exact-shape reference, which its configurations also face
CONFIGS = ("default", "unpacked k=3", *PACKED, PLANNED)


def texts_of(set_name: str, limit: int | None) -> list[str]:
    texts = heldout_sets()[set_name]
    return texts[:limit] if limit else texts


def jax_reference(batch: int) -> Any:
    """The JAX BERT under ``jax.jit`` at exact shapes: texts sorted by length, batches of
    ``batch`` padded only to their longest (one compile per distinct shape, on first use)."""
    from bucketwise.models.jax_bert import bert_encoder

    model, tokenizer, spec = bert_encoder()
    return exact_batches(lambda feeds: np.asarray(model(**feeds)["sentence_embedding"]), tokenizer, spec.input_names,
                         batch, np.int32)  # jax runs 32-bit ids


def fit_lengths(set_name: str, tokenizer: Any) -> list[int]:
    """Token lengths of another draw of the set's kind of text, without the measured texts:
    what the planned packed plan is fitted on."""
    measured = set(heldout_sets()[set_name])
    return [len(tokenizer(t, truncation=True, max_length=256)["input_ids"])
            for t in heldout_sets(seed=1)[set_name] if t not in measured]


def packed_planned(set_name: str, tokenizer: Any) -> Plan:
    from bucketwise.planning import plan_packed

    return plan_packed(fit_lengths(set_name, tokenizer), k=3, max_segments=SEGMENTS, cap=256).plan


def plan_of(config: str, lengths: list[int], set_name: str = "", tokenizer: Any = None) -> Plan | None:
    if config == PLANNED:
        return packed_planned(set_name, tokenizer)
    if config in PACKED:
        return Plan(tuple(Bucket({BATCH: b, "seq": s}) for b, s in PACKED[config]))
    if config == "unpacked k=3":
        from bucketwise.planning import plan

        seqs = plan(lengths, k=3).sizes("seq")
        return Plan.grid(batch=[32], seq=seqs)
    return None  # the default


def child(config: str, backend: str, set_name: str, cache_dir: str, repeats: int, limit: int | None = None) -> dict:
    texts = texts_of(set_name, limit)
    cache = ArtifactCache(cache_dir)
    embedder = SentenceEmbedder.default(backend="onnxruntime", progress=False, cache=cache, build=False)
    lengths = [len(ids) for ids, _ in embedder.tokenize(texts)]
    waste, shapes = None, None
    if config == "exact (reference)":
        embedder.prepare(progress=False, only=())
        session = OnnxRuntimeBackend().session(embedder.model.builder.source())
        run = reference(session, embedder.tokenizer, 32)
    elif config == OWN_EXACT.get(backend):
        run = jax_reference(32)
    else:
        embedder = SentenceEmbedder.default(backend=backend, progress=False, cache=cache,
                                            plan=plan_of(config, lengths, set_name, embedder.tokenizer),
                                            pack=SEGMENTS if config in PACKED or config == PLANNED else None)
        run = embedder.embed
        shapes = len(embedder.model.plan)
    out = np.asarray(run(texts))
    best = float("inf")
    for _ in range(repeats):
        if shapes is not None:
            embedder.model.reset_stats()
        t = time.perf_counter()
        run(texts)
        best = min(best, time.perf_counter() - t)
    if shapes is not None:
        waste = embedder.model.stats.padding_waste
    path = Path(cache_dir) / f"out-{backend}-{abs(hash(config))}-{set_name}.npy"
    np.save(path, out)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"bulk_s": best, "padding_waste": waste, "shapes": shapes, "rss_mib": rss, "out": str(path)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of fresh processes, configs rotated")
    parser.add_argument("--repeats", type=int, default=2, help="bulk passes per process (best counts)")
    parser.add_argument("--sets", default="short,medium,long")
    parser.add_argument("--backends", default="onnxruntime,openvino", help="comma-separated: onnxruntime, openvino, jax")
    parser.add_argument("--limit", type=int, default=None, help="the first N texts of each set only (a smoke run)")
    parser.add_argument("--out", default=None, help="results file (default benchmarks/results/packing.json)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*json.loads(args.child))))
        return 0

    cache = tempfile.mkdtemp(prefix="bench-packing-")
    sets = heldout_sets()
    names = [n for n in args.sets.split(",") if n in sets]
    backends = args.backends.split(",")
    configs = [(REFERENCE, "onnxruntime")] + [(c, b) for b in backends for c in
                                              ([OWN_EXACT[b]] if b in OWN_EXACT else []) + list(CONFIGS)]

    def run_child(config: str, backend: str, set_name: str) -> dict:
        return in_child(__file__, [config, backend, set_name, cache, args.repeats, args.limit],
                        f"{config} on {backend}, {set_name}")

    tokenizer = SentenceEmbedder.default(progress=False, build=False).tokenizer
    results: dict[str, Any] = {"sets": {}, "packed_plans": {c: [list(b) for b in p] for c, p in PACKED.items()},
                               "segments": SEGMENTS, "targets": TARGETS, "backends": backends}
    if args.limit:
        results["limit"] = args.limit
    rows = []
    for set_name in names:
        texts = texts_of(set_name, args.limit)
        lengths = sorted(len(tokenizer(t)["input_ids"]) for t in texts)
        planned = packed_planned(set_name, tokenizer)
        results.setdefault("planned_plans", {})[set_name] = sorted([b[BATCH], b["seq"]] for b in planned.buckets)
        best: dict[str, dict] = {}
        for r in range(args.rounds):
            for config, backend in configs[r % len(configs):] + configs[: r % len(configs)]:
                got = run_child(config, backend, set_name)
                key = config if config == REFERENCE else f"{backend}: {config}"
                keep = best.setdefault(key, got)
                keep["bulk_s"] = min(keep["bulk_s"], got["bulk_s"])
        ref = best[REFERENCE]
        ref_out = np.load(ref["out"])
        cells = {}
        for key, b in best.items():
            diff = float(np.abs(np.load(b["out"]) - ref_out).max())
            vs = ref["bulk_s"] / b["bulk_s"]
            cells[key] = {"texts_per_s": len(texts) / b["bulk_s"], "vs_exact": vs, "padding_waste": b["padding_waste"],
                          "shapes": b["shapes"], "rss_mib": b["rss_mib"], "max_abs_diff_vs_reference": diff}
            backend = key.split(": ", 1)[0]
            own = best.get(f"{backend}: {OWN_EXACT[backend]}") if backend in OWN_EXACT else None
            own_vs = None if own is None else own["bulk_s"] / b["bulk_s"]
            if own is not None:  # against the backend's own exact-shape reference
                cells[key]["vs_backend_exact"] = own_vs
            rows.append([set_name, key, f"{len(texts) / b['bulk_s']:.0f}", f"{vs:.2f}x",
                         "-" if own_vs is None else f"{own_vs:.2f}x",
                         "-" if b["padding_waste"] is None else f"{b['padding_waste']:.1%}",
                         "-" if b["shapes"] is None else b["shapes"], f"{b['rss_mib']:.0f}", f"{diff:.1e}"])
        results["sets"][set_name] = {"texts": len(texts), "median_tokens": lengths[len(lengths) // 2],
                                     "max_tokens": lengths[-1], "configs": cells}
        print(f"{set_name}: {len(texts)} texts, median {lengths[len(lengths) // 2]} tokens, max {lengths[-1]}", flush=True)
    print()
    print(table(rows, ["set", "config", "texts/s", "vs exact", "vs own exact", "padding", "shapes", "peak RSS MiB",
                       "max diff"]))
    verdicts = []
    for set_name, got in results["sets"].items():
        for backend in backends:
            for config in (*PACKED, PLANNED):
                cell = got["configs"][f"{backend}: {config}"]
                if set_name == "long":
                    best_unpacked = max(got["configs"][f"{backend}: {c}"]["texts_per_s"] for c in ("unpacked k=3",))
                    met = cell["texts_per_s"] >= best_unpacked
                    verdicts.append(f"{set_name}, {backend}, {config}: {cell['texts_per_s']:.0f} texts/s against "
                                    f"{best_unpacked:.0f} unpacked k=3: {'met' if met else 'not met'}")
                else:  # against the backend's own exact-shape reference where it has one
                    vs, against = ((cell["vs_backend_exact"], OWN_EXACT[backend]) if "vs_backend_exact" in cell
                                   else (cell["vs_exact"], "exact"))
                    met = vs >= TARGETS["bulk_vs_exact"] and cell["padding_waste"] <= TARGETS["padding"]
                    verdicts.append(f"{set_name}, {backend}, {config}: {vs:.2f}x {against}, padding "
                                    f"{cell['padding_waste']:.1%}: {'met' if met else 'not met'}")
    print("\ntargets (at most 3 shapes: >= 0.95x exact and <= 5% padding on short and medium; on long, no worse "
          "than the unpacked plan of 3 shapes):")
    for v in verdicts:
        print("  " + v)
    results["verdicts"] = verdicts
    path = save("packing", {"command": "python benchmarks/bench_packing.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                            "rounds": args.rounds, "repeats": args.repeats, **results}, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
