"""Load test of `bucketwise serve` on loopback: no batching vs pad-to-max vs bucketed batching.

Each configuration starts a real server process (127.0.0.1 only) on ONNX Runtime:
  no batching        batch bucket 1 only: every request runs alone (length buckets 16..128)
  pad-to-max batch   batch buckets 1, 8 with one length bucket of 128: batches pad to the max
  bucketed batching  batch buckets 1, 8 x length buckets 16, 32, 64, 128
Clients send one MRPC sentence per request, back to back, at 1, 8 and 64 concurrent
clients, for a bounded number of seconds each, then stop. Reported: throughput, p50/p99
latency, errors and lost requests (sent but never answered; must be 0).

    python benchmarks/bench_serve.py [--seconds 8] [--clients 1,8,64]
Writes benchmarks/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
from _common import SHARED_DATA, save, table

from bucketwise.data import read_mrpc

CONFIGS = {
    "no batching": ["--batch-sizes", "1", "--seq-sizes", "16,32,64,128"],
    "pad-to-max batch": ["--batch-sizes", "1,8", "--seq-sizes", "128"],
    "bucketed batching": ["--batch-sizes", "1,8", "--seq-sizes", "16,32,64,128"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bucketwise.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--no-progress", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not become ready in 180 s")


async def load(url: str, sentences: list[str], clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    counts = {"sent": 0, "ok": 0, "errors": 0, "lost": 0}
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        async def worker(w: int) -> None:
            i = w
            while time.perf_counter() < stop:
                text = sentences[i % len(sentences)]
                i += clients
                counts["sent"] += 1
                start = time.perf_counter()
                try:
                    r = await client.post("/v1/embeddings", json={"input": text})
                except httpx.HTTPError:
                    counts["lost"] += 1
                    continue
                if r.status_code == 200 and len(r.json()["data"]) == 1:
                    counts["ok"] += 1
                    latencies.append(time.perf_counter() - start)
                else:
                    counts["errors"] += 1

        begin = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(clients)))
        elapsed = time.perf_counter() - begin
    lat = np.array(latencies) * 1e3
    return {**counts, "seconds": elapsed, "throughput": counts["ok"] / elapsed,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per (config, clients) cell")
    parser.add_argument("--clients", default="1,8,64")
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    pairs = read_mrpc(SHARED_DATA / "mrpc" / "msr_paraphrase_test.txt")
    sentences = [s for p in pairs for s in p]
    np.random.default_rng(0).shuffle(sentences)

    results = []
    for name, cfg in CONFIGS.items():
        proc, url = start_server(cfg)
        try:
            asyncio.run(load(url, sentences, 4, 1.0))  # warm the connection pool and caches
            for n in clients:
                r = asyncio.run(load(url, sentences, n, args.seconds))
                results.append({"config": name, "clients": n, **r})
                print(f"{name:<18} clients={n:<3} {r['throughput']:7.1f} req/s  p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  lost {r['lost']}", flush=True)
            metrics = httpx.get(url + "/metrics").text
            results[-1]["metrics_excerpt"] = [line for line in metrics.splitlines() if line.startswith(("bucketwise_batch_rows_sum", "bucketwise_batches_total", "bucketwise_padded", "bucketwise_real"))]
        finally:
            proc.terminate()  # graceful: the server finishes what it accepted
            proc.wait(60)

    by = {(r["config"], r["clients"]): r for r in results}
    rows = []
    for r in results:
        base = by.get(("pad-to-max batch", r["clients"]))
        rows.append([r["config"], r["clients"], f"{r['throughput']:.1f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                     r["errors"], r["lost"], f"{r['throughput'] / base['throughput']:.2f}x" if base else "-"])
    print()
    print(table(rows, ["config", "clients", "req/s", "p50 ms", "p99 ms", "errors", "lost", "vs pad-to-max batch"]))
    top = max(clients)
    ratio = by[("bucketed batching", top)]["throughput"] / by[("pad-to-max batch", top)]["throughput"]
    print(f"\nbucketed / pad-to-max batching at {top} clients: {ratio:.2f}x (target >= 1.5x)")
    path = save("serve_load", {"seconds_per_cell": args.seconds, "clients": clients, "results": results,
                               "bucketed_vs_padmax_at_max_clients": ratio})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
