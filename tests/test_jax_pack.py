"""Packed buckets on the jax backend (issue #30): the JAX BERT over packed rows, pooled per
segment in the graph, against the same JAX BERT unpacked, for all-MiniLM-L6-v2 (mean,
normalized) and a tiny BERT (CLS pooling, pairs with token types); the compile-time probe
refuses a jax model that packs wrongly; what the JAX BERT does not run is refused."""

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("safetensors")
pytest.importorskip("torch")  # the parity probe runs each text alone through the torch model

import tiny_encoders as te  # noqa: E402

from bucketwise import Plan  # noqa: E402
from bucketwise.errors import ConfigError, PackingUnsupportedError, ParityError  # noqa: E402
from bucketwise.models.packing import pack  # noqa: E402
from bucketwise.models.text import SentenceEmbedder  # noqa: E402
from bucketwise.shapes import BATCH, Bucket  # noqa: E402

PLAN = Plan((Bucket({BATCH: 4, "seq": 64}), Bucket({BATCH: 1, "seq": 128})))
TEXTS = [
    "a short text",
    "Buckets let a static compiler serve inputs of many lengths.",
    "x y z",
    "Packing puts several short texts in one row, so a few static shapes carry any mix of lengths.",
    "ok",
    " ".join(["word"] * 124),  # 126 tokens: a row of 128 alone
    " ".join(["medium"] * 40) + ", a text of middling length that takes most of a short row.",
    "Another one, a little longer, here.",
    ("a sentence", "and its pair, somewhat longer than the first one"),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("jax-pack")
    return {name: te.build(name, root) for name in ("bert-cls", "roberta-lasttoken-dense-normalize")}


def test_packed_minilm_on_jax_embeds_as_unpacked_jax():
    packed = SentenceEmbedder.default(backend="jax", pack=4, plan=PLAN, progress=False)
    assert packed.packing.max_segments == 4 and packed.packing.spec.input_names == (
        "input_ids", "segment_ids", "position_ids", "token_type_ids")
    plain = SentenceEmbedder.default(backend="jax", plan=Plan.grid(batch=[8], seq=[128]), progress=False)
    # The layout shares rows among the short texts and gives the 126-token text a row alone.
    lengths = [len(ids) for ids, _ in packed.tokenize(TEXTS)]
    rows = pack(lengths, [64, 128], 4).rows
    assert len(rows) < len(TEXTS) and any(len(r) > 1 for r in rows)
    assert any(len(r) == 1 and r[0].length == 126 for r in rows)
    got, want = packed.embed(TEXTS), plain.embed(TEXTS)
    assert got.shape == want.shape == (len(TEXTS), 384)
    assert np.abs(got - want).max() <= 1e-4
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_a_tiny_bert_packs_with_cls_pooling_and_pairs_on_jax(tiny):
    folder = str(tiny["bert-cls"])
    packed = SentenceEmbedder.default(model=folder, backend="jax", pack=3, plan=Plan.grid(batch=[4], seq=[48]),
                                      progress=False)
    plain = SentenceEmbedder.default(model=folder, backend="jax", plan=Plan.grid(batch=[4], seq=[48]), progress=False)
    texts = TEXTS[:5] + TEXTS[7:]
    got, want = packed.embed(texts), plain.embed(texts)
    assert np.abs(got - want).max() <= 1e-4


def test_a_jax_model_that_packs_wrongly_is_refused(tiny):
    """Artifacts that lose the segments (every real token in segment 1: no block mask, one
    pooled segment) are refused by the compile-time probe, before anything is served."""
    from faulty_backend import faulty_jax

    def one_segment(run):
        def changed(inputs):
            seg = inputs["segment_ids"]
            return run({**inputs, "segment_ids": (seg > 0).astype(seg.dtype)})
        return changed

    with faulty_jax(one_segment) as name, \
            pytest.raises(ParityError, match="packed 4 to a row.*refusing to serve it packed"):
        SentenceEmbedder.default(model=str(tiny["bert-cls"]), backend=name, plan=Plan.grid(batch=[4], seq=[48]),
                                 pack=4, progress=False)


def test_what_the_jax_bert_does_not_run_is_refused_packed(tiny):
    from bucketwise.models.heads import TextClassifier

    with pytest.raises(PackingUnsupportedError, match="cannot run packed on the jax backend.*'roberta'"):
        SentenceEmbedder.default(model=str(tiny["roberta-lasttoken-dense-normalize"]), backend="jax", pack=4,
                                 progress=False, build=False)
    with pytest.raises(ConfigError, match="jax backend runs sentence embeddings only"):
        TextClassifier.default(model=str(tiny["bert-cls"]), backend="jax", pack=4, progress=False, build=False)
