"""One placement (issue #30): the router answers in runs of slots, for bulk jobs
(Router.place) and for the batcher (Router.next_run), packed or not; the batcher packs
waiting sequences online through a packed model's RowPacker. Pure: a NumPy model stands
in for the compiled artifacts; the packer is the real one (PackedModel.write/read)."""

import asyncio

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bucketwise import Bucket, BucketedModel, InputSpec, ModelSpec, OutputSpec, Plan, Router
from bucketwise.models.packing import PackedModel, PositionRule
from bucketwise.runtime.batcher import Batcher

S = 4  # segments a packed row holds at most

PACKED_SPEC = ModelSpec(
    inputs=(InputSpec("input_ids", ("batch", "seq"), "int64", pad_value=0),
            InputSpec("segment_ids", ("batch", "seq"), "int64", pad_value=0),
            InputSpec("position_ids", ("batch", "seq"), "int64", pad_value=0)),
    outputs=(OutputSpec("total", ("batch", None)), OutputSpec("first_position", ("batch", None))),
)


class PackedDouble:
    """A packed 'model' in NumPy: per segment, the sum of its ids and its first position id
    (which must be 0 where positions restart), as a packed graph pools per segment."""

    def __init__(self):
        self.shapes = []

    def __call__(self, input_ids, segment_ids, position_ids):
        self.shapes.append(input_ids.shape)
        total = np.zeros((len(input_ids), S), np.int64)
        first = np.full((len(input_ids), S), -1, np.int64)
        for k in range(1, S + 1):
            hit = segment_ids == k
            total[:, k - 1] = (input_ids * hit).sum(axis=1)
            starts = np.argmax(hit, axis=1)
            first[:, k - 1] = np.where(hit.any(axis=1), position_ids[np.arange(len(hit)), starts], -1)
        return {"total": total, "first_position": first}


def packed_model(plan):
    double = PackedDouble()
    bm = BucketedModel(double, PACKED_SPEC, plan, warmup_runs=0).compile(progress=False)
    bm.packer = PackedModel(module=None, reference=None, spec=PACKED_SPEC, task="feature-extraction",
                            architecture="bert", max_segments=S, positions=PositionRule(), pad_id=0,
                            segment_outputs=("total", "first_position"), token_outputs=(), takes_token_types=False,
                            max_length=plan.max_size("seq"))
    double.shapes.clear()
    return bm, double


def seq(n, seed):
    return {"input_ids": np.random.default_rng(seed).integers(1, 100, n),
            "attention_mask": np.ones(n, np.int64)}


def submit_all(bm, rows, **options):
    async def main():
        b = Batcher(bm, **{"max_delay": 60.0, "max_queue": 10_000, **options})
        tasks = [asyncio.ensure_future(b.submit(r, validated=True)) for r in rows]
        await asyncio.sleep(0)
        await b.close()
        return await asyncio.gather(*tasks)

    return asyncio.run(main())


PACKED_PLAN = Plan((Bucket(batch=8, seq=32), Bucket(batch=2, seq=32), Bucket(batch=1, seq=64)))


def check_run(router, run, lengths, max_segments):
    bucket = run.bucket
    assert bucket is not None
    assert len(run.rows) <= bucket["batch"]
    for row in run.rows:
        assert 1 <= len(row) <= max_segments
        end = 0
        for slot in row:
            assert slot.offset == end and slot.length == lengths[slot.sequence]
            end += slot.length
        assert end <= bucket["seq"]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=1, max_size=60), st.sampled_from([1, 2, 4]))
def test_place_puts_every_input_in_exactly_one_slot_of_a_bucket_that_holds_it(lengths, max_segments):
    router = Router(PACKED_PLAN)
    runs = router.place(lengths, max_segments=max_segments)
    placed = sorted(i for run in runs for i in run.items)
    assert placed == list(range(len(lengths)))
    for run in runs:
        check_run(router, run, lengths, max_segments)
    if max_segments > 1:  # packing never computes more positions than one text a row
        unpacked = router.place(lengths)
        assert sum(r.bucket.volume for r in runs) <= sum(r.bucket.volume for r in unpacked)


def test_place_unpacked_keeps_one_slot_per_row_and_sends_the_too_long_alone():
    router = Router(Plan.grid(batch=[1, 4], seq=[8, 16]), overflow="truncate")
    runs = router.place([3, 9, 40, 5, 16])
    alone = [r for r in runs if r.bucket is None]
    assert [r.items for r in alone] == [[2]]
    assert all(len(row) == 1 and row[0].offset == 0 for r in runs for row in r.rows)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 32), min_size=1, max_size=40), st.lists(st.integers(1, 32), max_size=20))
def test_next_run_takes_the_oldest_due_and_riders_only_into_spare_room(due, riders):
    router = Router(PACKED_PLAN)
    edge = router.queue_edge("seq", max(due))
    due = [min(n, edge) for n in due]
    run = router.next_run([{"seq": n} for n in due], [{"seq": n} for n in riders], max_segments=S)
    lengths = due + riders
    check_run(router, run, lengths, S)
    items = run.items
    assert len(items) == len(set(items))
    taken_due = sorted(i for i in items if i < len(due))
    assert taken_due == list(range(len(taken_due))) and taken_due  # an oldest prefix, never empty
    # The bucket is the one the due rows alone need: riders never make the run larger.
    due_rows = {r for r, row in enumerate(run.rows) if any(s.sequence < len(due) for s in row)}
    assert run.bucket == router.take(len(due_rows), seq=edge)[0]


