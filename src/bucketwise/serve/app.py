"""The HTTP app: OpenAI-compatible embeddings and the Open Inference Protocol (KServe v2)
over bucket-aware batchers, with health, readiness and Prometheus metrics.

Routes:

- ``POST /v1/embeddings``: OpenAI embeddings, for text encoders; ``GET /v1/models``:
  every model served (:mod:`bucketwise.serve.openai`);
- the other text tasks, each in the shape its clients speak (:mod:`bucketwise.serve.tasks`):
  TEI's ``/predict`` and ``/rerank``, infinity's ``/classify``, Cohere's ``/v2/rerank``,
  and ``/token-classification`` and ``/question-answering`` with Hugging Face's payloads;
- ``/v2/...``: the Open Inference Protocol for every served model, text or image
  (:mod:`bucketwise.serve.kserve`);
- ``GET /healthz``, ``GET /readyz`` (200 once every input has a warm bucket: all of them,
  or after a lazy start the largest), ``GET /metrics``, ``GET /openapi.json``.
- ``GET /shapes`` (``/shapes/NAME`` with several models): the shapes served, a histogram
  decayed with ``traffic_half_life``, in the format ``bucketwise plan`` reads.

At the edge, before any route: the ``Host`` header must be one of
:attr:`ServeConfig.allowed_hosts` (DNS rebinding), bodies are read with a size limit while
streaming and a deadline for slow clients, and every response, errors and 500s included,
is counted in ``bucketwise_requests_total``. Bad requests get a 4xx in the route family's
error shape and the server keeps serving; a full queue answers 503 with ``Retry-After``.
:meth:`Service.begin_drain` (on SIGTERM, see :mod:`bucketwise.serve.server`) stops
admission, answers with ``Connection: close``, and fails rows that have not started by the
drain deadline with a 503, never a 500.

(No ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations,
and ``Request`` is imported lazily, inside :func:`create_app`.)
"""


import asyncio
import functools
import secrets
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._optional import require
from ..errors import ConfigError
from ..planning.traffic import TrafficShapes
from ..runtime.batcher import Batcher, BatchEvent
from ..shapes import BATCH
from ._common import Reject
from .metrics import Metrics

if TYPE_CHECKING:
    from starlette.requests import Request

    from ..runtime.model import BucketedModel

__all__ = ["OPEN_PATHS", "ServeConfig", "Served", "Service", "create_app"]

# Answered without the API key: the probes a load balancer or orchestrator sends. Every other
# route (traffic shapes, metrics, model metadata, the OpenAPI schema, inference) needs it.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})


