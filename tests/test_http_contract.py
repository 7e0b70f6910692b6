"""The HTTP contract (200/400/401/413/503, metrics) in milliseconds: the real app and
batcher over an in-process ASGI transport, with a test double for the model and tokenizer
(a whitespace tokenizer and a NumPy function). The real model behind a real server is in
test_serve.py (slow)."""

import asyncio

import numpy as np
import pytest

from bucketwise import BucketedModel, InputSpec, ModelSpec, OutputSpec, Plan
from bucketwise.models.text import SentenceEmbedder

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

from serve_double import SPEC, WordTokenizer, embed  # noqa: E402  (the model and tokenizer doubles)

from bucketwise.serve import ServeConfig, create_app  # noqa: E402


def make_embedder(overflow="error"):
    model = BucketedModel(embed, SPEC, Plan.grid(batch=[1, 4], seq=[8, 16]), overflow=overflow)
    return SentenceEmbedder(model.compile(progress=False), WordTokenizer())


def call(app, requests):
    """Run the app's lifespan and send ``requests`` (method, path, kwargs) in order."""

    async def main():
        out = []
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # a 500 is an answer
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
                for method, path, kwargs in requests:
                    out.append(await client.request(method, path, **kwargs))
        return out

    return asyncio.run(main())


def post(body, **kwargs):
    if isinstance(body, bytes):
        return ("POST", "/v1/embeddings", {"content": body, "headers": {"content-type": "application/json"}, **kwargs})
    return ("POST", "/v1/embeddings", {"json": body, **kwargs})


def test_embeddings_answer_in_input_order_with_usage():
    emb = make_embedder()
    texts = ["one two three", "a", "four five six seven eight nine ten eleven twelve"]
    (r,) = call(create_app(emb, ServeConfig(model_name="m")), [post({"input": texts, "model": "m"})])
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and body["model"] == "m"
    np.testing.assert_allclose([d["embedding"] for d in body["data"]], emb.embed(texts), rtol=1e-6)
    assert body["usage"]["prompt_tokens"] == sum(len(t.split()) + 2 for t in texts)


def test_bad_requests_get_4xx_and_the_server_keeps_serving():
    bad = [
        (b"{not json", 400, "not valid JSON"),
        (b'{"text": "x"}', 400, '"input"'),
        (b'{"input": 3}', 400, "string or a list of strings"),
        (b'{"input": [1, 2]}', 400, "string or a list of strings"),
        (b'{"input": []}', 400, "empty"),
        (b'{"input": ["ok", "  "]}', 400, '"input"[1] is empty'),
        (b'{"input": ["a", "b", "c", "d", "e", "f"]}', 413, "limit is 5"),
        (b'{"input": "' + b"word " * 20 + b'"}', 400, "largest bucket holds 16"),
        (b'{"input": "x", "encoding_format": "int8"}', 400, "should be 'float' or 'base64'"),
        (b'{"input": "' + b"x" * 2000 + b'"}', 413, "limit is 1000"),
    ]
    app = create_app(make_embedder(), ServeConfig(max_texts=5, max_body_bytes=1000))
    responses = call(app, [post(p) for p, _, _ in bad] + [post({"input": "still here"}), ("GET", "/metrics", {})])
    for (payload, status, needle), r in zip(bad, responses):
        assert r.status_code == status, (payload, r.text)
        assert needle in r.json()["error"]["message"], r.text
    assert responses[-2].status_code == 200
    metrics = responses[-1].text
    assert 'bucketwise_requests_total{endpoint="embeddings",status="400"} 8.0' in metrics
    assert 'bucketwise_rejections_total{reason="too_long"} 1.0' in metrics
    assert 'bucketwise_rejections_total{reason="too_large"} 2.0' in metrics


