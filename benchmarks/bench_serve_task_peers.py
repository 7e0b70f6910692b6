"""Reranking and classification side by side: `bucketwise serve` against infinity-emb (issue #29).

The same two models, served by both, at 1, 8 and 64 clients:

- ``rerank``: a one-label cross-encoder on ``/rerank``. Each request is a held-out query
  with ``--documents`` held-out documents (default 6). bucketwise gets TEI's body
  ``{model, query, texts}`` and answers ``[{index, score}]``; infinity gets its own
  (Cohere's) ``{model, query, documents}`` and answers ``{results: [{index,
  relevance_score}]}``. Same texts, same order, the sigmoid of the logit on both. The
  scores differ by up to about 0.03: infinity's ONNX cross-encoder tokenizes the pairs
  without ``token_type_ids`` (``crossencoder/optimum.py``, ``return_token_type_ids=False``),
  so the model sees every token as segment 0; bucketwise's match transformers' with the
  segment ids. The work per request is the same.
- ``classify``: a two-label sequence classifier on infinity's ``/classify``, the same body
  ``{model, input: [texts]}`` for both (``--classify-texts`` texts per request, default 1).
  Neither server's ``/classify`` takes a pair, so a request is single texts.

Models (local folders, nothing downloaded; built once and cached beside the MRPC model, in
``$BUCKETWISE_CACHE/benchmarks`` or ``~/.cache/bucketwise/benchmarks``):

- classifier (``--classifier DIR``): all-MiniLM-L6-v2 fine-tuned on MRPC
  (``mrpc_model.finetuned_mrpc``, trained on first use, a few minutes);
- reranker (``--reranker DIR``): the same model with its two-label head folded into one
  label, logit(equivalent) - logit(not_equivalent), so its score, sigmoid of that, is the
  classifier's paraphrase probability of the (query, document) pair: a cross-encoder
  whose scores mean something, built from the classifier's weights without training.

infinity-emb runs its ONNX engine (``--engine optimum --device cpu``) from ``--infinity
VENV`` (a venv of its own: it pins its transformers; see "The infinity venv" below). Its
optimum engine does not export: it needs ``model.onnx`` in the folder. The script exports
each folder once with ``torch.onnx.export`` in that venv (the inputs, outputs and dynamic
axes of ``optimum-cli export onnx``), checks the ONNX logits against torch's, and caches
the export beside the model (``infinity-onnx/NAME``). infinity reads the task from
``config.json``: a ``*ForSequenceClassification`` with one label is served as a reranker,
with two or more as a classifier; no flag says it.

On its first start infinity optimizes the graph (ONNX Runtime's transformer optimizer,
level 99) and caches it under ``$HUGGINGFACE_HUB_CACHE/infinity_onnx/PROVIDER/MODEL_ID``.
With the optimum it installs today (2.x) that call fails (``OptimizationConfig`` no longer
takes ``optimize_with_onnxruntime_only``) and it serves the plain graph; optimum 1.27, where
it works, does not import with torch 2.13. So by default (``--infinity-graph optimized``)
the script runs that same optimization once in the venv and puts the result where
infinity finds it (``infinity-onnx/NAME-hub``, given as its hub cache; the model id is
``.`` for every model, so each model gets its own); infinity's log then says "Optimized
model found". ``--infinity-graph as-installed`` leaves infinity to itself. The graph each
start served is in the results (``infinity_loaded``).

Servers: each a real process on 127.0.0.1 serving the one model of the task, started fresh
for each task in each round; rounds rotate the order of the servers. Per server and task:
probes (8 requests, whose scores are compared with the first server's), 2 s of warm-up at 8 clients, then one cell
of ``--seconds`` per client count. infinity starts with ``--no-model-warmup`` (its warm-up
runs the classifier pipeline on 514 tokens, past the model's 512 positions, and the
server fails to start); the script's warm-up serves both servers alike.

Each cell reports req/s, p50 and p99 latency (ms), errors (non-200 or a malformed
answer) and lost requests (the connection failed without an answer), the server's CPU use
(cores busy) and RSS; then the median over rounds of req/s and p99 per cell, with the
ratios to infinity.

    python benchmarks/bench_serve_task_peers.py [--seconds 20] [--rounds 3] [--clients 1,8,64]
        [--infinity VENV] [--reranker DIR] [--classifier DIR] [--tasks rerank,classify]
        [--infinity-graph optimized|as-installed] [--documents 6] [--classify-texts 1] [--quick] [--out NAME]
Writes benchmarks/results/serve_task_peers.json (or NAME.json).

The infinity venv (default /work/infvenv), as built on 2026-12-01 (infinity-emb 0.0.78,
optimum 2.1.0 with optimum-onnx 0.1.0, onnxruntime 1.32.0, transformers 4.57.6, torch
2.13.0+cpu, numpy 1.26.4):

    python3 -m venv VENV
    VENV/bin/pip install torch==2.13.0
    VENV/bin/pip install "infinity-emb[server,optimum]==0.0.78"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _common import save, table, wait_ready
from bench_serve import free_port
from bench_serve_peers import closed_loop, cpu_seconds, median_over_rounds, rss_mib
from heldout import heldout_sets
from mrpc_model import cache_dir, finetuned_mrpc

BUCKETWISE = "bucketwise"
INFINITY = "infinity-emb (optimum)"
TASKS = ("rerank", "classify")
DEFAULT_VENV = "/work/infvenv"

# Run by the infinity venv's python: SRC OUT. The inputs, outputs and dynamic axes of
# optimum's text-classification export; the ONNX logits are checked against torch's.
EXPORT = r"""
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

