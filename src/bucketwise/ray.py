"""Scale out on Ray: bucketed replicas behind Ray Serve, corpus embedding with Ray Data.

bucketwise does not grow a cluster layer of its own; it plugs into Ray's.

**Ray Serve.** :func:`app` is an application builder, the form ``serve run`` and Ray Serve
config files take. Each replica compiles (or loads from the artifact cache) a bucketed
sentence encoder, runs bucketwise's own bucket-aware batcher, and serves the same HTTP API
as ``bucketwise serve`` (OpenAI embeddings, KServe v2, /metrics) through a FastAPI
ingress::

    serve run bucketwise.ray:app num_replicas=2 cache_dir=/var/cache/bucketwise
    serve run serve.yaml          # import_path: bucketwise.ray:app, args: {...}

A replica is ready only once its buckets are warm (they are built in its constructor, so
Ray routes nothing to a cold one), and its health check fails while it drains. Replicas
on one host that share ``cache_dir`` compile each bucket once: the cache's file lock makes
the others wait and load it. Each replica mirrors its batch metrics (bucket hits, real and
padded positions, queue and inference time) into Ray's metrics, tagged with the
deployment and replica, so Ray's Prometheus export shows them per replica.

**Ray Data.** :func:`embed_dataset` adds an embedding column to a dataset with
``map_batches`` over an actor pool; each actor holds a compiled bucketed encoder, and
within each block texts are sorted by length and batched into buckets (with ``pack=S``,
packed first-fit decreasing into the rows of packed buckets). :func:`embed_texts`
embeds a list and returns the array in input order (rows carry their index through Ray).

Install with ``pip install 'bucketwise[ray]'``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._optional import require
from .errors import ConfigError

__all__ = ["RayServeOptions", "app", "deployment", "embed_dataset", "embed_texts", "EmbedActor", "require_ray"]


def require_ray() -> Any:
    """The ``ray`` module, or an error naming the extra to install."""
    return require("ray", "ray", purpose="bucketwise.ray")


@dataclass(frozen=True)
class RayServeOptions:
    """What :func:`app` takes: the model and its buckets, the server's limits, and the
    deployment's replicas and resources. Values may be strings (``serve run ... key=value``
    passes strings); they are read as their field's type."""

    # The model and its buckets (as `bucketwise serve` takes them).
    model: str | None = None  # a local encoder folder; default all-MiniLM-L6-v2 (bundled)
    backend: str = "onnxruntime"
    plan: str | None = None  # a plan file (batch x seq)
    batch_sizes: tuple[int, ...] = ()  # default: the backend's default plan
    seq_sizes: tuple[int, ...] = ()
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None  # shared by the replicas of one host; default: bucketwise's cache
    # The server (ServeConfig).
    max_delay_ms: float = 5.0
    batch_wait: str = "adaptive"
    max_queue: int = 1024
    max_texts: int = 256
    api_key_env: str | None = None  # the bearer key is read from this variable in each replica
    allowed_hosts: tuple[str, ...] = ("*",)  # Ray's proxy is the edge; replicas answer any Host
    model_name: str | None = None
    # The deployment.
    name: str = "bucketwise"
    num_replicas: int | str = 1  # or "auto" (Ray's default autoscaling)
    min_replicas: int | None = None  # with max_replicas: autoscaling
    max_replicas: int | None = None
    target_ongoing_requests: float = 32.0  # per replica, when autoscaling
    max_ongoing_requests: int = 256  # per replica: room for the batcher to fill batches
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: Mapping[str, Any] = field(default_factory=dict)  # custom Ray resources, e.g. {"neuron_cores": 2}
    health_check_period_s: float = 5.0

    @classmethod
    def parse(cls, args: Mapping[str, Any] | None) -> RayServeOptions:
        """Options from a mapping of field names to values or strings; an unknown name or
        a value that does not read as its type is a :class:`ConfigError` naming it."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in dict(args or {}).items():
            f = known.get(key)
            if f is None:
                raise ConfigError(f"bucketwise.ray.app: unknown option {key!r}; the options are "
                                  f"{', '.join(sorted(known))}")
            values[key] = _convert(key, str(f.type), value)
        options = cls(**values)
        options.check()
        return options

    def serve_config(self, api_key: str | None = None) -> Any:
        """The replicas' :class:`~bucketwise.serve.ServeConfig`, which checks the server's
        limits (the same checks as ``bucketwise serve``)."""
        from .serve import ServeConfig

        name = self.model_name or (os.path.basename(os.path.normpath(self.model)) if self.model
                                   else ServeConfig.model_name)
        return ServeConfig(max_delay=self.max_delay_ms / 1e3, batch_wait=self.batch_wait, max_queue=self.max_queue,
                           max_texts=self.max_texts, api_key=api_key, model_name=name,
                           model_aliases=() if self.model else ServeConfig.model_aliases,
                           allowed_hosts=self.allowed_hosts)

    def check(self) -> None:
        self.serve_config()  # the server's limits, checked once where the app is built
        if self.plan and (self.batch_sizes or self.seq_sizes):
            raise ConfigError("plan and batch_sizes/seq_sizes exclude each other; give one")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ConfigError("autoscaling needs both min_replicas and max_replicas")
        if self.min_replicas is not None and not 0 <= self.min_replicas <= self.max_replicas:  # type: ignore[operator]
            raise ConfigError(f"min_replicas {self.min_replicas} must be between 0 and max_replicas {self.max_replicas}")
        if isinstance(self.num_replicas, str) and self.num_replicas != "auto":
            raise ConfigError(f"num_replicas {self.num_replicas!r}: a number, or auto")
        if isinstance(self.num_replicas, int) and self.num_replicas < 1:
            raise ConfigError(f"num_replicas must be at least 1, got {self.num_replicas}")
        if self.max_ongoing_requests < 1:
            raise ConfigError(f"max_ongoing_requests must be at least 1, got {self.max_ongoing_requests}")


def _convert(key: str, kind: str, value: Any) -> Any:
    """``value`` (possibly a string from the command line) as the field's type."""
    if not isinstance(value, str):
        if "tuple" in kind and isinstance(value, (list, tuple)):
            return tuple(value)
        return value
    try:
        if kind.startswith("int | str"):
            return value if value == "auto" else int(value)
        if kind.startswith("tuple[int"):
            return tuple(int(v) for v in value.split(",") if v.strip())
        if kind.startswith("tuple[str"):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if kind.startswith("Mapping"):
            parsed = json.loads(value)
            if not isinstance(parsed, dict):
                raise ValueError("not a JSON object")
            return parsed
        if kind.startswith("int"):
            return int(value)
        if kind.startswith("float"):
            return float(value)
    except ValueError as err:
        raise ConfigError(f"bucketwise.ray.app: option {key}={value!r} does not read as {kind} ({err})") from None
    return value


