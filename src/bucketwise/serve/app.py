"""The HTTP app: OpenAI-compatible embeddings over the batcher, health, readiness, metrics.

Endpoints: ``POST /v1/embeddings`` (``{"input": str | [str, ...]}``), ``GET /healthz``,
``GET /readyz`` (200 once every input has a warm bucket: all of them, or after a lazy start
the largest), ``GET /metrics``.
Bad requests get a 4xx with an OpenAI-style ``{"error": {"message", "type"}}`` body and the
server keeps serving; a full queue answers 503 with ``Retry-After``.

(No ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations,
and ``Request`` is imported lazily, inside :func:`create_app`.)
"""


import asyncio
import json
import secrets
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from .._optional import require
from ..errors import BucketOverflowError, InputError, QueueFullError
from ..runtime.batcher import Batcher, BatchEvent
from .metrics import Metrics

__all__ = ["ServeConfig", "create_app"]


@dataclass(frozen=True)
class ServeConfig:
    """Limits and knobs of the server. Unknown keys are an error (a frozen dataclass)."""

    max_texts: int = 256  # texts per request
    max_body_bytes: int = 1_000_000
    max_delay: float = 0.005  # seconds the oldest queued request may wait for its batch
    max_queue: int = 1024  # rows waiting at once before 503
    api_key: str | None = None  # bearer token; None: no auth
    model_name: str = "all-MiniLM-L6-v2"
    model_aliases: tuple[str, ...] = ("sentence-transformers/all-MiniLM-L6-v2",)  # also accepted as "model"
    retry_after: int = 1  # seconds, on 503


