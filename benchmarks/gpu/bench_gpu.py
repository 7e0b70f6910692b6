"""GPU buckets on one CUDA GPU: CUDA graphs, Inductor and XLA per bucket against eager torch.

Not run on a GPU yet. Run it with ``benchmarks/gpu/run.sh`` on a machine with one CUDA
GPU (it is sized for an H200: under 6 minutes); ``--dry-run`` runs it on CPU with a tiny
model and a few lengths, skipping the CUDA-only sections with a note.

Uses torch, jax, transformers, numpy and this repository (on ``PYTHONPATH``); downloads
nothing. The model is a MiniLM-sized BERT built from its config with random weights
(hidden 384, 6 layers, 12 heads, intermediate 1536), mean-pooled and normalised, and the
same weights in plain JAX (``bucketwise.models.jax_bert``). The inputs are random token
ids at the token lengths of the MRPC test pairs (``mrpc_test_lengths.json``, beside this
file); the seq buckets were planned from the MRPC *train* pairs' lengths (same file), so
the lengths are held out.

Sections, in this order (each one guarded: a failure is recorded and the rest still run;
each checks the time left and is skipped, with a note, when there is not enough):

- ``eager_exact``: eager torch at each input's exact shape (the reference);
- ``eager_padded``: eager torch padded to the buckets (``backend="eager"``);
- ``cuda_graphs``: one CUDA graph per bucket (``backend="cuda-graphs"``), capture time per bucket;
- ``pool_memory``: GPU memory each extra bucket costs, the graph pool shared and unshared;
- ``jax``: naive ``jax.jit`` over the stream (one compile per length) against bucketed ``jax``;
- ``inductor_reduce_overhead``: ``backend="inductor"``, ``mode="reduce-overhead"``, compile time per bucket;
- ``torch_compile_naive``: ``torch.compile(module)`` over the stream, as a user would
  write it (default and ``dynamic=False``), compiles counted, capped in time.

Batch 1: each of ``--batch1`` lengths (a seeded sample of the test lengths) alone, p50
and p99 latency (synchronised per call), after one warm pass. Bulk: every test length in
stream order, ``--bulk-batch`` rows a batch, each batch padded to its longest row (eager
exact) or to the bucket; sequences per second, best of ``--rounds``. Every bucketed
section reports the largest difference of its outputs from eager's in fp32 (TF32 off in
torch, ``highest`` matmul precision in jax), and ``targets`` marks each of the issue's
targets met or not met from the measured numbers.

    benchmarks/gpu/run.sh                         # on the GPU machine; writes $OUT/gpu_buckets.json
    python benchmarks/gpu/bench_gpu.py --dry-run  # CPU, tiny model, a few lengths
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # jax must not take the GPU from torch

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
LENGTHS_FILE = HERE / "mrpc_test_lengths.json"
MINILM = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
VOCAB = 30522
CLS, SEP = 101, 102
TARGETS = {"cuda_graphs_batch1_speedup": 3.0, "extra_bucket_memory_share": 0.10, "jax_stream_speedup": 5.0,
           "max_abs_diff": 1e-4}


# -- results, written after every section ------------------------------------------------


class Results:
    def __init__(self, path: Path, budget_s: float, head: dict[str, Any]) -> None:
        self.path = path
        self.start = time.perf_counter()
        self.budget_s = budget_s
        self.data: dict[str, Any] = {**head, "sections": {}}
        self.save()

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - self.start, 2)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=_jsonable) + "\n")
        tmp.replace(self.path)

    @contextlib.contextmanager
    def section(self, name: str, *, needs_s: float = 0.0, skip: str | None = None) -> Iterator[dict[str, Any] | None]:
        """Yields the section's dict to fill, or ``None`` where it is skipped (the reason
        recorded). An exception is recorded with its traceback's tail, not raised."""
        entry: dict[str, Any] = {}
        self.data["sections"][name] = entry
        if skip is None and self.left() < needs_s:
            skip = f"time budget: {self.left():.0f} s left, the section needs about {needs_s:.0f} s"
        if skip is not None:
            entry.update(status="skipped", note=skip)
            print(f"[{name}] skipped: {skip}", flush=True)
            self.save()
            yield None
            return
        print(f"[{name}] ...", flush=True)
        t0 = time.perf_counter()
        try:
            yield entry
            entry["status"] = "ok"
        except Exception as err:  # one section's failure must not cost the others
            entry.update(status="error", error=f"{type(err).__name__}: {err}",
                         traceback=traceback.format_exc().splitlines()[-12:])
            print(f"[{name}] error: {type(err).__name__}: {err}", flush=True)
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"[{name}] {entry['status']} in {entry['seconds']} s", flush=True)
        self.save()


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)