# -- Ray Serve ----------------------------------------------------------------------------------


def app(args: Mapping[str, Any] | None = None) -> Any:
    """A Ray Serve application of bucketed replicas (``serve run bucketwise.ray:app k=v``,
    or ``import_path: bucketwise.ray:app`` in a Serve config file). ``args`` are
    :class:`RayServeOptions` fields."""
    return deployment(RayServeOptions.parse(args)).bind()


def deployment(options: RayServeOptions) -> Any:
    """The Ray Serve deployment of ``options``: replicas, resources and autoscaling set,
    each replica a FastAPI ingress over a compiled bucketed encoder."""
    require_ray()
    from ray import serve

    def build_asgi_app() -> Any:  # a plain function: Ray calls it in each replica
        return replica_app(options)

    @serve.ingress(build_asgi_app)
    class Replica:
        def check_health(self) -> None:
            check_replica_health()  # module-level: it reads this process's replica, not a pickled copy

    scaling: dict[str, Any]
    if options.min_replicas is not None:
        scaling = {"autoscaling_config": {"min_replicas": options.min_replicas, "max_replicas": options.max_replicas,
                                          "target_ongoing_requests": options.target_ongoing_requests}}
    else:
        scaling = {"num_replicas": options.num_replicas}
    actor: dict[str, Any] = {"num_cpus": options.num_cpus}
    if options.num_gpus:
        actor["num_gpus"] = options.num_gpus
    if options.resources:
        actor["resources"] = dict(options.resources)
    return serve.deployment(
        Replica,
        name=options.name,
        ray_actor_options=actor,
        max_ongoing_requests=options.max_ongoing_requests,
        health_check_period_s=options.health_check_period_s,
        **scaling,
    )


_SERVICE: dict[str, Any] = {}  # the Service of this process's replica (one replica per actor)


def check_replica_health() -> None:
    """Raise unless this process's replica has warm buckets and is not draining."""
    service = _SERVICE.get("service")
    if service is None or not service.ready():
        raise RuntimeError("bucketwise replica: buckets not warm")
    if service.draining:
        raise RuntimeError("bucketwise replica: draining")


