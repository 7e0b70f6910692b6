"""What the commands share: option groups, the plan and cache they name, JSON output."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..backends.base import backend_names
from ..errors import ConfigError
from ..plans import Plan
from ..router import OVERFLOW_POLICIES


def sizes(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 16,32,64, got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive integers, got {text!r}")
    return out


def plan_from_args(args: argparse.Namespace) -> Plan:
    from ..models.text import text_plan

    if args.plan and (args.batch_sizes or args.seq_sizes):
        raise ConfigError("--plan and --batch-sizes/--seq-sizes exclude each other; give one")
    # The default follows the backend: finer where buckets share one length-free session.
    return text_plan(args.plan, batch_sizes=args.batch_sizes or (), seq_sizes=args.seq_sizes or (),
                     backend=getattr(args, "backend", None))


def text_plans(args: argparse.Namespace, *, head_default: bool = False) -> tuple[Plan | None, Plan]:
    """(the plan a text command builds, the plan its backend options are sized for).

    A plan the flags give (--plan, --batch-sizes/--seq-sizes) is both. Without one, with
    --pack, the head builds its default packed plan (None: rows x row length,
    ``packed_text_plan``) and the options follow that; unpacked, the backend's default
    text plan, passed on, or with ``head_default`` left to the head (whose default stops at
    the model's longest input)."""
    from ..models.frontend import packed_text_plan

    if args.plan or args.batch_sizes or args.seq_sizes or (getattr(args, "pack", None) is None and not head_default):
        plan = plan_from_args(args)
        return plan, plan
    return None, packed_text_plan() if getattr(args, "pack", None) is not None else plan_from_args(args)


def cache_from_args(args: argparse.Namespace, *, required: bool = False, fallback: bool = False) -> Any:
    """The artifact cache the command reads and fills, or None with --no-cache. A cache
    that cannot be written is an error when named (--cache-dir) or ``required``; the
    default location (or any, with ``fallback``: a server keeps serving) falls back to no
    cache, with one warning."""

    if getattr(args, "no_cache", False):
        return None
    cache = cache_at(args)
    try:
        cache.check_writable()
    except ConfigError as err:
        if required or (args.cache_dir and not fallback):  # asked for by name, or the command's purpose: stop
            raise
        # The default location is not writable (a read-only home, a sandbox): run without.
        print(f"bucketwise: warning: {err}; running without a cache", file=sys.stderr)
        return None
    return cache


def parse_backend_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of --backend-option: the value as JSON where it parses (numbers,
    true/false, lists, objects), else the string itself."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not KEY=VALUE; e.g. --backend-option device=GPU or "
            "--backend-option 'providers=[\"CUDAExecutionProvider\"]'")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def backend_options(args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    """Backend options the flags ask for: every --backend-option KEY=VALUE, and --prepack
    (ONNX Runtime only)."""
    options = dict(getattr(args, "backend_option", None) or [])
    prepack = getattr(args, "prepack", "all")
    if prepack == "all":
        return options
    if args.backend != "onnxruntime":
        raise ConfigError(f"--prepack {prepack} is an onnxruntime option; the backend is {args.backend}")
    if "prepack" in options:
        raise ConfigError("give --prepack or --backend-option prepack=..., not both")
    return {**options, "prepack": False if prepack == "none" else plan.hot_buckets(0.9)}


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="onnxruntime", choices=backend_names(), help="default: onnxruntime")
    parser.add_argument("--backend-option", type=parse_backend_option, action="append", metavar="KEY=VALUE",
                        help="an option of the backend, repeatable; VALUE is read as JSON where it parses "
                             "(e.g. device=GPU, 'providers=[\"CUDAExecutionProvider\"]', "
                             "'compiler_args=[\"--optlevel\", \"2\"]'). bucketwise backends lists each backend's")


def cache_at(args: argparse.Namespace) -> Any:
    """The cache that --cache-dir and --cache-max-size name (no checks)."""
    from ..planning.io import parse_bytes
    from ..runtime.cache import ArtifactCache

    size = getattr(args, "cache_max_size", None)
    return ArtifactCache(args.cache_dir, max_bytes=parse_bytes(size) if size else None)


def add_model_options(parser: argparse.ArgumentParser, *, serving: bool = True, images: bool = False,
                      several: bool = False) -> None:
    """The options that pick the model, the backend, the buckets and the cache; ``serving``
    adds those of commands that run the model (--overflow, --no-cache); ``images`` says
    --model also takes image models; ``several`` makes --model repeatable, as NAME=DIR."""
    parser.add_argument("--model", metavar="DIR" if not images else "MODEL", action="append" if several else "store",
                        help="a local Hugging Face encoder folder (default: all-MiniLM-L6-v2, bundled)"
                        + ("; or an image model: resnet50, fasterrcnn, a torchvision name, file.py:function "
                           "(with --plan)" if images else "")
                        + ("; repeat it as NAME=DIR to serve several models, each under its name (a folder "
                           "with a task head serves that task)" if several else ""))
    add_backend_options(parser)
    parser.add_argument("--plan", metavar="PLAN.json", help="buckets from a plan file (batch x seq)")
    parser.add_argument("--batch-sizes", type=sizes, metavar="1,8",
                        help="batch buckets (default: 1,2,4,8,16,32 on onnxruntime, whose buckets of one batch size "
                             "share a session; 1,8 elsewhere)")
    parser.add_argument("--seq-sizes", type=sizes, metavar="16,32,...",
                        help="sequence buckets (default: 8 to 32 in steps of 4, then 8, 16 and 32 up to 256 on "
                             "onnxruntime; 16,32,64,128,256 elsewhere)")
    if serving:
        parser.add_argument("--overflow", default="error", choices=OVERFLOW_POLICIES,
                            help="texts longer than the largest bucket: error (default), truncate, fallback")
        parser.add_argument("--prepack", default="all", choices=("all", "hot", "none"),
                            help="onnxruntime: which buckets keep a prepacked copy of the weights (faster runs, "
                                 "about half the weights in memory each): all (default), none, or hot (those "
                                 "carrying 90%% of a planned --plan's traffic)")
    add_cache_options(parser, optional=serving)


