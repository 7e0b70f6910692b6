"""Serving side by side: `bucketwise serve` against a peer server, at 1, 8 and 64 clients.

Two load mixes of held-out text (``heldout.py``: prose from installed packages' READMEs,
which no test or default is fitted on), one text per request:

- ``singles``: single sentences (median about 13 tokens);
- ``mix``: the same, with 20% of requests made of 3-4 sentences joined (100-200 tokens).

Servers (each a real process on 127.0.0.1, started fresh per round; rounds rotate the
order; the best round of each cell by req/s is tabled, then the median over rounds):

- ``bucketwise adaptive``: ``bucketwise serve`` with its defaults (the batch waits only
  while requests keep arriving; two streams, the second only beside a small batch);
- ``bucketwise 1 stream``: the same with ``--streams 1`` (one batch at a time, the
  default before 2026-11-24);
- ``bucketwise fixed 5 ms``: the same with ``--batch-wait fixed`` (every batch that is not
  full waits 5 ms, the behaviour before);
- ``bucketwise 2 streams``: two batches at once, each ONNX Runtime run on one thread
  (``--streams 2 --backend-option intra_op_threads=1``);
- ``bucketwise 2 streams shared``: ``--streams 2`` stated (the default now): two batches
  at once on the default threads (each run may use every intra-op thread; two runs at
  once share the cores);
- ``bucketwise @REV``: ``bucketwise serve`` with its defaults, run from a git worktree of
  commit REV (the code before a change, side by side with it);
- ``infinity-emb (optimum)``: with ``--infinity VENV --infinity-model ONNX_DIR``, the peer
  of issue 16, run as ``VENV/bin/infinity_emb v2 --model-id ONNX_DIR --engine optimum
  --device cpu --pooling-method mean`` (install it in a separate venv: it pins its own
  transformers).

Each cell reports req/s, p50 and p99 latency (ms), errors and lost requests, the server
process's CPU use (cores busy, from /proc) and its RSS at the end of the cell; for
bucketwise, also its own mean queue wait, run time per batch and rows per batch (from
its /metrics over the cell).

    python benchmarks/bench_serve_peers.py [--seconds 20] [--rounds 2] [--clients 1,8,64]
        [--infinity VENV --infinity-model ONNX_DIR] [--servers ...] [--out NAME]
Writes benchmarks/results/serve_peers.json (or NAME.json).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _common import save, table, wait_ready
from bench_serve import free_port
from heldout import heldout_sets

ROOT = Path(__file__).resolve().parents[1]


def load_mixes(seed: int = 0) -> dict[str, list[str]]:
    short = heldout_sets(short=3000, medium=0, long=0, seed=seed)["short"]
    rng = random.Random(seed)
    mix = [" ".join(rng.sample(short, rng.choice((3, 4)))) if rng.random() < 0.2 else s for s in short]
    return {"singles": short, "mix": mix}


def start(name: str, args: argparse.Namespace) -> tuple[subprocess.Popen, str, str]:
    """(process, base URL, embeddings path) of a ready server."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if name.startswith("bucketwise"):
        extra = ["--batch-wait", "fixed"] if "fixed" in name else []
        if "2 streams" in name:
            extra += ["--streams", "2"]
            if "shared" not in name:
                extra += ["--backend-option", "intra_op_threads=1"]
        if "1 stream" in name:
            extra += ["--streams", "1"]
        if "@" in name:  # the code of another commit, from a worktree
            tree = Path(tempfile.gettempdir()) / f"bench-serve-peers-{name.split('@')[1]}"
            if not tree.exists():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree),
                                name.split("@")[1]], check=True, capture_output=True)
            env["PYTHONPATH"] = str(tree / "src")
        cmd = [sys.executable, "-m", "bucketwise.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--no-progress", *extra]
        ready, path = "/readyz", "/v1/embeddings"
        cwd = None
    else:
        # Run from the export's folder: infinity-emb 0.0.78 finds the .onnx file by a path
        # relative to --model-id, which an absolute path breaks.
        cmd = [str(Path(args.infinity).resolve() / "bin" / "infinity_emb"), "v2", "--model-id", ".",
               "--engine", "optimum", "--device", "cpu", "--pooling-method", "mean", "--port", str(port),
               "--host", "127.0.0.1", "--model-warmup"]
        ready, path = "/health", "/embeddings"
        cwd = args.infinity_model
    log = open(Path(tempfile.gettempdir()) / f"bench-serve-peers-{port}.log", "wb")  # never a full pipe
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url + ready, what=name, timeout=300, log=Path(log.name))
    return proc, url, path