def replica_app(options: RayServeOptions) -> Any:
    """The FastAPI app of one replica: its encoder built and warm before it returns."""
    from .models.text import SentenceEmbedder
    from .runtime.cache import ArtifactCache
    from .serve import create_app

    api_key = None
    if options.api_key_env:
        api_key = os.environ.get(options.api_key_env)
        if not api_key:
            raise ConfigError(f"api_key_env {options.api_key_env}: that variable is empty or unset in the replica")
    config = options.serve_config(api_key)
    embedder = SentenceEmbedder.default(backend=options.backend, plan=text_plan(options), model=options.model,
                                        backend_options=threads_for(options.backend, options.backend_options,
                                                                    options.num_cpus), progress=False,
                                        cache=ArtifactCache(options.cache_dir))
    fastapi_app = create_app(embedder, config)
    service = fastapi_app.state.service
    service.batch_listeners.append(RayMetrics())
    _SERVICE["service"] = service
    replica = _replica_id()
    if replica:
        @fastapi_app.middleware("http")
        async def name_replica(request: Any, call_next: Any) -> Any:
            response = await call_next(request)
            response.headers["x-bucketwise-replica"] = replica
            return response
    return fastapi_app


def text_plan(options: RayServeOptions | Any) -> Any:
    """The plan ``options`` name: a plan file, sizes over the backend's default, or the default."""
    from .models.text import text_plan as plan_of

    return plan_of(options.plan, batch_sizes=options.batch_sizes, seq_sizes=options.seq_sizes,
                   backend=options.backend)


def threads_for(backend: str, backend_options: Mapping[str, Any], num_cpus: float) -> dict[str, Any]:
    """``backend_options`` with ONNX Runtime's intra-op threads set to the CPUs Ray gives the
    replica or actor (at least 1), unless given: ONNX Runtime otherwise starts a thread per
    core in every process, and replicas or actors sharing a node fight over the cores. (Ray
    sets OMP_NUM_THREADS the same way; ONNX Runtime does not read it.)"""
    options = dict(backend_options)
    if backend == "onnxruntime" and "intra_op_threads" not in options:
        options["intra_op_threads"] = max(1, round(num_cpus))
    return options


def _replica_id() -> str:
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # not in a replica (a test calling replica_app directly)
        return ""


