"""The jax backend and bucket_jit: routing, padding on the device, parity with MiniLM.

(The cache round trip, warm and corrupt, is in test_cache.py with the other backends.)
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

from bucketwise import BucketedModel, InputSpec, ModelSpec, OutputSpec, Plan  # noqa: E402
from bucketwise.backends.jax import JaxModel  # noqa: E402
from bucketwise.errors import BucketOverflowError  # noqa: E402
from bucketwise.jax import bucket_jit  # noqa: E402

SPEC = ModelSpec(
    (InputSpec("ids", ("batch", "seq"), "int64"), InputSpec("mask", ("batch", "seq"), "int64", example=1)),
    (OutputSpec("tokens", ("batch", "seq", None)), OutputSpec("pooled", ("batch", None))),
)


def forward(params, ids, mask):
    h = jnp.tanh(params["emb"][ids] @ params["w"]) * mask[..., None]
    # a length-dependent term: wrong padding or cropping would change the pooled value
    return {"tokens": h, "pooled": h.sum(1) / mask.sum(1, keepdims=True)}


def params(seed=0, width=8):
    rng = np.random.default_rng(seed)
    return {"emb": jnp.asarray(rng.normal(size=(40, 16)), jnp.float32),
            "w": jnp.asarray(rng.normal(size=(16, width)), jnp.float32)}


def batch(rows, length, seed=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 40, (rows, length))
    return ids, np.ones_like(ids)


def test_jax_arrays_are_padded_and_cropped_on_the_device(monkeypatch):
    bm = BucketedModel(JaxModel(forward, params()), SPEC, Plan.grid(batch=[1, 2], seq=[8, 16]), backend="jax")
    bm.compile(progress=False)
    ids, mask = batch(2, 11)
    expected = bm.reference({"ids": ids, "mask": mask})
    # No NumPy round trip: any host conversion of a jax array inside the library fails.
    import bucketwise._arrays as arrays
    import bucketwise.padding as padding

    real = np.asarray

    def refuse(value, *a, **k):
        if isinstance(value, jax.Array):
            raise AssertionError("a jax array went through np.asarray")
        return real(value, *a, **k)

    for module in (arrays, padding):
        monkeypatch.setattr(module.np, "asarray", refuse)
    out = bm(ids=jnp.asarray(ids), mask=jnp.asarray(mask))
    monkeypatch.undo()
    assert isinstance(out["tokens"], jax.Array) and out["tokens"].shape == (2, 11, 8)
    np.testing.assert_allclose(np.asarray(out["pooled"]), expected["pooled"], atol=1e-5)
    numpy_out = bm(ids=ids, mask=mask)  # NumPy in, NumPy out
    assert isinstance(numpy_out["pooled"], np.ndarray)
    np.testing.assert_allclose(numpy_out["tokens"], expected["tokens"], atol=1e-5)
    assert bm.stats.hits and bm.stats.padding_waste == pytest.approx(1 - 22 / 32)


def test_routing_chunks_rows_and_refuses_overflow_on_jax():
    bm = BucketedModel(JaxModel(forward, params()), SPEC, Plan.grid(batch=[1, 2], seq=[8, 16]), backend="jax")
    bm.compile(progress=False)
    ids, mask = batch(5, 6)
    out = bm(ids=ids, mask=mask)  # 5 rows: chunks of 2, 2 and 1
    ref = bm.reference({"ids": ids, "mask": mask})
    np.testing.assert_allclose(out["pooled"], ref["pooled"], atol=1e-5)
    assert sum(bm.stats.hits.values()) == 3
    with pytest.raises(BucketOverflowError):
        bm(ids=batch(1, 17)[0], mask=batch(1, 17)[1])
    truncating = BucketedModel(JaxModel(forward, params()), SPEC, Plan.grid(batch=[1], seq=[8]), backend="jax",
                               overflow="truncate").compile(progress=False)
    assert truncating(ids=batch(1, 12)[0], mask=batch(1, 12)[1])["tokens"].shape == (1, 8, 8)


def test_bucket_jit_compiles_once_per_bucket_not_once_per_length():
    plan = Plan.grid(batch=[1, 4], seq=[8, 16, 32])
    fast = bucket_jit(forward, spec=SPEC, plan=plan)
    p = params()
    exact = jax.jit(forward)
    for length in range(3, 33):  # 30 distinct lengths: jax.jit would compile 30 times
        ids, mask = batch(1 + length % 3, length, seed=length)
        out = fast(p, ids=jnp.asarray(ids), mask=jnp.asarray(mask))
        ref = exact(p, ids, mask)
        np.testing.assert_allclose(np.asarray(out["pooled"]), np.asarray(ref["pooled"]), atol=1e-5)
        assert out["tokens"].shape == ref["tokens"].shape
    assert fast.compiles == len(plan) == 6  # once per bucket
    assert exact._cache_size() == 30  # once per shape
    fast(params(seed=5), ids=jnp.asarray(batch(1, 5)[0]), mask=jnp.asarray(batch(1, 5)[1]))
    assert fast.compiles == 6  # new values, same shapes: the executables serve them
    fast(params(width=4), ids=jnp.asarray(batch(1, 5)[0]), mask=jnp.asarray(batch(1, 5)[1]))
    assert fast.compiles == 7  # params of another shape: a new executable, as jax.jit would
    ahead = bucket_jit(forward, spec=SPEC, plan=plan).compile(p)
    assert ahead.compiles == len(plan)
    assert 0 < fast.stats.padding_waste < 1
    with pytest.raises(BucketOverflowError):
        fast(p, ids=jnp.asarray(batch(1, 40)[0]), mask=jnp.asarray(batch(1, 40)[1]))
    fallback = bucket_jit(forward, spec=SPEC, plan=plan, overflow="fallback")
    long_ids, long_mask = batch(1, 40)
    np.testing.assert_allclose(np.asarray(fallback(p, ids=long_ids, mask=long_mask)["pooled"]),
                               np.asarray(exact(p, long_ids, long_mask)["pooled"]), atol=1e-5)


def test_minilm_in_jax_matches_the_torch_model(tmp_path):
    pytest.importorskip("safetensors")
    torch = pytest.importorskip("torch")
    from sentences import sentences

    from bucketwise.models.encoders import lazy_default_encoder
    from bucketwise.models.jax_bert import bert_encoder
    from bucketwise.models.text import SentenceEmbedder

    model, tokenizer, spec = bert_encoder()
    plan = Plan.grid(batch=[1, 8], seq=[16, 32, 64])
    embedder = SentenceEmbedder(BucketedModel(model, spec, plan, backend="jax", cache=tmp_path), tokenizer)
    embedder.prepare(progress=False)
    texts = sentences(24)
    got = embedder.embed(texts, progress=False)
    lazy, _, tspec = lazy_default_encoder(None)
    module = lazy.load()
    enc = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="np")
    with torch.inference_mode():
        ref = module(**{n: torch.from_numpy(enc[n]) for n in tspec.input_names})
    ref = (ref["sentence_embedding"] if isinstance(ref, dict) else ref[1]).numpy()
    assert np.abs(got - ref).max() < 1e-4
    assert embedder.model.stats.padding_waste > 0