SERVER_SUMS = ("bucketwise_queue_seconds_sum", "bucketwise_queue_seconds_count", "bucketwise_inference_seconds_sum",
               "bucketwise_batch_rows_sum", "bucketwise_batches_total")


def server_sums(url: str) -> dict[str, float] | None:
    """bucketwise's own batch figures from /metrics (None for a peer)."""
    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in SERVER_SUMS:
            found[name] = float(value)
    return found if len(found) == len(SERVER_SUMS) else None


def batch_figures(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float]:
    """Mean queue wait (ms), inference per batch (ms) and rows per batch over a cell."""
    if not before or not after:
        return {}
    d = {k: after[k] - before[k] for k in SERVER_SUMS}
    batches = d["bucketwise_batches_total"] or 1.0
    return {"queue_ms": 1e3 * d["bucketwise_queue_seconds_sum"] / (d["bucketwise_queue_seconds_count"] or 1.0),
            "inference_ms": 1e3 * d["bucketwise_inference_seconds_sum"] / batches,
            "rows_per_batch": d["bucketwise_batch_rows_sum"] / batches,
            "batches_per_s": d["bucketwise_batches_total"]}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def closed_loop(url: str, clients: int, seconds: float, send: Callable[[int], tuple[str, Any]],
                      good: Callable[[Any], bool], *, offset: int = 0, missing: float | None = None) -> dict:
    """``clients`` clients posting back to back for ``seconds``: client ``w`` sends
    ``send(i)`` (a path and a JSON body) for i = offset + w, offset + w + clients, ...; an
    answer counts as ok when ``good(response)``. Returns the counts (sent, ok, errors,
    lost: sent and no answer), why each went wrong, req/s, and p50/p99 of the ok answers
    (``missing`` where none was)."""
    latencies: list[float] = []
    counts = {"sent": 0, "ok": 0, "errors": 0, "lost": 0}
    why: list[str] = []  # the exception of each lost request, the status of each error
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def worker(w: int) -> None:
            i = offset + w
            while time.perf_counter() < stop:
                path, body = send(i)
                i += clients
                counts["sent"] += 1
                t = time.perf_counter()
                try:
                    r = await client.post(path, json=body)
                except httpx.HTTPError as err:
                    counts["lost"] += 1
                    why.append(f"{type(err).__name__}: {err}"[:200])
                    continue
                try:
                    ok = good(r)
                except (ValueError, KeyError, TypeError):
                    ok = False
                if ok:
                    counts["ok"] += 1
                    latencies.append(time.perf_counter() - t)
                else:
                    counts["errors"] += 1
                    why.append(f"HTTP {r.status_code}: {r.text[:150]}")

        begin = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(clients)))
        elapsed = time.perf_counter() - begin
    lat = np.array(latencies) * 1e3
    return {**counts, "why": why[:20], "seconds": elapsed, "throughput": counts["ok"] / elapsed,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else missing,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else missing}


async def load(url: str, path: str, texts: list[str], clients: int, seconds: float, offset: int = 0) -> dict:
    """One text per request to ``path`` (OpenAI or infinity embeddings), texts in turn."""
    return await closed_loop(url, clients, seconds,
                             lambda i: (path, {"input": [texts[i % len(texts)]], "model": "all-MiniLM-L6-v2"}),
                             lambda r: r.status_code == 200 and len(r.json()["data"]) == 1, offset=offset)


