"""The HTTP app: OpenAI-compatible embeddings and the Open Inference Protocol (KServe v2)
over bucket-aware batchers, with health, readiness and Prometheus metrics.

Routes:

- ``POST /v1/embeddings``, ``GET /v1/models``: OpenAI embeddings, for a text encoder
  (:mod:`bucketwise.serve.openai`);
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._optional import require
from ..errors import ConfigError
from ..planning.traffic import TrafficShapes
from ..runtime.batcher import Batcher, BatchEvent
from ..shapes import BATCH
from ._common import Reject
from .metrics import Metrics

__all__ = ["OPEN_PATHS", "ServeConfig", "Service", "create_app"]

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


class Service:
    """What the routes share: batchers (one per model), metrics, limits and the drain."""

    def __init__(self, config: ServeConfig, models: list[Any], json_response: Any) -> None:
        self.config, self.json_response = config, json_response
        self.models = models
        self.metrics = Metrics()
        self.batchers: dict[int, Batcher] = {}
        self.draining = False
        # Called after each batch with (event, model), beside the Prometheus series: e.g.
        # bucketwise.ray mirrors them into Ray's metrics.
        self.batch_listeners: list[Callable[[BatchEvent, Any], None]] = []
        # The shapes each model served, decayed (GET /shapes; the file `bucketwise plan` reads).
        self.traffic = {id(m): TrafficShapes([d for d in m.plan.dims if d != BATCH],
                                             half_life=config.traffic_half_life) for m in models}
        self.names: dict[str, Any] = {}  # served name -> model (set by create_app)
        self._successor: dict[int, Any] = {}  # a model swapped out -> the one that replaced it
        self.replanner: Any = None
        self.shutdown_failed = False  # something the shutdown must do failed: exit non-zero

    # -- lifecycle ---------------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        for model in self.models:
            self._start_batcher(model)
        loop = asyncio.get_running_loop()
        writer = loop.create_task(self._write_traffic_every()) if self.config.traffic_file else None
        replanning = loop.create_task(self.replanner.run()) if self.replanner is not None else None
        yield
        if replanning is not None:
            replanning.cancel()
            await self.replanner.close()  # a build under way stops at its next bucket
        # Every admitted request is finished (or, past a drain deadline, answered 503) first.
        await asyncio.gather(*(b.close() for b in list(self.batchers.values())))
        if writer is not None:
            writer.cancel()
            if not self.try_write_traffic():
                self.shutdown_failed = True  # the server exits non-zero (serve/server.py)

    def _start_batcher(self, model: Any) -> None:
        batcher = Batcher(model, max_delay=self.config.max_delay, max_queue=self.config.max_queue,
                          on_batch=functools.partial(self.on_batch, model=model),
                          on_alone=functools.partial(self.on_alone, model=model),
                          adaptive=self.config.batch_wait == "adaptive", streams=self.config.streams)
        batcher.start()
        if self.draining:
            batcher.drain(0.0)
        self.batchers[id(model)] = batcher

    def add_model(self, fresh: Any, *, like: Any) -> None:
        """Serve ``fresh`` (compiled) in place of ``like`` from now on: its own batcher, the
        same traffic histogram and names; ``like`` keeps its batcher until
        :meth:`remove_model` (its queue finishes there)."""
        self.traffic[id(fresh)] = self.traffic[id(like)]
        self.models.append(fresh)
        self._start_batcher(fresh)
        self._successor[id(like)] = fresh
        for name, model in list(self.names.items()):
            if model is like:
                self.names[name] = fresh

    def remove_model(self, old: Any) -> None:
        """Forget a model swapped out whose batcher has closed."""
        self.batchers.pop(id(old), None)
        self.models[:] = [m for m in self.models if m is not old]
        self.traffic.pop(id(old), None)

    def current(self, model: Any) -> Any:
        """``model``, or what replaced it in a swap (and so on)."""
        while id(model) in self._successor:
            model = self._successor[id(model)]
        return model

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
        for name, model in self.names.items():
            target = path if len(self.names) == 1 else path.with_name(f"{path.stem}.{name}{path.suffix}")
            written.append(self.traffic[id(model)].write(target))
        return written

    def begin_drain(self, timeout: float) -> None:
        """Stop admitting; rows not started within ``timeout`` seconds get a 503."""
        self.draining = True
        for batcher in self.batchers.values():
            batcher.drain(timeout)

    def batcher(self, model: Any) -> Batcher:
        """The batcher of ``model``, or of the model that replaced it: take it right before
        submitting (no await between), so a swap never hands a request a closing batcher."""
        batcher = self.batchers.get(id(self.current(model)))
        if batcher is None:
            raise Reject(503, "the server is starting; retry shortly", "server_busy",
                         headers={"Retry-After": str(self.config.retry_after)}, reason="starting")
        return batcher

    def has_batcher(self, model: Any) -> bool:
        return id(self.current(model)) in self.batchers

    def on_batch(self, ev: BatchEvent, model: Any) -> None:
        m = self.metrics
        m.batches.inc()
        m.batch_rows.observe(ev.rows)
        for q in ev.queue_seconds:
            m.queue_seconds.observe(q)
        m.inference_seconds.observe(ev.inference_seconds)
        m.sync_model(model.stats, id(model))
        traffic = self.traffic[id(model)]
        for sizes in ev.sizes:
            traffic.record(sizes)
        for listener in self.batch_listeners:
            listener(ev, model)

    def on_alone(self, sizes: dict[str, int], model: Any) -> None:
        """A row larger than every bucket ran alone (overflow policy): traffic too, so a
        plan made from the shapes served can raise its top bucket."""
        self.traffic[id(model)].record(sizes)

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
    def check_content_type(request: Any, allowed: tuple[str, ...]) -> None:
        # Browsers send text/plain and form bodies cross-site without asking: refuse them.
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in allowed:
            shown = " or ".join(a or "none" for a in allowed)
            raise Reject(415, f"content-type must be {shown}, got {ctype or 'none'!r}")

    async def read_body(self, request: Any, limit: int) -> bytes:
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
        if path.startswith("/v2"):
            body: dict[str, Any] = {"error": reject.message}
        else:
            body = {"error": {"message": reject.message, "type": reject.kind, "param": reject.param,
                              "code": reject.code}}
        return self.json_response(body, status_code=reject.status, headers=reject.headers)

    # -- health --------------------------------------------------------------------------------

    def ready(self) -> bool:
        return all(self.has_batcher(m) and m.can_serve for m in self.models)

    def render_metrics(self) -> tuple[bytes, str]:
        self.metrics.queued.set(sum(b.queued for b in self.batchers.values()))
        for model in self.models:
            self.metrics.sync_model(model.stats, id(model))
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
               models: Mapping[str, Any] | None = None) -> Any:
    """A FastAPI app serving ``embedder`` (a compiled :class:`SentenceEmbedder`: OpenAI
    embeddings, and its encoder over KServe v2 as ``config.model_name``) and ``models``
    (compiled :class:`BucketedModel` by name: KServe v2). At least one of them."""
    fastapi = require("fastapi", "serve", purpose="the server")
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.utils import get_openapi
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException

    from .kserve import InferenceRequest, InferenceResponse, KServeV2, ModelMetadata, V2Error
    from .openai import EmbeddingsRequest, EmbeddingsResponse, ErrorResponse, ModelList, OpenAIEmbeddings, json_response_class

    served = dict(models or {})
    if embedder is not None:
        if config.model_name in served:
            raise ConfigError(f"models: {config.model_name!r} is the embedder's name; name the other models otherwise")
        served = {config.model_name: embedder.model, **served}
    if not served:
        raise ConfigError("create_app needs an embedder or models to serve")
    distinct = list({id(m): m for m in served.values()}.values())
    service = Service(config, distinct, JSONResponse)
    service.names = served  # the same dict KServe v2 reads: a swap updates both
    if config.replan_every is not None:
        if embedder is None:
            raise ConfigError("re-planning (replan_every) needs a text embedder to serve")
        from .replan import Replanner

        service.replanner = Replanner(service, embedder, every=config.replan_every, min_gain=config.replan_min_gain,
                                      min_rows=config.replan_min_rows, plans_dir=config.plans_dir,
                                      compile_budget=config.replan_compile_budget,
                                      memory_budget=config.replan_memory_budget,
                                      build_share=config.replan_build_share)
    v2 = KServeV2(served, config, service)
    app = fastapi.FastAPI(title="bucketwise", lifespan=service.lifespan, docs_url=None, redoc_url=None)
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
        buckets = sum(len(m.plan) for m in distinct)
        compiled = sum(len(m.builder.built) for m in distinct)
        return JSONResponse({"ready": ready, "buckets": buckets, "compiled": compiled}, status_code=200 if ready else 503)

    def traffic_of(name: str | None) -> Any:
        if name is None and len(service.names) == 1:
            name = next(iter(service.names))
        if name not in service.names:
            raise Reject(404, f"model {name!r} is not served here; GET /shapes/NAME with one of "
                              f"{', '.join(sorted(service.names))}", "not_found", reason="model")
        return JSONResponse(service.traffic[id(service.names[name])].to_json())

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

    if embedder is not None:
        openai = OpenAIEmbeddings(embedder, config, service)
        EmbeddingsJSON = json_response_class()

        @app.get("/v1/models", name="models", response_model=ModelList)
        async def list_models() -> Any:
            return openai.models()

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
            if embedder is not None:
                # "dimensions" takes the model's one size; until the model can serve, it is
                # not known yet, and the schema is written again on the next request.
                size = openai.embedding_size()
                known = size is not None
                embeddings_body["requestBody"]["content"]["application/json"]["schema"]["properties"]["dimensions"] = (
                    {"anyOf": [{"type": "integer", "enum": [size]}, {"type": "null"}], "default": None,
                     "description": f"the model's embedding size, {size}: embeddings are not truncated"}
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
    app.state.service = service  # its batchers, metrics and drain (serve/server.py)
    return app