def stats_ms(seconds: list[float]) -> dict[str, float]:
    a = np.asarray(seconds) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 4), "p99_ms": round(float(np.percentile(a, 99)), 4),
            "mean_ms": round(float(a.mean()), 4), "calls": len(a)}


# -- the model and the inputs --------------------------------------------------------------


def build_models(config: dict[str, int], device: str, folder: Path) -> tuple[Any, Any, Any]:
    """The torch encoder (on ``device``), the same weights as a JaxModel, and the spec."""
    import functools

    import torch
    from transformers import BertConfig, BertModel

    from bucketwise import InputSpec, ModelSpec, OutputSpec
    from bucketwise.backends.jax import JaxModel
    from bucketwise.models.encoders import mean_pooled_encoder
    from bucketwise.models.jax_bert import bert_forward, bert_params

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=VOCAB, max_position_embeddings=512, **config)
    cfg._attn_implementation = "sdpa"
    bert = BertModel(cfg, add_pooling_layer=False).eval()
    bert.save_pretrained(str(folder))  # model.safetensors, read back for the JAX weights
    module = mean_pooled_encoder(bert).to(device).eval()
    jax_model = JaxModel(functools.partial(bert_forward, heads=config["num_attention_heads"], eps=cfg.layer_norm_eps),
                         bert_params(folder), name="minilm-sized bert (jax)")
    ids = ("batch", "seq")
    spec = ModelSpec(
        inputs=(InputSpec("input_ids", ids, "int64", pad_value=0, bounds=(0, VOCAB - 1), example=CLS),
                InputSpec("attention_mask", ids, "int64", pad_value=0, bounds=(0, 1), example=1),
                InputSpec("token_type_ids", ids, "int64", pad_value=0, bounds=(0, 1))),
        outputs=(OutputSpec("last_hidden_state", ("batch", "seq", None)), OutputSpec("sentence_embedding", ("batch", None))),
    )
    return module, jax_model, spec


