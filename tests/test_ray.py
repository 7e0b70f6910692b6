"""bucketwise on a real local Ray cluster, started here (``ray.init`` on this machine) as
Ray users do in CI: Ray Serve replicas driven with the official ``openai`` client, and
Ray Data embedding checked against one process."""

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from bucketwise.errors import ConfigError

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from sentences import sentences  # noqa: E402
from serve_double import free_port  # noqa: E402

import bucketwise.ray as bwr  # noqa: E402

# Few buckets keep the cold compile short; two sessions (batch 1 and 8), lengths free.
SIZES = {"batch_sizes": "1,8", "seq_sizes": "16,32,64,128"}


def test_options_read_command_line_strings_and_name_what_is_wrong():
    opts = bwr.RayServeOptions.parse({"num_replicas": "2", "batch_sizes": "1,8", "num_cpus": "0.5",
                                      "backend_options": '{"intra_op_threads": 1}', "allowed_hosts": "a,b"})
    assert (opts.num_replicas, opts.batch_sizes, opts.num_cpus) == (2, (1, 8), 0.5)
    assert opts.backend_options == {"intra_op_threads": 1} and opts.allowed_hosts == ("a", "b")
    assert bwr.RayServeOptions.parse({"num_replicas": "auto"}).num_replicas == "auto"
    with pytest.raises(ConfigError, match="unknown option 'replicas'.*num_replicas"):
        bwr.RayServeOptions.parse({"replicas": 2})
    with pytest.raises(ConfigError, match="num_replicas='two'"):
        bwr.RayServeOptions.parse({"num_replicas": "two"})
    with pytest.raises(ConfigError, match="min_replicas and max_replicas"):
        bwr.RayServeOptions.parse({"min_replicas": 1})
    with pytest.raises(ConfigError, match="exclude each other"):
        bwr.RayServeOptions.parse({"plan": "p.json", "batch_sizes": "1,8"})
    # The server's limits are ServeConfig's, checked where the app is built (#29: three places
    # checked them, Ray by matching type names).
    for bad, needle in (({"max_queue": "0"}, r"max_queue \(--max-queue\) must be a whole number of at least 1, got 0"),
                        ({"batch_wait": "soon"}, r"batch_wait \(--batch-wait\) must be adaptive or fixed"),
                        ({"max_delay_ms": "-1"}, r"max_delay \(--max-delay-ms, in ms\) must be >= 0")):
        with pytest.raises(ConfigError, match=needle):
            bwr.RayServeOptions.parse(bad)


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"BUCKETWISE_CACHE": os.environ["BUCKETWISE_CACHE"]}})
    yield tmp_path_factory.mktemp("ray-cache")
    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def post(port, texts, timeout=60):
    r = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": texts, "model": "all-MiniLM-L6-v2"},
                   timeout=timeout)
    return r