def test_float_numbers_are_the_float32_values_that_base64_carries_in_at_most_9_digits():
    # The double's means (e.g. 14/3) have 16 significant digits as float64 reprs of float32.
    texts = ["one two three", "four five six seven", "a bb ccc dddd eeeee ffffff g"]
    app = create_app(make_embedder())
    floats, b64 = call(app, [post({"input": texts}), post({"input": texts, "encoding_format": "base64"})])
    assert floats.status_code == 200 and b64.status_code == 200
    import base64
    import re

    for f, b in zip(floats.json()["data"], b64.json()["data"]):
        assert np.asarray(f["embedding"], dtype=np.float32).tobytes() == base64.b64decode(b["embedding"])
    body = floats.text.split('"data":', 1)[1].split('"model"', 1)[0]
    numbers = re.findall(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", body)
    digits = [len(n.split("e")[0].split("E")[0].replace("-", "").replace(".", "").lstrip("0")) for n in numbers]
    assert max(digits) <= 9, numbers  # float32's shortest round-trip form, not float64's 17 digits


def test_nan_or_infinite_embeddings_are_refused_with_a_500_and_the_server_keeps_serving():
    def overflowing(input_ids, attention_mask, token_type_ids):
        out = embed(input_ids, attention_mask, token_type_ids)
        out[(input_ids > 11).any(axis=1)] = np.inf  # a word of 10+ letters overflows, as fp16 can
        return out

    model = BucketedModel(overflowing, SPEC, Plan.grid(batch=[1, 4], seq=[8, 16]), warmup_runs=0)
    app = create_app(SentenceEmbedder(model.compile(progress=False), WordTokenizer()))
    for fmt in ("float", "base64"):
        bad, good, metrics = call(app, [post({"input": ["fine", "extraordinary"], "encoding_format": fmt}),
                                        post({"input": "fine words", "encoding_format": fmt}), ("GET", "/metrics", {})])
        assert bad.status_code == 500 and "NaN or infinite values for input [1]" in bad.json()["error"]["message"]
        assert good.status_code == 200
    # KServe v2: JSON would carry a bare NaN/Infinity (not JSON), binary the bytes.
    arrays = {"input_ids": np.array([[1, 6, 2], [1, 15, 2]]),  # "fine", "extraordinary"
              "attention_mask": np.ones((2, 3), np.int64), "token_type_ids": np.zeros((2, 3), np.int64)}
    inputs = [tensor(n, a, "INT64") for n, a in arrays.items()]
    for binary in (False, True):
        bad, good = call(app, [infer("all-MiniLM-L6-v2", inputs, parameters={"binary_data_output": binary}),
                               infer("all-MiniLM-L6-v2", [{**t, "shape": [1, 3], "data": t["data"][:3]} for t in inputs])])
        assert bad.status_code == 500 and "output 'sentence_embedding', rows [1]" in bad.json()["error"], bad.text
        assert good.status_code == 200
    (metrics,) = call(app, [("GET", "/metrics", {})])
    assert 'bucketwise_rejections_total{reason="non_finite"} 4.0' in metrics.text


def test_truncate_policy_serves_long_texts_and_counts_them():
    app = create_app(make_embedder(overflow="truncate"), ServeConfig())
    r, metrics = call(app, [post({"input": "word " * 20}), ("GET", "/metrics", {})])
    assert r.status_code == 200
    assert r.json()["usage"]["prompt_tokens"] == 16
    assert 'bucketwise_overflows_total{model="all-MiniLM-L6-v2",policy="truncate"} 1.0' in metrics.text


def test_api_key_and_a_full_queue():
    app = create_app(make_embedder(), ServeConfig(api_key="s3cret", max_queue=2))
    auth = {"Authorization": "Bearer s3cret"}
    missing, wrong, full, ok = call(app, [
        post({"input": "x"}),
        post({"input": "x"}, headers={"Authorization": "Bearer nope"}),
        post({"input": ["a", "b", "c"]}, headers=auth),
        post({"input": ["a", "b"]}, headers=auth),
    ])
    assert missing.status_code == wrong.status_code == 401
    assert full.status_code == 503 and full.headers["retry-after"] == "1"
    assert ok.status_code == 200


def test_health_readiness_and_padding_metrics_from_one_definition():
    emb = make_embedder()
    app = create_app(emb, ServeConfig())
    health, ready, _, metrics = call(app, [("GET", "/healthz", {}), ("GET", "/readyz", {}),
                                           post({"input": ["one two", "three four five six seven"]}),
                                           ("GET", "/metrics", {})])
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200 and ready.json()["compiled"] == 4
    stats = emb.model.stats
    assert f'bucketwise_real_tokens_total{{model="all-MiniLM-L6-v2"}} {float(stats.real_volume)}' in metrics.text
    assert f'bucketwise_padded_tokens_total{{model="all-MiniLM-L6-v2"}} {float(stats.padded_volume)}' in metrics.text
    assert stats.real_volume == 4 + 7  # each text's own tokens


def test_inputs_that_used_to_crash_the_server_get_400s_or_401():
    deep = b'{"input": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    app = create_app(make_embedder(), ServeConfig(api_key="s3cret", max_body_bytes=100_000))
    auth = {"Authorization": "Bearer s3cret"}
    surrogate, nested, huge, cafe, ok = call(app, [
        post(b'{"input": "a\\ud800b"}', headers={**auth, "content-type": "application/json"}),
        post(deep, headers={**auth, "content-type": "application/json"}),
        post(b'{"input": "x", "n": ' + b"9" * 5000 + b"}", headers={**auth, "content-type": "application/json"}),
        post({"input": "x"}, headers={"Authorization": "Bearer caf\u00e9".encode()}),
        post({"input": "x"}, headers=auth),
    ])
    assert surrogate.status_code == 400 and "surrogate" in surrogate.json()["error"]["message"]
    assert nested.status_code == 400 and huge.status_code == 400
    assert cafe.status_code == 401 and ok.status_code == 200


openai = pytest.importorskip("openai")


def test_the_official_openai_client_works_unchanged():
    import base64

    emb = make_embedder()
    texts = ["one two three", "a", "four five six"]
    want = emb.embed(texts)
    app = create_app(emb, ServeConfig(api_key="k"))

    async def main():
        async with app.router.lifespan_context(app):
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost/v1")
            client = openai.AsyncOpenAI(api_key="k", base_url="http://localhost/v1", http_client=http, max_retries=0)
            default = await client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)  # base64 on the wire
            floats = await client.embeddings.create(model="all-MiniLM-L6-v2", input=texts[1], encoding_format="float")
            raw = await http.post("/embeddings", json={"input": texts[0], "encoding_format": "base64"},
                                  headers={"Authorization": "Bearer k"})
            models = await client.models.list()
            errors = []
            for kwargs, key in (({"model": "gpt-4", "input": "x"}, "k"), ({"model": "all-MiniLM-L6-v2", "input": ""}, "k"),
                                ({"model": "all-MiniLM-L6-v2", "input": "x", "dimensions": 2}, "k"),
                                ({"model": "all-MiniLM-L6-v2", "input": "x"}, "wrong")):
                other = openai.AsyncOpenAI(api_key=key, base_url="http://localhost/v1", http_client=http, max_retries=0)
                try:
                    await other.embeddings.create(**kwargs)
                except openai.APIStatusError as err:
                    errors.append(type(err))
            return default, floats, raw.json(), models, errors

    default, floats, raw, models, errors = asyncio.run(main())
    np.testing.assert_allclose([d.embedding for d in default.data], want, rtol=1e-6)
    np.testing.assert_allclose(floats.data[0].embedding, want[1], rtol=1e-6)
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, want[0], rtol=1e-6)  # little-endian float32, as OpenAI sends it
    assert [m.id for m in models.data] == ["all-MiniLM-L6-v2"]
    assert errors == [openai.NotFoundError, openai.BadRequestError, openai.BadRequestError, openai.AuthenticationError]