@dataclass(frozen=True)
class ServeConfig:
    """Limits and knobs of the server. Unknown keys are an error (a frozen dataclass)."""

    max_texts: int = 256  # texts per embeddings request
    max_body_bytes: int = 1_000_000  # embeddings request body
    max_infer_bytes: int = 64 << 20  # v2 infer request body (images are larger than texts)
    max_rows: int = 256  # rows (batch axis) per v2 infer request
    max_delay: float = 0.005  # seconds the oldest queued request may wait for its batch
    batch_wait: str = "adaptive"  # "adaptive": wait only while requests keep coming; "fixed": max_delay
    streams: int = 2  # batches running at once, per model (a second only beside a small one)
    max_queue: int = 1024  # rows waiting at once, per model, before 503
    api_key: str | None = None  # bearer token; None: no auth. With one, every route needs it but OPEN_PATHS
    metrics_without_key: bool = False  # also answer GET /metrics without the key (scrapers often have none)
    model_name: str = "all-MiniLM-L6-v2"
    model_aliases: tuple[str, ...] = ("sentence-transformers/all-MiniLM-L6-v2",)  # also accepted as "model"
    retry_after: int = 1  # seconds, on 503
    # Host headers answered (DNS rebinding); "*" answers any. Ports are ignored.
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
    request_timeout: float = 30.0  # seconds a client may take to send its body (408 after)
    traffic_half_life: float = 3600.0  # seconds for a served shape's weight in GET /shapes to halve
    traffic_file: str | None = None  # where the traffic shapes are written (every traffic_every s and at exit)
    traffic_every: float = 60.0
    replan_every: float | None = None  # seconds between re-plans of the embedder's buckets; None: never
    replan_min_gain: float = 0.1  # a new plan must cut expected positions per row by this share
    replan_min_rows: int = 100  # rows served since the last re-plan before another is tried
    plans_dir: str | None = None  # where each generation's plan is written (plan.gen<N>.json)
    replan_compile_budget: float | None = None  # seconds a re-plan's new buckets may take to build; None: any
    replan_memory_budget: float | None = None  # bytes a re-planned model's artifacts may hold; None: any
    replan_build_share: float = 0.5  # most share of the wall time a re-plan's build runs (it pauses between buckets)

    def __post_init__(self) -> None:
        """Every limit checked once, here: the command line and bucketwise.ray build this,
        and a bad value is a :class:`ConfigError` naming the field, its flag and the value."""

        def need(ok: bool, field_name: str, rule: str) -> None:
            if not ok:
                flag = {"max_delay": "--max-delay-ms, in ms"}.get(field_name, "--" + field_name.replace("_", "-"))
                raise ConfigError(f"{field_name} ({flag}) must be {rule}, got {getattr(self, field_name)!r}")

        for name in ("max_texts", "max_body_bytes", "max_infer_bytes", "max_rows", "max_queue", "streams",
                     "replan_min_rows"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name, "a whole number of at least 1")
        need(self.max_delay >= 0, "max_delay", ">= 0 seconds")
        need(self.batch_wait in ("adaptive", "fixed"), "batch_wait", "adaptive or fixed")
        need(self.retry_after >= 0, "retry_after", ">= 0 seconds")
        need(bool(self.allowed_hosts), "allowed_hosts", "at least one host, or '*' for any")
        for name in ("request_timeout", "traffic_half_life", "traffic_every"):
            need(getattr(self, name) > 0, name, "> 0 seconds")
        for name in ("replan_every", "replan_compile_budget"):
            need(getattr(self, name) is None or getattr(self, name) > 0, name, "> 0 seconds")
        need(self.replan_memory_budget is None or self.replan_memory_budget > 0, "replan_memory_budget", "more than 0 bytes")
        need(0 < self.replan_min_gain < 1, "replan_min_gain", "a fraction between 0 and 1")
        need(0 < self.replan_build_share <= 1, "replan_build_share", "a fraction in (0, 1] (1: no pause)")


@dataclass(eq=False)
class Served:
    """One served name, all its serving state in one place: the model that answers it now,
    the batcher its requests join, the shapes it served, its generation (+1 each time a
    re-plan swaps its model in), and the models swapped out that still finish their queue."""

    name: str
    model: "BucketedModel"
    traffic: TrafficShapes
    batcher: Batcher | None = None
    generation: int = 0
    retiring: list[tuple["BucketedModel", Batcher, int]] = field(default_factory=list)  # (model, batcher, generation)

    def batchers(self) -> list[Batcher]:
        return ([self.batcher] if self.batcher is not None else []) + [b for _, b, _ in self.retiring]

    def models(self) -> list[tuple["BucketedModel", int]]:
        """(model, generation) of the model in service and of those still finishing."""
        return [(self.model, self.generation)] + [(m, g) for m, _, g in self.retiring]


