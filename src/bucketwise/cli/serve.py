"""``bucketwise serve``: OpenAI-compatible embeddings, the other text tasks' routes and
KServe v2 over HTTP, for one model or several."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError
from ..models.frontend import PACKED_SEGMENTS, packed_text_plan
from ..planning.io import parse_bytes
from ._common import (
    add_model_options,
    backend_options,
    cache_from_args,
    check_pack,
    image_plan,
    read_models_file,
    text_plans,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve a bucketed model over HTTP (OpenAI embeddings, KServe v2) with bucket-aware batching",
        description=(
            "Serve all-MiniLM-L6-v2 (or --model DIR) at POST /v1/embeddings (OpenAI-compatible) and over the Open "
            "Inference Protocol (KServe v2, /v2/models/NAME/infer); an image model (--model resnet50, fasterrcnn, "
            "a torchvision name or file.py:function, with --plan) over KServe v2 only. Also /healthz, /readyz, "
            "Prometheus /metrics and /openapi.json. Concurrent requests are batched into the plan's buckets. "
            "Binds 127.0.0.1 and answers Host 127.0.0.1/localhost unless --host and --allowed-hosts say otherwise. "
            "On SIGTERM it stops accepting, finishes admitted requests within --drain-timeout, and exits 0."
        ),
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    add_model_options(serve, images=True, several=True)
    serve.add_argument("--models-config", metavar="FILE.json",
                       help='per-model options of several models: {"models": {"NAME": {"path": DIR, "task": ..., '
                            '"backend": ..., "plan": PLAN.json, "overflow": ..., "batch_sizes": [...], '
                            '"seq_sizes": [...], "traffic": FILE, "share": 0.8, "bytes_per_bucket": "30MB", '
                            '"shared_bytes": "90MB"}}}; the flags give what a model leaves out')
    serve.add_argument("--memory-budget", metavar="BYTES",
                       help="with several models: one budget for all their buckets, e.g. 8GB; each model's plan is "
                            "chosen from its traffic (\"traffic\", else --traffic-file's NAME file) and memory "
                            "(\"bytes_per_bucket\", \"shared_bytes\") so the expected cost over the mix is lowest "
                            "(bucketwise plan --models does the same offline)")
    serve.add_argument("--max-delay-ms", type=float, default=5.0, help="longest wait of a queued request for its batch (default 5)")
    serve.add_argument("--batch-wait", choices=("adaptive", "fixed"), default="adaptive",
                       help="adaptive (default): a batch that is not full waits only while requests keep arriving "
                            "(a lone request runs at once), at most --max-delay-ms; fixed: it waits --max-delay-ms")
    serve.add_argument("--streams", type=int, default=2,
                       help="batches run at once (default 2: a second batch starts only beside small ones, of at "
                            "most 4 rows and 128 padded positions, filling the cores a small run leaves idle); "
                            "1: one at a time")
    serve.add_argument("--max-queue", type=int, default=1024, help="rows queued at most; beyond it 503 + Retry-After")
    serve.add_argument("--max-texts", type=int, default=256, help="texts per embeddings request at most")
    serve.add_argument("--max-body-bytes", type=int, default=1_000_000, help="embeddings request body size at most")
    serve.add_argument("--max-infer-bytes", type=int, default=64 << 20, help="KServe v2 infer request body size at most (default 64 MiB)")
    serve.add_argument("--api-key-env", metavar="VAR",
                       help="require 'Authorization: Bearer <key>' on every route but the health probes (/healthz, /readyz, "
                            "/v2/health/live, /v2/health/ready), the key read from this environment variable")
    serve.add_argument("--metrics-without-key", action="store_true",
                       help="with --api-key-env, still answer GET /metrics without the key (for scrapers that have none)")
    serve.add_argument("--allowed-hosts", default="127.0.0.1,localhost,::1", metavar="H1,H2",
                       help="Host headers answered, against DNS rebinding (default 127.0.0.1,localhost,::1; '*' answers any). "
                            "Name the server's public name when binding another address")
    serve.add_argument("--drain-timeout", type=float, metavar="S",
                       help="on SIGTERM, seconds to finish admitted requests; rows not started by then get 503 "
                            "(default: twice a full --max-queue of the largest bucket, timed at start, at least 30)")
    serve.add_argument("--request-timeout", type=float, default=30.0, metavar="S",
                       help="seconds a client may take to send its request body (default 30; then 408)")
    serve.add_argument("--keep-alive-timeout", type=float, default=75.0, metavar="S",
                       help="seconds an idle client connection stays open (default 75: longer than clients' and load "
                            "balancers' own idle limits, so they close first and no request meets a closing connection)")
    serve.add_argument("--traffic-file", metavar="PATH.json",
                       help="write the shapes served (as GET /shapes gives them) to this file every --traffic-every "
                            "seconds and at exit; `bucketwise plan PATH.json` plans buckets from it")
    serve.add_argument("--traffic-every", type=float, default=60.0, metavar="S", help="seconds between writes (default 60)")
    serve.add_argument("--traffic-half-life", type=float, default=3600.0, metavar="S",
                       help="seconds for a served shape's weight to halve, so the histogram follows drift (default 3600)")
    serve.add_argument("--replan-every", type=float, metavar="S",
                       help="every S seconds, plan the length buckets again from the traffic served (GET /shapes); "
                            "when the new plan cuts the expected padded positions per text by --replan-min-gain, build "
                            "it in the background and swap it in (requests in flight finish on the old buckets)")
    serve.add_argument("--replan-min-gain", type=float, default=0.1, metavar="FRACTION",
                       help="smallest cut in expected positions per text that makes a swap (default 0.1)")
    serve.add_argument("--replan-min-rows", type=int, default=100, metavar="N",
                       help="texts served since the last re-plan before another is tried (default 100)")
    serve.add_argument("--plans-dir", metavar="DIR", help="write each swapped-in plan there as plan.gen<N>.json")
    serve.add_argument("--replan-compile-budget", type=float, metavar="S",
                       help="seconds a re-plan's new buckets may take to build, estimated from what this model's "
                            "buckets took; a re-plan over it is not built (default: no limit)")
    serve.add_argument("--replan-memory-budget", metavar="BYTES",
                       help="memory a re-planned model's artifacts may hold resident (e.g. 2GiB), measured as they "
                            "build; over it the build is dropped and the plan in service stays (default: no limit)")
    serve.add_argument("--replan-build-share", type=float, default=0.5, metavar="FRACTION",
                       help="most share of the wall time a re-plan's build may run: it pauses after each bucket, "
                            "leaving the cores to requests (default 0.5; 1: no pause)")
    serve.add_argument("--pack", type=int, nargs="?", const=PACKED_SEGMENTS, metavar="S",
                       help=f"serve text models packed: the batcher packs up to S waiting texts (default "
                            f"{PACKED_SEGMENTS}) into each row of a bucket; default buckets 16 and 4 rows x 128, 1 row x "
                            "256 (docs/packing.md). Texts are served at /v1/embeddings and the task routes, not over "
                            "KServe v2; not with --replan-every or --memory-budget")
    serve.add_argument("--lazy", action="store_true",
                       help="start serving once the largest buckets are built; build the rest in the background "
                            "(until then their inputs run on a larger bucket, counted in /metrics)")
    serve.add_argument("--no-progress", action="store_true", help="hide progress bars")
    serve.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models.zoo import is_image_model_name
    from ..serve import ServeConfig, create_app
    from ..serve.server import run_server, worst_drain_seconds

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ConfigError(f"--api-key-env {args.api_key_env}: that environment variable is empty or unset")
    hosts = tuple(h.strip() for h in args.allowed_hosts.split(",") if h.strip())
    if args.traffic_file:
        target = Path(args.traffic_file)
        if target.is_dir():
            raise ConfigError(f"--traffic-file {args.traffic_file}: it is a folder; name a file to write in it, "
                              f"e.g. {target / 'traffic.json'}")
        if target.exists() and not os.access(target, os.W_OK):
            raise ConfigError(f"--traffic-file {args.traffic_file}: that file cannot be written; name a writable file")
        folder = target.resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ConfigError(f"--traffic-file {args.traffic_file}: its folder {str(folder)!r} does not exist or "
                              "cannot be written; name a file in a writable folder")
    if args.keep_alive_timeout <= 0:
        raise ConfigError(f"--keep-alive-timeout must be > 0 seconds, got {args.keep_alive_timeout}")
    replan_memory = None
    if args.replan_memory_budget:
        try:
            replan_memory = parse_bytes(args.replan_memory_budget)
        except InputError as err:
            raise ConfigError(f"--replan-memory-budget: {err}") from None
    _check_pack(args)
    if args.drain_timeout is not None and args.drain_timeout < 0:
        raise ConfigError(f"--drain-timeout must be >= 0 seconds, got {args.drain_timeout}")
    entries, served_name = _served_entries(args)
    several = entries is not None
    if several:
        args.model = None
    else:
        args.model = (args.model or [None])[-1] if isinstance(args.model, list) else args.model
    image = not several and is_image_model_name(args.model)
    if image and args.pack is not None:
        raise ConfigError(f"--pack packs texts; --model {args.model} is an image model: drop --pack")
    name = served_name or (args.model if image else (Path(args.model).name if args.model else ServeConfig.model_name))
    config = ServeConfig(max_texts=args.max_texts, max_body_bytes=args.max_body_bytes,
                         max_delay=args.max_delay_ms / 1e3, batch_wait=args.batch_wait, streams=args.streams,
                         max_queue=args.max_queue,
                         api_key=api_key, metrics_without_key=args.metrics_without_key,
                         model_name=name, model_aliases=() if args.model else ServeConfig.model_aliases,
                         allowed_hosts=hosts, request_timeout=args.request_timeout,
                         max_infer_bytes=args.max_infer_bytes, traffic_file=args.traffic_file,
                         traffic_every=args.traffic_every, traffic_half_life=args.traffic_half_life,
                         replan_every=args.replan_every, replan_min_gain=args.replan_min_gain,
                         replan_min_rows=args.replan_min_rows, plans_dir=args.plans_dir,
                         replan_compile_budget=args.replan_compile_budget, replan_memory_budget=replan_memory,
                         replan_build_share=args.replan_build_share)
    if several:
        heads, images, joint = _load_heads(args, entries or {})
        app = create_app(None, config, heads=heads, models=images)
        if joint is not None:
            # A re-plan of one model holds at most what the others' plans leave of the budget.
            for replanner in app.state.service.replanners:
                room = joint.room_for(replanner.name)
                replanner.memory_budget = room if replanner.memory_budget is None else min(room, replanner.memory_budget)
        models = {**{n: (h.task, h.model) for n, h in heads.items()},
                  **{n: ("image, /v2/models/" + n + "/infer", m) for n, m in images.items()}}
        drain = args.drain_timeout if args.drain_timeout is not None else \
            max(30.0, 2 * sum(worst_drain_seconds(m, args.max_queue) for _, m in models.values()))
        for served_name, (what, model) in models.items():
            print(f"serving {served_name} ({what}, {model.backend.name}, {model.plan})")
        print(f"serving {len(models)} models on http://{args.host}:{args.port}; drain timeout {drain:.0f} s")
        return run_server(app, host=args.host, port=args.port, drain_timeout=drain, keep_alive=args.keep_alive_timeout)
    if image:
        model = _image_model(args, args.model)
        app = create_app(None, config, models={name: model})
        routes = f"/v2/models/{name}/infer"
    else:
        from ..models.text import SentenceEmbedder

        plan, sized_for = text_plans(args)
        cache = cache_from_args(args, fallback=True)
        embedder = SentenceEmbedder.default(backend=args.backend, plan=plan, overflow=args.overflow,
                                            progress=not args.no_progress, model=args.model, cache=cache,
                                            lazy=args.lazy, backend_options=backend_options(args, sized_for),
                                            build_in_child=cache is not None and not args.lazy, pack=args.pack)
        model = embedder.model
        app = create_app(embedder, config)
        routes = f"/v1/embeddings and /v2/models/{name}/infer"
    drain = args.drain_timeout if args.drain_timeout is not None else max(30.0, 2 * worst_drain_seconds(model, args.max_queue))
    print(f"serving {name} on http://{args.host}:{args.port} at {routes} ({args.backend}, {model.plan}); "
          f"drain timeout {drain:.0f} s")
    return run_server(app, host=args.host, port=args.port, drain_timeout=drain, keep_alive=args.keep_alive_timeout)


def _image_model(args: argparse.Namespace, path: str, *, plan: str | None = None, batch_sizes: Any = None,
                 backend: str | None = None, overflow: Any = None):  # type: ignore[no-untyped-def]
    """The torchvision model ``path`` (a zoo name), compiled: its plan, batch sizes, backend
    and overflow as given, else from the flags."""
    from ..models.zoo import load_image_model
    from ..plans import Plan
    from ..runtime.model import BucketedModel
    from ..shapes import BATCH, Bucket

    module, spec, _ = load_image_model(path)
    buckets = image_plan(plan or args.plan, spec)
    batch_sizes = batch_sizes or args.batch_sizes
    if batch_sizes:
        buckets = Plan(tuple(Bucket({**{d: s for d, s in b.sizes if d != BATCH}, BATCH: n})
                             for b in buckets.buckets for n in batch_sizes))
    model = BucketedModel(module, spec, buckets, backend=backend or args.backend, overflow=overflow or args.overflow,
                          backend_options=backend_options(args, buckets),
                          cache=cache_from_args(args, fallback=True))
    return model.compile(progress=not args.no_progress, lazy=args.lazy)


MODEL_KEYS = ("path", "task", "backend", "plan", "overflow", "batch_sizes", "seq_sizes", "traffic", "share",
              "bytes_per_bucket", "shared_bytes", "pack")


def _check_pack(args: argparse.Namespace) -> None:
    """Refuse --pack where it cannot apply, naming the way out."""
    if args.pack is None:
        return
    check_pack(args)
    if args.replan_every is not None:
        raise ConfigError("--replan-every re-plans unpacked buckets from the traffic; a packed server keeps its "
                          "buckets: drop --pack or --replan-every")
    if args.memory_budget:
        raise ConfigError("--memory-budget splits unpacked buckets among the models; drop --pack or --memory-budget")


def _served_entries(args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]] | None, str | None]:
    """Each model to serve by name, with its options, when the server serves several (or
    one folder with a task head); else None, for one embedder or image model served as
    before, with the name ``--model NAME=DIR`` gave it (None for none)."""
    from ..models.encoders import model_dir
    from ..models.tasks import folder_task
    from ..models.zoo import is_image_model_name

    given = args.model or []
    entries: dict[str, dict[str, Any]] = {}
    for value in given:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = Path(value).name, value
        if not name or not path:
            raise ConfigError(f"--model {value!r}: give DIR or NAME=DIR")
        if name in entries:
            raise ConfigError(f"--model: two models are named {name!r}; name each once (NAME=DIR)")
        entries[name] = {"path": path}
    if args.models_config:
        models = read_models_file(args.models_config, "--models-config", required=("path",), allowed=MODEL_KEYS,
                                  example='{"path": DIR, ...}', needs='an object with a "path" (its folder)')
        for name, options in models.items():
            entries[name] = {**entries.get(name, {}), **options}
    if args.memory_budget and len(entries) < 2:
        raise ConfigError("--memory-budget splits one budget among several models; serve two or more (--model NAME=DIR)")
    if len(entries) == 1 and not args.models_config:
        (entry,) = entries.values()
        path = entry["path"]
        if is_image_model_name(path) or folder_task(model_dir(path)).task == "feature-extraction":
            args.model = [path]
            return None, next(iter(entries))  # one embedder or image model: served as before, under its name
    if not entries:
        return None, None
    if len(entries) > 1 and args.plan:
        raise ConfigError("--plan names the buckets of one model; with several, give each its \"plan\" in --models-config")
    if args.memory_budget:
        for name, entry in entries.items():
            if is_image_model_name(entry["path"]):
                raise ConfigError(f"--memory-budget plans text models from their token lengths; --model "
                                  f"{name}={entry['path']} is an image model: serve it without --memory-budget")
    return entries, None


def _load_heads(args: argparse.Namespace, entries: dict[str, dict[str, Any]]
                ) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Each text entry's head, compiled: its task from its folder (or its "task"), its
    options from the entry, else from the flags; each image entry's model (served over
    KServe v2); and with --memory-budget, the split that chose their plans (else None)."""
    from ..models.encoders import model_dir
    from ..models.tasks import folder_task, head_class
    from ..models.text import text_plan
    from ..models.zoo import is_image_model_name

    heads, images = {}, {}
    cache = cache_from_args(args, fallback=True)
    joint = _split_budget(args, entries, cache) if args.memory_budget else None
    planned = joint.plans if joint is not None else {}
    for name, entry in entries.items():
        if is_image_model_name(entry["path"]):
            print(f"loading  {name}: {entry['path']} (image) on {entry.get('backend', args.backend)}")
            images[name] = _image_model(args, entry["path"], plan=entry.get("plan"), batch_sizes=entry.get("batch_sizes"),
                                        backend=entry.get("backend"), overflow=entry.get("overflow"))
            continue
        task = folder_task(model_dir(entry["path"])).check(entry.get("task"))
        backend = entry.get("backend", args.backend)
        batch_sizes = entry.get("batch_sizes") or args.batch_sizes or ()
        seq_sizes = entry.get("seq_sizes") or args.seq_sizes or ()
        plan_path = entry.get("plan") or args.plan
        plan = planned.get(name) or (text_plan(plan_path, batch_sizes=batch_sizes, seq_sizes=seq_sizes, backend=backend)
                                     if plan_path or batch_sizes or seq_sizes else None)
        pack = entry.get("pack", args.pack)
        if pack is not None:
            check_pack(argparse.Namespace(pack=pack))
        if plan is None and pack is not None:
            plan = packed_text_plan()
        options = backend_options(args, plan) if plan is not None else dict(getattr(args, "backend_option", None) or [])
        print(f"loading  {name}: {entry['path']} ({task}) on {backend}")
        heads[name] = head_class(task).default(backend=backend, plan=plan, overflow=entry.get("overflow", args.overflow),
                                               progress=not args.no_progress, model=entry["path"], cache=cache,
                                               lazy=args.lazy, backend_options=options,
                                               build_in_child=cache is not None and not args.lazy,
                                               **({"pack": pack} if pack is not None else {}))
    return heads, images, joint