src, out = Path(sys.argv[1]), Path(sys.argv[2])
model = AutoModelForSequenceClassification.from_pretrained(src, local_files_only=True, attn_implementation="eager").eval()
tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
enc = tok(["a short query", "a longer query with a few more words in it"], ["one document", "another"],
          padding=True, return_tensors="pt")
names = ["input_ids", "attention_mask", "token_type_ids"]
axes = {n: {0: "batch_size", 1: "sequence_length"} for n in names}
axes["logits"] = {0: "batch_size"}
with torch.no_grad():
    torch.onnx.export(model, tuple(enc[n] for n in names), str(out / "model.onnx"), input_names=names,
                      output_names=["logits"], dynamic_axes=axes, opset_version=14, do_constant_folding=True,
                      dynamo=False)
    want = model(**enc).logits.numpy()
model.config.save_pretrained(out)
tok.save_pretrained(out)
enc = tok(["a third text, of another length than the export's"] * 3, padding=True, return_tensors="np")
got = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(
    None, {n: enc[n].astype(np.int64) for n in names})[0]
with torch.no_grad():
    want = model(**{n: torch.from_numpy(enc[n]) for n in names}).logits.numpy()
diff = float(np.abs(got - want).max())
print(f"exported {src} to {out}: ONNX logits within {diff:.2e} of torch's")
assert diff < 1e-4, diff
"""

# Run by the infinity venv's python: ONNX_DIR SAVE_DIR. What infinity-emb 0.0.78 does on its
# first start with an optimum engine on CPU (transformer/utils_optimum.py, optimize_model):
# ORTOptimizer at level 99, not for GPU, no fp16, saved as *_optimized.onnx where it looks
# for it next time. With optimum 2.x its own call fails (it passes optimize_with_onnxruntime_only,
# which OptimizationConfig no longer takes) and it serves the plain graph; optimum 1.27,
# whose call works, does not import with torch 2.13 (nor infinity with transformers >= 4.49).
OPTIMIZE = r"""
import sys

from optimum.onnxruntime import ORTModelForSequenceClassification, ORTOptimizer
from optimum.onnxruntime.configuration import OptimizationConfig

model = ORTModelForSequenceClassification.from_pretrained(sys.argv[1], file_name="model.onnx",
                                                          provider="CPUExecutionProvider")