class Service:
    """What the routes share: each served name's state (:class:`Served`: model, batcher,
    traffic), metrics, limits and the drain."""

    def __init__(self, config: ServeConfig, served: Mapping[str, "BucketedModel"], json_response: Any) -> None:
        self.config, self.json_response = config, json_response
        self.metrics = Metrics()
        self.draining = False
        # Called after each batch with (event, model), beside the Prometheus series: e.g.
        # bucketwise.ray mirrors them into Ray's metrics.
        self.batch_listeners: list[Callable[[BatchEvent, Any], None]] = []
        # The shapes each model served, decayed (GET /shapes; the file `bucketwise plan` reads).
        self.served = {name: Served(name, model, TrafficShapes([d for d in model.plan.dims if d != BATCH],
                                                               half_life=config.traffic_half_life))
                       for name, model in served.items()}
        self.replanners: list[Any] = []  # one per re-planned model (serve --replan-every)
        self.shutdown_failed = False  # something the shutdown must do failed: exit non-zero

    @property
    def names(self) -> dict[str, "BucketedModel"]:
        """Served name -> the model that answers it now."""
        return {name: rec.model for name, rec in self.served.items()}

    def record(self, name: str) -> Served:
        return self.served[name]

    # -- lifecycle ---------------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        for rec in self.served.values():
            rec.batcher = self._start_batcher(rec, rec.model, rec.generation)
        loop = asyncio.get_running_loop()
        writer = loop.create_task(self._write_traffic_every()) if self.config.traffic_file else None
        replanning = [loop.create_task(r.run()) for r in self.replanners]
        yield
        for task in replanning:
            task.cancel()
        await asyncio.gather(*(r.close() for r in self.replanners))  # a build under way stops at its next bucket
        # Every admitted request is finished (or, past a drain deadline, answered 503) first.
        await asyncio.gather(*(b.close() for rec in self.served.values() for b in rec.batchers()))
        if writer is not None:
            writer.cancel()
            if not self.try_write_traffic():
                self.shutdown_failed = True  # the server exits non-zero (serve/server.py)

    def _start_batcher(self, rec: Served, model: "BucketedModel", generation: int) -> Batcher:
        batcher = Batcher(model, max_delay=self.config.max_delay, max_queue=self.config.max_queue,
                          on_batch=functools.partial(self.on_batch, rec=rec, model=model, generation=generation),
                          on_alone=functools.partial(self.on_alone, rec=rec),
                          adaptive=self.config.batch_wait == "adaptive", streams=self.config.streams)
        batcher.start()
        if self.draining:
            batcher.drain(0.0)
        return batcher

    def swap(self, name: str, fresh: "BucketedModel") -> Batcher:
        """Serve ``name`` with ``fresh`` (compiled) from now on, with its own batcher and the
        same traffic histogram. Returns the batcher of the model swapped out, which keeps
        its queue until it closes; then :meth:`retire` forgets that model."""
        rec = self.served[name]
        if rec.batcher is None:
            raise ConfigError(f"model {name!r} is not serving yet; swap it once the server has started")
        rec.retiring.append((rec.model, rec.batcher, rec.generation))
        old_batcher = rec.batcher
        rec.model, rec.generation = fresh, rec.generation + 1
        rec.batcher = self._start_batcher(rec, fresh, rec.generation)
        return old_batcher

    def retire(self, name: str, old: "BucketedModel") -> None:
        """Forget a model of ``name`` swapped out whose batcher has closed: its last counts
        are carried into the metrics, and its series of state (buckets built) go."""
        rec = self.served[name]
        for model, _, generation in [r for r in rec.retiring if r[0] is old]:
            self.metrics.sync_model(model.stats, name, generation)
            self.metrics.forget(name, generation)
        rec.retiring = [r for r in rec.retiring if r[0] is not old]

    def holds(self, model: "BucketedModel") -> bool:
        """Whether ``model`` serves a name, or still finishes a queue after a swap."""
        return any(m is model for rec in self.served.values() for m, _ in rec.models())

    async def _write_traffic_every(self) -> None:
        while True:
            await asyncio.sleep(self.config.traffic_every)
            await asyncio.to_thread(self.try_write_traffic)

    def try_write_traffic(self) -> bool:
        """:meth:`write_traffic`; a failure is said on stderr and counted in
        ``bucketwise_traffic_write_failures_total``, and the server keeps serving."""
        try:
            self.write_traffic()
        except OSError as err:
            self.metrics.traffic_write_failures.inc()
            print(f"bucketwise: warning: cannot write the traffic shapes to {self.config.traffic_file!r}: {err}",
                  file=sys.stderr, flush=True)
            return False
        return True

    def write_traffic(self) -> list[Path]:
        """Write each served model's traffic shapes to ``config.traffic_file`` (with
        several models, one file each: ``NAME`` before the suffix)."""
        path = Path(self.config.traffic_file or "traffic.json")
        written = []
        for name, rec in self.served.items():
            target = path if len(self.served) == 1 else path.with_name(f"{path.stem}.{name}{path.suffix}")
            written.append(rec.traffic.write(target))
        return written

    def begin_drain(self, timeout: float) -> None:
        """Stop admitting; rows not started within ``timeout`` seconds get a 503."""
        self.draining = True
        for rec in self.served.values():
            for batcher in rec.batchers():
                batcher.drain(timeout)

    def batcher(self, name: str) -> Batcher:
        """The batcher that takes requests for ``name`` now: take it right before
        submitting (no await between), so a swap never hands a request a closing batcher."""
        batcher = self.served[name].batcher
        if batcher is None:
            raise Reject(503, "the server is starting; retry shortly", "server_busy",
                         headers={"Retry-After": str(self.config.retry_after)}, reason="starting")
        return batcher

    def has_batcher(self, name: str) -> bool:
        return self.served[name].batcher is not None

    def on_batch(self, ev: BatchEvent, rec: Served, model: "BucketedModel", generation: int) -> None:
        m = self.metrics
        m.batches.labels(model=rec.name).inc()
        m.batch_rows.labels(model=rec.name).observe(ev.rows)
        for q in ev.queue_seconds:
            m.queue_seconds.labels(model=rec.name).observe(q)
        m.inference_seconds.labels(model=rec.name).observe(ev.inference_seconds)
        m.sync_model(model.stats, rec.name, generation)
        for sizes in ev.sizes:
            rec.traffic.record(sizes)
        for listener in self.batch_listeners:
            listener(ev, model)

    def on_alone(self, sizes: dict[str, int], rec: Served) -> None:
        """A row larger than every bucket ran alone (overflow policy): traffic too, so a
        plan made from the shapes served can raise its top bucket."""
        rec.traffic.record(sizes)

    # -- the edge ------------------------------------------------------------------------------

    def busy(self, err: Exception) -> Reject:
        return Reject(503, str(err), "server_busy", headers={"Retry-After": str(self.config.retry_after)},
                      reason="draining" if self.draining else "queue_full")

    def check_auth(self, auth: str) -> None:
        key = self.config.api_key
        if key is None:
            return
        scheme, _, token = auth.strip().partition(" ")
        # The scheme is case-insensitive (RFC 7235). Compared as bytes: compare_digest
        # refuses non-ASCII str (a 500 otherwise).
        if not (scheme.lower() == "bearer"
                and secrets.compare_digest(token.strip().encode("utf-8", "surrogatepass"), key.encode())):
            raise Reject(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "authentication_error",
                         headers={"WWW-Authenticate": 'Bearer realm="bucketwise"'})

    def needs_key(self, path: str) -> bool:
        """Whether ``path`` needs the API key (when one is set): every route that reveals
        traffic, models or metrics, or computes; not the health probes (OPEN_PATHS), nor
        /metrics with ``metrics_without_key``."""
        if self.config.api_key is None or path in OPEN_PATHS:
            return False
        return not (path == "/metrics" and self.config.metrics_without_key)

    @staticmethod
    def check_content_type(request: "Request", allowed: tuple[str, ...]) -> None:
        # Browsers send text/plain and form bodies cross-site without asking: refuse them.
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in allowed:
            shown = " or ".join(a or "none" for a in allowed)
            raise Reject(415, f"content-type must be {shown}, got {ctype or 'none'!r}")

    async def read_body(self, request: "Request", limit: int) -> bytes:
        """The body, read in chunks and refused (413) as soon as it passes ``limit``,
        whether or not a Content-Length announced it; 408 when the client takes longer
        than ``request_timeout`` to send it."""
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise Reject(413, f"request body is {length} bytes; the limit is {limit}")

        async def read() -> bytes:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise Reject(413, f"request body is over {limit} bytes, the limit")
                chunks.append(chunk)
            return b"".join(chunks)

        try:  # (asyncio.timeout is Python 3.11+; the package supports 3.10)
            return await asyncio.wait_for(read(), self.config.request_timeout)
        except asyncio.TimeoutError:
            raise Reject(408, f"the request body took longer than {self.config.request_timeout:g} s to arrive; "
                         "send it faster, or raise the server's request timeout", reason="timeout") from None

    def host_allowed(self, host: str | None) -> bool:
        allowed = self.config.allowed_hosts
        if "*" in allowed:
            return True
        if not host:
            return False
        name = host[1:host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
        return name.lower() in {a.strip("[]").lower() for a in allowed}

    def error(self, reject: Reject, path: str) -> Any:
        """The rejection as a response, in the route family's error shape, counted."""
        if reject.reason:
            self.metrics.rejections.labels(reason=reject.reason).inc()
        if path == "/v2/rerank":  # Cohere's error shape
            body: dict[str, Any] = {"message": reject.message}
        elif path.startswith("/v2"):
            body = {"error": reject.message}
        elif path in ("/predict", "/rerank"):  # TEI's
            body = {"error": reject.message, "error_type": reject.kind}
        else:
            body = {"error": {"message": reject.message, "type": reject.kind, "param": reject.param,
                              "code": reject.code}}
        return self.json_response(body, status_code=reject.status, headers=reject.headers)

    # -- health --------------------------------------------------------------------------------

    def ready(self) -> bool:
        return all(rec.batcher is not None and rec.model.can_serve for rec in self.served.values())

    def render_metrics(self) -> tuple[bytes, str]:
        for name, rec in self.served.items():
            self.metrics.queued.labels(model=name).set(sum(b.queued for b in rec.batchers()))
            for model, generation in rec.models():
                self.metrics.sync_model(model.stats, name, generation)
        return self.metrics.render()


class _Edge:
    """Pure ASGI middleware: the Host allow-list, the API key on every route but the health
    probes, ``Connection: close`` while draining, and one count per response in
    ``bucketwise_requests_total`` (500s included)."""

    def __init__(self, app: Any, service: Service) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: list[int] = []
        service = self.service

        async def send_counted(message: Any) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                if service.draining:
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        try:
            reject = None
            if not service.host_allowed(host):
                reject = Reject(400, f"Host {host!r} is not served here (allowed: {', '.join(service.config.allowed_hosts)}); "
                                "start the server with --allowed-hosts naming it", reason="host")
            elif service.needs_key(scope["path"]):
                try:
                    service.check_auth(dict(scope["headers"]).get(b"authorization", b"").decode("latin-1"))
                except Reject as err:
                    reject = err
            if reject is not None:
                await service.error(reject, scope["path"])(scope, receive, send_counted)
            else:
                await self.app(scope, receive, send_counted)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "name", None) or "unmatched"
            service.metrics.requests.labels(endpoint=endpoint, status=str(status[0] if status else 500)).inc()


