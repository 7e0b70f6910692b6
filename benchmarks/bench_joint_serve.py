"""One memory budget across three served models, measured (issue #29): the planned split
against an equal split of the same budget, each served by `bucketwise serve`, side by side.

Models (all six-layer MiniLM, so their costs are in one unit):
  embed   the bundled all-MiniLM-L6-v2 (OpenAI /v1/embeddings), 80% of the requests
  rerank  all-MiniLM-L6-v2's encoder with a seeded one-label head: a cross-encoder's shapes
          (Cohere /v2/rerank, a query against four documents), 15%
  mrpc    all-MiniLM-L6-v2 fine-tuned on MRPC, a two-label classifier (TEI /predict), 5%

The backend compiles one artifact per bucket (OpenVINO with every dim static, by default),
so each bucket costs memory. Each model's memory per bucket is measured: its largest bucket
is compiled into a fresh cache and its resident size read back. The plans are fitted on
the MRPC train split's token lengths (sentences for embed, sentence pairs for the other two);
the load is the MRPC test split, held out from that fit.

For one budget (by default, what two length buckets per model would need), both splits are
planned from the same choices (bucketwise.planning.joint: split_budget and equal_split), and
each is served in turn, rounds alternating, at 8 and 64 clients with the 80/15/5 mix. Each
cell reports the expected cost per request (padded tokens), req/s, p50 and p99 latency per
route and over all, errors and lost requests, and the server's RSS.

    python benchmarks/bench_joint_serve.py [--seconds 15] [--rounds 2] [--clients 8,64]
        [--backend openvino] [--buckets-per-model 2]
Writes benchmarks/results/joint_serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from _common import SHARED_DATA, save, table
from bench_serve import start_server
from bench_serve_tasks import MIX, load
from mrpc_model import finetuned_mrpc

from bucketwise.data import read_mrpc
from bucketwise.models.encoders import model_dir
from bucketwise.models.frontend import compile_in_child
from bucketwise.models.tasks import text_model_parts
from bucketwise.planning.joint import ModelDemand, equal_split, plan_choices, split_budget
from bucketwise.plans import Plan
from bucketwise.runtime.cache import ArtifactCache, fingerprint
from bucketwise.shapes import BATCH, Bucket

MiB = 2**20
BATCH_SIZES = [1, 4, 16]


def build_reranker(root: Path) -> Path:
    """all-MiniLM-L6-v2's encoder under a one-label sequence-classification head, seeded."""
    import torch
    import transformers

    folder = root / "minilm-reranker"
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.BertForSequenceClassification.from_pretrained(model_dir(None), num_labels=1)
    model.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(model_dir(None)).save_pretrained(folder)
    return folder


