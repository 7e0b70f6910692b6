"""``bucketwise serve``: OpenAI-compatible embeddings over HTTP."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import ConfigError
from ._common import add_model_options, cache_from_args, plan_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve OpenAI-compatible embeddings over HTTP with bucketed dynamic batching",
        description=(
            "Serve all-MiniLM-L6-v2 (or --model DIR) at POST /v1/embeddings (OpenAI-compatible), with /healthz, "
            "/readyz and Prometheus /metrics. Concurrent requests are batched into (batch x length) "
            "buckets. Binds 127.0.0.1 unless --host says otherwise."
        ),
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    add_model_options(serve)
    serve.add_argument("--max-delay-ms", type=float, default=5.0, help="longest wait of a queued request for its batch (default 5)")
    serve.add_argument("--max-queue", type=int, default=1024, help="rows queued at most; beyond it 503 + Retry-After")
    serve.add_argument("--max-texts", type=int, default=256, help="texts per request at most")
    serve.add_argument("--max-body-bytes", type=int, default=1_000_000, help="request body size at most")
    serve.add_argument("--api-key-env", metavar="VAR", help="require 'Authorization: Bearer <key>', the key read from this environment variable")
    serve.add_argument("--lazy", action="store_true",
                       help="start serving once the largest buckets are built; build the rest in the background "
                            "(until then their inputs run on a larger bucket, counted in /metrics)")
    serve.add_argument("--no-progress", action="store_true", help="hide progress bars")
    serve.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .._optional import require
    from ..models.text import SentenceEmbedder
    from ..serve import ServeConfig, create_app

    uvicorn = require("uvicorn", "serve", purpose="bucketwise serve")
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ConfigError(f"--api-key-env {args.api_key_env}: that environment variable is empty or unset")
    config = ServeConfig(max_texts=args.max_texts, max_body_bytes=args.max_body_bytes,
                         max_delay=args.max_delay_ms / 1e3, max_queue=args.max_queue, api_key=api_key,
                         model_name=Path(args.model).name if args.model else ServeConfig.model_name,
                         model_aliases=() if args.model else ServeConfig.model_aliases)
    embedder = SentenceEmbedder.default(backend=args.backend, plan=plan_from_args(args), overflow=args.overflow,
                                        progress=not args.no_progress, model=args.model,
                                        cache=cache_from_args(args), lazy=args.lazy)
    app = create_app(embedder, config)
    print(f"serving {config.model_name} on http://{args.host}:{args.port}/v1/embeddings ({args.backend}, {embedder.model.plan})")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=30)
    return 0