def _split_budget(args: argparse.Namespace, entries: dict[str, dict[str, Any]], cache: Any) -> Any:
    """Each model's plan under one --memory-budget (planning.joint.split_budget), printed as a
    table: its buckets, memory and expected cost. ``cache`` holds the buckets measured."""
    from ..models.frontend import DEFAULT_BATCH_SIZES, FINE_BATCH_SIZES, length_free
    from ..models.tasks import text_model_parts
    from ..planning.io import read_shapes
    from ..planning.joint import ModelDemand, split_budget
    from ..shapes import BATCH, Bucket

    demands = []
    for name, entry in entries.items():
        if "plan" in entry:
            raise ConfigError(f"--memory-budget plans every model; model {name!r} gives its own \"plan\": drop one")
        traffic = entry.get("traffic")
        if traffic is None and args.traffic_file:
            path = Path(args.traffic_file)
            candidate = path.with_name(f"{path.stem}.{name}{path.suffix}")
            traffic = str(candidate) if candidate.is_file() else None
        if traffic is None:
            raise ConfigError(f"--memory-budget: model {name!r} needs its traffic (\"traffic\": FILE in --models-config, or "
                              f"the file --traffic-file wrote for it)")
        obs = read_shapes(traffic)
        backend = entry.get("backend", args.backend)
        # The folder's configuration only (never its weights): its longest input, and its
        # cache identity for the sizes measured.
        module, _, spec, task = text_model_parts(backend, entry["path"], entry.get("task"))
        batches = entry.get("batch_sizes") or args.batch_sizes or \
            list(FINE_BATCH_SIZES if length_free(backend) else DEFAULT_BATCH_SIZES)
        longest = spec.meta["encoder"].max_length
        if "bytes_per_bucket" not in entry:
            largest = Bucket({BATCH: max(batches), "seq": longest})  # the bucket every plan here has at its top
            entry = {**entry, **_measured_memory(cache, name, entry, backend, module, spec, task, largest,
                                                 dict(getattr(args, "backend_option", None) or []), not args.no_progress)}
        demands.append(ModelDemand(name=name, observed=obs, share=float(entry.get("share", obs.total)),
                                   bytes_per_bucket=parse_bytes(str(entry["bytes_per_bucket"])),
                                   shared_bytes=parse_bytes(str(entry.get("shared_bytes", 0))),
                                   # The top bucket holds every input the model takes, as served plans do.
                                   options={"batch_sizes": batches, "cap": longest, "grid": "auto"}))
    joint = split_budget(demands, parse_bytes(args.memory_budget))
    print("planned  one memory budget across the models:")
    print(joint)
    return joint