def test_cross_site_content_types_and_unannounced_large_bodies_are_refused():
    app = create_app(make_embedder(), ServeConfig(max_body_bytes=1000))

    async def chunks():
        for _ in range(50):
            yield b'{"input": "' + b"x" * 100 if _ == 0 else b"x" * 100

    plain, form, chunked, metrics = call(app, [
        ("POST", "/v1/embeddings", {"content": b'{"input": "x"}', "headers": {"content-type": "text/plain"}}),
        ("POST", "/v1/embeddings", {"data": {"input": "x"}}),
        ("POST", "/v1/embeddings", {"content": chunks(), "headers": {"content-type": "application/json"}}),
        ("GET", "/metrics", {}),
    ])
    assert plain.status_code == 415 and form.status_code == 415
    assert chunked.status_code == 413 and "over 1000 bytes" in chunked.json()["error"]["message"]
    assert 'bucketwise_rejections_total{reason="content_type"} 2.0' in metrics.text


def test_every_status_is_counted_and_unknown_routes_answer_in_the_error_shape():
    def broken(input_ids, attention_mask, token_type_ids):
        if (input_ids == 999).any():  # a 997-letter word
            raise RuntimeError("the model fell over")
        return embed(input_ids, attention_mask, token_type_ids)

    model = BucketedModel(broken, SPEC, Plan.grid(batch=[1, 4], seq=[8, 16]), warmup_runs=0).compile(progress=False)
    app = create_app(SentenceEmbedder(model, WordTokenizer()), ServeConfig())
    missing, wrong_method, crash, ok, v2_missing, metrics = call(app, [
        ("GET", "/v1/nothing", {}),
        ("GET", "/v1/embeddings", {}),
        post({"input": "x" * 997}),
        post({"input": "still serving"}),
        ("GET", "/v2/models/nope", {}),
        ("GET", "/metrics", {}),
    ])
    assert missing.status_code == 404 and "no route /v1/nothing" in missing.json()["error"]["message"]
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["type"] == "invalid_request_error"
    assert crash.status_code == 500 and crash.json()["error"]["type"] == "server_error"
    assert ok.status_code == 200
    assert v2_missing.status_code == 404 and "not served here" in v2_missing.json()["error"]  # v2's own shape
    for line in ('endpoint="unmatched",status="404"} 1.0', 'endpoint="embeddings",status="405"} 1.0',
                 'endpoint="embeddings",status="500"} 1.0', 'endpoint="embeddings",status="200"} 1.0',
                 'endpoint="v2_model",status="404"} 1.0'):
        assert "bucketwise_requests_total{" + line in metrics.text, line


