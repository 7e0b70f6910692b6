"""A fixed plan against a re-planning server, on traffic that shifts, in one run.

Two `bucketwise serve` processes in turn (ONNX Runtime, MiniLM), each started fresh on a
plan made once from a sample, as a user would: ``bucketwise.planning.plan`` over the token
lengths of the short sentences, 5 lengths up to 256, batch 1 and 8:

- ``fixed``: that plan throughout;
- ``replan``: the same with ``--replan-every 5 --replan-min-rows 50`` (the build paused
  to half the wall time, the default ``--replan-build-share 0.5``);
- ``replan unthrottled``: the same with ``--replan-build-share 1`` (the build never pauses).

The same load drives both: 8 clients, one text per request; held-out single sentences
(``heldout.py``, about 13 tokens) for the first ``--shift`` seconds, then paragraphs of
30-90 words (about 40-130 tokens) until ``--seconds``. Every 5 s window reports requests
per second and padding waste (from the server's ``/metrics``), the plan generation, and
the server's RSS; at the end, the planner's time, the build time of the plan swapped in,
and the RSS peak. Latency while a plan builds: each swap's build window (the generation
change, seen by polling ``/metrics`` every 0.2 s, less ``bucketwise_plan_build_seconds``)
against the same seconds of the fixed plan's run (same traffic), p50 and p99 of the
requests that finished inside it.

``--backend openvino`` runs every server on OpenVINO, whose buckets compile for their
static shape: there a build takes the CPU for seconds per bucket, which is what the
throttle is for (ONNX Runtime's buckets share their sessions and build in about 2 s).

    python benchmarks/bench_replan.py [--seconds 60] [--shift 15] [--backend openvino] [--out NAME]
Writes benchmarks/results/replan_shift.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import numpy as np
from _common import save, table
from bench_serve import free_port
from bench_serve_peers import cpu_seconds, rss_mib
from heldout import heldout_sets


def sample_plan(short: list[str]) -> list[str]:
    """The serve flags of a plan made from the short sentences alone (the sample)."""
    from bucketwise.models.text import load_default_encoder
    from bucketwise.planning import plan

    _, tokenizer, _ = load_default_encoder()
    lengths = [len(tokenizer(t, truncation=True, max_length=256)["input_ids"]) for t in short]
    seqs = sorted(plan(lengths, k=5, cap=256, grid="auto").sizes("seq"))
    return ["--batch-sizes", "1,8", "--seq-sizes", ",".join(map(str, seqs))]
WINDOW = 5.0


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def drive(url: str, short: list[str], medium: list[str], seconds: float, shift: float, clients: int,
                counts: dict, begin: float, done_at: list[tuple[float, float]]) -> None:
    """Load from ``begin`` (perf_counter) for ``seconds``; ``done_at`` gets (finish time
    from begin, latency) of each answered request."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        async def worker(w: int) -> None:
            i = w
            while (t := time.perf_counter() - begin) < seconds:
                pool = short if t < shift else medium
                text = pool[i % len(pool)]
                i += clients
                sent = time.perf_counter()
                try:
                    r = await client.post("/v1/embeddings", json={"input": [text]})
                    counts["ok" if r.status_code == 200 else "errors"] += 1
                    if r.status_code == 200:
                        done_at.append((time.perf_counter() - begin, time.perf_counter() - sent))
                except httpx.HTTPError:
                    counts["lost"] += 1

        await asyncio.gather(*(worker(w) for w in range(clients)))