class RayMetrics:
    """Batch metrics mirrored into Ray's metrics (``ray.serve.metrics``: tagged with the
    application, deployment and replica), so Ray's Prometheus export carries bucket hits
    and padding waste per replica: ``ray_bucketwise_bucket_hits_total{bucket=...}``,
    ``ray_bucketwise_real_positions_total``, ``ray_bucketwise_padded_positions_total``,
    ``ray_bucketwise_batches_total``, ``ray_bucketwise_queue_seconds``,
    ``ray_bucketwise_inference_seconds``."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.batches = metrics.Counter("bucketwise_batches", description="Batches run")
        self.hits = metrics.Counter("bucketwise_bucket_hits", description="Artifact runs per bucket",
                                    tag_keys=("bucket",))
        self.real = metrics.Counter("bucketwise_real_positions", description="Positions of real input (tokens)")
        self.padded = metrics.Counter("bucketwise_padded_positions",
                                      description="Positions computed (tokens), padding included")
        self.queue = metrics.Histogram("bucketwise_queue_seconds", description="Time a request waited for its batch",
                                       boundaries=[0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5])
        self.inference = metrics.Histogram("bucketwise_inference_seconds", description="Model run time per batch",
                                           boundaries=[0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5])

    def __call__(self, event: Any, model: Any) -> None:
        self.batches.inc()
        self.hits.inc(tags={"bucket": event.bucket.label()})
        self.real.inc(event.real_positions)
        self.padded.inc(event.bucket.volume)
        for seconds in event.queue_seconds:
            self.queue.observe(seconds)
        self.inference.observe(event.inference_seconds)


# -- Ray Data -----------------------------------------------------------------------------------


class EmbedActor:
    """A ``map_batches`` callable class: one compiled bucketed encoder per actor; each batch
    gets ``output_column`` (float32, rows x the model's dimension), its other columns kept."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        from .models.text import SentenceEmbedder
        from .models.text import text_plan as plan_of
        from .runtime.cache import ArtifactCache

        opts = dict(options)
        opts.setdefault("num_cpus", 1.0)
        self.text_column = opts.pop("text_column")
        self.output_column = opts.pop("output_column")
        pack = opts.get("pack")
        given = opts.get("plan") is not None or opts.get("batch_sizes") or opts.get("seq_sizes")
        # Packed, the default buckets are rows x row length (packed_text_plan), not the backend's.
        plan = plan_of(opts.get("plan"), batch_sizes=opts.get("batch_sizes") or (),
                       seq_sizes=opts.get("seq_sizes") or (), backend=opts["backend"]) if pack is None or given else None
        self.embedder = SentenceEmbedder.default(backend=opts["backend"], plan=plan, model=opts.get("model"),
                                                 backend_options=threads_for(opts["backend"],
                                                                             opts.get("backend_options") or {},
                                                                             opts["num_cpus"]), progress=False,
                                                 overflow=opts.get("overflow", "error"),
                                                 cache=ArtifactCache(opts.get("cache_dir")), pack=pack)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.text_column not in batch:
            raise ConfigError(f"embed_dataset: the dataset has no column {self.text_column!r} "
                              f"(its columns: {', '.join(batch)}); name it with text_column=")
        texts = [str(t) for t in batch[self.text_column].tolist()]
        # embed() sorts the block's texts by length and batches them into buckets; packed,
        # it packs them first-fit decreasing into the rows of its buckets.
        vectors = self.embedder.embed(texts) if texts else np.zeros((0, 0), np.float32)
        return {**batch, self.output_column: vectors}


def embed_dataset(
    dataset: Any,
    *,
    text_column: str = "text",
    output_column: str = "embedding",
    model: str | None = None,
    backend: str = "onnxruntime",
    plan: Any = None,
    batch_sizes: Sequence[int] = (),
    seq_sizes: Sequence[int] = (),
    backend_options: Mapping[str, Any] | None = None,
    cache_dir: str | None = None,
    overflow: str = "error",
    concurrency: int = 1,
    batch_size: int = 1024,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    pack: int | None = None,
) -> Any:
    """``dataset`` (a Ray Dataset with a ``text_column`` of strings) with an
    ``output_column`` of sentence embeddings, computed by ``concurrency`` actors, each with
    a compiled bucketed encoder (loaded from ``cache_dir`` when warm) over ``plan`` (a
    :class:`~bucketwise.Plan` or a plan file), else ``batch_sizes``/``seq_sizes`` over the
    backend's default grid, else the default buckets. ``batch_size`` rows
    go to an actor at a time and are sorted by length there. With ``pack=S`` each actor packs
    up to ``S`` texts into each row of a bucket (``SentenceEmbedder.default(pack=S)``, whose
    default buckets are :func:`~bucketwise.models.frontend.packed_text_plan`): each batch's
    texts are packed first-fit decreasing, so a larger ``batch_size`` fills rows better. Row order across blocks is
    Ray Data's (keep an id column, or set ``preserve_order``); :func:`embed_texts` returns
    input order. The result is lazy, as Ray Datasets are: write it with
    ``.write_parquet(path)`` or take it."""
    ray = require_ray()
    if concurrency < 1 or batch_size < 1:
        raise ConfigError(f"concurrency and batch_size must be at least 1, got {concurrency} and {batch_size}")
    if pack is not None and pack < 1:
        raise ConfigError(f"pack={pack}: the texts per row must be at least 1 (e.g. pack=16)")
    options = {"text_column": text_column, "output_column": output_column, "model": model, "backend": backend,
               "plan": plan, "batch_sizes": tuple(batch_sizes), "seq_sizes": tuple(seq_sizes),
               "backend_options": dict(backend_options or {}), "cache_dir": cache_dir, "overflow": overflow,
               "num_cpus": num_cpus, "pack": pack}
    extra: dict[str, Any] = {"num_gpus": num_gpus} if num_gpus else {}
    return dataset.map_batches(EmbedActor, fn_constructor_kwargs={"options": options},
                               compute=ray.data.ActorPoolStrategy(size=concurrency), batch_size=batch_size,
                               batch_format="numpy", num_cpus=num_cpus, **extra)


def embed_texts(texts: Sequence[str], **kwargs: Any) -> np.ndarray:
    """Embeddings of ``texts`` (float32, len(texts) x dimension) in input order, computed on
    the Ray cluster by :func:`embed_dataset` (its keyword arguments). Starts a local Ray if
    none is running."""
    ray = require_ray()
    if isinstance(texts, str) or not len(texts):
        raise ConfigError("embed_texts: texts must be a non-empty list of strings")
    if not ray.is_initialized():
        ray.init()
    data = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    out = embed_dataset(data, **kwargs).select_columns(["id", kwargs.get("output_column", "embedding")])
    ids: list[np.ndarray] = []
    vectors: list[np.ndarray] = []
    for batch in out.iter_batches(batch_format="numpy", batch_size=None):
        ids.append(batch["id"])
        vectors.append(np.asarray(batch[kwargs.get("output_column", "embedding")], dtype=np.float32))
    order = np.argsort(np.concatenate(ids), kind="stable")
    return np.concatenate(vectors)[order]
