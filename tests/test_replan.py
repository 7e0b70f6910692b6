"""Re-planning from live traffic and the hot swap, on a real server (uvicorn, the app,
the batcher) over the serve test double (tests/serve_double.py): traffic shifts from
short texts to longer ones, the server plans again, builds in the background and swaps,
and no request fails."""

import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from serve_double import SPEC, ThreadServer, WordTokenizer, embed  # noqa: E402

from bucketwise import BucketedModel, Plan  # noqa: E402
from bucketwise.models.text import SentenceEmbedder  # noqa: E402
from bucketwise.serve import ServeConfig, create_app  # noqa: E402
from bucketwise.serve.replan import expected_padding  # noqa: E402


def test_expected_padding_counts_each_row_at_its_bucket():
    plan = Plan.grid(batch=[1], seq=[8, 32])
    per_row, waste = expected_padding(plan, np.array([4, 12, 40]), np.array([1.0, 1.0, 2.0]))
    assert per_row == pytest.approx((8 + 32 + 2 * 40) / 4)  # 40 is above the top: its own size
    assert waste == pytest.approx(1 - (4 + 12 + 80) / 120)


def start_clients(url, phase, stop, failures, answers, n=6):
    """``n`` threads posting one text of ``phase["words"]`` words until ``stop``: each
    failure (status, text) and each answer (tokens sent, embedding) is recorded."""

    def client():
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                words = phase["words"]
                r = http.post("/v1/embeddings", json={"input": [" ".join(["word"] * words)]})
                if r.status_code != 200:
                    failures.append((r.status_code, r.text[:200]))
                else:
                    answers.append((words + 2, r.json()["data"][0]["embedding"]))

    workers = [threading.Thread(target=client) for _ in range(n)]
    for w in workers:
        w.start()
    return workers


def test_traffic_shift_swaps_the_plan_and_no_request_fails(tmp_path):
    model = BucketedModel(embed, SPEC, Plan.grid(batch=[1, 4], seq=[8, 32]), warmup_runs=0).compile(progress=False)
    embedder = SentenceEmbedder(model, WordTokenizer())
    # Every compile from now on, by thread: the new plan shares this backend.
    compiled_on, real_compile = [], model.backend.compile

    def recording_compile(*args, **kwargs):
        compiled_on.append(threading.current_thread().name)
        return real_compile(*args, **kwargs)

    model.backend.compile = recording_compile
    config = ServeConfig(replan_every=0.3, replan_min_rows=30, plans_dir=str(tmp_path))
    app = create_app(embedder, config)
    failures, answers, phase = [], [], {"words": 2}  # 4 tokens
    stop = threading.Event()

    with ThreadServer(app) as server:
        url = f"http://127.0.0.1:{server.port}"
        workers = start_clients(url, phase, stop, failures, answers)
        time.sleep(0.6)
        assert embedder.model is model  # short texts fit the plan: no swap
        phase["words"] = 10  # 12 tokens
        deadline = time.time() + 20
        while embedder.model is model and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.8)  # traffic on the new buckets
        assert not app.state.service.holds(model)  # the old buckets were released once drained
        stop.set()
        for w in workers:
            w.join()
        metrics = httpx.get(f"{url}/metrics").text

    fresh = embedder.model
    assert fresh is not model, "the plan was never swapped"
    assert failures == []
    assert all(a[1][1] == a[0] for a in answers)  # every answer counts its own tokens
    assert sorted(fresh.plan.sizes("seq")) == [16, 32] and sorted(fresh.plan.sizes("batch")) == [1, 4]
    # Long texts padded to 32 before (waste 62%), to 16 after (25%).
    assert fresh.stats.padding_waste < model.stats.padding_waste - 0.2
    assert 'bucketwise_plan_generation{model="all-MiniLM-L6-v2"} 1.0' in metrics
    assert 'bucketwise_plan_swaps_total{model="all-MiniLM-L6-v2"} 1.0' in metrics
    assert Plan.load(tmp_path / "plan.gen1.json").sizes("seq") == fresh.plan.sizes("seq")
    # Nothing compiled on the request path: every compile ran in the re-planner's build thread.
    assert compiled_on and set(compiled_on) == {"bucketwise-replan_0"}
    assert "bucketwise_plan_build_resident_bytes" in metrics and "bucketwise_plan_build_peak_resident_bytes" in metrics