def run(name: str, extra: list[str], args: argparse.Namespace, short: list[str], medium: list[str],
        plan_flags: list[str]) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(os.path.join(tempfile.gettempdir(), f"bench-replan-{name}.log"), "wb")
    proc = subprocess.Popen([sys.executable, "-m", "bucketwise.cli", "serve", "--port", str(port), "--no-progress",
                             *plan_flags, *extra], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        counts = {"ok": 0, "errors": 0, "lost": 0}
        windows: list[dict] = []
        rss_peak = [rss_mib(proc.pid)]
        rss_start = rss_peak[0]
        done = threading.Event()

        def sample() -> None:
            last = httpx.get(url + "/metrics").text
            last_ok, start = 0, time.perf_counter()
            while not done.wait(WINDOW):
                text = httpx.get(url + "/metrics").text
                real = metric(text, "bucketwise_real_tokens_total") - metric(last, "bucketwise_real_tokens_total")
                padded = metric(text, "bucketwise_padded_tokens_total") - metric(last, "bucketwise_padded_tokens_total")
                windows.append({"t": round(time.perf_counter() - start), "req_s": (counts["ok"] - last_ok) / WINDOW,
                                "padding_waste": 1 - real / padded if padded else 0.0,
                                "generation": metric(text, "bucketwise_plan_generation"),
                                "rss_mib": rss_mib(proc.pid)})
                last, last_ok = text, counts["ok"]

        def watch_rss() -> None:
            while not done.wait(0.5):
                rss_peak[0] = max(rss_peak[0], rss_mib(proc.pid))

        builds: list[dict] = []  # each swap's build window, seconds from the start of the load

        def watch_swaps() -> None:
            generation = 0.0
            while not done.wait(0.2):
                text = httpx.get(url + "/metrics").text
                now = time.perf_counter() - begin
                if metric(text, "bucketwise_plan_generation") > generation:
                    generation = metric(text, "bucketwise_plan_generation")
                    took = metric(text, "bucketwise_plan_build_seconds")
                    builds.append({"generation": generation, "start": now - took, "end": now, "seconds": took,
                                   "resident_mib": metric(text, "bucketwise_plan_build_resident_bytes") / 2**20,
                                   "peak_mib": metric(text, "bucketwise_plan_build_peak_resident_bytes") / 2**20})

        threads = [threading.Thread(target=sample), threading.Thread(target=watch_rss),
                   threading.Thread(target=watch_swaps)]
        cpu0 = cpu_seconds(proc.pid)
        done_at: list[tuple[float, float]] = []
        begin = time.perf_counter()
        for t in threads:
            t.start()
        asyncio.run(drive(url, short, medium, args.seconds, args.shift, 8, counts, begin, done_at))
        done.set()
        for t in threads:
            t.join()
        text = httpx.get(url + "/metrics").text
        return {"config": name, **counts, "windows": windows, "builds": builds, "latencies": done_at,
                "server_cpu_seconds": cpu_seconds(proc.pid) - cpu0,
                "planner_seconds": metric(text, "bucketwise_planner_seconds_total"),
                "build_seconds": metric(text, "bucketwise_plan_build_seconds"),
                "swaps": metric(text, "bucketwise_plan_swaps_total"),
                "rss_start_mib": rss_start, "rss_peak_mib": rss_peak[0]}
    finally:
        proc.terminate()
        proc.wait(120)
        log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--shift", type=float, default=15.0)
    parser.add_argument("--backend", default="onnxruntime", help="the servers' backend (default onnxruntime)")
    parser.add_argument("--out", default="replan_shift", help="results file name in benchmarks/results (no .json)")
    args = parser.parse_args(argv)
    sets = heldout_sets(short=3000, medium=600, long=0, seed=1)
    plans = tempfile.mkdtemp(prefix="bench-replan-plans-")
    flags = sample_plan(sets["short"]) + ["--backend", args.backend]
    print("plan from the sample:", " ".join(flags))
    replan = ["--replan-every", "5", "--replan-min-rows", "50"]
    results = [run("fixed", [], args, sets["short"], sets["medium"], flags),
               run("replan", [*replan, "--plans-dir", plans], args, sets["short"], sets["medium"], flags),
               run("replan unthrottled", [*replan, "--replan-build-share", "1"], args, sets["short"], sets["medium"],
                   flags)]
    rows = []
    for a, b in zip(results[0]["windows"], results[1]["windows"]):
        rows.append([a["t"], f"{a['req_s']:.1f}", f"{a['padding_waste']:.1%}", f"{b['req_s']:.1f}",
                     f"{b['padding_waste']:.1%}", int(b["generation"]),
                     f"{b['req_s'] / a['req_s']:.2f}×" if a["req_s"] else "-"])
    print(table(rows, ["t s", "fixed req/s", "fixed waste", "replan req/s", "replan waste", "generation", "ratio"]))
    fixed = np.array(results[0]["latencies"])
    during = []
    for r in results[1:]:
        lat = np.array(r["latencies"])
        for b in r["builds"]:
            inside = lat[(lat[:, 0] >= b["start"]) & (lat[:, 0] <= b["end"])][:, 1] * 1e3
            same = fixed[(fixed[:, 0] >= b["start"]) & (fixed[:, 0] <= b["end"])][:, 1] * 1e3
            row = {"config": r["config"], **b, "requests": len(inside),
                   "p50_ms": float(np.percentile(inside, 50)) if len(inside) else None,
                   "p99_ms": float(np.percentile(inside, 99)) if len(inside) else None,
                   "fixed_p50_ms": float(np.percentile(same, 50)) if len(same) else None,
                   "fixed_p99_ms": float(np.percentile(same, 99)) if len(same) else None}
            during.append(row)
    print(table([[d["config"], int(d["generation"]), f"{d['start']:.1f}-{d['end']:.1f}", f"{d['seconds']:.1f}",
                  d["requests"], f"{d['p50_ms'] or 0:.1f}", f"{d['p99_ms'] or 0:.1f}", f"{d['fixed_p50_ms'] or 0:.1f}",
                  f"{d['fixed_p99_ms'] or 0:.1f}", f"{d['resident_mib']:.0f}", f"{d['peak_mib']:.0f}"] for d in during],
                ["server", "gen", "build s from start", "build s", "requests", "p50 ms", "p99 ms", "fixed p50 ms",
                 "fixed p99 ms", "build RSS +MiB", "peak MiB"]))
    for r in results:
        print(f"{r['config']}: ok {r['ok']} errors {r['errors']} lost {r['lost']}; server CPU {r['server_cpu_seconds']:.1f} s; "
              f"planner {r['planner_seconds']:.3f} s; build of the last swap {r['build_seconds']:.2f} s; "
              f"swaps {r['swaps']:.0f}; RSS {r['rss_start_mib']:.0f} -> peak {r['rss_peak_mib']:.0f} MiB")
    plan_files = sorted(os.listdir(plans))
    for f in plan_files:
        print(f"{f}: {open(os.path.join(plans, f)).read()[:300]}")
    for r in results:
        r["latencies"] = len(r["latencies"])  # the count is kept; the builds' figures hold what they showed
    path = save(args.out, {"seconds": args.seconds, "shift": args.shift, "plan": flags, "results": results,
                           "during_builds": during,
                                 "plans": {f: open(os.path.join(plans, f)).read() for f in plan_files}})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
