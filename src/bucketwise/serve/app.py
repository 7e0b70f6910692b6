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
    retry_after: int = 1  # seconds, on 503


def create_app(embedder: Any, config: ServeConfig = ServeConfig()) -> Any:
    """A FastAPI app serving ``embedder`` (a compiled :class:`SentenceEmbedder`)."""
    fastapi = require("fastapi", "serve", purpose="the server")
    from fastapi import Request
    from fastapi.responses import JSONResponse, Response

    metrics = Metrics()
    model = embedder.model
    state: dict[str, Any] = {}

    def on_batch(ev: BatchEvent) -> None:
        metrics.batches.inc()
        metrics.batch_rows.observe(ev.rows)
        for q in ev.queue_seconds:
            metrics.queue_seconds.observe(q)
        metrics.inference_seconds.observe(ev.inference_seconds)
        metrics.sync_model(model.stats)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Any):
        batcher = Batcher(model, max_delay=config.max_delay, max_queue=config.max_queue, on_batch=on_batch)
        batcher.start()
        state["batcher"] = batcher
        yield
        await batcher.close()  # graceful: every accepted request is finished first

    app = fastapi.FastAPI(title="bucketwise", lifespan=lifespan)

    def error(status: int, message: str, kind: str = "invalid_request_error", endpoint: str = "embeddings", headers: dict | None = None) -> Any:
        metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
        if status in (401, 413, 429, 503):
            metrics.rejections.labels(reason={401: "auth", 413: "too_large", 429: "rate", 503: "queue_full"}[status]).inc()
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)

    @app.get("/healthz")
    async def healthz() -> Any:
        metrics.requests.labels(endpoint="healthz", status="200").inc()
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Any:
        # Ready once every input has a built bucket; a lazy start builds the rest later.
        ready = model.can_serve and "batcher" in state
        status = 200 if ready else 503
        metrics.requests.labels(endpoint="readyz", status=str(status)).inc()
        compiled = sum(1 for b in model.plan.buckets if b in model.compile_report.builds)
        return JSONResponse({"ready": ready, "buckets": len(model.plan), "compiled": compiled}, status_code=status)

    @app.get("/metrics")
    async def prom_metrics() -> Any:
        metrics.queued.set(state["batcher"].queued if "batcher" in state else 0)
        metrics.sync_model(model.stats)
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Any:
        if config.api_key is not None:
            auth = request.headers.get("authorization", "")
            if not (auth.startswith("Bearer ") and secrets.compare_digest(auth[7:], config.api_key)):
                return error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "authentication_error")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > config.max_body_bytes:
            return error(413, f"request body is {length} bytes; the limit is {config.max_body_bytes}")
        body = await request.body()
        if len(body) > config.max_body_bytes:
            return error(413, f"request body is {len(body)} bytes; the limit is {config.max_body_bytes}")
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return error(400, f"request body is not valid JSON: {err}")
        if not isinstance(payload, dict) or "input" not in payload:
            return error(400, 'request body must be a JSON object with "input": a string or a list of strings')
        texts = payload["input"]
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return error(400, '"input" must be a string or a list of strings (token arrays are not accepted)')
        if not texts:
            return error(400, '"input" is empty; send at least one string')
        if len(texts) > config.max_texts:
            return error(413, f'"input" holds {len(texts)} texts; the limit is {config.max_texts} per request')
        if any(not t.strip() for t in texts):
            i = next(i for i, t in enumerate(texts) if not t.strip())
            return error(400, f'"input"[{i}] is empty; every text needs at least one non-space character')
        fmt = payload.get("encoding_format", "float")
        if fmt != "float":
            return error(400, f'encoding_format {fmt!r} is not supported; use "float"')
        batcher: Batcher = state["batcher"]
        try:
            encoded = embedder.tokenize(texts)
        except InputError as err:
            return error(400, str(err))
        try:
            embedder.admit(encoded)  # the router refuses what no bucket holds, up front
        except BucketOverflowError as err:
            metrics.rejections.labels(reason="too_long").inc()
            return error(400, f'"input": {err}')
        rows = embedder.rows(encoded)
        try:
            batcher.admit(len(rows))  # all or nothing: a refused request queues no row
            outs = await asyncio.gather(*(batcher.submit(r, validated=True) for r in rows))
        except QueueFullError as err:
            return error(503, str(err), "server_busy", headers={"Retry-After": str(config.retry_after)})
        except BucketOverflowError as err:
            return error(400, str(err))
        metrics.texts.inc(len(texts))
        tokens = sum(len(ids) for ids, _ in encoded)
        metrics.requests.labels(endpoint="embeddings", status="200").inc()
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": o["sentence_embedding"].astype(float).tolist()}
                     for i, o in enumerate(outs)],
            "model": payload.get("model") or config.model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    app.state.metrics = metrics
    app.state.bucketwise = state
    return app