def _measured_memory(cache: Any, name: str, entry: dict[str, Any], backend: str, module: Any, spec: Any, task: str,
                     largest: Any, backend_options: dict[str, Any], progress: bool) -> dict[str, Any]:
    """``bytes_per_bucket`` and ``shared_bytes`` of a model (``module`` and ``spec``) as its
    cache entries measured them (the largest bucket, and what its buckets share once).
    With none measured yet, its ``largest`` bucket is compiled into the cache by a child
    process first, and measured there: served plans hold that bucket, so nothing is
    compiled that the server would not load."""
    from ..models.frontend import compile_in_child
    from ..plans import Plan
    from ..runtime.cache import fingerprint
    from ..runtime.memory import format_bytes

    if cache is not None:
        model = fingerprint(module, spec)
        found, count, shared = cache.largest_resident(model=model, backend=backend)
        if found is None:
            print(f"memory   {name}: none of its {backend} buckets is measured in {cache.root}; compiling its largest "
                  f"({', '.join(f'{d}={n}' for d, n in largest.as_dict().items())}) to measure it")
            if compile_in_child(task, backend, Plan((largest,)), cache.root, model=entry["path"],
                                backend_options=backend_options, progress=progress):
                found, count, shared = cache.largest_resident(model=model, backend=backend)
        if found is not None:
            print(f"memory   {name}: {format_bytes(found)} per bucket, {format_bytes(shared)} shared, as "
                  f"{count} {backend} buckets measured in {cache.root}")
            return {"bytes_per_bucket": found, "shared_bytes": shared}
    raise ConfigError(f"--memory-budget: model {name!r} needs its memory per bucket: \"bytes_per_bucket\" in "
                      f"--models-config, or buckets of it measured in the cache (bucketwise compile --model "
                      f"{entry['path']} --backend {backend} measures them; the server does it itself where it has a "
                      f"cache and the backend caches its buckets)")
