"""`bucketwise serve` under load, then SIGTERM under a full queue: nothing admitted is lost.

One real server process (all-MiniLM-L6-v2 on ONNX Runtime, default buckets, default
--max-queue 1024, the default drain timeout) on loopback:

1. load: 64 clients for --seconds (default 60), one request each at a time, mixed lengths
   (MRPC sentences; 20% of requests join 3-4 of them, 100-200 tokens);
2. a full queue: requests of long texts (7 joined sentences, the 256-token bucket) until
   about --queue rows wait, then SIGTERM while they wait.

Reports requests OK, 4xx, 5xx and lost (sent, never answered), the drain time (SIGTERM to
exit), the exit code, and the server's RSS before and after the load. With
``--drain-timeout`` the queue outlives the deadline: the rows not started get 503 +
Retry-After, never 500, and are not computed.

    python benchmarks/bench_shutdown.py [--seconds 60] [--queue 1000] [--drain-timeout S]
Writes benchmarks/results/serve_shutdown.json.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from _common import SHARED_DATA, save, table
from bench_serve import start_server

from bucketwise.data import read_mrpc


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


async def load(url: str, texts: list[str], clients: int, seconds: float) -> dict:
    counts = {"sent": 0, "ok": 0, "4xx": 0, "5xx": 0, "lost": 0}
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def worker(w: int) -> None:
            i = w
            while time.perf_counter() < stop:
                counts["sent"] += 1
                start = time.perf_counter()
                try:
                    r = await client.post("/v1/embeddings", json={"input": texts[i % len(texts)]})
                except httpx.HTTPError:
                    counts["lost"] += 1
                    continue
                finally:
                    i += clients
                key = "ok" if r.status_code == 200 else "5xx" if r.status_code >= 500 else "4xx"
                counts[key] += 1
                if key == "ok":
                    latencies.append(time.perf_counter() - start)

        begin = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(clients)))
        elapsed = time.perf_counter() - begin
    lat = np.array(latencies) * 1e3
    return {**counts, "seconds": elapsed, "throughput": counts["ok"] / elapsed,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None}


async def sigterm_under_full_queue(proc, url: str, long_text: str, rows: int, per_request: int) -> dict:
    counts = {"sent": 0, "ok": 0, "503_not_admitted": 0, "503_past_deadline": 0, "other_4xx": 0, "5xx": 0, "lost": 0}
    retry_after = set()
    n = rows // per_request
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def one() -> None:
            counts["sent"] += 1
            try:
                r = await client.post("/v1/embeddings", json={"input": [long_text] * per_request})
            except httpx.HTTPError:
                counts["lost"] += 1
                return
            if r.status_code == 200:
                counts["ok"] += 1
            elif r.status_code == 503:
                # Refused at admission (the SIGTERM came before its rows were queued), or
                # admitted and not started by the drain deadline.
                past = "drain deadline" in r.json()["error"]["message"]
                counts["503_past_deadline" if past else "503_not_admitted"] += 1
                retry_after.add(r.headers.get("retry-after"))
            elif r.status_code >= 500:
                counts["5xx"] += 1
            else:
                counts["other_4xx"] += 1

        tasks = [asyncio.ensure_future(one()) for _ in range(n)]
        deadline = time.time() + 120
        queued, last, still = 0.0, -1.0, 0
        while time.time() < deadline:  # until (nearly) every request is queued, or the queue stops growing
            await asyncio.sleep(0.1)
            queued = await asyncio.to_thread(metric, url, "bucketwise_queued_rows")
            still = still + 1 if queued <= last else 0
            last = max(last, queued)
            if queued >= rows * 0.95 or (queued >= rows * 0.5 and still >= 10):
                break
        began = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*tasks)
        answered = time.perf_counter() - began
    code = await asyncio.to_thread(proc.wait, 600)
    drained = time.perf_counter() - began
    return {**counts, "queued_at_sigterm": queued, "last_answer_s": answered, "drain_s": drained,
            "exit_code": code, "retry_after": sorted(x for x in retry_after if x)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of load before the SIGTERM")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--queue", type=int, default=1000, help="rows waiting at SIGTERM (max-queue is 1024)")
    parser.add_argument("--drain-timeout", type=float, help="pass --drain-timeout to the server (default: its own)")
    args = parser.parse_args(argv)
    pairs = read_mrpc(SHARED_DATA / "mrpc" / "msr_paraphrase_test.txt")
    sentences = [s for p in pairs for s in p]
    rng = np.random.default_rng(0)
    rng.shuffle(sentences)
    mixed = [" ".join(sentences[i:i + int(rng.integers(3, 5))]) if i % 5 == 0 else sentences[i]
             for i in range(len(sentences) - 5)]
    long_text = " ".join(sentences[:7])

    extra = ["--drain-timeout", str(args.drain_timeout)] if args.drain_timeout is not None else []
    proc, url = start_server(extra)
    try:
        asyncio.run(load(url, mixed, 4, 1.0))  # warm the connection pool
        rss_before = rss_mib(proc.pid)
        under_load = asyncio.run(load(url, mixed, args.clients, args.seconds))
        rss_after = rss_mib(proc.pid)
        computed_before = metric(url, "bucketwise_real_tokens_total")
        print(f"load: {under_load['throughput']:.1f} req/s, p99 {under_load['p99_ms']:.0f} ms, ok {under_load['ok']}, "
              f"4xx {under_load['4xx']}, 5xx {under_load['5xx']}, lost {under_load['lost']}; "
              f"RSS {rss_before:.0f} -> {rss_after:.0f} MiB", flush=True)
        shutdown = asyncio.run(sigterm_under_full_queue(proc, url, long_text, args.queue, per_request=8))
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read().decode()
    print(f"sigterm: {shutdown}", flush=True)
    rows = [
        ["load", args.clients, under_load["sent"], under_load["ok"], under_load["4xx"], under_load["5xx"],
         under_load["lost"], f"{under_load['throughput']:.1f} req/s", "-", "-"],
        ["SIGTERM, full queue", shutdown["sent"], shutdown["sent"], shutdown["ok"],
         f"{shutdown['503_not_admitted']} + {shutdown['503_past_deadline']} + {shutdown['other_4xx']}",
         shutdown["5xx"], shutdown["lost"],
         f"{shutdown['queued_at_sigterm']:.0f} rows queued", f"{shutdown['drain_s']:.1f} s", shutdown["exit_code"]],
    ]
    print()
    print(table(rows, ["phase", "clients", "sent", "ok", "503 refused + past deadline + other 4xx", "5xx", "lost",
                       "rate / queue", "drain", "exit"]))
    print(f"\nRSS before load {rss_before:.0f} MiB, after {rss_after:.0f} MiB")
    name = "serve_shutdown_deadline" if args.drain_timeout is not None else "serve_shutdown"
    path = save(name, {"seconds": args.seconds, "clients": args.clients, "drain_timeout": args.drain_timeout,
                                   "load": under_load, "sigterm": shutdown, "rss_mib_before": rss_before,
                                   "rss_mib_after": rss_after, "real_tokens_before_sigterm": computed_before,
                                   "server_stderr_tail": stderr[-1500:]})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