config = OptimizationConfig(optimization_level=99, optimize_for_gpu=False, fp16=False)
ORTOptimizer.from_pretrained(model).optimize(optimization_config=config, save_dir=sys.argv[2], one_external_file=True)
print(f"optimized {sys.argv[1]} into {sys.argv[2]}")
"""


# -- the models ------------------------------------------------------------------------------------

def mrpc_reranker(classifier: Path, root: Path | None = None) -> Path:
    """A one-label cross-encoder from the two-label MRPC classifier: its logit is
    logit(equivalent) - logit(not_equivalent), so sigmoid(logit) is the classifier's softmax
    probability of "equivalent". Built once, beside the classifier."""
    from safetensors.numpy import load_file, save_file

    folder = (root or classifier.parent) / f"{classifier.name}-rerank"
    if (folder / "model.safetensors").exists():
        return folder
    config = json.loads((classifier / "config.json").read_text())
    if config.get("architectures") != ["BertForSequenceClassification"] or len(config.get("id2label", {})) != 2:
        raise ValueError(f"{classifier} is not a two-label BertForSequenceClassification")
    label = {v: int(k) for k, v in config["id2label"].items()}
    yes, no = label.get("equivalent", 1), label.get("not_equivalent", 0)
    weights = load_file(str(classifier / "model.safetensors"))
    w, b = weights["classifier.weight"], weights["classifier.bias"]
    weights["classifier.weight"] = (w[yes] - w[no])[None, :].astype(w.dtype)
    weights["classifier.bias"] = np.array([b[yes] - b[no]], dtype=b.dtype)
    config.update(id2label={"0": "paraphrase"}, label2id={"paraphrase": 0}, problem_type="regression")
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for f in classifier.iterdir():
            if f.name.startswith(("tokenizer", "special_tokens", "vocab")):
                shutil.copy2(f, tmp / f.name)
        (tmp / "bucketwise_recipe.json").write_text(json.dumps(
            {"from": str(classifier), "head": "logit(equivalent) - logit(not_equivalent)"}, indent=2) + "\n")
        tmp.chmod(0o755)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _in_venv(venv: Path, code: str, *args: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([str(venv / "bin" / "python"), "-c", code, *map(str, args)], env=env, capture_output=True,
                          text=True)
    if done.returncode:
        raise RuntimeError(f"{venv / 'bin' / 'python'} failed on {list(map(str, args))}:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def infinity_export(venv: Path, model: Path) -> Path:
    """The folder infinity's optimum engine loads: ``model.onnx``, config and tokenizer,
    exported in ``venv`` once and cached."""
    out = cache_dir() / "infinity-onnx" / model.name
    if (out / "model.onnx").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        print(_in_venv(venv, EXPORT, model, tmp).replace(str(tmp), str(out)), flush=True)
        tmp.chmod(0o755)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def infinity_hub(venv: Path, onnx_dir: Path, graph: str) -> Path:
    """The hub cache for infinity serving ``onnx_dir``: with ``graph="optimized"``, one
    holding the graph its own optimization would write (made once); with ``"as-installed"``,
    one of its own, where infinity's own attempt goes."""
    if graph == "as-installed":
        return onnx_dir.parent / f"{onnx_dir.name}-hub-as-installed"
    hub = onnx_dir.parent / f"{onnx_dir.name}-hub"
    # Where infinity looks: HF_HUB_CACHE / infinity_onnx / PROVIDER / MODEL_ID, and the id is ".".
    save_dir = hub / "infinity_onnx" / "CPUExecutionProvider"
    if not list(save_dir.glob("**/*_optimized.onnx")):
        shutil.rmtree(hub, ignore_errors=True)
        print(_in_venv(venv, OPTIMIZE, onnx_dir, save_dir), flush=True)
    return hub


# -- the servers -----------------------------------------------------------------------------------