@pytest.mark.slow
def test_serve_replicas_share_the_cache_batch_by_bucket_and_scale_down_losing_nothing(local_ray):
    from bucketwise.models.text import SentenceEmbedder
    from bucketwise.ray import text_plan
    from bucketwise.runtime.cache import ArtifactCache

    cache = local_ray
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {**SIZES, "num_replicas": "2", "cache_dir": str(cache), "num_cpus": "0.5"}
    started = time.perf_counter()
    serve.run(bwr.app(args), name="bucketwise", route_prefix="/")  # returns once both replicas are warm
    ready_s = time.perf_counter() - started
    texts = sentences(400)

    # The official client, through Ray's proxy.
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    got = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts[:8])
    served = np.array([d.embedding for d in got.data], dtype=np.float32)

    # One process with the same cache loads every bucket the replicas built: nothing compiled.
    opts = bwr.RayServeOptions.parse(args)
    local = SentenceEmbedder.default(plan=text_plan(opts), cache=ArtifactCache(str(cache)), progress=False)
    assert not local.model.builder.model_loaded  # no torch model loaded: all from the cache
    np.testing.assert_allclose(served, local.embed(texts[:8]), atol=1e-5)

    # Concurrent requests reach both replicas; every answer is right.
    def one(i):
        r = post(port, [texts[i % len(texts)]])
        return r.status_code, r.headers.get("x-bucketwise-replica"), r.json()

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(200)))
    assert all(status == 200 for status, _, _ in results), [r for r in results if r[0] != 200][:3]
    assert len({replica for _, replica, _ in results}) == 2
    want = local.embed([texts[i % len(texts)] for i in range(200)])
    got = np.array([body["data"][0]["embedding"] for _, _, body in results], dtype=np.float32)
    np.testing.assert_allclose(got, want, atol=1e-5)

    # Each replica's /metrics counts bucket hits and padding of its own batches.
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert 'bucketwise_bucket_hits_total{bucket="' in metrics and "bucketwise_padded_tokens_total" in metrics
    # ... and Ray's own Prometheus export carries them per replica.
    export = ray._private.worker.global_worker.node.metrics_export_port
    deadline, seen = time.time() + 60, ""
    while time.time() < deadline:
        seen = httpx.get(f"http://127.0.0.1:{export}/metrics", timeout=10).text
        hits = [line for line in seen.splitlines() if line.startswith("ray_bucketwise_bucket_hits_total{")]
        padded = [line for line in seen.splitlines() if line.startswith("ray_bucketwise_padded_positions_total{")]
        if len({line.split('replica="')[1].split('"')[0] for line in padded if 'replica="' in line}) == 2 and hits:
            break
        time.sleep(2)
    else:
        raise AssertionError("Ray's metrics export never showed bucketwise's series for both replicas: "
                             + "\n".join(x for x in seen.splitlines() if "bucketwise" in x)[:2000])
    assert 'bucket="' in hits[0] and 'deployment="bucketwise"' in hits[0]

    # Kill one replica under load (its process dies, in-flight work and all): requests it
    # held fail at once (a 5xx or a closed connection), never hang; retried once, as a client of a replicated service
    # does, every one succeeds on the other replica; Ray starts a new replica.
    first_failures, retried_failures, sent, stop = [], [], [0], threading.Event()

    def load_with_retry():
        while not stop.is_set():
            text = texts[sent[0] % len(texts)]
            sent[0] += 1
            for attempt in range(2):
                try:
                    r = post(port, [text])
                    if r.status_code == 200:
                        break
                    failure = r.status_code
                except httpx.HTTPError as err:
                    failure = repr(err)
                (first_failures if attempt == 0 else retried_failures).append(failure)

    workers = [threading.Thread(target=load_with_retry) for _ in range(8)]
    for w in workers:
        w.start()
    time.sleep(1.0)
    victim = next(a for a in ray.util.list_named_actors(all_namespaces=True)
                  if "SERVE_REPLICA" in a["name"] and "bucketwise" in a["name"])
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        time.sleep(1.0)
        states = serve.status().applications["bucketwise"].deployments["bucketwise"].replica_states
        if states.get("RUNNING", 0) == 2 and sum(states.values()) == 2:
            break
    stop.set()
    for w in workers:
        w.join()
    assert states.get("RUNNING", 0) == 2, states
    # A request in flight on the killed replica gets an error from Ray's proxy (a 5xx, or a 408
    # for one it was still waiting on), or its connection is closed midway through the answer
    # (RemoteProtocolError): either way at once, and the retry succeeds.
    assert retried_failures == [] and all((isinstance(f, int) and f in (408, *range(500, 600)))
                                          or "RemoteProtocolError" in str(f)
                                          for f in first_failures), (first_failures[:5], retried_failures[:5])
    print(f"killed a replica: {sent[0]} requests, {len(first_failures)} failed first time, all succeeded when retried")

    # Scale 2 -> 1 under load: Ray drains the replica it removes; no request fails.
    failures, done, stop = [], [0], threading.Event()

    def load():
        while not stop.is_set():
            try:
                r = post(port, [texts[done[0] % len(texts)]])
                if r.status_code != 200:
                    failures.append(r.status_code)
            except httpx.HTTPError as err:
                failures.append(repr(err))
            done[0] += 1

    workers = [threading.Thread(target=load) for _ in range(8)]
    for w in workers:
        w.start()
    time.sleep(1.0)
    serve.run(bwr.app({**args, "num_replicas": "1"}), name="bucketwise", route_prefix="/")
    deadline = time.time() + 60
    while time.time() < deadline:
        status = serve.status().applications["bucketwise"].deployments["bucketwise"]
        if status.replica_states.get("RUNNING", 0) == 1 and sum(status.replica_states.values()) == 1:
            break
        time.sleep(0.5)
    time.sleep(1.0)
    stop.set()
    for w in workers:
        w.join()
    assert done[0] > 50 and failures == [], failures[:5]
    replicas = {post(port, [texts[0]]).headers["x-bucketwise-replica"] for _ in range(20)}
    assert len(replicas) == 1
    print(f"two replicas ready in {ready_s:.1f} s; {done[0]} requests during the scale-down, 0 failed")
    serve.delete("bucketwise")


@pytest.mark.slow
def test_ray_data_embeds_20000_texts_with_two_actors_as_one_process_does(local_ray):
    from bucketwise.models.text import SentenceEmbedder
    from bucketwise.ray import text_plan
    from bucketwise.runtime.cache import ArtifactCache

    some = sentences(4000)
    # 20,000 texts of varied lengths (the first 3-22 words of each sentence), short enough
    # for a 2-core CI machine.
    texts = [" ".join(some[i % len(some)].split()[: 3 + i % 20]) for i in range(20_000)]
    cache = str(local_ray)
    kwargs = {"batch_sizes": (1, 8), "seq_sizes": (16, 32, 64, 128), "cache_dir": cache}
    started = time.perf_counter()
    got = bwr.embed_texts(texts, concurrency=2, batch_size=2000, **kwargs)
    ray_s = time.perf_counter() - started

    opts = bwr.RayServeOptions.parse({"batch_sizes": "1,8", "seq_sizes": "16,32,64,128"})
    local = SentenceEmbedder.default(plan=text_plan(opts), cache=ArtifactCache(cache), progress=False)
    started = time.perf_counter()
    want = local.embed(texts)
    one_s = time.perf_counter() - started
    assert got.shape == want.shape == (20_000, 384) and got.dtype == np.float32
    assert float(np.abs(got - want).max()) <= 1e-5  # and so in input order
    print(f"20,000 texts: Ray Data 2 actors {ray_s:.1f} s, one process {one_s:.1f} s")


