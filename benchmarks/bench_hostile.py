"""Hostile bodies under load (issue #28): does one huge request stall everyone else?

Two runs, each against a fresh `bucketwise serve` process (all-MiniLM-L6-v2 on ONNX Runtime,
default plan and limits, 127.0.0.1 only):

  load             64 clients send one MRPC sentence per request, back to back, for --seconds
  load + hostile   the same, and one more client sends 20 maximum-size bodies in a row
                   ({"input": "word word ..."}, just under the 1 MB body limit), from 5 s in

Throughout, a separate process asks GET /healthz every 50 ms (its own connection) and
records each answer's latency, and this process reads the server's RSS every 0.5 s.

Reported per run: requests answered, errors, lost (sent, never answered), /healthz p50 and
p99, the hostile bodies' statuses, and RSS (median over the last 10 s). Targets (#28):
/healthz p99 under 100 ms with the hostile bodies, and their RSS within 15% of the run
without them.

    python benchmarks/bench_hostile.py [--seconds 60] [--clients 64]
Writes benchmarks/results/serve_hostile.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from _common import SHARED_DATA, save, table
from bench_serve import start_server

from bucketwise.data import read_mrpc

PROBE = """
import json, sys, time, httpx
url, seconds, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
lat, failed = [], 0
stop = time.perf_counter() + seconds
with httpx.Client(base_url=url, timeout=30) as client:
    while time.perf_counter() < stop:
        start = time.perf_counter()
        try:
            ok = client.get("/healthz").status_code == 200
        except httpx.HTTPError:
            ok = False
        took = time.perf_counter() - start
        if ok:
            lat.append(took)
        else:
            failed += 1
        time.sleep(max(0.0, 0.05 - took))
json.dump({"latencies": lat, "failed": failed}, open(out, "w"))
"""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def drive(url: str, sentences: list[str], clients: int, seconds: float, hostile: int) -> dict:
    counts = {"sent": 0, "ok": 0, "errors": 0, "lost": 0}
    statuses: list[int] = []
    stop = time.perf_counter() + seconds
    # Just under the 1 MB body limit: {"input": "word word ... word"}.
    huge = json.dumps({"input": ("word " * 199_990).strip()}).encode()
    limits = httpx.Limits(max_connections=clients + 1, max_keepalive_connections=clients + 1)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def worker(w: int) -> None:
            i = w
            while time.perf_counter() < stop:
                counts["sent"] += 1
                try:
                    r = await client.post("/v1/embeddings", json={"input": sentences[i % len(sentences)]})
                except httpx.HTTPError:
                    counts["lost"] += 1
                    continue
                i += clients
                counts["ok" if r.status_code == 200 else "errors"] += 1

        async def attacker() -> None:
            await asyncio.sleep(5)
            for _ in range(hostile):
                r = await client.post("/v1/embeddings", content=huge, headers={"content-type": "application/json"})
                statuses.append(r.status_code)

        await asyncio.gather(*(worker(w) for w in range(clients)), attacker())
    return {**counts, "hostile_statuses": statuses, "hostile_body_bytes": len(huge)}


def run(label: str, sentences: list[str], clients: int, seconds: float, hostile: int) -> dict:
    proc, url = start_server([])
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def watch() -> None:
        begin = time.perf_counter()
        while not done.is_set():
            samples.append((time.perf_counter() - begin, rss_mib(proc.pid)))
            time.sleep(0.5)

    try:
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "probe.json"
            probe = subprocess.Popen([sys.executable, "-c", PROBE, url, str(seconds), str(out)])
            result = asyncio.run(drive(url, sentences, clients, seconds, hostile))
            probe.wait(timeout=seconds + 60)
            health = json.loads(out.read_text())
        done.set()
        watcher.join()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    lat = np.array(health["latencies"]) * 1e3
    tail = [r for t, r in samples if t >= samples[-1][0] - 10]
    return {"run": label, "clients": clients, "seconds": seconds, **result,
            "healthz_answers": len(lat), "healthz_failed": health["failed"],
            "healthz_p50_ms": float(np.percentile(lat, 50)), "healthz_p99_ms": float(np.percentile(lat, 99)),
            "healthz_max_ms": float(lat.max()), "rss_mib_settled": float(np.median(tail)),
            "rss_mib_peak": float(max(r for _, r in samples))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--hostile", type=int, default=20)
    parser.add_argument("--out", default=None, help="results file (default benchmarks/results/serve_hostile.json)")
    args = parser.parse_args(argv)
    pairs = read_mrpc(SHARED_DATA / "mrpc" / "msr_paraphrase_test.txt")
    sentences = [s for pair in pairs for s in pair]
    rows = [run("load", sentences, args.clients, args.seconds, 0),
            run("load + hostile", sentences, args.clients, args.seconds, args.hostile)]
    base, hostile = rows
    verdict = {"healthz_p99_under_100ms": hostile["healthz_p99_ms"] < 100.0,
               "rss_ratio": hostile["rss_mib_settled"] / base["rss_mib_settled"],
               "rss_within_15pct": abs(hostile["rss_mib_settled"] / base["rss_mib_settled"] - 1) <= 0.15}
    print(table([[r["run"], r["ok"], r["errors"], r["lost"], f"{r['healthz_p50_ms']:.1f}", f"{r['healthz_p99_ms']:.1f}",
                  f"{r['healthz_max_ms']:.1f}", f"{r['rss_mib_settled']:.0f}", f"{r['rss_mib_peak']:.0f}",
                  ",".join(sorted({str(s) for s in r["hostile_statuses"]})) or "-"] for r in rows],
                ["run", "answered", "errors", "lost", "healthz p50 ms", "p99 ms", "max ms", "RSS MiB settled",
                 "peak", "hostile status"]))
    print(f"\nhealthz p99 under 100 ms with hostile bodies: {verdict['healthz_p99_under_100ms']}; "
          f"settled RSS ratio {verdict['rss_ratio']:.3f} (within 15%: {verdict['rss_within_15pct']})")
    path = save("serve_hostile", {"command": "python benchmarks/bench_hostile.py " + " ".join(argv or sys.argv[1:]),
                                  "results": rows, "verdict": verdict}, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