def token_batch(rng: np.random.Generator, lengths: list[int]) -> dict[str, np.ndarray]:
    """Random token ids for rows of these lengths, padded to the longest ([CLS] .. [SEP])."""
    width = max(lengths)
    ids = np.zeros((len(lengths), width), np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(1000, 29000, n)
        ids[i, 0], ids[i, n - 1] = CLS, SEP
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


# -- timing --------------------------------------------------------------------------------


def batch1_latencies(run: Callable[[Any], Any], inputs: list[Any], sync: Callable[[Any], Any]) -> dict[str, float]:
    for x in inputs:  # one warm pass: every bucket and kernel seen once
        sync(run(x))
    seconds = []
    for x in inputs:
        t = time.perf_counter()
        sync(run(x))
        seconds.append(time.perf_counter() - t)
    return stats_ms(seconds)


def bulk_throughput(run: Callable[[Any], Any], batches: list[Any], rows: int, sync: Callable[[Any], Any],
                    rounds: int) -> dict[str, float]:
    for x in batches[:2]:
        sync(run(x))
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        out = None
        for x in batches:
            out = run(x)
        sync(out)
        best = min(best, time.perf_counter() - t)
    return {"seconds": round(best, 4), "seqs_per_s": round(rows / best, 1), "batches": len(batches), "rows": rows}


def max_diff(got: list[dict[str, Any]], ref: list[dict[str, Any]]) -> dict[str, float]:
    out = {}
    for name in ("sentence_embedding", "last_hidden_state"):
        out[name] = float(max(np.abs(_host(g[name]).astype(np.float64) - _host(r[name])).max() for g, r in zip(got, ref)))
    return out


def _host(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


# -- the sections --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model, a few lengths; CUDA-only sections skipped")
    parser.add_argument("--out", default=None, help="results folder (default: $OUT, else benchmarks/gpu/out)")
    parser.add_argument("--budget-s", type=float, default=None, help="wall-clock budget (default 320; dry run 120)")
    parser.add_argument("--batch1", type=int, default=None, help="batch-1 lengths sampled (default 400; dry run 6)")
    parser.add_argument("--bulk-batch", type=int, default=None, help="rows per bulk batch (default 32; dry run 4)")
    parser.add_argument("--rounds", type=int, default=3, help="bulk passes, best taken")
    args = parser.parse_args(argv)
    dry = args.dry_run
    budget = args.budget_s if args.budget_s is not None else (120.0 if dry else 320.0)
    n1 = args.batch1 if args.batch1 is not None else (6 if dry else 400)
    bulk_b = args.bulk_batch if args.bulk_batch is not None else (4 if dry else 32)
    out_dir = Path(args.out or os.environ.get("OUT") or HERE / "out")

    import torch

    cuda = torch.cuda.is_available() and not dry
    if not dry and not cuda:
        print("no CUDA device: torch.cuda.is_available() is False. Run with --dry-run on CPU", file=sys.stderr)
        return 2
    device = "cuda" if cuda else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 parity: no TF32 in matmuls
    torch.backends.cudnn.allow_tf32 = False
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")

    doc = json.loads(LENGTHS_FILE.read_text())
    test_lengths = [int(n) for n in doc["lengths"]]
    edges = [int(e) for e in doc["seq_edges_planned_from_train"]]
    rng = np.random.default_rng(0)
    sample = [int(n) for n in rng.choice(test_lengths, size=min(n1, len(test_lengths)), replace=False)]
    stream = test_lengths if not dry else test_lengths[: 3 * bulk_b]

    from bucketwise import BucketedModel, Plan, get_backend

    plan1 = Plan.grid(batch=[1], seq=edges)
    plan_all = Plan.grid(batch=[1, bulk_b], seq=edges)
    head = {
        "benchmark": "gpu_buckets", "date": dt.date.today().isoformat(), "dry_run": dry,
        "note": ("dry run on CPU with a tiny model: the timings mean nothing; CUDA-only sections are skipped" if dry
                 else "measured on the GPU named in machine"),
        "machine": machine(torch, jax, cuda),
        "settings": {"device": device, "batch1_lengths": len(sample), "bulk_batch": bulk_b, "bulk_rows": len(stream),
                     "rounds": args.rounds, "budget_s": budget, "tf32": False, "jax_matmul_precision": "highest",
                     "seq_edges": edges, "buckets": [b.label() for b in plan_all.buckets],
                     "lengths": {"file": LENGTHS_FILE.name, "count": len(test_lengths), "distinct": len(set(test_lengths)),
                                 "sample_distinct": len(set(sample)), "min": min(test_lengths), "max": max(test_lengths)}},
        "targets_wanted": TARGETS,
    }
    res = Results(out_dir / "gpu_buckets.json", budget, head)
    cuda_only = "CUDA only: skipped in the dry run (CPU)" if dry else None
    folder = Path(tempfile.mkdtemp(prefix="bucketwise-gpu-bench-"))

    def sync(value: Any) -> Any:
        if cuda:
            torch.cuda.synchronize()
        return value

    def on_device(x: dict[str, np.ndarray]) -> dict[str, Any]:
        return {k: torch.from_numpy(v).to(device) for k, v in x.items()}

    with res.section("setup") as s:
        assert s is not None
        module, jax_model, spec = build_models(TINY if dry else MINILM, device, folder)
        weights = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
        s.update(model={"config": TINY if dry else MINILM, "vocab": VOCAB, "attention": "sdpa", "weights_bytes": weights,
                        "random_weights": True})
        singles = [on_device(token_batch(rng, [n])) for n in sample]
        bulk = [on_device(token_batch(rng, stream[i:i + bulk_b])) for i in range(0, len(stream), bulk_b)]
        check = singles[: min(64, len(singles))] + bulk[:4]  # outputs compared with eager's
    if res.data["sections"]["setup"]["status"] != "ok":
        return 1
    diffs: dict[str, dict[str, float]] = {}
    speed: dict[str, Any] = {}

    def eager(x: dict[str, Any]) -> dict[str, Any]:
        with torch.inference_mode():
            h, e = module(**x)
        return {"last_hidden_state": h, "sentence_embedding": e}

    reference: list[dict[str, Any]] = []
    with res.section("eager_exact") as s:
        if s is not None:
            s["batch1"] = batch1_latencies(eager, singles, sync)
            s["bulk"] = bulk_throughput(eager, bulk, len(stream), sync, args.rounds)
            reference = [eager(x) for x in check]
            speed["eager_exact"] = s

    def bucketed(name: str, bm: Any, s: dict[str, Any], *, bulk_too: bool = True) -> None:
        def run(x: dict[str, Any]) -> dict[str, Any]:
            return bm.run(x)

        s["compile_s_per_bucket"] = {b.label(): round(bm.compile_report.builds[b].seconds, 3)
                                     for b in bm.plan.buckets if b in bm.compile_report.builds}
        s["warmup_s_per_bucket"] = {b.label(): round(bm.compile_report.builds[b].warmup_seconds, 3)
                                    for b in bm.plan.buckets if b in bm.compile_report.builds}
        s["batch1"] = batch1_latencies(run, singles, sync)
        if bulk_too:
            s["bulk"] = bulk_throughput(run, bulk, len(stream), sync, args.rounds)
        n = len(check) if bulk_too else min(64, len(singles))
        if reference:
            diffs[name] = s["max_abs_diff_vs_eager"] = max_diff([run(x) for x in check[:n]], reference[:n])
        s["padding_waste"] = round(bm.stats.padding_waste, 4)
        speed[name] = s

    with res.section("eager_padded") as s:
        if s is not None:
            bm = BucketedModel(module, spec, plan_all, backend="eager").compile(progress=False)
            bucketed("eager_padded", bm, s)

    with res.section("cuda_graphs", needs_s=20, skip=cuda_only) as s:
        if s is not None:
            t = time.perf_counter()
            bm = BucketedModel(module, spec, plan_all, backend=get_backend("cuda-graphs")).compile(progress=False)
            s["capture_total_s"] = round(time.perf_counter() - t, 3)
            s["capture_order"] = [b.label() for b in bm.builder.backend.captured]
            bucketed("cuda_graphs", bm, s)
            bm.close()
            del bm

    with res.section("pool_memory", needs_s=20, skip=cuda_only) as s:
        if s is not None:
            s["weights_bytes"] = weights
            for share in (True, False):
                s["shared" if share else "unshared"] = pool_memory(torch, module, spec, plan_all.buckets, share, weights)

    with res.section("jax", needs_s=30) as s:
        if s is not None:
            s.update(jax_section(jax, jax_model, spec, plan1, [{k: _host(v) for k, v in x.items()} for x in singles],
                                 reference[: min(64, len(singles))], deadline=time.perf_counter() + min(150.0, res.left() - 60)))

    with res.section("inductor_reduce_overhead", needs_s=90, skip=cuda_only) as s:
        if s is not None:
            limits = dynamo_limits(torch)
            t = time.perf_counter()
            bm = BucketedModel(module, spec, plan1, backend=get_backend("inductor", mode="reduce-overhead"))
            bm.compile(progress=False)
            s["compile_total_s"] = round(time.perf_counter() - t, 2)
            s["note"] = "batch-1 buckets only (compile time is the budget); bulk not measured"
            bucketed("inductor_reduce_overhead", bm, s, bulk_too=False)
            restore_limits(torch, limits)

    with res.section("torch_compile_naive", needs_s=40, skip=cuda_only) as s:
        if s is not None:
            for label, kwargs in (("default", {}), ("dynamic=False", {"dynamic": False})):
                left = res.left() - 10
                if left < 20:
                    s[label] = {"status": "skipped", "note": f"time budget: {left:.0f} s left"}
                    continue
                try:
                    s[label] = naive_compile(torch, module, singles, sync, kwargs, cap_s=min(90.0, left))
                except Exception as err:
                    s[label] = {"status": "error", "error": f"{type(err).__name__}: {err}"}

    res.data["targets"] = targets(speed, res.data["sections"], diffs, dry=dry)
    res.save()
    print(json.dumps(res.data["targets"], indent=2))
    print(f"wrote {res.path}")
    return 0


def machine(torch: Any, jax: Any, cuda: bool) -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(), "cores": os.cpu_count(),
                            "versions": {}}
    for name in ("numpy", "torch", "jax", "jaxlib", "transformers"):
        with contextlib.suppress(Exception):
            info["versions"][name] = __import__(name).__version__
    info["torch_cuda"] = torch.version.cuda
    if cuda:
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    with contextlib.suppress(Exception):
        info["jax_devices"] = [f"{d.platform}:{d.device_kind}" for d in jax.devices()]
    return info


def pool_memory(torch: Any, module: Any, spec: Any, buckets: Any, share: bool, weights: int) -> dict[str, Any]:
    """GPU memory each bucket's capture adds, captured largest first by one backend."""
    from bucketwise import get_backend
    from bucketwise.backends.cuda_graphs import capture_order

    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    backend = get_backend("cuda-graphs", share_pool=share)
    rows, artifacts = [], []
    for bucket in capture_order(buckets):
        torch.cuda.synchronize()
        reserved, allocated = torch.cuda.memory_reserved(), torch.cuda.memory_allocated()
        artifacts.append(backend.compile(module, spec, bucket))
        torch.cuda.synchronize()
        rows.append({"bucket": bucket.label(), "reserved_delta_bytes": torch.cuda.memory_reserved() - reserved,
                     "allocated_delta_bytes": torch.cuda.memory_allocated() - allocated})
    extra = rows[1:]
    out = {"per_bucket": rows,
           "max_extra_bucket_reserved_bytes": max((r["reserved_delta_bytes"] for r in extra), default=0),
           "max_extra_bucket_share_of_weights": round(max((r["reserved_delta_bytes"] for r in extra), default=0) / weights, 4)}
    del artifacts
    backend.close()
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return out


def jax_section(jax: Any, model: Any, spec: Any, plan: Any, singles: list[dict[str, np.ndarray]],
                reference: list[dict[str, Any]], *, deadline: float) -> dict[str, Any]:
    """The batch-1 stream (host arrays, as a server has them) through naive jax.jit (one
    compile per new length) and through bucketed jax, each from cold."""
    from bucketwise import BucketedModel, get_backend

    device = jax.devices()[0]
    out: dict[str, Any] = {"device": f"{device.platform}:{device.device_kind}"}
    params = jax.device_put(model.params, device)
    jitted = jax.jit(model.apply)
    t = time.perf_counter()
    done = 0
    for x in singles:
        jitted(params, x)["sentence_embedding"].block_until_ready()
        done += 1
        if time.perf_counter() > deadline:
            break
    naive_s = time.perf_counter() - t
    out["naive_jit"] = {"stream_s": round(naive_s, 3), "calls": done, "of": len(singles), "capped": done < len(singles),
                        "compiles": int(jitted._cache_size())}
    t = time.perf_counter()
    bm = BucketedModel(model, spec, plan, backend=get_backend("jax", device=device.platform)).compile(progress=False)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    for x in singles[:done]:
        bm.run(x)["sentence_embedding"]  # NumPy out: already on the host
    out["bucketed"] = {"compile_s": round(compile_s, 3), "stream_s": round(compile_s + time.perf_counter() - t, 3),
                       "compiles": len(plan), "calls": done}
    out["stream_speedup"] = round(naive_s / out["bucketed"]["stream_s"], 2)
    if out["naive_jit"]["capped"]:
        out["note"] = "naive jax.jit stopped at the time cap; both timed over the same calls, so the speedup is a lower bound"

    def steady(run: Callable[[Any], Any]) -> dict[str, float]:
        return batch1_latencies(run, singles[:done], lambda v: v)

    out["naive_jit"]["batch1"] = steady(lambda x: jitted(params, x)["sentence_embedding"].block_until_ready())
    out["bucketed"]["batch1"] = steady(lambda x: bm.run(x)["sentence_embedding"])
    if reference:
        got = [bm.run(x) for x in singles[: len(reference)]]
        out["max_abs_diff_vs_torch_eager"] = max_diff(got, reference)
    return out


def dynamo_limits(torch: Any) -> dict[str, Any]:
    cfg = torch._dynamo.config
    return {k: getattr(cfg, k) for k in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                                         "accumulated_cache_size_limit") if hasattr(cfg, k)}