def shifted_server(config, model, until, rounds=60):
    """Serve ``model`` under ``config``; send short then 12-token texts; then wait (at most
    30 s) for ``until`` in /metrics. The embedder, the statuses and the metrics."""
    embedder = SentenceEmbedder(model, WordTokenizer())
    app = create_app(embedder, config)
    statuses = []
    with ThreadServer(app) as server:
        url = f"http://127.0.0.1:{server.port}"
        with httpx.Client(base_url=url, timeout=30) as http:
            for i in range(rounds):
                words = 10 if i >= 10 else 2
                statuses.append(http.post("/v1/embeddings", json={"input": [" ".join(["word"] * words)] * 4}).status_code)
                time.sleep(0.02)
            deadline = time.time() + 30
            while until not in (metrics := http.get("/metrics").text) and time.time() < deadline:
                statuses.append(http.post("/v1/embeddings", json={"input": ["word " * 10]}).status_code)
                time.sleep(0.1)
    return embedder, statuses, metrics


def test_a_replan_over_the_compile_budget_is_not_built():
    model = BucketedModel(embed, SPEC, Plan.grid(batch=[1, 4], seq=[8, 32]), warmup_runs=0).compile(progress=False)
    config = ServeConfig(replan_every=0.2, replan_min_rows=30, replan_compile_budget=1e-9)
    embedder, statuses, metrics = shifted_server(config, model, 'bucketwise_replans_rejected_total{model="all-MiniLM-L6-v2",reason="compile_budget"}')
    assert embedder.model is model and set(statuses) == {200}
    assert 'bucketwise_replans_rejected_total{model="all-MiniLM-L6-v2",reason="compile_budget"}' in metrics
    assert 'bucketwise_plan_swaps_total{model="all-MiniLM-L6-v2"}' not in metrics  # none swapped


def test_a_replan_over_the_memory_budget_is_dropped_and_the_plan_stays():
    held = {}

    def hungry_embed(input_ids, attention_mask, token_type_ids):
        # Each new shape keeps 40 MiB resident (pages written), as a compiled bucket would;
        # above glibc's largest mmap threshold (32 MiB), so it is always fresh memory.
        if input_ids.shape not in held:
            held[input_ids.shape] = np.ones(40 << 20, dtype=np.uint8)
        return embed(input_ids, attention_mask, token_type_ids)

    model = BucketedModel(hungry_embed, SPEC, Plan.grid(batch=[1, 4], seq=[8, 32]), warmup_runs=1).compile(
        progress=False)
    config = ServeConfig(replan_every=0.2, replan_min_rows=30, replan_memory_budget=16 << 20)
    embedder, statuses, metrics = shifted_server(config, model, 'bucketwise_replans_rejected_total{model="all-MiniLM-L6-v2",reason="memory_budget"}')
    assert embedder.model is model and set(statuses) == {200}
    assert 'bucketwise_replans_rejected_total{model="all-MiniLM-L6-v2",reason="memory_budget"}' in metrics
    assert 'bucketwise_plan_swaps_total{model="all-MiniLM-L6-v2"}' not in metrics  # none swapped


def test_the_build_pauses_between_buckets_to_its_share_of_the_time():
    from bucketwise.serve.replan import Replanner

    def slow_embed(input_ids, attention_mask, token_type_ids):
        time.sleep(0.05)
        return embed(input_ids, attention_mask, token_type_ids)

    model = BucketedModel(slow_embed, SPEC, Plan.grid(batch=[1], seq=[8]), warmup_runs=1).compile(progress=False)
    fresh = model.with_plan(Plan.grid(batch=[1, 4], seq=[16, 32]))  # 4 buckets, each warmed up once: >= 0.2 s
    replanner = Replanner(None, None, every=1.0, build_share=0.5)
    start = time.perf_counter()
    replanner._build(fresh)
    took = time.perf_counter() - start
    assert fresh.ready
    busy = sum(b.seconds + b.warmup_seconds for b in fresh.compile_report.builds.values())
    assert busy >= 0.2 and took >= 1.9 * busy  # as long paused as built


