"""``bucketwise plan``: choose buckets from observed shapes and report on them."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ..backends.base import backend_names
from ..errors import ConfigError, InputError
from ..models.frontend import PACKED_SEGMENTS
from ._common import add_json_option, printer, read_models_file, sizes, write_json

TEXT_SUFFIXES = (".txt", ".jsonl")


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    plan.add_argument("--model", metavar="DIR", help="texts are tokenized (and --cost measured profiles) with this local "
                      "Hugging Face encoder folder (default: all-MiniLM-L6-v2, bundled)")
    plan.add_argument("--k", type=int, default=None,
                      help="most buckets per batch size (default: 16 for texts on onnxruntime, whose lengths of one "
                           "batch size share a session, so a bucket costs no memory; else 4)")
    plan.add_argument("--dims", metavar="seq", help="dim names of the shapes' columns, comma-separated")
    plan.add_argument("--cost", choices=("volume", "measured"), default=None,
                      help="volume: padding volume (default; with --pack the default is a+bL+cL^2 with c/b = 0.003, "
                           "docs/planning.md); measured: profile the default model on --backend and fit a+bL+cL^2")
    plan.add_argument("--backend", default="onnxruntime", choices=backend_names(),
                      help="the backend the plan is for: it sets the default --k and --batch-sizes, and --cost "
                           "measured profiles it (default onnxruntime)")
    plan.add_argument("--cap", type=int, help="upper bound (1-D): the top bucket; the share of inputs above it is reported "
                      "(texts default: the longest input the model takes)")
    plan.add_argument("--headroom", type=float, metavar="FRACTION",
                      help="the top bucket holds this much more than the largest input seen, e.g. 0.25 (default 0; "
                           "for texts, given instead of the model's longest input)")
    plan.add_argument("--grid", type=_grid, default="auto",
                      help="bucket sizes are multiples of this (e.g. 8, 16, 64); 1: any size; default auto: "
                           "8 for sequences, 32 for image sides")
    plan.add_argument("--batch-sizes", type=sizes, metavar="1,8", help="batch buckets to combine with the planned ones (texts default: 1,2,4,8,16,32 on onnxruntime, "
                           "1,8 elsewhere)")
    plan.add_argument("--memory-budget", metavar="BYTES",
                      help="total artifact memory, e.g. 2GB; per bucket: --bytes-per-bucket (and --shared-bytes), "
                           "else the sizes measured in the cache by `bucketwise compile`")
    plan.add_argument("--bytes-per-bucket", metavar="BYTES", help="memory one more artifact adds, e.g. 45MB")
    plan.add_argument("--shared-bytes", metavar="BYTES",
                      help="memory every artifact shares, counted once against --memory-budget (e.g. weights mapped "
                           "once: 87MB); default 0, or as measured in the cache")
    plan.add_argument("--cache-dir", metavar="DIR", help="cache that holds measured sizes (default: $BUCKETWISE_CACHE, else ~/.cache/bucketwise)")
    plan.add_argument("--compile-budget", type=float, metavar="SECONDS", help="total compile time (needs --seconds-per-bucket)")
    plan.add_argument("--seconds-per-bucket", type=float, metavar="SECONDS", help="compile time of one artifact")
    plan.add_argument("--neuron-weights", type=int, metavar="N", help="cap k by the AWS Neuron rule of thumb, round(1e9 / N weights)")
    plan.add_argument("--compare", type=sizes, metavar="32,64,128", help="also report these buckets")
    plan.add_argument("--models", metavar="MODELS.json",
                      help='several models under one --memory-budget: {"models": {"NAME": {"traffic": FILE, "share": '
                           '0.8, "bytes_per_bucket": "30MB", "shared_bytes": "90MB", "k": 8}}}; each model\'s shapes '
                           '(a traffic file of bucketwise serve), its share of the requests (default: the inputs its '
                           'traffic counts) and its memory. Writes one plan per model, PLAN.NAME.json, and compares '
                           'the split with an equal one')
    plan.add_argument("--pack", type=int, nargs="?", const=PACKED_SEGMENTS, metavar="S",
                      help=f"plan packed shapes (rows x row length) for `bucketwise embed --pack S` (S texts per row, "
                           f"default {PACKED_SEGMENTS}): chooses the row lengths and rows of --k shapes (default 3) "
                           "and reports them beside the best unpacked plan of as many shapes (docs/planning.md)")
    plan.add_argument("--output", default="plan.json", metavar="PLAN.json", help="where to write the plan (default plan.json)")
    plan.add_argument("--plot", metavar="FILE.png", help="draw the histogram/scatter with bucket edges (needs matplotlib)")
    add_json_option(plan, "the plan and report")
    plan.add_argument("--no-progress", action="store_true", help="hide progress bars")
    plan.set_defaults(func=run)


def _grid(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from ..planning import Observations, fit_cost, neuron_bucket_count, plan, report
    from ..planning.io import parse_bytes, plot_plan, read_shapes

    say = printer(args)
    if args.pack is not None:
        _check_pack_args(args)
    if args.models:
        return _joint(args, say)
    dims = tuple(d.strip() for d in args.dims.split(",")) if args.dims else None
    is_text = args.input is None or Path(args.input).suffix in TEXT_SUFFIXES
    if is_text:
        from ..corpus import stdlib_docstrings
        from ..models.encoders import encoder_info
        from ..models.text import DEFAULT_BATCH_SIZES, FINE_BATCH_SIZES, length_free, load_default_tokenizer

        texts = _read_texts(args.input) if args.input else stdlib_docstrings()
        tokenizer = load_default_tokenizer(args.model)
        obs = Observations.from_texts(texts, tokenizer)
        # The top bucket covers every input the model takes, unless told otherwise.
        longest = encoder_info(args.model, tokenizer).max_length
        if args.cap is None:
            args.cap = longest if args.headroom is None else min(longest, math.ceil(obs.max("seq") * (1 + args.headroom)))
        source = args.input or "built-in corpus"
        fine = length_free(args.backend)
        batch_sizes = args.batch_sizes or list(FINE_BATCH_SIZES if fine else DEFAULT_BATCH_SIZES)
    else:
        obs = read_shapes(args.input, dims=dims)
        source = args.input
        batch_sizes = args.batch_sizes
        fine = False
        if "seq" in obs.dims:  # token lengths: no bucket past what the model takes
            model_max = _model_max_length(args.model)
            if model_max is not None and (args.cap if args.cap is not None else obs.max("seq")) > model_max:
                args.cap = model_max
    say(f"observed {obs.total:g} inputs ({len(obs.shapes)} distinct shapes over {'x'.join(obs.dims)}) from {source}")

    cost: Any = None
    if args.cost == "measured":
        if not is_text:
            raise ConfigError("--cost measured profiles a text model (--model, default all-MiniLM-L6-v2); give texts (.txt/.jsonl) or no input")
        from ..models.text import load_default_encoder
        from ..runtime.profile import measure_cost, profile_ladder

        module, _, spec = load_default_encoder(args.model)
        candidates = profile_ladder(obs.max("seq") if args.cap is None else args.cap)
        table = measure_cost(module, spec, candidates, backend=args.backend, progress=not args.no_progress)
        cost = fit_cost(list(table.costs), list(table.costs.values()), form="transformer")
        terms = ", ".join(f"{c * 1e3:.4g}" for _, c in cost.terms)
        say(f"cost     fitted on {args.backend}: per row ms = {terms} (1, L, L^2 coefficients)")
    if args.pack is not None:
        return _packed(args, say, obs, cost, is_text)
    bytes_per_bucket = parse_bytes(args.bytes_per_bucket) if args.bytes_per_bucket else None
    shared_bytes = parse_bytes(args.shared_bytes) if args.shared_bytes else 0.0
    if args.memory_budget and bytes_per_bucket is None:
        bytes_per_bucket, measured_shared = _measured_bytes_per_bucket(args, is_text, say)
        shared_bytes = shared_bytes if args.shared_bytes else measured_shared
    # A length bucket costs no memory where lengths share a session: plan more of them.
    k = args.k if args.k is not None else (16 if fine else 4)
    if args.neuron_weights:
        k = min(k, neuron_bucket_count(args.neuron_weights))
    p = plan(
        obs, k=k, cost=cost, cap=args.cap, grid=args.grid, headroom=args.headroom or 0.0, batch_sizes=batch_sizes,
        memory_budget=parse_bytes(args.memory_budget) if args.memory_budget else None,
        bytes_per_bucket=bytes_per_bucket, shared_bytes=shared_bytes,
        compile_budget=args.compile_budget, seconds_per_bucket=args.seconds_per_bucket,
    )
    rep = report(p, obs, user=args.compare)
    say(rep)
    p.save(args.output)
    if is_text:
        model = f" --model {args.model}" if args.model else ""
        step = f"use it with: bucketwise embed{model} --plan {args.output}"
        if args.model and _task(args.model) != "feature-extraction":
            step = f"use it with: bucketwise predict{model} --input {args.input or 'FILE'} --plan {args.output}"
    elif "seq" in obs.dims:
        model = f" --model {args.model}" if args.model else ""
        step = f"use it with: bucketwise serve{model} --plan {args.output}"
    elif set(obs.dims) == {"height", "width"}:  # image sides: an image folder, or a shapes file of them
        images = args.input if Path(args.input).is_dir() else "IMAGES"
        step = f"use it with: bucketwise predict {images} --plan {args.output} --model resnet50"
    else:
        step = (f"its dims ({', '.join(obs.dims)}) are neither token lengths (seq) nor image sides (height, width): "
                f"load it with bucketwise.Plan.load({str(args.output)!r}) for a model over them, or, for token lengths, "
                "name their column seq to serve a text model with them")
    say(f"wrote    {args.output} ({len(p)} buckets: {p}); {step}")
    if args.plot:
        from ..planning.report import alternatives

        alts = alternatives(obs, p, k)
        shown: dict[str, Any] = {"planned": p, **{n: alts[n] for n in ("powers-of-two", "pad-to-max") if n in alts}}
        say(f"wrote    {plot_plan(obs, shown, args.plot)}")
    write_json(args.json, {"plan": p.to_json(), "report": rep.as_dict()})
    return 0


# Flags that plan unpacked buckets only: budgets in artifacts, other plans to compare, the plot.
_NOT_PACKED = ("models", "memory_budget", "bytes_per_bucket", "shared_bytes", "compile_budget", "seconds_per_bucket",
               "compare", "plot")


def _check_pack_args(args: argparse.Namespace) -> None:
    if args.pack < 1:
        raise ConfigError(f"--pack {args.pack}: the texts per row must be at least 1 (e.g. --pack 16, or --pack alone "
                          f"for {PACKED_SEGMENTS})")
    if args.k is not None and args.k < 1:
        raise ConfigError(f"--k {args.k}: a packed plan needs at least 1 shape (e.g. --k 3, the default with --pack)")
    given = [name for name in _NOT_PACKED if getattr(args, name)]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ConfigError(f"{flags} plan(s) unpacked buckets only; with --pack the budget is --k shapes "
                          f"(default 3): drop {flags} or --pack")


def _packed(args: argparse.Namespace, say: Any, obs: Any, cost: Any, is_text: bool) -> int:
    """``plan --pack S``: packed shapes for ``embed --pack S``, beside the best unpacked plan of as many."""
    from ..costs import VolumeCost
    from ..planning import neuron_bucket_count
    from ..planning.packed import DEFAULT_PACKED_COST, PACKED_BATCH_SIZES, packed_report, plan_packed

    if len(obs.dims) != 1:
        raise ConfigError(f"--pack plans token lengths (one column, seq); {args.input} has dims {', '.join(obs.dims)}: "
                          "give a shapes file of one column, or texts")
    if cost is None:
        cost = VolumeCost() if args.cost == "volume" else DEFAULT_PACKED_COST
    k = args.k if args.k is not None else 3
    if args.neuron_weights:
        k = min(k, neuron_bucket_count(args.neuron_weights))
    step = 8 if args.grid == "auto" else int(args.grid)
    cap = args.cap
    if cap is None and args.headroom:
        cap = math.ceil(obs.max(obs.dims[0]) * (1 + args.headroom))
    chosen = plan_packed(obs, k=k, max_segments=args.pack, cost=cost, batch_sizes=args.batch_sizes or PACKED_BATCH_SIZES,
                         cap=cap, grid=step)
    rep = packed_report(chosen, obs)
    cost_name = ("a+bL+cL^2 per row, b = 1, c = 0.003 (default)" if cost is DEFAULT_PACKED_COST else
                 "padding volume" if isinstance(cost, VolumeCost) else "a+bL+cL^2 per row, fitted")
    say(f"packed   {chosen.evaluated} sets of row lengths tried from {', '.join(map(str, chosen.candidates))}; "
        f"cost: {cost_name}")
    say(rep)
    chosen.plan.save(args.output)
    model = f" --model {args.model}" if args.model else ""
    say(f"wrote    {args.output} ({len(chosen.plan)} shapes: {chosen.plan}); use it with: "
        f"bucketwise embed{model} --pack {args.pack} --plan {args.output}")
    write_json(args.json, {"plan": chosen.plan.to_json(), "report": rep.as_dict()})
    return 0


def _model_max_length(model: str | None) -> int | None:
    """The longest input of the text model ``model`` (default all-MiniLM-L6-v2), or None
    where the text extra is not installed."""
    from ..errors import MissingDependencyError
    from ..models.encoders import encoder_info, load_default_tokenizer

    try:
        return encoder_info(model, load_default_tokenizer(model)).max_length
    except MissingDependencyError:
        return None


def _task(model: str) -> str:
    from ..models.encoders import model_dir
    from ..models.tasks import folder_task

    return folder_task(model_dir(model)).task


def _read_texts(path: str) -> list[Any]:
    """The texts and pairs a file holds: one per line, or JSONL records of any text task."""
    from ..data import read_records, record_texts

    if Path(path).suffix not in (".jsonl", ".json"):
        from ..data import read_texts

        return read_texts(Path(path))
    return record_texts(read_records(path))


def _measured_bytes_per_bucket(args: argparse.Namespace, is_text: bool, say: object) -> tuple[float, float]:
    """The largest resident size one bucket adds, and the memory buckets share once, as
    measured in the cache for the default model on --backend."""
    from ..models.text import lazy_default_encoder
    from ..runtime.cache import ArtifactCache, fingerprint
    from ..runtime.memory import format_bytes

    if not is_text:
        raise ConfigError("--memory-budget needs the memory of one bucket: give --bytes-per-bucket")
    lazy, _, spec = lazy_default_encoder(args.model)
    cache = ArtifactCache(args.cache_dir)
    largest, count, shared = cache.largest_resident(model=fingerprint(lazy, spec), backend=args.backend)
    if largest is None:
        raise InputError(f"--memory-budget needs the memory of one bucket, and {cache.root} holds no "
                         f"measured {args.backend} buckets of this model: give --bytes-per-bucket, or "
                         f"first run `bucketwise compile --backend {args.backend}` so the cache holds measured sizes")
    say(f"memory   {format_bytes(largest)} per bucket: the largest resident size of {count} "  # type: ignore[operator]
        f"{args.backend} buckets measured in {cache.root}"
        + (f", plus {format_bytes(shared)} they share, once" if shared else ""))
    return float(largest), float(shared)


JOINT_KEYS = ("traffic", "share", "bytes_per_bucket", "shared_bytes", "k", "batch_sizes", "cap", "grid")


def _joint(args: argparse.Namespace, say: Any) -> int:
    """``plan --models FILE --memory-budget B``: every model's plan under one budget."""

    from ..errors import PlanError
    from ..planning.io import parse_bytes, read_shapes
    from ..planning.joint import ModelDemand, equal_split, plan_choices, split_budget

    if not args.memory_budget:
        raise ConfigError("--models splits one --memory-budget among the models; give it, e.g. --memory-budget 8GB")
    if args.input:
        raise ConfigError("--models reads each model's shapes from its \"traffic\"; give no INPUT")
    models = read_models_file(args.models, "--models", required=("traffic", "bytes_per_bucket"), allowed=JOINT_KEYS,
                              example='{"traffic": FILE, "bytes_per_bucket": BYTES, ...}',
                              needs='"traffic" (its shapes file) and "bytes_per_bucket"')
    demands = []
    for name, entry in models.items():
        obs = read_shapes(entry["traffic"])
        options: dict[str, Any] = {k: entry[k] for k in ("batch_sizes", "cap", "grid") if k in entry}
        options.setdefault("grid", args.grid)
        demands.append(ModelDemand(name=name, observed=obs, share=float(entry.get("share", obs.total)),
                                   bytes_per_bucket=parse_bytes(str(entry["bytes_per_bucket"])),
                                   shared_bytes=parse_bytes(str(entry.get("shared_bytes", 0))),
                                   max_k=int(entry.get("k", args.k or 8)), options=options))
    budget = parse_bytes(args.memory_budget)
    choices = plan_choices(demands)  # planned once, for the split and the comparison
    joint = split_budget(demands, budget, choices=choices)
    say(f"planned  one budget of {budget / 2**20:.0f} MiB across {len(demands)} models")
    say(joint)
    equal = None
    try:
        equal = equal_split(demands, budget, choices=choices)
    except PlanError as err:  # the comparison only: an equal part may hold nothing
        say(f"equal    an equal split cannot serve every model: {err}")
    if equal is not None:
        say(f"equal    each model alone in {budget / len(demands) / 2**20:.0f} MiB: expected cost per request "
            f"{equal.expected_cost:.4g} against {joint.expected_cost:.4g} planned "
            f"({equal.expected_cost / joint.expected_cost:.3f}x)")
    out = Path(args.output)
    for name, chosen in joint.plans.items():
        target = out.with_name(f"{out.stem}.{name}{out.suffix}")
        chosen.save(target)
        say(f"wrote    {target} ({len(chosen)} buckets)")
    write_json(args.json, {"joint": joint.as_dict(), "equal": equal.as_dict() if equal else None})
    return 0
