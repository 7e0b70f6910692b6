"""Three models in one server under mixed load, then a SIGTERM under that load (issue #29).

One `bucketwise serve` process (ONNX Runtime, 127.0.0.1) serves:
  embed    the bundled all-MiniLM-L6-v2 (OpenAI /v1/embeddings)
  mrpc     all-MiniLM-L6-v2 fine-tuned on MRPC, a 2-label paraphrase classifier (TEI /predict)
  rerank   a tiny DistilBERT cross-encoder with random weights (Cohere /v2/rerank): its
           scores mean nothing, its shapes and batching are a reranker's

Clients send, back to back, a mix of 80% embeddings of one MRPC test sentence, 15%
reranks of a sentence against four others, and 5% classifications of an MRPC test pair,
at 8 and then 64 concurrent clients for --seconds each. Reported per route: answered,
4xx, 5xx, lost (sent, then the connection failed without an answer; must be 0), req/s,
p50 and p99. Then the server gets SIGTERM while 64 clients are sending: every request it
had accepted must get its answer (200, or 503 once draining), none may be lost, and the
process must exit 0.

    python benchmarks/bench_serve_tasks.py [--seconds 20]
Writes benchmarks/results/serve_tasks.json.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
from _common import ROOT, SHARED_DATA, save, table
from bench_serve import start_server
from mrpc_model import finetuned_mrpc

from bucketwise.data import read_mrpc
from bucketwise.models.encoders import model_dir

MIX = (("embed", 0.80), ("rerank", 0.15), ("mrpc", 0.05))


def request(kind: str, i: int, sentences: list[str], pairs: list[tuple[str, str]]) -> tuple[str, dict]:
    if kind == "embed":
        return "/v1/embeddings", {"model": "embed", "input": sentences[i % len(sentences)]}
    if kind == "rerank":
        docs = [sentences[(i * 7 + j) % len(sentences)] for j in range(1, 5)]
        return "/v2/rerank", {"model": "rerank", "query": sentences[i % len(sentences)], "documents": docs}
    a, b = pairs[i % len(pairs)]
    return "/predict", {"model": "mrpc", "inputs": [a, b]}


async def load(url: str, clients: int, seconds: float, sentences: list[str], pairs: list[tuple[str, str]]) -> dict:
    rng = np.random.default_rng(clients)
    kinds = rng.choice([k for k, _ in MIX], size=1_000_000, p=[p for _, p in MIX])
    stats: dict[str, dict] = defaultdict(lambda: {"ok": 0, "4xx": 0, "5xx": 0, "503": 0, "lost": 0, "refused": 0, "lat": [],
                                                  "examples": []})
    stop = time.perf_counter() + seconds
    counter = [0]
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def worker() -> None:
            while time.perf_counter() < stop:
                i = counter[0]
                counter[0] += 1
                kind = str(kinds[i % len(kinds)])
                path, body = request(kind, i, sentences, pairs)
                s = stats[kind]
                started = time.perf_counter()
                try:
                    r = await client.post(path, json=body)
                except httpx.ConnectError:
                    s["refused"] += 1  # not accepted: the server had stopped listening
                    await asyncio.sleep(0.05)
                    continue
                except httpx.HTTPError as err:
                    s["lost"] += 1  # sent, then the connection failed without an answer
                    s["examples"].append(f"lost: {err!r}"[:300])
                    continue
                if r.status_code == 200:
                    s["ok"] += 1
                    s["lat"].append(time.perf_counter() - started)
                elif r.status_code == 503:
                    s["503"] += 1
                elif r.status_code >= 500:
                    s["5xx"] += 1
                else:
                    s["4xx"] += 1
                    s["examples"].append(f"{r.status_code}: {r.text}"[:300])

        begin = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - begin
    out = {}
    for kind, s in stats.items():
        lat = np.array(s.pop("lat")) * 1e3
        s["examples"] = s["examples"][:5]
        out[kind] = {**s, "req_per_s": s["ok"] / elapsed,
                     "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
                     "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", default=None, help="results file (default benchmarks/results/serve_tasks.json)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    import tiny_encoders as te

    pairs = read_mrpc(SHARED_DATA / "mrpc" / "msr_paraphrase_test.txt")
    sentences = [s for p in pairs for s in p]
    with tempfile.TemporaryDirectory() as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reranker = te.build_head("distilbert", "text-ranking", Path(tmp))
        served = ["--model", f"embed={model_dir(None)}", "--model", f"mrpc={finetuned_mrpc(progress=False)}",
                  "--model", f"rerank={reranker}", "--cache-dir", str(Path(tmp) / "cache")]
        proc, url = start_server(["--max-queue", "4096", *served])
        rows, results = [], {}
        try:
            for clients in (8, 64):
                got = asyncio.run(load(url, clients, args.seconds, sentences, pairs))
                results[f"{clients} clients"] = got
                for kind, s in sorted(got.items()):
                    rows.append([clients, kind, s["ok"], s["4xx"], s["5xx"] + s["503"], s["lost"], f"{s['req_per_s']:.1f}",
                                 f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}"])

            # SIGTERM under load: 64 clients, the signal 3 s in.
            async def drained() -> dict:
                task = asyncio.create_task(load(url, 64, 10.0, sentences, pairs))
                await asyncio.sleep(3.0)
                proc.send_signal(signal.SIGTERM)
                return await task

            drain = asyncio.run(drained())
            _, err = proc.communicate(timeout=120)
            out = err.decode(errors="replace")
        finally:
            if proc.poll() is None:
                proc.kill()
    results["sigterm"] = drain
    results["exit_code"] = proc.returncode
    print(table(rows, ["clients", "model", "answered", "4xx", "5xx", "lost", "req/s", "p50 ms", "p99 ms"]))
    lost = sum(s["lost"] for s in drain.values())
    bad = sum(s["5xx"] for s in drain.values())
    print(f"\nSIGTERM under 64 clients: answered {sum(s['ok'] for s in drain.values())}, "
          f"503 while draining {sum(s['503'] for s in drain.values())}, other 5xx {bad}, lost {lost}, "
          f"refused after close {sum(s['refused'] for s in drain.values())}; exit code {proc.returncode}")
    path = save("serve_tasks", {"command": "python benchmarks/bench_serve_tasks.py " + " ".join(argv or sys.argv[1:]),
                                "mix": dict(MIX), "results": results, "server_log_tail": out[-2000:]}, args.out)
    print(f"wrote {path}")
    return 0 if proc.returncode == 0 and lost == 0 and bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