@pytest.mark.slow
def test_embed_dataset_names_a_missing_text_column(local_ray):
    data = ray.data.from_items([{"sentence": "a"}])
    with pytest.raises(Exception, match="no column 'text'.*sentence"):
        bwr.embed_dataset(data, batch_sizes=(1,), seq_sizes=(16,), cache_dir=str(local_ray)).take_all()


@pytest.mark.slow
def test_embed_cli_on_ray_writes_npy_in_input_order_and_parquet_shards(local_ray, tmp_path):
    import pyarrow.parquet as pq

    from bucketwise.cli import main
    from bucketwise.models.text import SentenceEmbedder
    from bucketwise.ray import RayServeOptions, text_plan
    from bucketwise.runtime.cache import ArtifactCache

    texts = sentences(300)
    src = tmp_path / "texts.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    common = ["embed", "--input", str(src), "--ray", "2", "--batch-sizes", "1,8", "--seq-sizes", "16,32,64,128",
              "--cache-dir", str(local_ray), "--quiet"]
    assert main([*common, "--output", str(tmp_path / "out.npy")]) == 0
    assert main([*common, "--output", str(tmp_path / "shards")]) == 0
    local = SentenceEmbedder.default(plan=text_plan(RayServeOptions.parse({**SIZES})),
                                     cache=ArtifactCache(str(local_ray)), progress=False)
    want = local.embed(texts)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), want, atol=1e-5)
    table = pq.read_table(tmp_path / "shards").to_pydict()
    assert sorted(table["id"]) == list(range(len(texts)))
    for i, text, vector in zip(table["id"], table["text"], table["embedding"]):
        assert text == texts[i]
        np.testing.assert_allclose(np.asarray(vector, np.float32), want[i], atol=1e-5)


@pytest.mark.slow
def test_ray_data_runs_another_architecture_as_one_process_does(local_ray, tmp_path):
    # A model the project is not tuned to: a tiny RoBERTa (byte-level BPE, no token types,
    # last-token pooling, a Dense layer) with random weights, from tests/tiny_encoders.py.
    pytest.importorskip("sentence_transformers")
    import tiny_encoders as te

    from bucketwise.models.text import SentenceEmbedder

    folder = str(te.build("roberta-lasttoken-dense-normalize", tmp_path))
    texts = [" ".join(s.split()[: 3 + i % 12]) for i, s in enumerate(sentences(400))]
    got = bwr.embed_texts(texts, model=folder, concurrency=2, batch_size=100, cache_dir=str(local_ray))
    local = SentenceEmbedder.default(model=folder, cache=str(local_ray), progress=False)
    want = local.embed(texts)
    assert got.shape == want.shape == (400, 16)
    assert float(np.abs(got - want).max()) <= 1e-5


@pytest.mark.slow
def test_ray_data_packs_each_batch_as_a_packed_process_does(local_ray, tmp_path):
    # pack=4: each actor's embedder is packed (default packed buckets), and each map_batches
    # call packs its batch's texts first-fit decreasing into their rows. A tiny encoder and
    # one actor keep it short.
    pytest.importorskip("sentence_transformers")
    import tiny_encoders as te

    from bucketwise import Plan
    from bucketwise.models.text import SentenceEmbedder

    folder = str(te.build("bert-cls", tmp_path))
    texts = [" ".join(s.split()[: 2 + i % 10]) for i, s in enumerate(sentences(300))]
    cache = str(local_ray)
    got = bwr.embed_texts(texts, model=folder, concurrency=1, batch_size=100, cache_dir=cache, pack=4)
    # The actor built the packed buckets into the cache: a packed process loads them all.
    packed = SentenceEmbedder.default(model=folder, cache=cache, pack=4, progress=False)
    assert not packed.model.builder.model_loaded
    assert sorted((b["batch"], b["seq"]) for b in packed.model.plan.buckets) == [(4, 48), (16, 48)]
    plain = SentenceEmbedder.default(model=folder, plan=Plan.grid(batch=[16], seq=[48]), cache=cache,
                                     progress=False).embed(texts)
    assert got.shape == plain.shape == (300, 32)
    np.testing.assert_allclose(got, packed.embed(texts), atol=1e-5)
    np.testing.assert_allclose(got, plain, atol=1e-5)  # and so in input order
    with pytest.raises(ConfigError, match="pack=0"):
        bwr.embed_dataset(ray.data.from_items([{"text": "a"}]), pack=0)