def test_closing_stops_a_build_under_way_at_its_next_bucket():
    # A server that stops mid-build must not leave the build running behind it (it raced
    # the next model's ONNX export in this suite, and would hold a process up at exit).
    import asyncio

    from bucketwise.serve.replan import Replanner

    runs = []

    def slow_embed(input_ids, attention_mask, token_type_ids):
        runs.append(time.perf_counter())
        time.sleep(0.3)
        return embed(input_ids, attention_mask, token_type_ids)

    model = BucketedModel(slow_embed, SPEC, Plan.grid(batch=[1], seq=[8]), warmup_runs=1).compile(progress=False)
    fresh = model.with_plan(Plan.grid(batch=[1, 4], seq=[16, 32]))  # 4 buckets of >= 0.3 s, paused as long
    replanner = Replanner(None, None, every=1.0, build_share=0.5)

    async def main():
        build = asyncio.get_running_loop().run_in_executor(replanner._builder, replanner._build, fresh)
        await asyncio.sleep(0.4)  # the first bucket built, in its pause
        await replanner.close()
        closed = time.perf_counter()
        return await build, closed

    built, closed = asyncio.run(main())
    assert built is False and not fresh.ready and not fresh.builder.built  # stopped, what it built released
    assert 1 <= len(runs) < 4 and max(runs) < closed  # no bucket built after close returned


@pytest.mark.slow
def test_a_swap_on_onnx_runtime_keeps_serving_on_the_shared_sessions():
    # The new model shares the old one's backend (one ONNX Runtime session per batch size):
    # retiring the old model must not close it (it once did, and the server died).
    pytest.importorskip("onnxruntime")
    from bucketwise.models.text import load_default_encoder

    module, tokenizer, spec = load_default_encoder()
    model = BucketedModel(module, spec, Plan.grid(batch=[1, 4], seq=[8, 64]), backend="onnxruntime").compile(
        progress=False)
    embedder = SentenceEmbedder(model, tokenizer)
    text = "a sentence of about twelve tokens, long enough for this"
    want = embedder.embed([text])[0]
    app = create_app(embedder, ServeConfig(replan_every=0.2, replan_min_rows=10))
    with ThreadServer(app) as server:
        url = f"http://127.0.0.1:{server.port}"
        statuses = []
        deadline = time.time() + 60
        while (embedder.model is model or app.state.service.holds(model)) and time.time() < deadline:
            statuses.append(httpx.post(f"{url}/v1/embeddings", json={"input": [text]}, timeout=30).status_code)
        assert embedder.model is not model and sorted(embedder.model.plan.sizes("seq")) == [16, 64]
        time.sleep(0.5)  # the old model released
        for _ in range(10):
            r = httpx.post(f"{url}/v1/embeddings", json={"input": [text]}, timeout=30)
            assert r.status_code == 200
            np.testing.assert_allclose(r.json()["data"][0]["embedding"], want, atol=1e-5)
    assert set(statuses) == {200}


@pytest.mark.slow
def test_another_architecture_replans_under_the_official_openai_client(tmp_path):
    # A model the project is not tuned to (a tiny RoBERTa: byte-level BPE, no token types,
    # last-token pooling, Dense, Normalize; random weights), on ONNX Runtime, driven by the
    # openai package, on MRPC-length sentences: traffic moves from 2-3 words to 10-14, the server
    # re-plans and swaps, every answer matches sentence-transformers before and after.
    openai = pytest.importorskip("openai")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("sentence_transformers")
    import tiny_encoders as te
    from sentence_transformers import SentenceTransformer
    from sentences import sentences

    folder = te.build("roberta-lasttoken-dense-normalize", tmp_path)
    words = [s.split() for s in sentences(199)]
    short = [" ".join(w[:2 + i % 2]) for i, w in enumerate(words)]
    long = [" ".join(w[:10 + i % 5]) for i, w in enumerate(words) if len(w) >= 14]
    reference = SentenceTransformer(str(folder), device="cpu")
    embedder = SentenceEmbedder.default(model=str(folder), plan=Plan.grid(batch=[1, 4], seq=[8, 48]), progress=False)
    model = embedder.model
    app = create_app(embedder, ServeConfig(replan_every=0.3, replan_min_rows=20, model_name="tiny-roberta",
                                           model_aliases=()))
    with ThreadServer(app) as server:
        client = openai.OpenAI(api_key="unused", base_url=f"http://127.0.0.1:{server.port}/v1", max_retries=0)

        def check(texts):
            got = client.embeddings.create(model="tiny-roberta", input=texts)
            vectors = np.array([d.embedding for d in got.data], dtype=np.float32)
            want = reference.encode(texts, convert_to_numpy=True)
            np.testing.assert_allclose(vectors, want, atol=1e-5)

        for i in range(0, 40, 4):
            check(short[i:i + 4])
        deadline = time.time() + 60
        i = 0
        while embedder.model is model and time.time() < deadline:
            check(long[i % len(long):i % len(long) + 4] or long[:4])
            i += 4
        assert embedder.model is not model, "the plan was never swapped"
        assert max(embedder.model.plan.sizes("seq")) == 48  # the top length kept
        for i in range(0, 40, 4):
            check(long[i:i + 4])  # served by the new buckets
        assert embedder.model.stats.calls > 0