def add_cache_options(parser: argparse.ArgumentParser, *, optional: bool) -> None:
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="artifact cache (default: $BUCKETWISE_CACHE, else ~/.cache/bucketwise)")
    parser.add_argument("--cache-max-size", metavar="BYTES",
                        help="evict least recently used entries past this size, e.g. 5GB (default: "
                             "$BUCKETWISE_CACHE_MAX_SIZE, else no cap); entries in use are never evicted")
    if optional:
        parser.add_argument("--no-cache", action="store_true", help="compile every bucket in memory; read and write no cache")


def add_pack_option(parser: argparse.ArgumentParser, *, compiles: bool = False) -> None:
    """--pack [S] of the commands that run (or, with ``compiles``, compile) texts packed into
    the rows of their buckets (docs/packing.md)."""
    from ..models.frontend import PACKED_SEGMENTS

    parser.add_argument("--pack", type=int, nargs="?", const=PACKED_SEGMENTS, metavar="S",
                        help=f"{'compile the buckets that pack' if compiles else 'pack'} up to S texts (default "
                             f"{PACKED_SEGMENTS}) into each row of a bucket, so rows hold several short texts: "
                             "default buckets 16 and 4 rows x 128, 1 row x 256 (docs/packing.md); every text task (with "
                             "--backend jax: BERT embeddings)")


def check_pack(args: argparse.Namespace) -> None:
    """Refuse a --pack of fewer than one text per row."""
    pack = getattr(args, "pack", None)
    if pack is None:
        return
    if pack < 1:
        raise ConfigError(f"--pack {pack}: the texts per row must be at least 1 (e.g. --pack 16)")


def add_json_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", metavar="FILE", help=f"also write {what} as JSON; '-' writes it to stdout "
                                                       "(and the text to stderr)")


def printer(args: argparse.Namespace) -> Callable[..., None]:
    """``print`` for the human-readable text: to stderr when JSON goes to stdout, nowhere
    with --quiet."""
    if getattr(args, "quiet", False):
        return lambda *a, **k: None
    if getattr(args, "json", None) == "-":
        return lambda *a, **k: print(*a, file=sys.stderr, **k)
    return print


def write_json(target: str | None, data: Any) -> None:
    if not target:
        return
    text = json.dumps(data, indent=2) + "\n"
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        Path(target).write_text(text)


def image_plan(path: str | None, spec: Any) -> Plan:
    """An image plan from ``path`` (``bucketwise plan photos/`` writes one), fitted to the
    spec: a spec with a batch axis gets batch 1 added to buckets that lack it."""
    from ..shapes import BATCH, Bucket

    if not path:
        raise ConfigError("image models need --plan PLAN.json: plan one from your images with "
                          "`bucketwise plan photos/ --k 4` first")
    plan = Plan.load(path)
    if BATCH in spec.dims and BATCH not in plan.dims:
        plan = Plan(tuple(Bucket({**b.as_dict(), BATCH: 1}) for b in plan.buckets), plan.cost_model, plan.meta)
    if BATCH in plan.dims and BATCH not in spec.dims:
        raise ConfigError(f"plan {path!r} buckets the batch, but this model takes one image at a time; "
                          "plan without --batch-sizes")
    return plan


def read_models_file(path: str, flag: str, *, required: Sequence[str], allowed: Sequence[str], example: str,
                     needs: str) -> dict[str, dict[str, Any]]:
    """The ``{"models": {"NAME": {...}}}`` of a JSON file given with ``flag``: each model's
    object, holding every ``required`` key and only ``allowed`` ones, else a
    :class:`ConfigError` naming the flag, the model and what it ``needs``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{flag} {path}: cannot read it as JSON ({err})") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict) or not models:
        raise ConfigError(f'{flag} {path}: expected {{"models": {{"NAME": {example}}}}}')
    for name, entry in models.items():
        if not isinstance(entry, dict) or any(k not in entry for k in required):
            raise ConfigError(f"{flag}: model {name!r} needs {needs}")
        unknown = sorted(set(entry) - set(allowed))
        if unknown:
            raise ConfigError(f"{flag}: model {name!r} has unknown keys {unknown}; allowed: {list(allowed)}")
    return models
