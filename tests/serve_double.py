"""A real bucketwise server (uvicorn, the draining runner, the real app and batcher) over a
test double of the model: a whitespace tokenizer and a NumPy function that takes
``--run-ms`` per batch. The SIGTERM tests run it as a process:

    python tests/serve_double.py --port 8123 --run-ms 50 --drain-timeout 5

On exit it prints ``rows computed: N`` (rows the model actually ran, padding excluded).
"""

import argparse
import socket
import sys
import threading
import time

import numpy as np

from bucketwise import BucketedModel, InputSpec, ModelSpec, OutputSpec, Plan
from bucketwise.models.text import SentenceEmbedder
from bucketwise.serve import ServeConfig, create_app
from bucketwise.serve.server import run_server

SPEC = ModelSpec(
    inputs=(InputSpec("input_ids", ("batch", "seq"), "int64", pad_value=0, example=1),
            InputSpec("attention_mask", ("batch", "seq"), "int64", pad_value=0, example=1),
            InputSpec("token_type_ids", ("batch", "seq"), "int64", pad_value=0)),
    outputs=(OutputSpec("sentence_embedding", ("batch", None)),),
)


class WordTokenizer:
    """[CLS] words... [SEP] as ids 1, len(word)+2 ..., 2."""

    def __call__(self, text, pair=None, *, truncation=False, max_length=None, verbose=True):
        ids = [1] + [len(w) + 2 for w in text.split()] + [2]
        if truncation and max_length is not None and len(ids) > max_length:
            ids = ids[: max_length - 1] + [2]
        return {"input_ids": ids, "token_type_ids": [0] * len(ids)}


def embed(input_ids, attention_mask, token_type_ids):
    """(sum of ids, token count, mean id) over the real tokens of each row."""
    m = attention_mask.astype(np.float32)
    total = (input_ids * m).sum(axis=1)
    count = m.sum(axis=1)
    return np.stack([total, count, total / np.maximum(count, 1)], axis=1).astype(np.float32)


def make_embedder(run_seconds=0.0):
    """The embedder, and a one-item list counting the real rows the model computed."""
    rows = [0]
    lock = threading.Lock()  # two streams run batches at once

    def slow_embed(input_ids, attention_mask, token_type_ids):
        time.sleep(run_seconds)
        with lock:
            rows[0] += int((attention_mask.sum(axis=1) > 0).sum())
        return embed(input_ids, attention_mask, token_type_ids)

    model = BucketedModel(slow_embed, SPEC, Plan.grid(batch=[1, 4], seq=[8, 16]), warmup_runs=0).compile(progress=False)
    rows[0] = 0
    return SentenceEmbedder(model, WordTokenizer()), rows


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, proc, timeout=60.0):
    """Wait until the server process ``proc`` answers GET /readyz on ``port`` with 200.
    Raises RuntimeError with its output if it exits first, or (killed) if it is not ready
    within ``timeout`` seconds."""
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}) before it was ready: {proc.stdout.read()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the server was not ready in {timeout:g} s: {proc.stdout.read()[-3000:]}")


class ThreadServer:
    """An app on uvicorn in a thread of this process (for tests that need the model here)."""

    def __init__(self, app, **config):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", **config))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--run-ms", type=float, default=0.0)
    ap.add_argument("--drain-timeout", type=float, default=30.0)
    ap.add_argument("--max-queue", type=int, default=1024)
    args = ap.parse_args()
    embedder, rows = make_embedder(args.run_ms / 1e3)
    app = create_app(embedder, ServeConfig(max_queue=args.max_queue, max_delay=0.001))
    print("ready", flush=True)
    code = run_server(app, host="127.0.0.1", port=args.port, drain_timeout=args.drain_timeout)
    print(f"rows computed: {rows[0]}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
