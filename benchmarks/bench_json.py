"""JSON in the server: its writers and reader against the json module (before).

Times the code the routes run, on random float32 outputs of typical sizes:

- OpenAI embeddings (``float``): one 384-float embedding, and a request of 8; the
  response class of ``serve/openai.py`` (orjson over float32 arrays) against FastAPI's
  ``JSONResponse`` over Python lists (the writer before 2026-11-25);
- KServe v2 JSON outputs: 8 x 384 embeddings and 8 x 1000 image scores;
  ``serve/kserve.py``'s ``_encode_outputs`` against ``json.dumps`` of the same response with
  ``tolist()`` data;
- reading a KServe v2 request: a 224 x 224 image as JSON data, ``load_json`` (the routes'
  reader) against ``json.loads``.

For each: microseconds per response (best of 5 rounds), bytes, and whether the numbers read
back as the same float32 values.

    python benchmarks/bench_json.py
Writes benchmarks/results/json_writers.json.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from _common import save, table

from bucketwise.serve.kserve import InferenceRequest, _encode_outputs
from bucketwise.serve.openai import encode_embedding, json_response_class, load_json


def best_us(fn, number: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best * 1e6


class _Spec:
    def __init__(self, name: str) -> None:
        self.output_names = (name,)


def main() -> int:
    from fastapi.responses import JSONResponse

    rng = np.random.default_rng(0)
    orjson_response = json_response_class()
    rows = []
    for n in (1, 8):
        vectors = rng.standard_normal((n, 384)).astype(np.float32)

        def openai(fmt_array, vectors=vectors):
            return {"object": "list", "model": "m", "usage": {"prompt_tokens": 1, "total_tokens": 1},
                    "data": [{"object": "embedding", "index": i, "embedding": fmt_array(v)} for i, v in enumerate(vectors)]}

        def now(openai=openai):
            return orjson_response(openai(lambda v: encode_embedding(v, "float"))).body

        def before(openai=openai):
            return JSONResponse(openai(lambda v: v.tolist())).body

        rows.append(measure(f"OpenAI embeddings, {n} x 384", now, before,
                            lambda body: [d["embedding"] for d in json.loads(body)["data"]], vectors))
    request = InferenceRequest.model_validate({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                                                           "data": [0.0]}]})
    for name, shape in (("embedding", (8, 384)), ("scores", (8, 1000))):
        arr = rng.standard_normal(shape).astype(np.float32)
        outs = [{name: row} for row in arr]
        spec = _Spec(name)

        def kserve_now(outs=outs, spec=spec):
            return _encode_outputs(request, "m", spec, outs)[0]

        def kserve_before(arr=arr, name=name):
            return json.dumps({"model_name": "m", "model_version": "1", "outputs": [
                {"name": name, "shape": list(arr.shape), "datatype": "FP32", "data": arr.reshape(-1).tolist()}]}).encode()

        rows.append(measure(f"KServe v2 JSON, {shape[0]} x {shape[1]}", kserve_now, kserve_before,
                            lambda body: json.loads(body)["outputs"][0]["data"], arr))
    image = rng.random((1, 3, 224, 224), dtype=np.float32)
    body = json.dumps({"inputs": [{"name": "image", "shape": list(image.shape), "datatype": "FP32",
                                   "data": image.reshape(-1).tolist()}]}).encode()
    rows.append(measure("KServe v2 request, 224 x 224 image (read)", lambda: load_json(body),
                        lambda: json.loads(body), lambda parsed: parsed["inputs"][0]["data"], image,
                        size=lambda parsed: len(body)))
    print(table([[r["case"], f"{r['now_us']:.0f}", f"{r['before_us']:.0f}", f"{r['speedup']:.1f}×",
                  f"{r['now_bytes']:,}", f"{r['before_bytes']:,}", r["same_float32"]] for r in rows],
                ["response", "now µs", "before µs", "speed-up", "now bytes", "before bytes", "same float32"]))
    path = save("json_writers", {"rows": rows})
    print(f"wrote {path}")
    return 0


def measure(case: str, now, before, numbers, expected: np.ndarray, size=len) -> dict:
    got_now, got_before = now(), before()
    same = bool(np.array_equal(np.asarray(numbers(got_now), dtype=np.float32).reshape(expected.shape), expected))
    number = max(5, int(400_000 / expected.size))
    now_us, before_us = best_us(now, number), best_us(before, number)
    return {"case": case, "now_us": now_us, "before_us": before_us, "speedup": before_us / now_us,
            "now_bytes": size(got_now), "before_bytes": size(got_before), "same_float32": same}


if __name__ == "__main__":
    sys.exit(main())
