"""Packing in the server's batcher against the unpacked server, on mixed lengths (issue #30).

`bucketwise serve` processes (all-MiniLM-L6-v2, 127.0.0.1), one at a time, each alone on
the machine, on each --backends (ONNX Runtime: one dynamic session whatever the shape;
OpenVINO: one compiled model per shape, every dim static):

  unpacked  the backend's default plan (ONNX Runtime: 114 buckets of batch x length in one
            session; OpenVINO: 10 compiled shapes)
  packed    ``--pack``: the batcher packs up to 16 waiting texts into each row of the
            default packed plan's three shapes (16 and 4 rows x 128, 1 row x 256)
  packed-5  ``--pack`` with two one-row shapes more (1 x 64 and 1 x 128), for the few
            texts that wait at a time under light load

Clients send one text per request to /v1/embeddings, back to back, at 8 and then 64
concurrent clients for --seconds each. The texts are held-out prose (heldout.py: READMEs
of the installed packages, which no default is fitted on), mixed 60% short sentences, 30%
medium paragraphs and 10% long runs of paragraphs, shuffled with a fixed seed. Rounds
alternate which server goes first. Before the load, every one of 48 texts is embedded by
both servers and compared (at most 1e-4 apart, else the run stops).

Reported per backend, server and client count: req/s, p50 and p99 (medians over rounds),
errors and lost (sent, then no answer: must be 0), and the server's resident memory after
the load.

    python benchmarks/bench_serve_pack.py [--seconds 20] [--rounds 2] [--backends onnxruntime,openvino]
Writes benchmarks/results/serve_pack.json.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
from pathlib import Path

import httpx
import numpy as np
from _common import save, table
from bench_serve import start_server
from bench_serve_peers import closed_loop
from heldout import heldout_sets

from bucketwise import Bucket, Plan

SERVERS = {"unpacked": [], "packed": ["--pack"], "packed-5": ["--pack", "--plan", "PLAN5"]}
PLAN5 = [(1, 64), (1, 128), (4, 128), (16, 128), (1, 256)]
MIX = {"short": 0.6, "medium": 0.3, "long": 0.1}


def mixed_texts(n: int, seed: int = 0) -> list[str]:
    sets = heldout_sets()
    rng = random.Random(seed)
    out = []
    for name, share in MIX.items():
        pool = sets[name]
        out += [pool[i % len(pool)] for i in range(int(n * share))]
    rng.shuffle(out)
    return out


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def embeddings(url: str, texts: list[str]) -> np.ndarray:
    got = httpx.post(url + "/v1/embeddings", json={"input": texts}, timeout=120)
    got.raise_for_status()
    return np.array([d["embedding"] for d in got.json()["data"]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", default="8,64")
    parser.add_argument("--backends", default="onnxruntime,openvino")
    parser.add_argument("--out", help="write the results here instead of benchmarks/results/serve_pack.json")
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    backends = args.backends.split(",")
    texts = mixed_texts(2000)
    check = texts[:48]
    results, reference = [], None
    plan5 = Path(tempfile.mkdtemp()) / "packed5.json"
    Plan(tuple(Bucket(batch=b, seq=n) for b, n in PLAN5)).save(plan5)
    for rnd in range(args.rounds):
        for backend in backends:
            order = list(SERVERS) if rnd % 2 == 0 else list(reversed(SERVERS))
            for server in order:
                proc, url = start_server(["--overflow", "truncate", "--backend", backend,
                                          *(str(plan5) if a == "PLAN5" else a for a in SERVERS[server])])
                try:
                    got = embeddings(url, check)
                    if reference is None:
                        reference = got
                    diff = float(np.abs(got - reference).max())
                    if diff > 1e-4:
                        raise SystemExit(f"{server} on {backend}: embeddings differ from the first server's by {diff:.2e}")
                    for n in clients:
                        r = asyncio.run(closed_loop(
                            url, n, args.seconds, lambda i: ("/v1/embeddings", {"input": [texts[i % len(texts)]]}),
                            lambda r: r.status_code == 200 and len(r.json()["data"]) == 1))
                        results.append({"backend": backend, "server": server, "clients": n, "round": rnd,
                                        "max_abs_vs_first": diff, "rss_mib": rss_mib(proc.pid), **r})
                        print(f"round {rnd} {backend} {server:9s} {n:3d} clients: {r['throughput']:.1f} req/s, p50 "
                              f"{r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, errors {r['errors']}, lost {r['lost']}",
                              flush=True)
                finally:
                    proc.terminate()
                    proc.wait(timeout=60)
    cells = {}
    for backend in backends:
        for server in SERVERS:
            for n in clients:
                rs = [r for r in results if (r["backend"], r["server"], r["clients"]) == (backend, server, n)]
                cell = {k: float(np.median([r[k] for r in rs])) for k in ("throughput", "p50_ms", "p99_ms", "rss_mib")}
                cell.update(errors=sum(r["errors"] for r in rs), lost=sum(r["lost"] for r in rs))
                cells[(backend, server, n)] = cell
    rows = []
    for backend in backends:
        for n in clients:
            base = cells[(backend, "unpacked", n)]["throughput"]
            for server in SERVERS:
                c = cells[(backend, server, n)]
                rows.append([backend, n, server, f"{c['throughput']:.1f}", f"{c['throughput'] / base:.2f}x",
                             f"{c['p50_ms']:.0f}", f"{c['p99_ms']:.0f}", f"{c['rss_mib']:.0f}", c["errors"], c["lost"]])
    print(table(rows, ["backend", "clients", "server", "req/s", "vs unpacked", "p50 ms", "p99 ms", "RSS MiB", "errors",
                       "lost"]))
    save("serve_pack", {"command": "python benchmarks/bench_serve_pack.py " + " ".join(argv or []),
                        "seconds": args.seconds, "rounds": args.rounds, "mix": MIX, "texts": len(texts),
                        "servers": {k: ["serve", "--overflow", "truncate", *v] for k, v in SERVERS.items()},
                        "plan5": PLAN5,
                        "backends": backends,
                        "cells": [{"backend": b, "server": s, "clients": n, **c} for (b, s, n), c in cells.items()],
                        "runs": results}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