def test_the_batcher_packs_waiting_sequences_and_each_caller_gets_its_own_segment():
    bm, double = packed_model(PACKED_PLAN)
    lengths = [5, 30, 7, 12, 3, 3, 9, 60, 17, 2, 8, 31, 4]
    rows = [seq(n, i) for i, n in enumerate(lengths)]
    outs = submit_all(bm, rows)
    for r, o in zip(rows, outs):
        assert o["total"] == r["input_ids"].sum()
        assert o["first_position"] == 0  # positions restart in every segment
    assert len(double.shapes) < len(lengths)  # several texts a run
    assert sum(b * s for b, s in double.shapes) < sum(Router(PACKED_PLAN).route({"batch": 1, "seq": n}).volume
                                                      for n in lengths)
    assert bm.stats.real_volume == sum(lengths)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=1, max_size=50))
def test_the_packing_batcher_never_uses_more_runs_than_flushing_each_queue_alone(lengths):
    bm, double = packed_model(PACKED_PLAN)
    rows = [seq(n, i) for i, n in enumerate(lengths)]
    outs = submit_all(bm, rows)
    router = Router(PACKED_PLAN)
    per_edge: dict[int, int] = {}
    for n in lengths:
        edge = router.queue_edge("seq", n)
        per_edge[edge] = per_edge.get(edge, 0) + 1
    alone = sum(-(-k // router.max_rows({"batch": 1, "seq": e})) for e, k in per_edge.items())
    assert len(double.shapes) <= alone
    for r, o in zip(rows, outs):
        assert o["total"] == r["input_ids"].sum()


def test_a_packed_model_is_refused_over_an_image_plan():
    import pytest

    from bucketwise.errors import ConfigError

    plan = Plan.grid(batch=[2], height=[8], width=[8])
    spec = ModelSpec(inputs=(InputSpec("x", ("batch", "height", "width"), "float32"),),
                     outputs=(OutputSpec("y", ("batch",)),))
    bm = BucketedModel(lambda x: {"y": x.sum(axis=(1, 2))}, spec, plan, warmup_runs=0).compile(progress=False)
    bm.packer = packed_model(PACKED_PLAN)[0].packer

    async def main():
        Batcher(bm)

    with pytest.raises(ConfigError, match="packed model needs a plan over batch and one length dim"):
        asyncio.run(main())


def test_serve_pack_answers_as_the_unpacked_models_over_the_clients_own_packages(tmp_path):
    """`bucketwise serve --pack`: a packed embedder and a packed reranker in one server, the
    batcher packing concurrent requests of mixed lengths. Every embedding (through the
    ``openai`` package) and every rerank score is within 1e-5 of the unpacked model run in
    this process; KServe v2 tensors to a packed model get a 400 naming the way out, and the
    server keeps serving. Flags that cannot pack are refused before anything loads."""
    import json
    import signal
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    import openai
    import pytest
    import tiny_encoders as te
    from serve_double import free_port, wait_ready

    from bucketwise.models.heads import TextRanker
    from bucketwise.models.text import SentenceEmbedder

    embedder = te.build("mpnet-max", tmp_path)
    ranker = te.build_head("roberta", "text-ranking", tmp_path)
    sizes = ["--batch-sizes", "2,8", "--seq-sizes", f"24,{te.MAX_SEQ_LENGTH}"]
    config = tmp_path / "models.json"
    config.write_text(json.dumps({"models": {"rerank": {"path": str(ranker), "overflow": "truncate", "pack": 3}}}))
    bad = subprocess.run([sys.executable, "-m", "bucketwise.cli", "serve", "--model", str(embedder), "--pack", "4",
                          "--replan-every", "60"], capture_output=True, text=True)
    assert bad.returncode == 2 and "drop --pack or --replan-every" in bad.stderr
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bucketwise.cli", "serve", "--port", str(port), "--no-cache",
                             "--no-progress", "--model", f"emb={embedder}", "--models-config", str(config),
                             "--pack", "4", "--overflow", "truncate", *sizes],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    from bucketwise import Plan

    plan = Plan.grid(batch=[2, 8], seq=[24, te.MAX_SEQ_LENGTH])
    texts = [" ".join(["word"] * n) for n in (1, 3, 30, 2, 12, 44, 5, 7, 1, 20, 9, 4, 16, 2, 60, 6)]
    query, docs = "where do bears live", ["Bears live in forests.", "word", "The city of Berlin has a bear."]
    try:
        wait_ready(port, proc, timeout=180)
        client = openai.OpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0)
        with ThreadPoolExecutor(8) as pool:  # concurrent single-text requests: the batcher packs them
            got = list(pool.map(lambda t: client.embeddings.create(model="emb", input=[t]).data[0].embedding, texts))
        v2 = httpx.post(f"{url}/v2/models/emb/infer", json={"inputs": [
            {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}]})
        assert v2.status_code == 400 and "served packed" in v2.text and "without --pack" in v2.text
        ranked = httpx.post(f"{url}/v2/rerank", json={"model": "rerank", "query": query, "documents": docs})
        assert ranked.status_code == 200, ranked.text
        again = client.embeddings.create(model="emb", input=texts[:3])  # still serving
        assert len(again.data) == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    plain = SentenceEmbedder.default(model=str(embedder), backend="onnxruntime", plan=plan, overflow="truncate",
                                     progress=False)
    np.testing.assert_allclose(np.array(got), plain.embed(texts), atol=1e-5)
    plain_ranker = TextRanker.default(model=str(ranker), backend="onnxruntime", plan=plan, overflow="truncate",
                                      progress=False)
    want = {r["index"]: r["score"] for r in plain_ranker.rerank(query, docs)}
    for r in ranked.json()["results"]:
        assert r["relevance_score"] == pytest.approx(want[r["index"]], abs=1e-5)