def median_over_rounds(results: list[dict]) -> dict[tuple, dict]:
    """Per (server, mix, clients): the median over rounds of req/s and of p99, and each
    round's p99 in round order."""
    cells: dict[tuple, list[dict]] = {}
    for r in results:
        cells.setdefault((r["server"], r["mix"], r["clients"]), []).append(r)
    return {key: {"throughput": float(np.median([r["throughput"] for r in rs])),
                  "p99_ms": float(np.median([r["p99_ms"] for r in rs])),
                  "p99_rounds": [r["p99_ms"] for r in sorted(rs, key=lambda r: r["round"])]}
            for key, rs in cells.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per cell (default 20)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--servers", default="bucketwise adaptive,bucketwise fixed 5 ms",
                        help="comma-separated; infinity-emb (optimum) is added when --infinity is given")
    parser.add_argument("--infinity", metavar="VENV", help="a venv with infinity-emb[server,optimum] installed")
    parser.add_argument("--infinity-model", metavar="ONNX_DIR", help="the optimum ONNX export of all-MiniLM-L6-v2")
    parser.add_argument("--out", default="serve_peers", help="results file name in benchmarks/results (no .json)")
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    servers = [s.strip() for s in args.servers.split(",")]
    if args.infinity:
        if not args.infinity_model:
            parser.error("--infinity needs --infinity-model (optimum-cli export onnx ... of the MiniLM folder)")
        servers.append("infinity-emb (optimum)")
    mixes = load_mixes()
    results: list[dict] = []
    probes = mixes["mix"][:8]
    reference: np.ndarray | None = None
    parity: dict[str, float] = {}
    for rnd in range(args.rounds):
        order = servers[rnd % len(servers):] + servers[:rnd % len(servers)]
        for name in order:
            proc, url, path = start(name, args)
            try:
                got = np.array([d["embedding"] for d in httpx.post(url + path, json={"input": probes, "model":
                                "all-MiniLM-L6-v2"}, timeout=60).json()["data"]])
                got /= np.linalg.norm(got, axis=1, keepdims=True)
                reference = got if reference is None else reference
                parity[name] = min(parity.get(name, 1.0), float((got * reference).sum(1).min()))
                asyncio.run(load(url, path, mixes["mix"], 8, 2.0, offset=999))  # warm every bucket size a bit
                for mix, texts in mixes.items():
                    for n in clients:
                        sums = server_sums(url) if name.startswith("bucketwise") else None
                        cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
                        r = asyncio.run(load(url, path, texts, n, args.seconds, offset=rnd * 7919))
                        r["server_cores_busy"] = (cpu_seconds(proc.pid) - cpu0) / (time.perf_counter() - t0)
                        r.update(batch_figures(sums, server_sums(url) if sums else None))
                        if "batches_per_s" in r:
                            r["batches_per_s"] /= r["seconds"]
                        r["server_rss_mib"] = rss_mib(proc.pid)
                        results.append({"server": name, "mix": mix, "clients": n, "round": rnd, **r})
                        print(f"round {rnd} {name:<24} {mix:<8} clients={n:<3} {r['throughput']:7.1f} req/s  "
                              f"p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  errors {r['errors']}  "
                              f"lost {r['lost']}  cpu {r['server_cores_busy']:.2f}  rss {r['server_rss_mib']:.0f} MiB"
                              + (f"  queue {r['queue_ms']:.2f} ms  run {r['inference_ms']:.2f} ms  "
                                 f"{r['rows_per_batch']:.2f} rows/batch" if "queue_ms" in r else ""), flush=True)
            finally:
                proc.terminate()
                proc.wait(120)
    best: dict[tuple, dict] = {}
    for r in results:
        key = (r["server"], r["mix"], r["clients"])
        if key not in best or r["throughput"] > best[key]["throughput"]:
            best[key] = r
    base_name = "infinity-emb (optimum)" if args.infinity else "bucketwise fixed 5 ms"
    rows = []
    for (name, mix, n), r in best.items():
        base = best.get((base_name, mix, n))
        rows.append([mix, n, name, f"{r['throughput']:.1f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                     f"{r['throughput'] / base['throughput']:.2f}×" if base else "-", r["errors"], r["lost"],
                     f"{r['server_cores_busy']:.2f}", f"{r['server_rss_mib']:.0f}"])
    rows.sort(key=lambda row: (row[0], row[1], row[2]))
    print()
    print(table(rows, ["mix", "clients", "server", "req/s", "p50 ms", "p99 ms", f"vs {base_name}", "errors", "lost",
                       "cores busy", "RSS MiB"]))
    # A cell's p99 over one round spreads widely between rounds (on this 2-core machine,
    # 72-97 ms for the same server at 8 clients): the median over rounds, with each
    # round's figures, is the steadier comparison.
    median = median_over_rounds(results)
    rows = []
    for (name, mix, n), m in median.items():
        base = median.get((base_name, mix, n))
        rows.append([mix, n, name, f"{m['throughput']:.1f}", f"{m['p99_ms']:.1f}",
                     f"{m['throughput'] / base['throughput']:.2f}×" if base else "-",
                     f"{m['p99_ms'] / base['p99_ms']:.2f}×" if base else "-",
                     " ".join(f"{x:.0f}" for x in m["p99_rounds"])])
    rows.sort(key=lambda row: (row[0], row[1], row[2]))
    print()
    print(f"median over {args.rounds} rounds:")
    print(table(rows, ["mix", "clients", "server", "req/s", "p99 ms", f"req/s vs {base_name}",
                       f"p99 vs {base_name}", "p99 of each round"]))
    print("smallest cosine of each server's embeddings to the first server's:",
          {k: round(v, 6) for k, v in parity.items()})
    path = save(args.out, {"seconds_per_cell": args.seconds, "rounds": args.rounds, "clients": clients,
                                "servers": servers, "results": results, "min_cosine_to_first": parity,
                                "best": [dict(r) for r in best.values()],
                                "median": [{"server": k[0], "mix": k[1], "clients": k[2], **m} for k, m in median.items()]})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
