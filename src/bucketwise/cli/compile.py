"""``bucketwise compile``: fill the artifact cache and report time and memory per bucket."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..models.tasks import TASKS
from ._common import (
    add_json_option,
    add_model_options,
    add_pack_option,
    backend_options,
    cache_from_args,
    check_pack,
    image_plan,
    plan_from_args,
    printer,
    text_plans,
    write_json,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    comp = sub.add_parser(
        "compile",
        help="compile every bucket of a plan into the artifact cache, and report time and memory",
        description=(
            "Compile the default model (or --model: a text model folder, with its head, or an image model such as resnet50, "
            "fasterrcnn, a torchvision name or file.py:function) once per bucket of --plan on --backend and save "
            "the artifacts in the cache; a second run loads them instead and reports the time saved. "
            "Prints each bucket's compile time, size on disk and resident memory."
        ),
    )
    add_model_options(comp, serving=False, images=True)
    comp.add_argument("--task", choices=TASKS, help="a text model's task (default: read from the folder's architectures)")
    add_pack_option(comp, compiles=True)
    comp.add_argument("--memory-budget", metavar="BYTES",
                      help="refuse a plan whose artifacts need more resident memory than this, e.g. 1GB")
    comp.add_argument("--workers", type=int, metavar="N",
                      help="compile N buckets at once where the backend allows (default: up to 4; 1 with --memory-budget)")
    add_json_option(comp, "the report")
    comp.add_argument("--no-progress", action="store_true", help="hide progress bars")
    comp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..backends.base import get_backend
    from ..models.tasks import text_model_parts
    from ..models.text import default_text_plan
    from ..models.zoo import is_image_model_name, load_image_model
    from ..planning.io import parse_bytes
    from ..runtime.model import BucketedModel

    budget = parse_bytes(args.memory_budget) if args.memory_budget else None
    cache = cache_from_args(args, required=True)
    start = time.perf_counter()
    task = None
    if args.pack is not None:
        return _run_packed(args, cache, budget, start)
    if is_image_model_name(args.model):
        module, spec, _ = load_image_model(args.model)
        plan = image_plan(args.plan, spec)
    else:
        module, _, spec, task = text_model_parts(args.backend, args.model, args.task)
        given = args.plan or args.batch_sizes or args.seq_sizes
        # The default buckets stop at the model's longest input.
        plan = plan_from_args(args) if given else default_text_plan(spec.meta["encoder"].max_length, args.backend)
    backend = get_backend(args.backend, **backend_options(args, plan))
    model = BucketedModel(module, spec, plan, backend=backend, cache=cache)
    try:
        model.compile(progress=not args.no_progress, workers=args.workers, memory_budget=budget)
    finally:
        model.close()
    seconds = time.perf_counter() - start
    _report(args, model, task, cache, budget, seconds)
    return 0


def _run_packed(args: argparse.Namespace, cache: Any, budget: float | None, start: float) -> int:
    """``compile --pack S``: the packed buckets of a text model (default plan
    ``packed_text_plan``), built as ``embed --pack S`` and ``predict --pack S`` build them,
    so they start warm from the cache; the parity probe checks them once compiled."""
    from ..errors import ConfigError
    from ..models.encoders import model_dir
    from ..models.tasks import folder_task, head_class
    from ..models.zoo import is_image_model_name

    if is_image_model_name(args.model):
        raise ConfigError("--pack packs texts into the rows of text buckets; image models do not pack: drop --pack")
    if args.model is None and args.task in (None, "feature-extraction"):
        task = "feature-extraction"
    else:
        task = folder_task(model_dir(args.model)).check(args.task)
    check_pack(args)
    given, sized_for = text_plans(args)
    head = head_class(task).default(backend=args.backend, plan=given, model=args.model, cache=cache,
                                    backend_options=backend_options(args, sized_for),
                                    progress=not args.no_progress, build=False, pack=args.pack)
    try:
        head.prepare(progress=not args.no_progress, workers=args.workers, memory_budget=budget)
    finally:
        head.model.close()
    _report(args, head.model, f"{task}, up to {args.pack} texts per row", cache, budget, time.perf_counter() - start)
    return 0


def _report(args: argparse.Namespace, model: Any, task: str | None, cache: Any, budget: float | None,
            seconds: float) -> None:
    from ..models.text import DEFAULT_MODEL_NAME
    from ..runtime.tables import compile_table

    say = printer(args)
    report, plan = model.compile_report, model.plan
    say(f"model    {args.model or DEFAULT_MODEL_NAME}{f' ({task})' if task else ''} (fingerprint {model.fingerprint()[:12]})")
    say(f"backend  {args.backend}, {len(plan)} buckets, cache {cache.root}")
    for line in compile_table(report, wall_seconds=seconds, budget=budget):
        say(line)
    write_json(args.json, {"plan": plan.to_json(), "pack": args.pack, "wall_seconds": seconds, **report.as_dict()})