def create_app(embedder: Any = None, config: ServeConfig = ServeConfig(), *,
               models: Mapping[str, Any] | None = None, heads: Mapping[str, Any] | None = None) -> Any:
    """A FastAPI app serving ``embedder`` (a compiled :class:`SentenceEmbedder`: OpenAI
    embeddings, and its encoder over KServe v2 as ``config.model_name``), ``heads``
    (compiled text heads by name, any task: each on its task's routes, picked by the
    body's ``model``, and over KServe v2) and ``models`` (compiled :class:`BucketedModel`
    by name: KServe v2). At least one of them; every name once."""
    fastapi = require("fastapi", "serve", purpose="the server")
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.utils import get_openapi
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException

    from .kserve import InferenceRequest, InferenceResponse, KServeV2, ModelMetadata, V2Error
    from .openai import EmbeddingsRequest, EmbeddingsResponse, ErrorResponse, ModelList, OpenAIRoutes, json_response_class
    from .tasks import BODIES, ERRORS, ROUTE_TASKS, TaskRoutes

    served = dict(models or {})
    if embedder is not None:
        if config.model_name in served:
            raise ConfigError(f"models: {config.model_name!r} is the embedder's name; name the other models otherwise")
        served = {config.model_name: embedder.model, **served}
    heads = dict(heads or {})
    for name, head in heads.items():
        if name in served:
            raise ConfigError(f"two models are named {name!r}; give each served model its own name")
        served[name] = head.model
    embedders = {**({config.model_name: embedder} if embedder is not None else {}),
                 **{n: h for n, h in heads.items() if h.task == "feature-extraction"}}
    task_heads = {n: h for n, h in heads.items() if h.task != "feature-extraction"}
    if not served:
        raise ConfigError("create_app needs an embedder or models to serve")
    if len({id(m) for m in served.values()}) < len(served):
        raise ConfigError("one model is served under two names; serve each model under one name")
    service = Service(config, served, JSONResponse)
    if config.replan_every is not None:
        text_models = {**embedders, **task_heads}
        if not text_models:
            raise ConfigError("re-planning (replan_every) needs a text model to serve")
        from .replan import Replanner

        # One re-planner per text model, each over its own traffic, swapping its own buckets.
        service.replanners = [
            Replanner(service, head, every=config.replan_every, min_gain=config.replan_min_gain,
                      min_rows=config.replan_min_rows, plans_dir=config.plans_dir,
                      compile_budget=config.replan_compile_budget, memory_budget=config.replan_memory_budget,
                      build_share=config.replan_build_share, name=name)
            for name, head in text_models.items()]
    v2 = KServeV2(config, service)
    # /openapi.json is served below: the schema may need the embedding size, one probe run off the loop.
    app = fastapi.FastAPI(title="bucketwise", lifespan=service.lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Edge, service=service)  # type: ignore[arg-type]
    errors = {s: {"model": ErrorResponse} for s in (400, 401, 404, 408, 413, 415, 503)}
    v2_errors = {s: {"model": V2Error} for s in (400, 401, 404, 408, 413, 415, 503)}
    schemas: dict[str, Any] = {}

    def body_schema(model: Any) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}

    @app.exception_handler(Reject)
    async def rejected(request: Request, reject: Reject) -> Any:
        return service.error(reject, request.url.path)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> Any:
        message = {404: f"no route {request.url.path}; see /openapi.json for the routes",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(err.status_code, str(err.detail))
        # 405 keeps the Allow header the router names (RFC 9110).
        return service.error(Reject(err.status_code, message, reason="route", headers=dict(err.headers or {}) or None),
                             request.url.path)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> Any:
        return service.error(Reject(400, f"invalid request: {err.errors()[0].get('msg')}"), request.url.path)

    @app.exception_handler(Exception)
    async def crashed(request: Request, err: Exception) -> Any:
        return service.error(Reject(500, f"internal error ({type(err).__name__}); the server keeps serving",
                                    "server_error", reason="internal"), request.url.path)

    @app.get("/healthz", name="healthz")
    async def healthz() -> Any:
        return {"status": "ok"}

    @app.get("/readyz", name="readyz", responses={503: {"description": "not ready yet"}})
    async def readyz() -> Any:
        ready = service.ready()
        buckets = sum(len(m.plan) for m in service.names.values())
        compiled = sum(len(m.builder.built) for m in service.names.values())
        return JSONResponse({"ready": ready, "buckets": buckets, "compiled": compiled}, status_code=200 if ready else 503)

    def traffic_of(name: str | None) -> Any:
        if name is None and len(service.names) == 1:
            name = next(iter(service.names))
        if name not in service.names:
            raise Reject(404, f"model {name!r} is not served here; GET /shapes/NAME with one of "
                              f"{', '.join(sorted(service.names))}", "not_found", reason="model")
        return JSONResponse(service.served[name].traffic.to_json())

    @app.get("/shapes", name="shapes", responses={404: {"model": ErrorResponse}})
    async def shapes() -> Any:
        """The shapes served (decayed histogram), the file `bucketwise plan` reads."""
        return traffic_of(None)

    @app.get("/shapes/{name}", name="shapes_of", responses={404: {"model": ErrorResponse}})
    async def shapes_of(name: str) -> Any:
        return traffic_of(name)

    @app.get("/metrics", name="metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    async def prom_metrics() -> Any:
        body, ctype = service.render_metrics()
        return Response(body, media_type=ctype)

    EmbeddingsJSON = json_response_class()
    openai = OpenAIRoutes(embedders, config, service)

    @app.get("/v1/models", name="models", response_model=ModelList)
    async def list_models() -> Any:
        return openai.models()

    if task_heads:
        routes = TaskRoutes(task_heads, service, max_items=config.max_texts, max_body_bytes=config.max_body_bytes)
        handlers = {"/predict": routes.predict, "/classify": routes.classify, "/rerank": routes.rerank,
                    "/v2/rerank": routes.cohere_rerank, "/token-classification": routes.token_classification,
                    "/question-answering": routes.question_answering}
        for path, task in ROUTE_TASKS.items():
            if task in routes.tasks():
                body = body_schema(BODIES[path])
                _max_items(body["requestBody"]["content"]["application/json"]["schema"], config.max_texts)
                shape = {s: {"model": ERRORS[path]} for s in errors} if path in ERRORS else errors
                _task_route(app, path, handlers[path], body, shape, EmbeddingsJSON)

    if embedders:
        embeddings_body = body_schema(EmbeddingsRequest)
        input_schema = embeddings_body["requestBody"]["content"]["application/json"]["schema"]["properties"]["input"]
        for option in input_schema.get("anyOf", []):
            if option.get("type") == "array":
                option["maxItems"] = config.max_texts

        @app.post("/v1/embeddings", name="embeddings", openapi_extra=embeddings_body,
                  responses={200: {"model": EmbeddingsResponse}, **errors})
        async def embeddings(request: Request) -> Any:
            return EmbeddingsJSON(await openai.embeddings(request))

    # -- KServe v2 ---------------------------------------------------------------------------

    @app.get("/v2", name="v2_server")
    async def v2_server() -> Any:
        return v2.server_metadata()

    @app.get("/v2/health/live", name="v2_live")
    async def v2_live() -> Any:
        return {"live": True}

    @app.get("/v2/health/ready", name="v2_ready", responses={400: {"model": V2Error}})
    async def v2_ready() -> Any:
        if not v2.ready():
            raise Reject(400, "not ready: buckets are still being built", reason="not_ready")
        return {"ready": True}

    for suffix in ("", "/versions/{version}"):
        @app.get("/v2/models/{name}" + suffix, name="v2_model", response_model=ModelMetadata,
                 responses={404: {"model": V2Error}})
        async def v2_model(name: str, version: str | None = None) -> Any:
            return v2.model_metadata(name, version)

        @app.get("/v2/models/{name}" + suffix + "/ready", name="v2_model_ready",
                 responses={400: {"model": V2Error}, 404: {"model": V2Error}})
        async def v2_model_ready(name: str, version: str | None = None) -> Any:
            if not v2.model_ready(name, version):
                raise Reject(400, f"model {name!r} is not ready: its buckets are still being built", reason="not_ready")
            return {"name": name, "ready": True}

        @app.post("/v2/models/{name}" + suffix + "/infer", name="v2_infer", openapi_extra=body_schema(InferenceRequest),
                  responses={200: {"model": InferenceResponse,
                                   "content": {"application/octet-stream": {}}}, **v2_errors})
        async def v2_infer(request: Request, name: str, version: str | None = None) -> Any:
            body, headers = await v2.infer(name, request, version)
            return Response(body, headers=headers, media_type=headers["content-type"])

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            known = True
            if embedders:
                # "dimensions" takes the model's one size; until the model can serve, it is
                # not known yet, and the schema is written again on the next request.
                found = [e.embedding_size() for e in openai.by_name.values()]
                known = None not in found
                sizes = sorted({s for s in found if s is not None})
                embeddings_body["requestBody"]["content"]["application/json"]["schema"]["properties"]["dimensions"] = (
                    {"anyOf": [{"type": "integer", "enum": sizes}, {"type": "null"}], "default": None,
                     "description": f"the model's embedding size ({', '.join(map(str, sizes))}): "
                                    "embeddings are not truncated"}
                    if known else {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}], "default": None,
                                   "description": "only the model's full size is accepted"})
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
            doc.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
            # A KServe v2 input is named as one of the served models' inputs.
            names = sorted({n for m in served.values() for n in m.spec.input_names})
            tensor = doc["components"]["schemas"]["TensorInput"]["properties"]
            tensor["name"] = {**tensor["name"], "enum": names}
            # Path parameters name what is served: clients and fuzzers see the real names.
            for path, ops in doc["paths"].items():
                for op in ops.values():
                    for param in op.get("parameters", []):
                        if path.startswith(("/v2/models/", "/shapes/")) and param["name"] in ("name", "version"):
                            param["schema"] = {"type": "string",
                                               "enum": sorted(served) if param["name"] == "name" else ["1"]}
            if not known:
                return doc
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_json() -> Any:
        if app.openapi_schema is None and embedders:
            # An embedding size not yet learned from an answer takes one probe run: in a
            # worker thread, so the event loop keeps serving meanwhile.
            await asyncio.to_thread(lambda: [e.embedding_size() for e in openai.by_name.values()])
        return JSONResponse(app.openapi())
    app.state.service = service  # its batchers, metrics and drain (serve/server.py)
    return app


def _task_route(app: Any, path: str, handler: Callable[[Any], Any], body: dict[str, Any], errors: dict[int, Any],
                response_class: Any) -> None:
    """``POST path`` answered by ``handler(request)``, its body documented as ``body``."""
    from fastapi import Request

    async def endpoint(request: Request) -> Any:
        return response_class(await handler(request))

    app.post(path, name=path.strip("/").replace("/", "_").replace("-", "_"), openapi_extra=body,
             responses=errors)(endpoint)


def _max_items(schema: dict[str, Any], limit: int) -> None:
    """Give every list a request body's properties take (directly, or as one of several
    forms) at most ``limit`` items: what the server answers 413 past."""
    for prop in schema.get("properties", {}).values():
        for form in [prop, *prop.get("anyOf", [])]:
            if form.get("type") == "array":
                form["maxItems"] = limit
