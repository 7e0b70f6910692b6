"""What a server holds after a cold start, against a warm one (issue #29, item 4).

`bucketwise serve` (all-MiniLM-L6-v2, ONNX Runtime, default plan) is started three times,
each in a fresh process, and its resident memory (RSS) read once it is ready and has
answered 200 embeddings requests:

  cold, built here    an empty cache, --lazy (the buckets build in the server process,
                      which loads the torch model and the exporter to do it)
  cold, built apart   an empty cache (the default: a child process compiles the buckets
                      into the cache, and the server loads them from there)
  warm                the cache the previous run filled

    python benchmarks/bench_cold_start.py
Writes benchmarks/results/cold_start.json.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import httpx
from _common import save, table
from bench_serve import start_server


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(label: str, cache: Path, *extra: str) -> dict:
    started = time.perf_counter()
    proc, url = start_server(["--cache-dir", str(cache), *extra])
    if "--lazy" in extra:  # ready once the largest buckets are built: wait for the rest
        while httpx.get(url + "/readyz", timeout=5).json()["compiled"] < httpx.get(url + "/readyz").json()["buckets"]:
            time.sleep(0.5)
    ready = time.perf_counter() - started
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            for i in range(200):
                assert client.post("/v1/embeddings", json={"input": f"a sentence of some {i} words"}).status_code == 200
        return {"run": label, "ready_seconds": ready, "rss_mib": rss_mib(proc.pid)}
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run("cold, built here (--lazy)", Path(tmp) / "a", "--lazy"),
                run("cold, built apart (default)", Path(tmp) / "b"),
                run("warm", Path(tmp) / "b")]
    print(table([[r["run"], f"{r['ready_seconds']:.1f}", f"{r['rss_mib']:.0f}"] for r in rows],
                ["start", "ready s", "RSS MiB after 200 requests"]))
    path = save("cold_start", {"command": "python benchmarks/bench_cold_start.py", "results": rows})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