class _Reject(Exception):
    """A request answered with an error status; the server keeps serving."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None, reason: str | None = None,
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.headers, self.reason = status, message, kind, headers, reason
        self.param, self.code = param, code


_REJECTION_REASONS = {401: "auth", 413: "too_large", 415: "content_type", 429: "rate", 503: "queue_full"}


def parse_texts(body: bytes, config: ServeConfig) -> tuple[dict[str, Any], list[str]]:
    """The payload and its texts, or :class:`_Reject` (400/413) saying what is wrong. Pure."""
    if len(body) > config.max_body_bytes:
        raise _Reject(413, f"request body is {len(body)} bytes; the limit is {config.max_body_bytes}")
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as err:  # bad JSON, bad UTF-8, 5,000-digit ints, deep nesting
        raise _Reject(400, f"request body is not valid JSON: {str(err)[:200] or type(err).__name__}") from None
    if not isinstance(payload, dict) or "input" not in payload:
        raise _Reject(400, 'request body must be a JSON object with "input": a string or a list of strings')
    texts = payload["input"]
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise _Reject(400, '"input" must be a string or a list of strings (token arrays are not accepted)')
    if not texts:
        raise _Reject(400, '"input" is empty; send at least one string')
    if len(texts) > config.max_texts:
        raise _Reject(413, f'"input" holds {len(texts)} texts; the limit is {config.max_texts} per request')
    empty = next((i for i, t in enumerate(texts) if not t.strip()), None)
    if empty is not None:
        raise _Reject(400, f'"input"[{empty}] is empty; every text needs at least one non-space character')
    for i, t in enumerate(texts):
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate such as "\ud800" survives json.loads
            raise _Reject(400, f'"input"[{i}] is not valid Unicode (a lone surrogate); send UTF-8 text', param="input") from None
    fmt = payload.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise _Reject(400, f'encoding_format {fmt!r} is not supported; use "float" or "base64"', param="encoding_format")
    model = payload.get("model")
    served = (config.model_name, *config.model_aliases)
    if model is not None and model not in served:
        raise _Reject(404, f"The model {model!r} does not exist: this server serves {config.model_name!r}"
                      + (f" (also accepted: {', '.join(map(repr, config.model_aliases))})" if config.model_aliases else ""),
                      param="model", code="model_not_found")
    dims = payload.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
        raise _Reject(400, f'"dimensions" must be a positive integer, got {dims!r}', param="dimensions")
    return payload, texts


def encode_embedding(vector: Any, fmt: str) -> Any:
    """One embedding as OpenAI sends it: a list of floats, or base64 of little-endian float32."""
    import base64

    import numpy as np

    if fmt == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return np.asarray(vector, dtype=np.float32).astype(float).tolist()


class _Service:
    """The endpoints' logic over one embedder, its batcher and its metrics."""

    def __init__(self, embedder: Any, config: ServeConfig, json_response: Any) -> None:
        self.embedder, self.config, self.json_response = embedder, config, json_response
        self.model = embedder.model
        self.metrics = Metrics()
        self.state: dict[str, Any] = {}
        self._tokenizer_lock = threading.Lock()

    def on_batch(self, ev: BatchEvent) -> None:
        m = self.metrics
        m.batches.inc()
        m.batch_rows.observe(ev.rows)
        for q in ev.queue_seconds:
            m.queue_seconds.observe(q)
        m.inference_seconds.observe(ev.inference_seconds)
        m.sync_model(self.model.stats)

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        batcher = Batcher(self.model, max_delay=self.config.max_delay, max_queue=self.config.max_queue,
                          on_batch=self.on_batch)
        batcher.start()
        self.state["batcher"] = batcher
        yield
        await batcher.close()  # graceful: every accepted request is finished first

    def error(self, reject: _Reject, endpoint: str = "embeddings") -> Any:
        self.metrics.requests.labels(endpoint=endpoint, status=str(reject.status)).inc()
        reason = reject.reason or _REJECTION_REASONS.get(reject.status)
        if reason:
            self.metrics.rejections.labels(reason=reason).inc()
        body = {"message": reject.message, "type": reject.kind, "param": reject.param, "code": reject.code}
        return self.json_response({"error": body}, status_code=reject.status, headers=reject.headers)

    def models(self) -> Any:
        self.metrics.requests.labels(endpoint="models", status="200").inc()
        return {"object": "list", "data": [{"id": self.config.model_name, "object": "model", "created": 0,
                                            "owned_by": "bucketwise"}]}

    def healthz(self) -> Any:
        self.metrics.requests.labels(endpoint="healthz", status="200").inc()
        return {"status": "ok"}

    def readyz(self) -> Any:
        # Ready once every input has a built bucket; a lazy start builds the rest later.
        model = self.model
        ready = model.can_serve and "batcher" in self.state
        status = 200 if ready else 503
        self.metrics.requests.labels(endpoint="readyz", status=str(status)).inc()
        compiled = sum(1 for b in model.plan.buckets if b in model.compile_report.builds)
        return self.json_response({"ready": ready, "buckets": len(model.plan), "compiled": compiled}, status_code=status)

    def render_metrics(self) -> tuple[bytes, str]:
        self.metrics.queued.set(self.state["batcher"].queued if "batcher" in self.state else 0)
        self.metrics.sync_model(self.model.stats)
        return self.metrics.render()

    async def embeddings(self, request: Any) -> Any:
        try:
            self._check_auth(request.headers.get("authorization", ""))
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                # Browsers send text/plain and form bodies cross-site without asking: refuse them.
                raise _Reject(415, f"content-type must be application/json, got {ctype or 'none'!r}")
            payload, texts = parse_texts(await self._read_body(request), self.config)
            encoded, outs = await self._embed(texts)
            vectors = [o["sentence_embedding"] for o in outs]
            self._check_dimensions(payload.get("dimensions"), len(vectors[0]))
        except _Reject as reject:
            return self.error(reject)
        fmt = payload.get("encoding_format", "float")
        self.metrics.texts.inc(len(texts))
        tokens = sum(len(ids) for ids, _ in encoded)
        self.metrics.requests.labels(endpoint="embeddings", status="200").inc()
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": encode_embedding(v, fmt)}
                     for i, v in enumerate(vectors)],
            "model": self.config.model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def _read_body(self, request: Any) -> bytes:
        """The body, read in chunks and refused (413) as soon as it passes the limit,
        whether or not a Content-Length announced it."""
        limit = self.config.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise _Reject(413, f"request body is {length} bytes; the limit is {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _Reject(413, f"request body is over {limit} bytes, the limit")
            chunks.append(chunk)
        return b"".join(chunks)

    def _tokenize(self, texts: list[str]) -> Any:
        # One at a time: a fast tokenizer changes its truncation state per call, and two
        # threads in it at once fail ("Already borrowed").
        with self._tokenizer_lock:
            return self.embedder.tokenize(texts)

    @staticmethod
    def _check_dimensions(dims: int | None, size: int) -> None:
        # Truncating an embedding is only meaningful for models trained for it (Matryoshka);
        # none served here declares that, so only the full size is accepted.
        if dims is not None and dims != size:
            raise _Reject(400, f'"dimensions" {dims} is not supported by this model: its embeddings have {size} '
                          f"dimensions and it is not trained to be truncated; omit it, or send {size}",
                          param="dimensions")

    def _check_auth(self, auth: str) -> None:
        key = self.config.api_key
        # Compared as bytes: compare_digest refuses non-ASCII str (a 500 otherwise).
        if key is not None and not (auth.startswith("Bearer ")
                                    and secrets.compare_digest(auth[7:].encode("utf-8", "surrogatepass"), key.encode())):
            raise _Reject(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "authentication_error")

    async def _embed(self, texts: list[str]) -> tuple[list[Any], list[dict[str, Any]]]:
        embedder, batcher = self.embedder, self.state["batcher"]
        try:
            # Tokenizing a long text takes a while: off the event loop, so /healthz still answers.
            encoded = await asyncio.to_thread(self._tokenize, texts)
            embedder.admit(encoded)  # the router refuses what no bucket holds, up front
        except BucketOverflowError as err:
            raise _Reject(400, f'"input": {err}', reason="too_long") from None
        except InputError as err:
            raise _Reject(400, str(err)) from None
        rows = embedder.rows(encoded)
        try:
            outs = await batcher.submit_many(rows, validated=True)  # all or nothing
        except QueueFullError as err:
            raise _Reject(503, str(err), "server_busy", headers={"Retry-After": str(self.config.retry_after)}) from None
        except BucketOverflowError as err:
            raise _Reject(400, str(err)) from None
        return encoded, list(outs)


def create_app(embedder: Any, config: ServeConfig = ServeConfig()) -> Any:
    """A FastAPI app serving ``embedder`` (a compiled :class:`SentenceEmbedder`)."""
    fastapi = require("fastapi", "serve", purpose="the server")
    from fastapi import Request
    from fastapi.responses import JSONResponse, Response

    service = _Service(embedder, config, JSONResponse)
    app = fastapi.FastAPI(title="bucketwise", lifespan=service.lifespan)

    @app.get("/healthz")
    async def healthz() -> Any:
        return service.healthz()

    @app.get("/readyz")
    async def readyz() -> Any:
        return service.readyz()

    @app.get("/metrics")
    async def prom_metrics() -> Any:
        body, ctype = service.render_metrics()
        return Response(body, media_type=ctype)

    @app.get("/v1/models")
    async def models() -> Any:
        return service.models()

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Any:
        return await service.embeddings(request)

    app.state.metrics = service.metrics
    app.state.bucketwise = service.state
    return app