def restore_limits(torch: Any, limits: dict[str, Any]) -> None:
    for k, v in limits.items():
        with contextlib.suppress(Exception):
            setattr(torch._dynamo.config, k, v)


def naive_compile(torch: Any, module: Any, singles: list[Any], sync: Callable[[Any], Any], kwargs: dict[str, Any],
                  cap_s: float) -> dict[str, Any]:
    """``torch.compile(module, **kwargs)`` over the batch-1 stream from cold: wall time
    with every recompile on the way, graphs compiled, then steady latencies."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    fn = torch.compile(module, **kwargs)

    def run(x: dict[str, Any]) -> Any:
        with torch.inference_mode():
            return fn(**x)

    t = time.perf_counter()
    done = 0
    for x in singles:
        sync(run(x))
        done += 1
        if time.perf_counter() - t > cap_s:
            break
    stream_s = time.perf_counter() - t
    out: dict[str, Any] = {"stream_s": round(stream_s, 3), "calls": done, "of": len(singles), "capped": done < len(singles),
                           "graphs_compiled": int(counters["stats"]["unique_graphs"]),
                           "distinct_lengths_seen": len({x["input_ids"].shape[1] for x in singles[:done]})}
    out["batch1"] = batch1_latencies(run, singles[:done], sync)
    torch._dynamo.reset()
    return out


def targets(speed: dict[str, Any], sections: dict[str, Any], diffs: dict[str, dict[str, float]], *,
            dry: bool = False) -> dict[str, Any]:
    """Each target of the issue, met or not met, from the measured numbers (or not
    measured). In a dry run the speed and memory targets are not judged (CPU, tiny model);
    the output differences are."""
    out = _targets(speed, sections, diffs)
    if dry:
        for name, t in out.items():
            if not name.startswith("max_abs_diff") and t.get("met") is not None:
                t.update(met=None, note="dry run (CPU, tiny model): not judged")
    return out


def _targets(speed: dict[str, Any], sections: dict[str, Any], diffs: dict[str, dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    eager, graphs = speed.get("eager_exact"), speed.get("cuda_graphs")
    if eager and graphs:
        ratio = eager["batch1"]["mean_ms"] / graphs["batch1"]["mean_ms"]
        out["cuda_graphs_batch1_throughput_vs_eager"] = {"value": round(ratio, 2), "want": f">= {TARGETS['cuda_graphs_batch1_speedup']}",
                                                         "met": ratio >= TARGETS["cuda_graphs_batch1_speedup"]}
    else:
        out["cuda_graphs_batch1_throughput_vs_eager"] = {"met": None, "note": "not measured"}
    mem = sections.get("pool_memory", {})
    if mem.get("status") == "ok":
        share = mem["shared"]["max_extra_bucket_share_of_weights"]
        out["extra_bucket_memory_vs_weights_shared_pool"] = {
            "value": share, "want": f"<= {TARGETS['extra_bucket_memory_share']}", "met": share <= TARGETS["extra_bucket_memory_share"]}
    else:
        out["extra_bucket_memory_vs_weights_shared_pool"] = {"met": None, "note": "not measured"}
    jx = sections.get("jax", {})
    if jx.get("status") == "ok":
        ratio = jx["stream_speedup"]
        out["bucketed_jax_stream_vs_naive_jit"] = {"value": ratio, "want": f">= {TARGETS['jax_stream_speedup']}",
                                                   "met": ratio >= TARGETS["jax_stream_speedup"],
                                                   **({"note": jx["note"]} if "note" in jx else {})}
        if "max_abs_diff_vs_torch_eager" in jx:
            diffs = {**diffs, "jax": jx["max_abs_diff_vs_torch_eager"]}
    else:
        out["bucketed_jax_stream_vs_naive_jit"] = {"met": None, "note": "not measured"}
    for name, d in diffs.items():
        worst = max(d.values())
        out[f"max_abs_diff_vs_eager_fp32:{name}"] = {"value": worst, "want": f"<= {TARGETS['max_abs_diff']}",
                                                     "met": worst <= TARGETS["max_abs_diff"]}
    return out


if __name__ == "__main__":
    sys.exit(main())