def start(server: str, task: str, folder: Path, args: argparse.Namespace, hub: Path | None = None
          ) -> tuple[subprocess.Popen, str, Path]:
    """(process, base URL, log file) of a ready server serving ``folder`` as ``task``."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if server == BUCKETWISE:
        cmd = [sys.executable, "-m", "bucketwise.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--no-progress", "--model", f"{task}={folder}"]
        ready, cwd = "/readyz", None
    else:
        # Run from the export's folder with --model-id ".": infinity-emb 0.0.78 finds the
        # .onnx file by a path relative to --model-id, which an absolute path breaks. Its
        # optimized graph is cached in the hub cache by that id, so each model has its own.
        env["HF_HUB_CACHE"] = env["HUGGINGFACE_HUB_CACHE"] = str(hub)  # infinity reads the second
        env["COLUMNS"] = "400"  # its log lines unwrapped, for graph_loaded
        cmd = [str(Path(args.infinity).resolve() / "bin" / "infinity_emb"), "v2", "--model-id", ".",
               "--served-model-name", task, "--engine", "optimum", "--device", "cpu", "--port", str(port),
               "--host", "127.0.0.1", "--no-model-warmup"]
        ready, cwd = "/health", str(folder)
    log_path = Path(tempfile.gettempdir()) / f"bench-serve-task-peers-{port}.log"
    with open(log_path, "wb") as log:  # never a full pipe
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    # A first start compiles (bucketwise) or optimizes (infinity).
    wait_ready(proc, url + ready, what=f"{server} ({task})", timeout=600, log=log_path)
    return proc, url, log_path


def graph_loaded(log: Path) -> str:
    """Which graph infinity's log says it serves."""
    text = log.read_text(errors="replace")
    for line in text.splitlines():
        # A rich log line: LEVEL DATE TIME infinity_emb LEVEL: MESSAGE   FILE:LINE
        found = re.search(r"infinity_emb \w+: (.*?)(?:\s{2,}|$)", line)
        message = found.group(1) if found else line.strip()
        if "Optimization failed" in line:
            return "plain graph: " + message
        if "Optimized model found" in line:
            return "optimized graph, found in its cache: " + message
    return "optimized graph, made at start" if "Optimizing model" in text else "unknown: no optimization line in its log"


def request(server: str, task: str, i: int, texts: list[str], args: argparse.Namespace) -> tuple[str, dict, int]:
    """(path, body, number of results expected) of request ``i``: the same texts for both servers."""
    n = len(texts)
    if task == "rerank":
        query = texts[i % n]
        docs = [texts[(i * 7 + j) % n] for j in range(1, args.documents + 1)]
        if server == BUCKETWISE:
            return "/rerank", {"model": task, "query": query, "texts": docs}, len(docs)
        return "/rerank", {"model": task, "query": query, "documents": docs}, len(docs)
    batch = [texts[(i * args.classify_texts + j) % n] for j in range(args.classify_texts)]
    return "/classify", {"model": task, "input": batch}, len(batch)


def results_of(server: str, task: str, body: Any) -> list[Any]:
    """The per-document or per-text results of an answer."""
    if task == "classify":
        return body["data"]
    return body if server == BUCKETWISE else body["results"]


def scores(server: str, task: str, body: Any) -> list[float]:
    """The scores of an answer, in input order: each document's, or each text's for every label (by name)."""
    if task == "classify":
        return [c["score"] for row in body["data"] for c in sorted(row, key=lambda c: c["label"])]
    key = "score" if server == BUCKETWISE else "relevance_score"
    got = {r["index"]: r[key] for r in results_of(server, task, body)}
    return [got[i] for i in range(len(got))]


async def load(server: str, task: str, url: str, texts: list[str], clients: int, seconds: float,
               args: argparse.Namespace, offset: int = 0) -> dict:
    """Back-to-back requests of ``task`` in ``server``'s body (:func:`request`); an answer
    is ok with as many results as its request asked for (every request of a task asks for
    the same number)."""
    expect = request(server, task, 0, texts, args)[2]
    return await closed_loop(url, clients, seconds, lambda i: request(server, task, i, texts, args)[:2],
                             lambda r: r.status_code == 200 and len(results_of(server, task, r.json())) == expect,
                             offset=offset, missing=float("nan"))


def probe(server: str, task: str, url: str, texts: list[str], args: argparse.Namespace) -> list[float]:
    """The scores of the first 8 requests, for the parity check."""
    out: list[float] = []
    for i in range(8):
        path, body, _ = request(server, task, i, texts, args)
        r = httpx.post(url + path, json=body, timeout=120)
        r.raise_for_status()
        out += scores(server, task, r.json())
    return out