def measured_memory(folder: str, backend: str, cache: Path) -> tuple[int, int, int]:
    """(bytes per bucket, shared bytes, longest input) of ``folder``: its largest bucket
    compiled into ``cache`` by `bucketwise compile` and measured there."""
    module, _, spec, task = text_model_parts(backend, folder)
    longest = spec.meta["encoder"].max_length
    compile_in_child(task, backend, Plan((Bucket({BATCH: max(BATCH_SIZES), "seq": longest}),)), cache, model=folder,
                     progress=False)
    largest, _, shared = ArtifactCache(cache).largest_resident(model=fingerprint(module, spec), backend=backend)
    if largest is None:
        raise RuntimeError(f"{folder}: no resident size was measured on {backend}")
    return largest, shared, longest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="per cell (default 15)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, the order of the splits alternating (default 2)")
    parser.add_argument("--clients", default="8,64", help="concurrent clients per cell (default 8,64)")
    parser.add_argument("--backend", default="openvino")
    parser.add_argument("--buckets-per-model", type=int, default=2,
                        help="the budget: what this many length buckets per model need (default 2)")
    parser.add_argument("--out", default=None, help="results file (default benchmarks/results/joint_serve.json)")
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]

    train = read_mrpc(SHARED_DATA / "mrpc" / "msr_paraphrase_train.txt")
    test = read_mrpc(SHARED_DATA / "mrpc" / "msr_paraphrase_test.txt")
    sentences = [s for p in test for s in p]
    from bucketwise.models.text import load_default_tokenizer

    tok = load_default_tokenizer(None)
    train_sentences = [s for p in train for s in p]
    lengths = {
        "embed": [len(tok(s)["input_ids"]) for s in train_sentences],
        "rerank": [len(tok(train_sentences[i], train_sentences[(i * 7 + 1) % len(train_sentences)])["input_ids"])
                   for i in range(len(train_sentences))],
        "mrpc": [len(tok(a, b)["input_ids"]) for a, b in train],
    }
    shares = dict(MIX)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cache = tmp / "cache"
        folders = {"embed": model_dir(None), "rerank": str(build_reranker(tmp)), "mrpc": str(finetuned_mrpc(progress=False))}
        demands, memory = [], {}
        for name, folder in folders.items():
            per_bucket, shared, longest = measured_memory(folder, args.backend, cache)
            memory[name] = {"bytes_per_bucket": per_bucket, "shared_bytes": shared, "longest": longest}
            print(f"memory   {name}: {per_bucket / MiB:.1f} MiB per bucket, {shared / MiB:.1f} MiB shared "
                  f"({args.backend}, batch {max(BATCH_SIZES)} x seq {longest})")
            demands.append(ModelDemand(name, lengths[name], shares[name], per_bucket, shared, max_k=8,
                                       options={"batch_sizes": BATCH_SIZES, "cap": longest, "grid": "auto"}))
        budget = sum(d.shared_bytes + args.buckets_per_model * len(BATCH_SIZES) * d.bytes_per_bucket for d in demands)
        choices = plan_choices(demands)
        splits = {"planned": split_budget(demands, budget, choices=choices),
                  "equal": equal_split(demands, budget, choices=choices)}
        for split_name, joint in splits.items():
            print(f"\n{split_name} split of {budget / MiB:.0f} MiB:\n{joint}")

        def config_of(split_name: str) -> Path:
            path = tmp / f"models.{split_name}.json"
            models = {}
            for name, chosen in splits[split_name].plans.items():
                plan_path = tmp / f"plan.{split_name}.{name}.json"
                chosen.save(plan_path)
                models[name] = {"path": folders[name], "plan": str(plan_path)}
            path.write_text(json.dumps({"models": models}))
            return path

        cells: dict[str, list[dict]] = {s: [] for s in splits}
        for round_no in range(args.rounds):
            order = list(splits) if round_no % 2 == 0 else list(reversed(splits))
            for split_name in order:
                proc, url = start_server(["--backend", args.backend, "--models-config", str(config_of(split_name)),
                                          "--cache-dir", str(cache), "--max-queue", "4096"])
                try:
                    for n in clients:
                        got = asyncio.run(load(url, n, args.seconds, sentences, test))
                        rss = _rss_mib(proc.pid)
                        cells[split_name].append({"round": round_no, "clients": n, "rss_mib": rss, "routes": got})
                        print(f"round {round_no} {split_name:<8} {n:>3} clients: "
                              f"{sum(s['ok'] for s in got.values()) / args.seconds:.1f} req/s")
                finally:
                    proc.terminate()
                    proc.wait(timeout=120)
                    time.sleep(1.0)

    rows, summary = [], {}
    for n in clients:
        for split_name, joint in splits.items():
            runs = [c for c in cells[split_name] if c["clients"] == n]
            total = [sum(r["req_per_s"] for r in c["routes"].values()) for c in runs]
            p99 = [max(r["p99_ms"] or 0.0 for r in c["routes"].values()) for c in runs]
            errors = sum(r["4xx"] + r["5xx"] + r["503"] for c in runs for r in c["routes"].values())
            lost = sum(r["lost"] for c in runs for r in c["routes"].values())
            med = {"req_per_s": float(np.median(total)), "worst_route_p99_ms": float(np.median(p99)),
                   "embed_p99_ms": float(np.median([c["routes"]["embed"]["p99_ms"] for c in runs])),
                   "rss_mib": float(np.median([c["rss_mib"] for c in runs])), "errors": errors, "lost": lost}
            summary[f"{split_name} {n}"] = med
            rows.append([n, split_name, "/".join(str(c.k) for c in joint.choices.values()),
                         sum(len(c.plan) for c in joint.choices.values()), f"{joint.memory / MiB:.0f}",
                         f"{joint.expected_cost:.1f}", f"{med['req_per_s']:.1f}", f"{med['embed_p99_ms']:.0f}",
                         f"{med['worst_route_p99_ms']:.0f}", f"{med['rss_mib']:.0f}", errors, lost])
    print()
    print(table(rows, ["clients", "split", "k embed/rerank/mrpc", "buckets", "MiB planned", "cost/request",
                       "req/s", "embed p99 ms", "worst p99 ms", "RSS MiB", "errors", "lost"]))
    for n in clients:
        p, e = summary[f"planned {n}"], summary[f"equal {n}"]
        print(f"{n} clients: planned / equal req/s {p['req_per_s'] / e['req_per_s']:.2f}x; "
              f"embed p99 {p['embed_p99_ms']:.0f} ms against {e['embed_p99_ms']:.0f} ms")
    path = save("joint_serve", {
        "command": "python benchmarks/bench_joint_serve.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "backend": args.backend, "batch_sizes": BATCH_SIZES, "mix": shares, "memory": memory,
        "budget_bytes": budget, "splits": {n: j.as_dict() for n, j in splits.items()}, "summary": summary,
        "cells": cells}, args.out)
    print(f"wrote {path}")
    return 0 if all(s["lost"] == 0 and s["errors"] == 0 for s in summary.values()) else 1


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    sys.exit(main())
