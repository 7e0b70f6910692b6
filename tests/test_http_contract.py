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

from bucketwise.serve import ServeConfig, create_app  # noqa: E402

SPEC = ModelSpec(
    inputs=(InputSpec("input_ids", ("batch", "seq"), "int64", pad_value=0, example=1),
            InputSpec("attention_mask", ("batch", "seq"), "int64", pad_value=0, example=1),
            InputSpec("token_type_ids", ("batch", "seq"), "int64", pad_value=0)),
    outputs=(OutputSpec("sentence_embedding", ("batch", None)),),
)


class WordTokenizer:
    """[CLS] words... [SEP] as ids 1, len(word)+2 ..., 2; truncates like a real tokenizer."""

    def __call__(self, text, pair=None, *, truncation=False, max_length=None, verbose=True):
        ids = [1] + [len(w) + 2 for w in text.split()] + [2]
        if truncation and max_length is not None and len(ids) > max_length:
            ids = ids[: max_length - 1] + [2]
        return {"input_ids": ids, "token_type_ids": [0] * len(ids)}


def embed(input_ids, attention_mask, token_type_ids):
    m = attention_mask.astype(np.float32)
    total = (input_ids * m).sum(axis=1)
    count = m.sum(axis=1)
    return np.stack([total, count, total / np.maximum(count, 1)], axis=1).astype(np.float32)


def make_embedder(overflow="error"):
    model = BucketedModel(embed, SPEC, Plan.grid(batch=[1, 4], seq=[8, 16]), overflow=overflow)
    return SentenceEmbedder(model.compile(progress=False), WordTokenizer())


def call(app, requests):
    """Run the app's lifespan and send ``requests`` (method, path, kwargs) in order."""

    async def main():
        out = []
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
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
        (b'{"input": "x", "encoding_format": "int8"}', 400, "not supported"),
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


def test_truncate_policy_serves_long_texts_and_counts_them():
    app = create_app(make_embedder(overflow="truncate"), ServeConfig())
    r, metrics = call(app, [post({"input": "word " * 20}), ("GET", "/metrics", {})])
    assert r.status_code == 200
    assert r.json()["usage"]["prompt_tokens"] == 16
    assert 'bucketwise_overflows_total{policy="truncate"} 1.0' in metrics.text


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
    assert f"bucketwise_real_tokens_total {float(stats.real_volume)}" in metrics.text
    assert f"bucketwise_padded_tokens_total {float(stats.padded_volume)}" in metrics.text
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
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test/v1")
            client = openai.AsyncOpenAI(api_key="k", base_url="http://test/v1", http_client=http, max_retries=0)
            default = await client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)  # base64 on the wire
            floats = await client.embeddings.create(model="all-MiniLM-L6-v2", input=texts[1], encoding_format="float")
            raw = await http.post("/embeddings", json={"input": texts[0], "encoding_format": "base64"},
                                  headers={"Authorization": "Bearer k"})
            models = await client.models.list()
            errors = []
            for kwargs, key in (({"model": "gpt-4", "input": "x"}, "k"), ({"model": "all-MiniLM-L6-v2", "input": ""}, "k"),
                                ({"model": "all-MiniLM-L6-v2", "input": "x", "dimensions": 2}, "k"),
                                ({"model": "all-MiniLM-L6-v2", "input": "x"}, "wrong")):
                other = openai.AsyncOpenAI(api_key=key, base_url="http://test/v1", http_client=http, max_retries=0)
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