# -- the run ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per cell (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the order of the servers rotated (default 3)")
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--tasks", default=",".join(TASKS), help="rerank, classify or both (default)")
    parser.add_argument("--infinity", metavar="VENV", default=DEFAULT_VENV,
                        help=f"a venv with infinity-emb[server,optimum] (default {DEFAULT_VENV})")
    parser.add_argument("--reranker", metavar="DIR", help="a one-label *ForSequenceClassification folder "
                        "(default: the MRPC classifier's head folded to one label, built once)")
    parser.add_argument("--classifier", metavar="DIR", help="a *ForSequenceClassification folder with 2+ labels "
                        "(default: all-MiniLM-L6-v2 fine-tuned on MRPC, trained once)")
    parser.add_argument("--infinity-graph", choices=("optimized", "as-installed"), default="optimized",
                        help="optimized (default): infinity serves the graph its own ONNX Runtime optimization makes, "
                        "prepared for it (its own call fails with optimum 2.x); as-installed: what it does itself")
    parser.add_argument("--documents", type=int, default=6, help="documents per rerank request (default 6)")
    parser.add_argument("--classify-texts", type=int, default=1, help="texts per classify request (default 1)")
    parser.add_argument("--quick", action="store_true", help="a check that it all runs: 3 s cells, 1 round "
                        "(unless --seconds or --rounds say otherwise), results to serve_task_peers_quick.json")
    parser.add_argument("--out", default=None, help="results file name in benchmarks/results (no .json; "
                        "default serve_task_peers)")
    args = parser.parse_args(argv)
    if args.quick:
        given = set(argv if argv is not None else sys.argv[1:])
        args.seconds = args.seconds if "--seconds" in given else 3.0
        args.rounds = args.rounds if "--rounds" in given else 1
        args.out = args.out or "serve_task_peers_quick"
    args.out = args.out or "serve_task_peers"
    clients = [int(c) for c in args.clients.split(",")]
    tasks = [t.strip() for t in args.tasks.split(",")]
    if not set(tasks) <= set(TASKS):
        parser.error(f"--tasks: {tasks} not in {TASKS}")
    venv = Path(args.infinity)
    if not (venv / "bin" / "infinity_emb").exists():
        parser.error(f"--infinity {venv}: no bin/infinity_emb there (see this script's docstring for the venv)")

    classifier = Path(args.classifier) if args.classifier else finetuned_mrpc(progress=True)
    folders = {"classify": classifier, "rerank": Path(args.reranker) if args.reranker else mrpc_reranker(classifier)}
    folders = {t: folders[t] for t in tasks}
    served = {(BUCKETWISE, t): f for t, f in folders.items()}
    served.update({(INFINITY, t): infinity_export(venv, f) for t, f in folders.items()})
    hubs = {t: infinity_hub(venv, served[(INFINITY, t)], args.infinity_graph) for t in tasks}
    texts = heldout_sets(short=3000, medium=0, long=0, seed=0)["short"]
    servers = [BUCKETWISE, INFINITY]
    print(f"models: {', '.join(f'{t}={f}' for t, f in folders.items())}; {len(texts)} held-out sentences; "
          f"{args.rounds} rounds of {args.seconds:g} s cells at {clients} clients", flush=True)

    results: list[dict] = []
    parity: dict[str, dict[str, float]] = {t: {} for t in tasks}
    reference: dict[str, np.ndarray] = {}
    starts: list[dict] = []
    infinity_loaded: dict[str, str] = {}
    for rnd in range(args.rounds):
        order = servers[rnd % len(servers):] + servers[:rnd % len(servers)]
        for task in tasks:
            for name in order:
                t0 = time.perf_counter()
                proc, url, log = start(name, task, served[(name, task)], args, hubs[task])
                starts.append({"server": name, "task": task, "round": rnd, "ready_s": time.perf_counter() - t0})
                if name == INFINITY:
                    infinity_loaded[task] = starts[-1]["graph"] = graph_loaded(log)
                    print(f"{name} serves {task}: {infinity_loaded[task]}", flush=True)
                try:
                    got = np.array(probe(name, task, url, texts, args))
                    reference.setdefault(task, got)
                    parity[task][name] = max(parity[task].get(name, 0.0), float(np.abs(got - reference[task]).max()))
                    asyncio.run(load(name, task, url, texts, 8, 2.0, args, offset=999))  # warm every size a bit
                    for n in clients:
                        cpu0, t1 = cpu_seconds(proc.pid), time.perf_counter()
                        r = asyncio.run(load(name, task, url, texts, n, args.seconds, args, offset=rnd * 7919))
                        r["server_cores_busy"] = (cpu_seconds(proc.pid) - cpu0) / (time.perf_counter() - t1)
                        r["server_rss_mib"] = rss_mib(proc.pid)
                        results.append({"server": name, "task": task, "clients": n, "round": rnd, **r})
                        print(f"round {rnd} {task:<8} {name:<22} clients={n:<3} {r['throughput']:7.1f} req/s  "
                              f"p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  errors {r['errors']}  "
                              f"lost {r['lost']}  cpu {r['server_cores_busy']:.2f}  rss {r['server_rss_mib']:.0f} MiB",
                              flush=True)
                        for line in r["why"][:3]:
                            print(f"    {line}", flush=True)
                finally:
                    proc.terminate()
                    try:
                        proc.wait(120)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                log.unlink(missing_ok=True)

    median = median_over_rounds([{**r, "mix": r["task"]} for r in results])
    total = {}
    for r in results:
        cell = total.setdefault((r["server"], r["task"], r["clients"]), {"errors": 0, "lost": 0, "sent": 0})
        for k in cell:
            cell[k] += r[k]
    rows = []
    for (name, task, n), m in median.items():
        base = median.get((INFINITY, task, n))
        cell = total[(name, task, n)]
        rows.append([task, n, name, f"{m['throughput']:.1f}", f"{m['p99_ms']:.1f}",
                     f"{m['throughput'] / base['throughput']:.2f}×" if base and name != INFINITY else "-",
                     f"{m['p99_ms'] / base['p99_ms']:.2f}×" if base and name != INFINITY else "-",
                     " ".join(f"{x:.0f}" for x in m["p99_rounds"]), cell["errors"], cell["lost"]])
    rows.sort(key=lambda row: (row[0], row[1], row[2]))
    print()
    print(f"median over {args.rounds} rounds of {args.seconds:g} s (errors and lost: all rounds):")
    print(table(rows, ["task", "clients", "server", "req/s", "p99 ms", "req/s vs infinity", "p99 vs infinity",
                       "p99 of each round", "errors", "lost"]))
    print("largest score difference to the first server's on the probes (rerank: infinity drops token_type_ids):",
          {t: {k: float(f"{v:.2e}") for k, v in p.items()} for t, p in parity.items()})
    path = save(args.out, {
        "command": "python benchmarks/bench_serve_task_peers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seconds_per_cell": args.seconds, "rounds": args.rounds, "clients": clients, "servers": servers,
        "tasks": tasks, "documents_per_rerank": args.documents, "texts_per_classify": args.classify_texts,
        "models": {t: str(f) for t, f in folders.items()},
        "infinity_models": {t: str(served[(INFINITY, t)]) for t in tasks}, "infinity_graph": args.infinity_graph,
        "infinity_loaded": infinity_loaded,
        "infinity_versions": infinity_versions(venv),
        "results": results, "starts": starts, "max_score_diff_to_first": parity,
        "median": [{"server": k[0], "task": k[1], "clients": k[2], **m, **total[k]} for k, m in median.items()]})
    print(f"wrote {path}")
    return 0


def infinity_versions(venv: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json; print(json.dumps({n: m.version(n) for n in ('infinity-emb', "
            "'optimum', 'onnxruntime', 'transformers', 'tokenizers', 'torch', 'numpy', 'fastapi', 'uvicorn')}))")
    try:
        return json.loads(subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                                         check=True).stdout)
    except (subprocess.CalledProcessError, ValueError):
        return {}


if __name__ == "__main__":
    sys.exit(main())
