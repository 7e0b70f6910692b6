"""Shared by the benchmark scripts: where the data is, what machine ran, how results are saved."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict[str, Any]:
    from bucketwise.runtime.cache import cpu_name

    cpu = cpu_name()
    versions = {}
    for name in ("numpy", "torch", "onnxruntime", "openvino", "transformers", "jax"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # not installed, or no __version__
            pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def save(name: str, data: dict[str, Any], out: str | None = None) -> Path:
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "date": _dt.date.today().isoformat(), "machine": machine(), **data}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def time_rounds(runners: dict[str, Any], samples: list[Any], rounds: int, *, desc: str = "timing") -> dict[str, float]:
    """Best total seconds per runner over ``rounds`` passes through ``samples``.

    Runners are callables taking one sample. Each round rotates the order in which the
    runners go, so drift on a shared machine falls on all of them alike.
    """
    import time

    from tqdm.auto import tqdm

    best = {name: float("inf") for name in runners}
    order = list(runners)
    bar = tqdm(total=rounds * len(order), desc=desc, unit="config")
    for r in range(rounds):
        for name in order[r % len(order):] + order[: r % len(order)]:
            run = runners[name]
            start = time.perf_counter()
            for s in samples:
                run(s)
            best[name] = min(best[name], time.perf_counter() - start)
            bar.update()
    bar.close()
    return best


_WORKDIRS: list[Any] = []


def exact_session(backend: Any, module: Any, spec: Any, plan: Any) -> Any:
    """An ONNX Runtime session with every dim free: the exact-shape (no padding) path.
    Exports the module once, traced at the plan's export example, into a temporary folder
    kept for the life of the process."""
    import tempfile

    from bucketwise.runtime.export import export_example

    workdir = tempfile.TemporaryDirectory(prefix="bucketwise-bench-")
    _WORKDIRS.append(workdir)
    return backend.session(backend.export(module, spec, export_example(plan), Path(workdir.name)))


def wait_ready(proc: Any, url: str, *, what: str, timeout: float, log: Path | None = None) -> None:
    """Wait until ``url`` answers 200, or raise naming ``what``: with the tail of ``log``
    (the server's output) when the process exits first; after killing it at ``timeout``."""
    import time

    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            said = log.read_text(errors="replace")[-3000:] if log is not None else ""
            raise RuntimeError(f"{what} exited: {said}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{what} did not become ready in {timeout:.0f} s" + (f"; log {log}" if log is not None else ""))


def run_child(script: str, args: list[Any], what: str) -> Any:
    """``script --child JSON(args)`` in a fresh Python process (a configuration measured
    apart: a process that has run torch runs ONNX Runtime slower); the JSON on its last
    line of output, or a RuntimeError naming ``what`` with the end of its stderr."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, script, "--child", json.dumps(args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        raise RuntimeError(f"{what}: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