def test_swaps_leave_one_record_per_name_and_metrics_of_the_live_model_only():
    """#29: serving state was kept by id(model), and remove_model left the successor chain and
    the metrics' state behind, so a model swapped out stayed counted in
    bucketwise_compiled_buckets. Three swaps later, the name has one model, one batcher, and
    the gauge counts the buckets of the model in service."""
    import asyncio

    from serve_double import make_embedder

    from bucketwise import Plan
    from bucketwise.serve import ServeConfig, create_app

    embedder, _ = make_embedder()
    app = create_app(embedder, ServeConfig())
    service = app.state.service
    name = "all-MiniLM-L6-v2"
    plans = [Plan.grid(batch=[1], seq=[8, 16]), Plan.grid(batch=[1, 4], seq=[16]), Plan.grid(batch=[1, 2, 4], seq=[4, 8, 16])]

    async def run():
        async with app.router.lifespan_context(app):
            for plan in plans:
                old = service.served[name].model
                fresh = old.with_plan(plan).compile(progress=False)
                retired = service.swap(name, fresh)
                rows = [{"input_ids": np.array([1, 5, 2]), "attention_mask": np.ones(3, dtype=np.int64),
                         "token_type_ids": np.zeros(3, dtype=np.int64)}]
                await service.batcher(name).submit_many(rows, validated=True)
                service.render_metrics()  # the old model counted while it finishes
                await retired.close()
                service.retire(name, old)
                old.release()
            return service.render_metrics()[0].decode()

    text = asyncio.run(run())
    rec = service.served[name]
    assert rec.generation == 3 and rec.retiring == [] and rec.model.plan == plans[-1]
    assert not service.holds(embedder.model) or embedder.model is rec.model
    assert f'bucketwise_compiled_buckets{{model="{name}"}} {float(len(plans[-1]))}' in text
    assert set(service.metrics._seen) == {(name, 3)}
    assert f'bucketwise_batches_total{{model="{name}"}} 3.0' in text  # counters keep what every model ran


def test_three_swaps_under_load_lose_nothing_and_leave_metrics_of_the_live_model(tmp_path):
    """#29: re-planning swaps one model three times under load; afterwards /metrics holds the
    series of the live model only (its buckets built, one record, nothing retiring) and
    every request was answered."""
    model = BucketedModel(embed, SPEC, Plan.grid(batch=[1, 4], seq=[8, 64]), warmup_runs=0).compile(progress=False)
    embedder = SentenceEmbedder(model, WordTokenizer())
    config = ServeConfig(replan_every=0.2, replan_min_rows=20, traffic_half_life=0.3)
    app = create_app(embedder, config)
    service = app.state.service
    failures, answers, phase = [], [], {"words": 2}
    stop = threading.Event()
    with ThreadServer(app) as server:
        url = f"http://127.0.0.1:{server.port}"
        workers = start_clients(url, phase, stop, failures, answers)
        for generation, words in ((1, 10), (2, 38), (3, 18)):  # 12, then 40, then 20 tokens
            phase["words"] = words
            deadline = time.time() + 30
            while service.served["all-MiniLM-L6-v2"].generation < generation and time.time() < deadline:
                time.sleep(0.05)
        deadline = time.time() + 10
        while service.served["all-MiniLM-L6-v2"].retiring and time.time() < deadline:
            time.sleep(0.05)  # the last old model finishes its queue
        stop.set()
        for w in workers:
            w.join()
        metrics = httpx.get(f"{url}/metrics").text
    rec = service.served["all-MiniLM-L6-v2"]
    assert rec.generation >= 3, "three swaps did not happen"
    assert failures == [] and answers
    assert all(a[1][1] == a[0] for a in answers)  # every answer counts its own tokens
    assert rec.retiring == [] and rec.model is embedder.model
    live = float(len(rec.model.plan))
    assert f'bucketwise_compiled_buckets{{model="all-MiniLM-L6-v2"}} {live}' in metrics
    assert f'bucketwise_plan_generation{{model="all-MiniLM-L6-v2"}} {float(rec.generation)}' in metrics
    assert set(service.metrics._seen) <= {("all-MiniLM-L6-v2", rec.generation)}
