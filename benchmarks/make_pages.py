"""Write the benchmark pages from the results files: one table and one plot per benchmark.

    python benchmarks/make_pages.py                  # benchmarks/README.md, docs/benchmarks.md, docs/img/benchmarks/*.svg
    python benchmarks/make_pages.py --out DIR --no-plots   # the two pages only, into DIR (the test compares them)

Every number on the pages comes from `benchmarks/results/*.json`; every table and plot
states the file's date, the machine it records and the command that wrote it (the file's
own `command` where it has one, else rebuilt from the settings the file records). The
prose here says what a benchmark measures, never what it found: findings are the tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
IMG = "img/benchmarks"  # under docs/

Row = list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[Row]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)


@dataclass
class Plot:
    """A bar chart (x: labels) or a line chart (x: numbers), one series per key."""

    kind: str  # "bar", "barh" or "line"
    x: list[Any]
    series: dict[str, list[float | None]]
    ylabel: str
    xlabel: str = ""
    log: bool = False
    right: tuple[str, dict[str, list[float | None]]] | None = None  # a second panel: (ylabel, series)


@dataclass
class Bench:
    file: str
    title: str
    what: str
    build: Callable[[dict], tuple[Table, Plot]]
    command: str | None = None  # when the file does not record its own
    group: str = ""


def load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def f(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "—"
    return f"{x:,.{digits}f}"


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}×"


def sci(x: float | None) -> str:
    return "—" if x is None else f"{x:.1e}"


def machine(d: dict) -> str:
    m = d.get("machine", {})
    return f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores"


# ---------------------------------------------------------------- the builders


def recompile(d: dict) -> tuple[Table, Plot]:
    rows = [[r["config"], str(r["compiles"]), f(r["stream_s"]), f(r["steady_ms"], 2), ratio(r["stream_vs_eager"]),
             ratio(r["steady_vs_eager"]), sci(r["max_abs_diff"])] for r in d["results"]]
    t = Table(["config", "compiles", "whole stream s", "steady ms/pair", "stream vs eager", "steady vs eager", "max |diff| from eager"], rows)
    p = Plot("barh", [r["config"] for r in d["results"]], {"whole stream (s)": [r["stream_s"] for r in d["results"]]},
             "seconds for 300 pairs, every compile included")
    return t, p


def exact_gap(d: dict) -> tuple[Table, Plot]:
    rows, series = [], {}
    configs = list(next(iter(d["sets"].values()))["bulk_texts_per_s"])
    for set_name, s in d["sets"].items():
        ref_bulk, ref_p50 = s["bulk_texts_per_s"][configs[0]], s["p50_ms"][configs[0]]
        for c in configs:
            rows.append([f"{set_name} ({s['texts']} texts, median {s['median_tokens']} tokens)", c, f(s["bulk_texts_per_s"][c], 0),
                         ratio(s["bulk_texts_per_s"][c] / ref_bulk), f(s["p50_ms"][c], 2), ratio(s["p50_ms"][c] / ref_p50),
                         pct(s["padding_waste"].get(c)), sci(s["max_abs_diff_vs_reference"][c])])
            series.setdefault(c, []).append(s["bulk_texts_per_s"][c] / ref_bulk)
    t = Table(["set", "config", "bulk texts/s", "vs exact", "batch-1 p50 ms", "vs exact", "padding", "max diff"], rows)
    return t, Plot("bar", list(d["sets"]), series, "bulk throughput vs exact shapes (×)", "held-out text set")


def _cells(d: dict) -> tuple[list[dict], bool]:
    if "median" in d:
        return d["median"], True
    return d["best"], False


def peers(d: dict) -> tuple[Table, Plot]:
    cells, median = _cells(d)
    rows = []
    for c in sorted(cells, key=lambda c: (c["mix"] != "singles", c["clients"], d["servers"].index(c["server"]))):
        if median:
            rounds = ", ".join(f(x, 0) for x in c["p99_rounds"])
            rows.append([c["mix"], str(c["clients"]), c["server"], f(c["throughput"]), f"{f(c['p99_ms'])} ({rounds})"])
        else:
            rows.append([c["mix"], str(c["clients"]), c["server"], f(c["throughput"]), f(c["p50_ms"]), f(c["p99_ms"]),
                         str(c.get("lost", 0)), f(c.get("server_rss_mib"), 0)])
    header = (["mix", "clients", "server", "req/s (median of rounds)", "p99 ms (each round)"] if median else
              ["mix", "clients", "server", "req/s", "p50 ms", "p99 ms", "lost", "server RSS MiB"])
    clients = sorted({c["clients"] for c in cells})
    req: dict[str, list[float | None]] = {}
    p99: dict[str, list[float | None]] = {}
    for mix in ("singles", "mix"):
        for s in d["servers"]:
            got = {c["clients"]: c for c in cells if c["server"] == s and c["mix"] == mix}
            if got:
                req[f"{s}, {mix}"] = [got[n]["throughput"] if n in got else None for n in clients]
                p99[f"{s}, {mix}"] = [got[n]["p99_ms"] if n in got else None for n in clients]
    kind = "line" if len(clients) > 1 else "bar"
    x = clients if kind == "line" else [f"{s}, {m}" for m in ("singles", "mix") for s in d["servers"] if f"{s}, {m}" in req]
    if kind == "bar":
        req = {"req/s": [req[k][0] for k in x]}
        p99 = {"p99 ms": [p99[k][0] for k in x]}
    return Table(header, rows), Plot(kind, x, req, "requests/s", "clients", right=("p99 ms", p99))


def peers_command(name: str) -> Callable[[dict], str]:
    def cmd(d: dict) -> str:
        own = [s for s in d["servers"] if not s.startswith("infinity")]
        parts = [f"python benchmarks/bench_serve_peers.py --seconds {d['seconds_per_cell']:g} --rounds {d['rounds']}",
                 f"--clients {','.join(str(c) for c in d['clients'])}", f"--servers \"{','.join(own)}\""]
        if len(own) < len(d["servers"]):
            parts.append("--infinity VENV --infinity-model ONNX_DIR")
        parts.append(f"--out {name}")
        return " ".join(parts)

    return cmd


def serve_load(d: dict) -> tuple[Table, Plot]:
    rows, series = [], {}
    before = {(r["config"], r["clients"]): r for r in d["before_redesign"]["results"]}
    for r in d["results"]:
        b = before.get((r["config"], r["clients"]))
        rows.append([r["config"], str(r["clients"]), f(r["throughput"]), f(r["p50_ms"]), f(r["p99_ms"]), str(r["lost"]),
                     f(b["throughput"]) if b else "—"])
        series.setdefault(r["config"], []).append(r["throughput"])
    t = Table(["config", "clients", "req/s", "p50 ms", "p99 ms", "lost", f"before ({d['before_redesign']['commit']}) req/s"], rows)
    return t, Plot("line", d["clients"], series, "requests/s", "clients")


def mrpc(d: dict) -> tuple[Table, Plot]:
    exact = d["results"]["(d) exact shapes"]
    rows = []
    for name, r in d["results"].items():
        rows.append([name, ", ".join(str(s) for s in r["seqs"]) if "exact" not in name else "free", pct(r["accuracy"]),
                     f(r["max_logit_diff_vs_exact"], 0) if "exact" not in name else "—", f(r["pairs_per_s"], 0),
                     ratio(r["pairs_per_s"] / exact["pairs_per_s"]), f(1000 * r["p50_s"], 2), ratio(r["p50_s"] / exact["p50_s"]),
                     pct(r["padding_waste"])])
    t = Table(["config", "seq buckets", "accuracy", "max logit diff vs exact", "bulk pairs/s", "vs exact", "batch-1 p50 ms", "vs exact", "padding"], rows)
    return t, Plot("barh", list(d["results"]), {"bulk pairs/s": [r["pairs_per_s"] for r in d["results"].values()]}, "pairs/s (1,725 MRPC test pairs)")


def qa(d: dict) -> tuple[Table, Plot]:
    base = d["results"]["pad-to-384 (windows of 384)"]
    order = ["pad-to-384 (windows of 384)"] + [k for k in d["results"] if not k.startswith("pad")]
    rows = [[k, f(d["results"][k]["windows_per_context"], 2), pct(d["results"][k]["padding_waste"]), f(d["results"][k]["contexts_per_second"], 2),
             ratio(d["results"][k]["contexts_per_second"] / base["contexts_per_second"]), f(d["results"][k]["batch1_p50_ms"]),
             ratio(base["batch1_p50_ms"] / d["results"][k]["batch1_p50_ms"])] for k in order]
    t = Table(["config", "windows per context", "padding", "bulk contexts/s", "vs pad-to-384", "batch-1 p50 ms", "speed vs pad-to-384"], rows)
    return t, Plot("barh", order, {"contexts/s": [d["results"][k]["contexts_per_second"] for k in order]}, "contexts/s (40 long contexts)")


def padding(d: dict) -> tuple[Table, Plot]:
    rows = [[r["config"], f(r["pairs_per_second"]), f(r["ms_per_pair"], 2), pct(r["padding_waste"]), ratio(r["speedup_vs_pad512"]),
             ratio(r["speedup_vs_pad128"]), ratio(r["relative_to_exact"])] for r in d["results"]]
    t = Table(["config", "pairs/s", "ms/pair", "padding", "vs pad-to-512", "vs pad-to-128", "time vs exact"], rows)
    return t, Plot("barh", [r["config"] for r in d["results"]], {"pairs/s": [r["pairs_per_second"] for r in d["results"]]}, "pairs/s at batch 1")


def overhead(d: dict) -> tuple[Table, Plot]:
    rows = [[r["case"], f(r["model_ms"], 3), f(r["overhead_us"]), pct(r["overhead_share"])] for r in d["results"]]
    t = Table(["inputs → backend", "model ms", "overhead µs", "overhead / model"], rows)
    return t, Plot("barh", [r["case"] for r in d["results"]], {"overhead": [100 * r["overhead_share"] for r in d["results"]]}, "runtime overhead, % of model time")


def plan_vs_measured(d: dict) -> tuple[Table, Plot]:
    rows = [[r["strategy"], " ".join(str(b) for b in r["buckets"]), f(r["predicted_ms_per_pair"], 2), f(r["measured_ms_per_pair"], 2),
             ratio(r["predicted_speedup_vs_pad128"]), ratio(r["measured_speedup_vs_pad128"])] for r in d["results"]]
    t = Table(["strategy", "buckets", "predicted ms", "measured ms", "predicted vs pad-128", "measured vs pad-128"], rows)
    return t, Plot("bar", [r["strategy"] for r in d["results"]], {"predicted": [r["predicted_ms_per_pair"] for r in d["results"]],
                                                                  "measured": [r["measured_ms_per_pair"] for r in d["results"]]}, "ms per pair")


def planner(d: dict) -> tuple[Table, Plot]:
    rows = [[r["case"], f"{r['observations']:,}", f"{r['distinct']:,}", str(r["k"]), f(r["seconds"], 2),
             "—" if r.get("target_seconds") is None else f"< {r['target_seconds']:g} s"] for r in d["results"]]
    t = Table(["case", "observations", "distinct sizes", "k", "seconds", "target"], rows)
    labels = [f"{r['case']}, {r['observations']:,}" for r in d["results"]]
    return t, Plot("barh", labels, {"seconds": [r["seconds"] for r in d["results"]]}, "seconds to plan", log=True)


WEIGHTS_CONFIGS = {
    "after": "fixed-shape sessions, prepack all",
    "after, prepack=False": "fixed-shape, prepack=False",
    "after, prepack hot": "fixed-shape, prepack hot",
    "after, free length (default)": "free length (default)",
    "openvino blob": 'layout="blob"',
    "openvino shared-ir": "shared-ir (default)",
    "torchscript": "weights shared on load",
}


def weights(d: dict) -> tuple[Table, Plot]:
    rows, series = [], {}
    for r in d["results"]:
        r = {**r, "config": WEIGHTS_CONFIGS.get(r["config"], r["config"])}
        if r["config"].endswith("before"):
            r["config"] += f" ({d['before']})" if r["backend"] == "onnxruntime" else ""
        lat = sorted(r["latency_ms"].items(), key=lambda kv: kv[1])
        rows.append([r["backend"], r["config"], str(r["buckets"]), f(r["resident_mib"], 0), f(r["disk_mib"], 0), f(r["start_s"], 2),
                     f"{lat[0][1]:.2f} ({lat[0][0]})", f"{lat[-1][1]:.0f} ({lat[-1][0]})"])
        series.setdefault(f"{r['backend']}: {r['config']}", []).append(r["resident_mib"])
    t = Table(["backend", "config", "buckets", "resident MiB", "disk MiB", "start s", "short ms", "long ms"], rows)
    return t, Plot("line", d["sizes"], series, "resident MiB", "buckets")


def cache_starts(d: dict) -> tuple[Table, Plot]:
    rows, series = [], {}
    for backend, starts in d["results"].items():
        base = starts["no cache"]["wall"]
        for start, r in starts.items():
            rows.append([backend, start, f(r["wall"], 2), f(r["build"], 2), ratio(base / r["wall"]), f(r["resident"] / 2**20, 0),
                         f(r["disk"] / 2**20, 0) if "disk" in r else "—", f(r["saved"], 2) if r["saved"] else "—"])
            series.setdefault(backend, []).append(r["wall"])
    t = Table(["backend", "start", "wall s", "build s", "start vs no cache", "resident MiB", "on disk MiB", "saved s"], rows)
    return t, Plot("bar", list(next(iter(d["results"].values()))), series, "wall seconds to ready", "start")


def warm_start(d: dict) -> tuple[Table, Plot]:
    rows = []
    for i, (w, b, s) in enumerate(zip(d["embed_wall_s"], d["breakdown"], d["serve_ready_s"])):
        rows.append([str(i), f(w, 2), f(b["imports"], 2), f(b["tokenizer"], 2), f(b["bucket_loads"], 2), str(b["buckets_loaded"]),
                     f(b["first_run"], 2), f(s, 2)])
    rows.append(["median", f(statistics.median(d["embed_wall_s"]), 2), "", "", "", "", "", f(statistics.median(d["serve_ready_s"]), 2)])
    t = Table(["round", "`embed --limit 10` wall s", "imports s", "tokenizer s", "bucket loads s", "buckets loaded", "first run s", "`serve` ready s"], rows)
    rounds = list(range(len(d["embed_wall_s"])))
    return t, Plot("line", rounds, {"bucketwise embed --limit 10": d["embed_wall_s"], "bucketwise serve ready": d["serve_ready_s"]},
                   "seconds", "round (round 0 fills the cache)")


def cold_start(d: dict) -> tuple[Table, Plot]:
    rows = [[r["run"], f(r["ready_seconds"], 1), f(r["rss_mib"], 0)] for r in d["results"]]
    t = Table(["start", "ready s", "RSS after 200 requests, MiB"], rows)
    return t, Plot("barh", [r["run"] for r in d["results"]], {"RSS MiB": [r["rss_mib"] for r in d["results"]]}, "RSS after 200 requests, MiB")


def vision(d: dict) -> tuple[Table, Plot]:
    rows = []
    for setup, name in (("seed_setup", "sizes uniform in [400, 800]²"), ("coco_tiny", f"coco-tiny ({d['images']} images)")):
        for config, r in d[setup].items():
            buckets = " ".join(b.replace("height=", "").replace(",width=", "×") for b in r["buckets"] or []) or "—"
            rows.append([name, config, buckets, pct(r["padding"]), f(r["ms_per_image"]), ratio(r["speedup_vs_pad_to_max"]), pct(r.get("median_rel"))])
    t = Table(["images", "plan", "buckets (H×W)", "padding", "ms/image", "vs pad-to-max", "logit shift (median)"], rows)
    return t, Plot("barh", list(d["coco_tiny"]), {"ms/image": [r["ms_per_image"] for r in d["coco_tiny"].values()]}, "ms per image, coco-tiny, batch 1")


def vision_shift(d: dict) -> tuple[Table, Plot]:
    rows = [[k, pct(r["median_rel"]), pct(r["max_rel"]), pct(r["top1_agree"])] for k, r in d["results"].items()]
    t = Table(["padding", "median logit shift", "worst", "top-1 agrees"], rows)
    return t, Plot("bar", list(d["results"]), {"median": [100 * r["median_rel"] for r in d["results"].values()],
                                               "worst": [100 * r["max_rel"] for r in d["results"].values()]}, "logit shift, %")


def encoders(d: dict) -> tuple[Table, Plot]:
    rows = [[r["model"], r["backend"], sci(r["max_abs_diff"]), f"{r['min_cosine']:.7f}"] for r in d["results"]]
    t = Table(["model (pooling)", "backend", "max abs diff (normalised)", "min cosine"], rows)
    models = list(dict.fromkeys(r["model"] for r in d["results"]))
    series: dict[str, list[float | None]] = {}
    for r in d["results"]:
        series.setdefault(r["backend"], [None] * len(models))[models.index(r["model"])] = max(r["max_abs_diff"], 1e-9)
    return t, Plot("bar", models, series, "max abs diff vs sentence-transformers", log=True)


def json_writers(d: dict) -> tuple[Table, Plot]:
    rows = [[r["case"], f(r["now_us"]), f(r["before_us"]), ratio(r["speedup"]), f"{r['now_bytes']:,}", f"{r['before_bytes']:,}",
             "yes" if r["same_float32"] else "no"] for r in d["rows"]]
    t = Table(["case", "orjson µs", "json µs", "speedup", "orjson bytes", "json bytes", "same float32"], rows)
    return t, Plot("barh", [r["case"] for r in d["rows"]], {"orjson": [r["now_us"] for r in d["rows"]], "json": [r["before_us"] for r in d["rows"]]},
                   "µs", log=True)


def ray_scale(d: dict) -> tuple[Table, Plot]:
    one = d["serve_best"][0]["throughput"]
    rows = [["serve, 64 clients", r["config"], f(r["throughput"]), f(r["p50_ms"], 0), f(r["p99_ms"], 0), ratio(r["throughput"] / one)] for r in d["serve_best"]]
    base = d["data"][0]["texts_per_second"]
    rows += [[f"embed {d['texts']:,} texts", r["config"], f(r["texts_per_second"]), "—", "—", ratio(r["texts_per_second"] / base)] for r in d["data"]]
    t = Table(["job", "config", "req/s or texts/s", "p50 ms", "p99 ms", "vs one process"], rows)
    return t, Plot("barh", [r["config"] for r in d["serve_best"]], {"req/s": [r["throughput"] for r in d["serve_best"]]}, "requests/s, 64 clients",
                   right=("p99 ms", {"p99 ms": [r["p99_ms"] for r in d["serve_best"]]}))


def replan(d: dict) -> tuple[Table, Plot]:
    rows = []
    for r in d["results"]:
        after = [w for w in r["windows"] if w["t"] > d["shift"]]
        rows.append([r["config"], str(r["ok"]), str(r["errors"]), str(r["lost"]), f(statistics.median(w["req_s"] for w in after)),
                     pct(statistics.median(w["padding_waste"] for w in after)), f(r["build_seconds"], 1), f(r["planner_seconds"], 2),
                     f(r["rss_peak_mib"], 0)])
    t = Table(["server", "answered", "errors", "lost", f"median req/s after the shift at {d['shift']:g} s", "median padding after",
               "build s", "planning s", "peak RSS MiB"], rows)
    times = [w["t"] for w in d["results"][0]["windows"]]
    series = {r["config"]: [w["req_s"] for w in r["windows"]] for r in d["results"]}
    return t, Plot("line", times, series, "requests/s (5 s windows)", f"seconds (traffic shifts at {d['shift']:g} s)")


def joint(d: dict) -> tuple[Table, Plot]:
    def ks(split: dict) -> str:
        return ", ".join(f"{m} {v['k']}" for m, v in split["models"].items())

    rows = []
    for r in d["results"]:
        rows.append([f"{r['budget_mib']:,}", ks(r["planned"]), f(r["planned"]["expected_cost"], 2), ks(r["equal"]), f(r["equal"]["expected_cost"], 2),
                     f"×{r['equal_over_planned']:.3f}"])
    t = Table(["budget MiB", "joint split: buckets per model", "expected ms/request", "equal split", "expected ms/request", "equal / joint"], rows)
    x = [r["budget_mib"] for r in d["results"]]
    return t, Plot("line", x, {"joint split": [r["planned"]["expected_cost"] for r in d["results"]],
                               "equal split": [r["equal"]["expected_cost"] for r in d["results"]]}, "expected ms per request", "memory budget, MiB")


def serve_tasks(d: dict) -> tuple[Table, Plot]:
    rows = []
    for run, models in d["results"].items():
        if run == "exit_code":
            continue
        for m in ("embed", "rerank", "mrpc"):
            r = models[m]
            rows.append([run, m, f"{r['ok']:,}", str(r["4xx"]), str(r["5xx"]), str(r["503"]), str(r["lost"]), f(r["req_per_s"]), f(r["p50_ms"]), f(r["p99_ms"], 0)])
    rows.append(["exit code after SIGTERM", str(d["results"]["exit_code"]), "", "", "", "", "", "", "", ""])
    t = Table(["run", "model", "answered", "4xx", "5xx", "503", "lost", "req/s", "p50 ms", "p99 ms"], rows)
    models = ["embed", "rerank", "mrpc"]
    return t, Plot("bar", models, {run: [d["results"][run][m]["req_per_s"] for m in models] for run in ("8 clients", "64 clients")},
                   "requests/s", "model", right=("p99 ms", {run: [d["results"][run][m]["p99_ms"] for m in models] for run in ("8 clients", "64 clients")}))


def shutdown_pair(d: dict) -> tuple[Table, Plot]:
    runs = [("default drain", d), (f"--drain-timeout {load('serve_shutdown_deadline')['drain_timeout']:g}", load("serve_shutdown_deadline"))]
    rows = []
    for name, r in runs:
        lo, s = r["load"], r["sigterm"]
        rows.append([f"load, {r['clients']} clients, {r['seconds']:g} s", f"{lo['sent']:,}", f"{lo['ok']:,}", "0", str(lo["5xx"]), str(lo["lost"]), "—", "—",
                     f"{f(r['rss_mib_before'], 0)} → {f(r['rss_mib_after'], 0)}"])
        rows.append([f"SIGTERM, {s['queued_at_sigterm']:.0f} rows queued, {name}", str(s["sent"]), str(s["ok"]),
                     str(s["503_not_admitted"] + s["503_past_deadline"]), str(s["5xx"]), str(s["lost"]), f(s["drain_s"]), str(s["exit_code"]), ""])
    t = Table(["run", "requests", "200", "503 (Retry-After)", "5xx", "lost", "drain s (SIGTERM to exit)", "exit code", "RSS before → after load, MiB"], rows)
    return t, Plot("bar", [n for n, _ in runs], {"200": [r["sigterm"]["ok"] for _, r in runs],
                                                 "503": [r["sigterm"]["503_not_admitted"] + r["sigterm"]["503_past_deadline"] for _, r in runs],
                                                 "5xx or lost": [r["sigterm"]["5xx"] + r["sigterm"]["lost"] for _, r in runs]}, "requests after SIGTERM")


def hostile(d: dict) -> tuple[Table, Plot]:
    rows = [[r["run"], str(r["clients"]), f"{r['sent']:,}", str(r["errors"]), str(r["lost"]), f(r["healthz_p50_ms"], 2), f(r["healthz_p99_ms"], 2),
             f(r["healthz_max_ms"], 1), f(r["rss_mib_peak"], 0)] for r in d["results"]]
    t = Table(["run", "clients", "requests", "errors", "lost", "/healthz p50 ms", "/healthz p99 ms", "/healthz max ms", "peak RSS MiB"], rows)
    return t, Plot("bar", [r["run"] for r in d["results"]], {"/healthz p99 ms": [r["healthz_p99_ms"] for r in d["results"]]}, "ms",
                   right=("peak RSS MiB", {"peak RSS MiB": [r["rss_mib_peak"] for r in d["results"]]}))


def joint_serve(d: dict) -> tuple[Table, Plot]:
    rows = []
    for key, m in d["summary"].items():
        split, clients = key.split()
        plan = d["splits"][split]
        ks = ", ".join(f"{n} {v['k']}" for n, v in plan["models"].items())
        rows.append([clients, split, ks, f(plan["memory"] / 2**20, 0), f(plan["expected_cost"], 1), f(m["req_per_s"]),
                     f(m["embed_p99_ms"], 0), f(m["worst_route_p99_ms"], 0), f(m["rss_mib"], 0), str(m["errors"]), str(m["lost"])])
    t = Table(["clients", "split", "length buckets per model", "MiB planned", "expected padded tokens/request", "req/s",
               "embed p99 ms", "worst route p99 ms", "server RSS MiB", "errors", "lost"], rows)
    clients = sorted({int(k.split()[1]) for k in d["summary"]})
    return t, Plot("bar", [f"{c} clients" for c in clients],
                   {split: [d["summary"][f"{split} {c}"]["req_per_s"] for c in clients] for split in ("planned", "equal")},
                   "requests/s", right=("embed p99 ms", {split: [d["summary"][f"{split} {c}"]["embed_p99_ms"] for c in clients]
                                                          for split in ("planned", "equal")}))


def serve_pack(d: dict) -> tuple[Table, Plot]:
    cells = {(c["backend"], c["server"], c["clients"]): c for c in d["cells"]}
    servers = list(dict.fromkeys(c["server"] for c in d["cells"]))
    clients = sorted({c["clients"] for c in d["cells"]})
    rows = []
    for backend in d["backends"]:
        for n in clients:
            base = cells[(backend, "unpacked", n)]["throughput"]
            for server in servers:
                c = cells[(backend, server, n)]
                rows.append([backend, str(n), server, f(c["throughput"]), ratio(c["throughput"] / base), f(c["p50_ms"], 0),
                             f(c["p99_ms"], 0), f(c["rss_mib"], 0), str(c["errors"]), str(c["lost"])])
    t = Table(["backend", "clients", "server", "req/s (median)", "vs unpacked", "p50 ms", "p99 ms", "server RSS MiB", "errors",
               "lost"], rows)
    x = [f"{b}, {n} clients" for b in d["backends"] for n in clients]
    return t, Plot("barh", x, {s: [cells[(b, s, n)]["throughput"] for b in d["backends"] for n in clients] for s in servers},
                   "requests/s")


def task_peers(d: dict) -> tuple[Table, Plot]:
    med = {(m["server"], m["task"], m["clients"]): m for m in d["median"]}
    rows = []
    for (server, task, clients), m in sorted(med.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        base = med.get(("infinity-emb (optimum)", task, clients))
        mine = server != "infinity-emb (optimum)" and base is not None
        rows.append([task, str(clients), server, f(m["throughput"]), f(m["p99_ms"]), ratio(m["throughput"] / base["throughput"]) if mine else "—",
                     ratio(m["p99_ms"] / base["p99_ms"]) if mine else "—", str(m["errors"]), str(m["lost"])])
    t = Table(["task", "clients", "server", "req/s (median)", "p99 ms (median)", "req/s vs infinity", "p99 vs infinity", "errors", "lost"], rows)
    cells = sorted({(task, c) for _, task, c in med})
    return t, Plot("bar", [f"{task} {c}" for task, c in cells],
                   {server: [med[(server, task, c)]["throughput"] for task, c in cells] for server in d["servers"]}, "requests/s (median)")


def packing_bench(d: dict) -> tuple[Table, Plot]:
    # A backend with its own exact-shape reference (JAX's jax.jit) gets a column against it too.
    own = any("vs_backend_exact" in c for got in d["sets"].values() for c in got["configs"].values())
    rows = []
    for set_name, got in d["sets"].items():
        for config, c in got["configs"].items():
            rows.append([f"{set_name} ({got['texts']} texts, median {got['median_tokens']} tokens)", config, f(c["texts_per_s"], 0), ratio(c["vs_exact"]),
                         *([ratio(c.get("vs_backend_exact"))] if own else []),
                         pct(c["padding_waste"]), "—" if c["shapes"] is None else str(c["shapes"]), f(c["rss_mib"], 0),
                         sci(c["max_abs_diff_vs_reference"])])
    t = Table(["set", "configuration", "texts/s", "vs exact", *(["vs its backend's exact"] if own else []), "padding",
               "compiled shapes", "peak RSS MiB", "max diff"], rows)
    sets = list(d["sets"])
    configs = [c for c in d["sets"][sets[0]]["configs"] if c != "exact (reference)"]
    return t, Plot("barh", configs, {s: [d["sets"][s]["configs"][c]["vs_exact"] for c in configs] for s in sets},
                   "throughput against the exact-shape reference")


# ---------------------------------------------------------------- the pages

BENCHES = [
    Bench("recompile_cliff", "The recompile cliff", "300 MRPC test pairs (57 distinct lengths) streamed one at a time through all-MiniLM-L6-v2, each configuration in a "
          "fresh process with no artifact cache: \"whole stream\" is the first pass, every compile included; \"steady\" the best later pass. "
          "Bucketed configurations use buckets planned from MRPC train pairs.", recompile, "python benchmarks/bench_recompile.py", "Compilers and padding"),
    Bench("exact_gap", "The gap to exact shapes", "Held-out prose (README files of installed packages) embedded texts-in, embeddings-out; the reference is one ONNX Runtime "
          "session with every dim free, texts sorted by length and batched by 32. Each configuration in a fresh process from a warm cache.",
          exact_gap, "python benchmarks/bench_exact.py", "Compilers and padding"),
    Bench("padding_mrpc_onnxruntime", "Padding strategies at batch 1", "300 MRPC test pairs at batch 1 through ONNX Runtime, best of 3 rotated rounds.",
          padding, "python benchmarks/bench_padding.py", "Compilers and padding"),
    Bench("mrpc_classifier", "The seed's experiment: a paraphrase classifier on MRPC", "all-MiniLM-L6-v2 fine-tuned on the 4,080 MRPC train pairs "
          "(`benchmarks/mrpc_model.py`), then the 1,725 test pairs through `TextClassifier` on ONNX Runtime four ways, each in a fresh process "
          "from a warm cache. Bulk: batches of 32 sorted by length; batch 1: one pair per call.", mrpc, "python benchmarks/bench_mrpc.py", "Compilers and padding"),
    Bench("qa_long", "Question answering over long contexts", "40 questions over held-out contexts of 300–1,200 words with all-MiniLM-L6-v2's encoder "
          "under a seeded random QA head: the answers mean nothing, the windows and their time are real.", qa, "python benchmarks/bench_qa_long.py",
          "Compilers and padding"),
    Bench("runtime_overhead", "The runtime's own overhead", "The runtime's work per call (validate, route, pad, bookkeeping, unpad) at batch 1 × seq 16, "
          "measured with an artifact that replays the model's outputs, against the model's own time there.", overhead,
          "python benchmarks/bench_overhead.py", "Compilers and padding"),
    Bench("encoder_parity", "Your own encoder: parity with sentence-transformers", "Four architectures built offline with random weights and saved by "
          "sentence-transformers (`tests/tiny_encoders.py`), against `SentenceTransformer(DIR).encode` on 5 texts, buckets batch {1, 4} × seq {16, 48}.",
          encoders, "python benchmarks/bench_encoders.py", "Compilers and padding"),
    Bench("plan_vs_measured_onnxruntime", "The cost model against measurement", "MiniLM profiled on ONNX Runtime, a + b·L + c·L² fitted, k = 4 planned "
          "from MRPC train pairs, then 300 test pairs timed at batch 1 per plan.", plan_vs_measured, "python benchmarks/bench_plan_vs_measured.py", "Planning"),
    Bench("planner_timing", "Planner speed", "The planner itself, in Python and through `bucketwise plan` on shapes files.", planner,
          "python benchmarks/bench_planner.py", "Planning"),
    Bench("joint_budget", "One memory budget across models", "Three models (80% embeddings, 15% reranks, 5% classifications on MRPC test lengths): "
          "the jointly optimal split of a memory budget against an equal split, in expected cost (not served and timed).", joint,
          "python benchmarks/bench_joint_budget.py", "Planning"),
    Bench("joint_serve", "One memory budget across models, served", "The planned split of one budget against an equal split, each served by "
          "`bucketwise serve` on OpenVINO (one compiled model per bucket, each model's memory per bucket measured): all-MiniLM-L6-v2 (`embed`, 80% of "
          "requests), a MiniLM cross-encoder (`rerank`, 15%, a query against four documents) and the MRPC classifier (`mrpc`, 5%); plans fitted on "
          "MRPC train lengths, load from MRPC test text; rounds alternate the splits, medians shown.", joint_serve, None, "Planning"),
    Bench("packing", "Packed buckets", "all-MiniLM-L6-v2 on held-out prose in bulk: packed plans of three shapes (16 texts to a row at most; "
          "the default packed plan, and one planned by `bucketwise plan --pack` from another draw of the same kind of text) against the "
          "backend's default plan, an unpacked plan of three shapes planned on the set itself, and the exact-shape reference (one dynamic ONNX "
          "Runtime session, texts sorted and batched by 32; on JAX also `jax.jit` at exact shapes); each configuration in a fresh process "
          "from a warm cache.", packing_bench, None, "Compilers and padding"),
    Bench("serve_pack", "Packing in the server's batcher", "`bucketwise serve` with all-MiniLM-L6-v2 on ONNX Runtime and OpenVINO, unpacked (the backend's default plan) "
          "and with `--pack` (the default packed plan, and one with two one-row shapes more), under closed-loop clients sending one held-out text "
          "each (60% short sentences, 30% medium paragraphs, 10% long runs); rounds alternate the servers, medians shown.", serve_pack, None,
          "Serving"),
    Bench("serve_task_peers", "Reranking and classification against infinity-emb", "`bucketwise serve` and infinity-emb 0.0.78's ONNX engine "
          "serving the same MiniLM reranker on `/rerank` (a query against six held-out sentences) and the same MRPC classifier on `/classify` (one "
          "held-out sentence), each server a fresh process per round, rounds rotating the order; medians over rounds.", task_peers, None, "Serving"),
    Bench("serve_peers_median", "Serving against infinity-emb", "`bucketwise serve` (ONNX Runtime, default plan) and infinity-emb 0.0.78's ONNX engine "
          "on the same MiniLM weights, one text per request: held-out sentences (\"singles\") and the same with 20% of requests 3–4 sentences "
          "joined (\"mix\"). Each server a fresh process per round; the median over rounds, with each round's p99.", peers, None, "Serving"),
    Bench("serve_load", "Serving: bucketed batching against pad-to-max", "Real `bucketwise serve` processes on loopback, one MRPC sentence per request, "
          "8 s per cell, ONNX Runtime; \"before\" is the same script on the code before the runtime redesign, run just before.", serve_load,
          "python benchmarks/bench_serve.py", "Serving"),
    Bench("serve_tasks", "Three models in one server, and a SIGTERM", "all-MiniLM-L6-v2 (`embed`), the MRPC classifier (`mrpc`) and a tiny "
          "random-weight DistilBERT reranker (`rerank`) in one process; 80% embeddings, 15% Cohere reranks, 5% TEI predictions; then a SIGTERM "
          "under 64 clients.", serve_tasks, None, "Serving"),
    Bench("serve_shutdown", "Shutdown under load", "One server under 64 clients of mixed lengths, then 125 requests of 8 long texts each until "
          "about 1,000 rows wait, then SIGTERM, with the default drain and with `--drain-timeout 5` (`serve_shutdown_deadline.json`).",
          shutdown_pair, "python benchmarks/bench_shutdown.py; python benchmarks/bench_shutdown.py --seconds 10 --drain-timeout 5", "Serving"),
    Bench("serve_hostile", "Health under hostile clients", "64 clients of ordinary load, alone and beside clients sending hostile bodies (1 MB "
          "texts, slow and malformed requests); `/healthz` latency and resident memory.", hostile, None, "Serving"),
    Bench("json_writers", "JSON writers", "Writing responses with orjson (shortest float32 round-trip) against `json` over lists, and reading a "
          "224 × 224 image sent as KServe v2 JSON.", json_writers, "python benchmarks/bench_json.py", "Serving"),
    Bench("replan_shift", "Re-planning when traffic shifts (ONNX Runtime)", "8 clients; a plan made once from short sentences; after 15 s the traffic "
          "moves to 30–90-word paragraphs. A fixed server, a re-planning one, and a re-planning one with its build unthrottled.", replan,
          "python benchmarks/bench_replan.py", "Serving"),
    Bench("replan_shift_openvino", "Re-planning when traffic shifts (OpenVINO)", "The same on OpenVINO, whose buckets compile for their static shape, "
          "so the build competes with requests.", replan, "python benchmarks/bench_replan.py --backend openvino --out replan_shift_openvino", "Serving"),
    Bench("weights_once", "Weights once: memory, disk and start per bucket", "MiniLM built with 1, 4, 10 and 20 buckets, each in a fresh process from a "
          "full cache; resident memory is the growth over the build. \"before\" is the code before the weights were shared.", weights,
          "python benchmarks/bench_weights.py", "Memory and starts"),
    Bench("cache_starts", "Starts with and without the artifact cache", "all-MiniLM-L6-v2 with 4 buckets (batch 1 × seq 32/64/128/256) started in fresh "
          "processes: no cache, an empty cache (filled on the way), a full one. \"build\" is the time inside `compile()`.", cache_starts,
          "python benchmarks/bench_cache.py", "Memory and starts"),
    Bench("warm_start", "Warm starts of the command line and the server", "`bucketwise embed --limit 10` and `bucketwise serve` (114 default buckets) "
          "from a warm cache, 5 rounds; round 0 fills the cache.", warm_start, "python benchmarks/bench_warm_start.py", "Memory and starts"),
    Bench("cold_start", "Cold starts: building in a child process", "A server's resident memory after 200 requests when it compiles its buckets "
          "itself (`--lazy`), when a child process compiles them (the default with a cache), and after a warm start.", cold_start, None,
          "Memory and starts"),
    Bench("vision_resnet50_onnxruntime", "Images: ResNet-50 buckets", "torchvision ResNet-50 (random weights) at batch 1 on ONNX Runtime, padding "
          "bottom/right with the mean colour; first the seed's synthetic sizes, then the coco-tiny images. \"Logit shift\" is the median of "
          "max |bucketed − exact| / max |exact|.", vision, "python benchmarks/bench_vision.py", "Images"),
    Bench("vision_padding_shift_onnxruntime", "Images: what the padding does to logits", "20 coco-tiny images on the planned buckets, three ways "
          "of padding.", vision_shift, "python benchmarks/bench_vision.py", "Images"),
    Bench("ray_scale", "Scaling out on Ray (one machine)", "A local Ray of 2 CPUs: 64 clients of one held-out sentence per request (best of 2 rounds "
          "of 15 s), and 20,000 held-out texts embedded by Ray Data actors.", ray_scale, "python benchmarks/bench_ray.py", "Scale-out"),
]

# Earlier serving runs the decisions log quotes: what was tried, and what was kept.
for name, title, what in [
    ("serve_peers", "Adaptive against fixed batch wait", "The adaptive wait against a fixed 5 ms wait and infinity-emb; the run that found the keep-alive race (see `lost`)."),
    ("serve_peers_overlap", "Two inference streams against one", "The two-stream default against one stream and infinity-emb."),
    ("serve_overlap", "Two streams against one, without infinity-emb", "The same comparison without infinity-emb, and the code before (`@4453099`)."),
    ("serve_streams", "Two streams of one ONNX Runtime thread each", "Two streams with `intra_op_threads=1`, against one stream."),
    ("serve_streams_shared", "Two streams on a shared thread pool", "The first two-stream code, sharing ONNX Runtime's threads."),
    ("serve_peers_streams_rerun", "Two streams with a rows-only rule", "Two streams that let long texts run beside others."),
    ("serve_peers_orjson", "orjson responses", "The orjson writer against the code before (`@1b72927`) and infinity-emb."),
    ("serve_peers_c1_check", "One client, 6 rounds: the day's changes", "A longer A/B at one client of the code before a day's changes (`@e1ca95f`)."),
    ("serve_join_8", "Rows of larger queues joining a run (8 clients)", "A batch policy tried and not kept."),
    ("serve_join_64", "Rows of larger queues joining a run (64 clients)", "The same at 64 clients."),
]:
    BENCHES.append(Bench(name, title, what, peers, None, "Earlier serving runs (quoted by the decisions log)"))

def command_of(b: Bench, d: dict) -> str:
    if d.get("command"):
        return d["command"].strip()
    if b.command:
        return b.command
    if "servers" in d:
        return peers_command(b.file)(d)
    raise SystemExit(f"{b.file}: no command recorded and none given in make_pages.py")


def anchor(b: Bench) -> str:
    return b.file.replace("_", "-")


def stamp(b: Bench, d: dict) -> str:
    return f"{d['date']} · {machine(d)} · `{command_of(b, d)}`"


def page(plots_prefix: str, results_prefix: str | None) -> str:
    out = ["<!-- Generated by benchmarks/make_pages.py from benchmarks/results/*.json: edit those, then run it. -->", "",
           "# Benchmarks", "",
           "Every table and plot here is generated from a results file by `python benchmarks/make_pages.py`. All ran on the "
           "project's development machine: AMD EPYC, 2 cores, 24 GiB of memory, no GPU. Each section gives the date, the machine "
           "as the file records it and the command that wrote the file. Rates drift between days on this machine (up to 2×), so "
           "compare rows within one table, not across tables.", ""]
    groups: dict[str, list[Bench]] = {}
    for b in BENCHES:
        groups.setdefault(b.group, []).append(b)
    for group, benches in groups.items():
        out += [f"- **{group}:** " + ", ".join(f"[{b.title}](#{anchor(b)})" for b in benches)]
    out.append("")
    for group, benches in groups.items():
        out += [f"## {group}", ""]
        for b in benches:
            d = load(b.file)
            table, _ = b.build(d)
            source = f"[`{b.file}.json`]({results_prefix}{b.file}.json)" if results_prefix else f"`benchmarks/results/{b.file}.json`"
            out += [f'<a id="{anchor(b)}"></a>', "", f"### {b.title}", "", b.what, "",
                    f"*{stamp(b, d)}* · {source}", "",
                    f"![{b.title}]({plots_prefix}{b.file}.svg)", "", table.markdown(), ""]
    return "\n".join(out)


def draw(b: Bench, d: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "bucketwise", "font.size": 9})
    _, p = b.build(d)
    panels = [(p.ylabel, p.series)] + ([p.right] if p.right else [])
    wide = max(len(series) for _, series in panels) > 4  # legend beside the plot
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + (1.6 if p.kind == "barh" else 0) + (2.6 if wide else 0), 3.6),
                             squeeze=False)
    for ax, (ylabel, series) in zip(axes[0], panels):
        n = len(series)
        if p.kind == "line":
            for name, ys in series.items():
                pts = [(x, y) for x, y in zip(p.x, ys) if y is not None]
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=name)
            ax.set_xlabel(p.xlabel)
            ax.set_ylabel(ylabel)
            if p.x and all(isinstance(x, int) for x in p.x) and max(p.x) / max(min(p.x), 1) >= 16:
                ax.set_xscale("log")
                ax.set_xticks(p.x, [str(x) for x in p.x])
        else:
            width = 0.8 / n
            for i, (name, ys) in enumerate(series.items()):
                pos = [j + (i - (n - 1) / 2) * width for j in range(len(p.x))]
                vals = [0 if y is None else y for y in ys]
                (ax.barh if p.kind == "barh" else ax.bar)(pos, vals, width, label=name)
            labels = [str(x) for x in p.x]
            if p.kind == "barh":
                ax.set_yticks(range(len(p.x)), labels)
                ax.invert_yaxis()
                ax.set_xlabel(ylabel)
            else:
                ax.set_xticks(range(len(p.x)), labels, rotation=20 if max(len(s) for s in labels) > 12 else 0, ha="right" if max(len(s) for s in labels) > 12 else "center")
                ax.set_ylabel(ylabel)
                ax.set_xlabel(p.xlabel)
        values = [y for ys in series.values() for y in ys if y]
        if p.log or (p.kind == "line" and values and max(values) / min(values) > 30):
            (ax.set_xscale if p.kind == "barh" else ax.set_yscale)("log")
        if n > 4:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
        elif n > 1:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(b.title, fontsize=10)
    footer = textwrap.wrap(f"{d['date']} · {machine(d)} · {command_of(b, d)}", 130 if len(panels) > 1 or wide else 100)
    fig.text(0.01, 0.005, "\n".join(footer), fontsize=6.5, color="0.35", va="bottom")
    fig.tight_layout(rect=(0, 0.035 * len(footer) + 0.01, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=path.suffix[1:], **({"metadata": {"Date": None}} if path.suffix == ".svg" else {"dpi": 80}))
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="repository root to write under (default: this one)")
    parser.add_argument("--no-plots", action="store_true", help="write the markdown pages only")
    args = parser.parse_args()
    (args.out / "benchmarks").mkdir(parents=True, exist_ok=True)
    (args.out / "docs").mkdir(parents=True, exist_ok=True)
    (args.out / "benchmarks" / "README.md").write_text(page(f"../docs/{IMG}/", "results/") + "\n")
    (args.out / "docs" / "benchmarks.md").write_text(page(f"{IMG}/", None) + "\n")
    if not args.no_plots:
        for b in BENCHES:
            draw(b, load(b.file), args.out / "docs" / IMG / f"{b.file}.svg")
    print(f"wrote {len(BENCHES)} benchmarks into {args.out}/benchmarks/README.md and docs/benchmarks.md")


if __name__ == "__main__":
    main()