def test_foreign_host_headers_slow_bodies_and_docs_are_refused():
    app = create_app(make_embedder(), ServeConfig(request_timeout=0.2))

    async def slow():
        yield b'{"input": '
        await asyncio.sleep(1.0)
        yield b'"x"}'

    rebound, slow_body, docs, schema, metrics = call(app, [
        post({"input": "x"}, headers={"host": "attacker.example"}),
        ("POST", "/v1/embeddings", {"content": slow(), "headers": {"content-type": "application/json"}}),
        ("GET", "/docs", {}),  # Swagger UI would load scripts from a CDN: off
        ("GET", "/openapi.json", {}),
        ("GET", "/metrics", {}),
    ])
    assert rebound.status_code == 400 and "attacker.example" in rebound.json()["error"]["message"]
    assert slow_body.status_code == 408
    assert docs.status_code == 404
    body = schema.json()["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"input", "model", "encoding_format", "dimensions"} <= set(body["properties"]) and body["required"] == ["input"]
    infer = schema.json()["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]["application/json"]
    assert infer["schema"]["properties"]["inputs"]["items"]["$ref"] == "#/components/schemas/TensorInput"
    assert "TensorInput" in schema.json()["components"]["schemas"]
    assert 'bucketwise_rejections_total{reason="host"} 1.0' in metrics.text
    any_host = create_app(make_embedder(), ServeConfig(allowed_hosts=("*",)))
    (ok,) = call(any_host, [post({"input": "x"}, headers={"host": "example.com:8000"})])
    assert ok.status_code == 200


# -- KServe v2 (Open Inference Protocol) ------------------------------------------------------

IMAGE_SPEC = ModelSpec(
    inputs=(InputSpec("image", ("batch", 3, "height", "width"), "float32"),),
    outputs=(OutputSpec("scores", ("batch", None)), OutputSpec("doubled", ("batch", None, "height", "width"))),
)


def image_fn(image):
    return {"scores": image.sum(axis=(2, 3)), "doubled": image * 2}


def image_model():
    plan = Plan.grid(batch=[1, 2], height=[8, 16], width=[8, 16])
    return BucketedModel(image_fn, IMAGE_SPEC, plan, warmup_runs=0).compile(progress=False)


def infer(name, inputs, **extra):
    return ("POST", f"/v2/models/{name}/infer", {"json": {"inputs": inputs, **extra}})


def tensor(name, arr, datatype):
    return {"name": name, "shape": list(arr.shape), "datatype": datatype, "data": arr.reshape(-1).tolist()}


def test_v2_serves_an_image_model_and_the_text_encoder_with_json_tensors():
    images = image_model()
    emb = make_embedder()
    app = create_app(emb, ServeConfig(), models={"tiny-cnn": images})
    rng = np.random.default_rng(0)
    pics = [rng.random((1, 3, h, w), dtype=np.float32) for h, w in ((5, 7), (16, 9), (12, 12))]
    ids = np.array([[1, 5, 6, 2]], dtype=np.int64)
    text_in = [tensor("input_ids", ids, "INT64"), tensor("attention_mask", np.ones_like(ids), "INT64"),
               tensor("token_type_ids", np.zeros_like(ids), "INT64")]
    responses = call(app, [("GET", "/v2", {}), ("GET", "/v2/health/ready", {}), ("GET", "/v2/models/tiny-cnn", {}),
                           ("GET", "/v2/models/tiny-cnn/versions/1/ready", {})]
                     + [infer("tiny-cnn", [tensor("image", p, "FP32")], id=f"r{i}") for i, p in enumerate(pics)]
                     + [infer("all-MiniLM-L6-v2", text_in, outputs=[{"name": "sentence_embedding"}])])
    server, ready, meta, model_ready, *outs, text = responses
    assert server.json()["extensions"] == ["binary_tensor_data"] and ready.status_code == model_ready.status_code == 200
    assert meta.json()["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, -1, -1]}]
    assert meta.json()["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]},
                                      {"name": "doubled", "datatype": "FP32", "shape": [-1, 3, -1, -1]}]
    for i, (pic, r) in enumerate(zip(pics, outs)):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["id"] == f"r{i}" and body["model_name"] == "tiny-cnn"
        got = {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in body["outputs"]}
        want = images(image=pic)  # the library called directly
        np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-6)
        np.testing.assert_array_equal(got["doubled"], want["doubled"])  # cropped to the image's own size
    (emb_out,) = text.json()["outputs"]
    np.testing.assert_allclose(np.array(emb_out["data"]).reshape(emb_out["shape"]), emb.model(
        input_ids=ids, attention_mask=np.ones_like(ids), token_type_ids=np.zeros_like(ids))["sentence_embedding"])


def test_v2_binary_tensors_both_ways():
    app = create_app(None, ServeConfig(), models={"tiny-cnn": image_model()})
    pic = np.random.default_rng(1).random((2, 3, 6, 10), dtype=np.float32)
    header = {"inputs": [{"name": "image", "shape": list(pic.shape), "datatype": "FP32",
                          "parameters": {"binary_data_size": pic.nbytes}}],
              "outputs": [{"name": "scores", "parameters": {"binary_data": True}}, {"name": "doubled"}]}
    head = __import__("json").dumps(header).encode()
    (r,) = call(app, [("POST", "/v2/models/tiny-cnn/infer", {
        "content": head + pic.astype("<f4").tobytes(),
        "headers": {"inference-header-content-length": str(len(head)), "content-type": "application/octet-stream"}})])
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    meta = __import__("json").loads(r.content[:n])
    scores, doubled = meta["outputs"]
    got = np.frombuffer(r.content[n:n + scores["parameters"]["binary_data_size"]], dtype="<f4").reshape(scores["shape"])
    np.testing.assert_allclose(got, pic.sum(axis=(2, 3)), rtol=1e-5)
    np.testing.assert_array_equal(np.array(doubled["data"], np.float32).reshape(doubled["shape"]), pic * 2)


def test_v2_json_numbers_are_the_float32_values_binary_carries_in_at_most_9_digits():
    import re

    app = create_app(None, ServeConfig(), models={"tiny-cnn": image_model()})
    pic = np.random.default_rng(2).random((2, 3, 6, 10), dtype=np.float32)
    outputs = [{"name": "scores"}, {"name": "doubled"}]
    as_json, as_bytes = call(app, [
        infer("tiny-cnn", [tensor("image", pic, "FP32")], outputs=outputs),
        infer("tiny-cnn", [tensor("image", pic, "FP32")],
              outputs=[{**o, "parameters": {"binary_data": True}} for o in outputs])])
    assert as_json.status_code == 200 and as_bytes.status_code == 200
    n = int(as_bytes.headers["inference-header-content-length"])
    blobs, offset = as_bytes.content[n:], 0
    for t, b in zip(as_json.json()["outputs"], __import__("json").loads(as_bytes.content[:n])["outputs"]):
        size = b["parameters"]["binary_data_size"]
        assert np.asarray(t["data"], dtype=np.float32).tobytes() == blobs[offset:offset + size]
        offset += size
    numbers = re.findall(r"-?\d+\.\d+(?:[eE][-+]?\d+)?", as_json.text)
    assert numbers and max(len(x.split("e")[0].split("E")[0].replace("-", "").replace(".", "").lstrip("0"))
                           for x in numbers) <= 9, numbers[:5]  # float32's shortest form, not float64's 17 digits


def test_v2_refuses_fractions_in_integer_tensors_and_nan_in_json_rather_than_computing_them():
    """Token id 5.5 was cut to 5 and run; a NaN pixel ran and came back as a 500. Both are
    the client's mistakes, answered with a 400 that names them."""
    app = create_app(make_embedder(), ServeConfig(), models={"tiny-cnn": image_model()})
    ids = [1, 5.5, 6, 2]
    text_in = [{"name": "input_ids", "shape": [1, 4], "datatype": "INT64", "data": ids},
               {"name": "attention_mask", "shape": [1, 4], "datatype": "INT64", "data": [1, 1, 1, 1]},
               {"name": "token_type_ids", "shape": [1, 4], "datatype": "INT64", "data": [0, 0, 0, 0]}]
    nan_body = (b'{"inputs": [{"name": "image", "shape": [1, 3, 1, 1], "datatype": "FP32", '
                b'"data": [0.5, NaN, 0.5]}]}')
    fraction, nan, ok = call(app, [
        infer("all-MiniLM-L6-v2", text_in),
        ("POST", "/v2/models/tiny-cnn/infer", {"content": nan_body, "headers": {"content-type": "application/json"}}),
        infer("all-MiniLM-L6-v2", [{**text_in[0], "data": [1, 5, 6, 2]}, *text_in[1:]])])
    assert fraction.status_code == 400 and "input 'input_ids'" in fraction.json()["error"], fraction.text
    assert "INT64 data holds 5.5, which is not a whole number" in fraction.json()["error"]
    assert nan.status_code == 400 and "not valid JSON" in nan.json()["error"], nan.text
    assert ok.status_code == 200


def test_v2_bad_requests_get_4xx_in_the_protocol_shape():
    app = create_app(None, ServeConfig(), models={"tiny-cnn": image_model()})
    pic = np.zeros((1, 3, 4, 4), np.float32)
    cases = [
        (infer("tiny-cnn", [tensor("pixels", pic, "FP32")]), 400, "do not match the model's inputs"),
        (infer("tiny-cnn", [tensor("image", pic, "BYTES")]), 400, "not served"),
        (infer("tiny-cnn", [{**tensor("image", pic, "FP32"), "shape": [1, 3, 4, 5]}]), 400, "needs 60"),
        (infer("tiny-cnn", [tensor("image", np.zeros((1, 3, 40, 4), np.float32), "FP32")]), 400, "40"),
        (infer("tiny-cnn", [tensor("image", np.zeros((1, 4, 4, 4), np.float32), "FP32")]), 400, "image"),
        (infer("tiny-cnn", [tensor("image", pic, "FP32")], outputs=[{"name": "logits"}]), 400, "not outputs"),
        (infer("tiny-cnn", []), 400, "inputs"),
        (infer("other", [tensor("image", pic, "FP32")]), 404, "not served here"),
        (("POST", "/v2/models/tiny-cnn/infer", {"content": b"{", "headers": {"content-type": "text/plain"}}), 415, "content-type"),
        (("POST", "/v2/models/tiny-cnn/infer", {"content": b"{nope"}), 400, "not valid JSON"),
        (("POST", "/v2/models/tiny-cnn/infer", {"content": b"{}", "headers": {"inference-header-content-length": "9"}}),
         400, "Inference-Header-Content-Length"),
    ]
    responses = call(app, [c for c, _, _ in cases] + [infer("tiny-cnn", [tensor("image", pic, "FP32")])])
    for (case, status, needle), r in zip(cases, responses):
        assert r.status_code == status and needle in r.json()["error"], (case[1], r.text)
    assert responses[-1].status_code == 200  # and it keeps serving


def test_the_drain_estimate_scales_a_warmed_bucket_when_the_largest_shared_its_warm_up():
    """Buckets over one shared session warm up once; the drain estimate then scales the
    largest warm-up timed by volume (x1.5) instead of running the largest bucket at start."""
    from bucketwise import Bucket
    from bucketwise.serve.server import worst_drain_seconds

    model = BucketedModel(embed, SPEC, Plan.grid(batch=[1, 4], seq=[8, 16])).compile(progress=False)
    builds = model.compile_report.builds
    for b, r in builds.items():  # as if one session served them all, warmed at batch 1 x 8
        r.warmup_seconds = 0.01 if b == Bucket(batch=1, seq=8) else 0.0
    # The largest bucket (4 x 16) is 8 times the volume: 1.5 x 0.01 x 8 per run, 64 rows in runs of 4.
    assert worst_drain_seconds(model, 64) == pytest.approx(16 * 1.5 * 0.01 * 8)
    builds[Bucket(batch=4, seq=16)].warmup_seconds = 0.02  # its own warm-up, where it has one
    assert worst_drain_seconds(model, 64) == pytest.approx(16 * 0.02)


def test_rows_above_every_bucket_are_recorded_in_the_traffic_shapes():
    """A row that runs alone under --overflow fallback is traffic too: `bucketwise plan`
    reads the shapes to raise the top bucket, which it could not do if they were missed."""
    app = create_app(make_embedder(overflow="fallback"), ServeConfig())
    long, shapes, metrics, short, again = call(app, [post({"input": "word " * 20}), ("GET", "/shapes", {}),
                                                     ("GET", "/metrics", {}), post({"input": "a b"}),
                                                     ("GET", "/shapes", {})])
    assert long.status_code == 200 and short.status_code == 200
    assert shapes.json()["rows_recorded"] == 1 and shapes.json()["shapes"] == [[22]]
    assert 'bucketwise_overflows_total{model="all-MiniLM-L6-v2",policy="fallback"} 1.0' in metrics.text
    assert sorted(s[0] for s in again.json()["shapes"]) == [4, 22]


def test_the_key_covers_every_route_that_reveals_traffic_models_or_metrics():
    """#28: with a key set, /shapes, /metrics, model metadata and the schema needed none."""
    app = create_app(make_embedder(), ServeConfig(api_key="s3cret", model_name="m"))
    leaky = ["/shapes", "/shapes/m", "/metrics", "/v1/models", "/v2/models/m", "/v2/models/m/ready", "/v2",
             "/openapi.json"]
    probes = ["/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"]
    answers = call(app, [("GET", p, {}) for p in leaky + probes]
                   + [("GET", p, {"headers": {"Authorization": "bearer s3cret"}}) for p in leaky])
    without, open_, with_key = answers[:len(leaky)], answers[len(leaky):len(leaky) + len(probes)], answers[-len(leaky):]
    for path, r in zip(leaky, without):
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"].startswith("Bearer"), path  # RFC 7235: say how to authenticate
    assert [r.status_code for r in open_] == [200] * len(probes)
    # The scheme is case-insensitive: "bearer" works as "Bearer" does.
    assert [r.status_code for r in with_key] == [200] * len(leaky)


def test_metrics_can_be_left_open_for_scrapers():
    app = create_app(make_embedder(), ServeConfig(api_key="s3cret", metrics_without_key=True))
    metrics, shapes = call(app, [("GET", "/metrics", {}), ("GET", "/shapes", {})])
    assert metrics.status_code == 200 and shapes.status_code == 401


def test_405_names_the_allowed_methods():
    app = create_app(make_embedder(), ServeConfig(model_name="m"))
    trace, delete = call(app, [("TRACE", "/v1/embeddings", {}), ("DELETE", "/healthz", {})])
    assert trace.status_code == delete.status_code == 405
    assert trace.headers["allow"] == "POST" and "GET" in delete.headers["allow"]


def test_a_cross_site_infer_without_a_content_type_is_refused():
    """#28: a browser sends a bare Blob cross-site with no Content-Type and no preflight;
    tritonclient sends none either, but no Origin (or the binary extension's header)."""
    app = create_app(make_embedder(), ServeConfig(model_name="m"))
    body = (b'{"inputs": [{"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [1, 5, 2]}, '
            b'{"name": "attention_mask", "shape": [1, 3], "datatype": "INT64", "data": [1, 1, 1]}, '
            b'{"name": "token_type_ids", "shape": [1, 3], "datatype": "INT64", "data": [0, 0, 0]}]}')
    evil, client, typed = call(app, [
        ("POST", "/v2/models/m/infer", {"content": body, "headers": {"origin": "http://evil.example"}}),
        ("POST", "/v2/models/m/infer", {"content": body}),
        ("POST", "/v2/models/m/infer", {"content": body, "headers": {"origin": "http://evil.example",
                                                                       "content-type": "application/json"}}),
    ])
    assert evil.status_code == 415 and "content-type" in evil.json()["error"]
    assert client.status_code == 200, client.text
    assert typed.status_code == 200  # a typed cross-site request needs a CORS preflight, which is never granted


def test_v2_refuses_strings_as_numbers_and_rows_that_attend_to_nothing():
    """#28: "7592", a string, ran as INT64 token 7592; an all-zero attention mask answered a
    zero vector with a 200."""
    app = create_app(make_embedder(), ServeConfig())
    text_in = [{"name": "input_ids", "shape": [2, 3], "datatype": "INT64", "data": [[1, 5, 2], [1, 6, 2]]},
               {"name": "attention_mask", "shape": [2, 3], "datatype": "INT64", "data": [[1, 1, 1], [1, 1, 1]]},
               {"name": "token_type_ids", "shape": [2, 3], "datatype": "INT64", "data": [[0, 0, 0], [0, 0, 0]]}]
    string, nothing, ok = call(app, [
        infer("all-MiniLM-L6-v2", [{**text_in[0], "data": [[1, "7592", 2], [1, 6, 2]]}, *text_in[1:]]),
        infer("all-MiniLM-L6-v2", [text_in[0], {**text_in[1], "data": [[1, 1, 1], [0, 0, 0]]}, text_in[2]]),
        infer("all-MiniLM-L6-v2", text_in)])
    assert string.status_code == 400 and "INT64 data holds '7592', which is not a number" in string.json()["error"]
    assert nothing.status_code == 400 and "rows [1] attend to no token" in nothing.json()["error"]
    assert ok.status_code == 200, ok.text


def test_the_schema_says_what_the_server_refuses():
    """#28: schemathesis found schema-valid requests refused (ST202): {"input": ""}, and a
    KServe input with an empty name or an unknown datatype. The schema now forbids them."""
    app = create_app(make_embedder(), ServeConfig(max_texts=7))
    (schema,) = call(app, [("GET", "/openapi.json", {})])
    doc = schema.json()
    body = doc["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    text, texts = body["properties"]["input"]["anyOf"]
    from bucketwise.serve._common import NON_BLANK

    assert text["minLength"] == 1 and text["pattern"] == NON_BLANK
    assert texts["minItems"] == 1 and texts["maxItems"] == 7 and texts["items"]["pattern"] == NON_BLANK
    tensor = doc["components"]["schemas"]["TensorInput"]["properties"]
    assert tensor["name"]["minLength"] == 1 and "INT64" in tensor["datatype"]["enum"] and "BYTES" not in tensor["datatype"]["enum"]
    empty, blank = call(app, [post({"input": ""}), post({"input": ["ok", " "]})])
    assert empty.status_code == blank.status_code == 400  # what the schema forbids, the server refuses
    # "dimensions" takes the model's one size (3 for the double), and a KServe input one of
    # the served inputs' names: schemathesis sent {"dimensions": 1} and an input named "0".
    dims = body["properties"]["dimensions"]["anyOf"][0]
    assert dims == {"type": "integer", "enum": [3]}
    assert tensor["name"]["enum"] == ["attention_mask", "input_ids", "token_type_ids"]
    wrong, right = call(app, [post({"input": "a b", "dimensions": 2}), post({"input": "a b", "dimensions": 3})])
    assert wrong.status_code == 400 and "omit it, or send 3" in wrong.json()["error"]["message"]
    assert right.status_code == 200 and len(right.json()["data"][0]["embedding"]) == 3
