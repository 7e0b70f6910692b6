"""The artifact cache: hit, miss, corrupt entries, concurrent compiles, memory budgets,
lazy starts and compile order. Most tests use the cacheable test double in
cache_double.py; the last ones run the real ONNX Runtime, OpenVINO and TorchScript
backends on a small torch model."""

import json
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from cache_double import SPEC, OverlapBackend, SharedWeightsBackend, SlowScaleBackend, events, scale_model

from bucketwise import Bucket, BucketedModel, MemoryBudgetError, Plan
from bucketwise.runtime.cache import ArtifactCache, CacheWarning, fingerprint
from bucketwise.runtime.memory import check_memory_budget, format_bytes
from bucketwise.runtime.tables import compile_table
from bucketwise.shapes import BATCH

PLAN = Plan.grid(batch=[1], seq=[8, 16, 32])


def build(cache, log=None, *, plan=PLAN, delay=0.0, hold_mib=0, model=None, **compile_options):
    backend = SlowScaleBackend(delay=delay, log=str(log) if log else None, hold_mib=hold_mib)
    bm = BucketedModel(model or scale_model(), SPEC, plan, backend=backend, cache=cache, warmup_runs=0)
    compile_options.setdefault("progress", False)
    return bm.compile(**compile_options)


def sources(bm):
    return {b.label(): r.source for b, r in bm.compile_report.builds.items()}


def x(seq, rows=1):
    return {"x": np.arange(rows * seq, dtype=np.float32).reshape(rows, seq)}


# -- hit and miss ---------------------------------------------------------------------------


def test_miss_compiles_and_saves_then_hit_loads_without_compiling(tmp_path):
    cache, log = ArtifactCache(tmp_path / "c"), tmp_path / "log"
    cold = build(cache, log, delay=0.05)
    assert set(sources(cold).values()) == {"compiled"}
    assert len(cache.entries()) == 3
    # The model was loaded (LazyModel) because something had to be compiled.
    assert cold.builder.model_loaded

    warm = build(cache, log, delay=0.05)
    assert set(sources(warm).values()) == {"cache"}
    assert [e for e, _ in events(log)].count("compile") == 3  # none on the warm start
    assert [e for e, _ in events(log)].count("load") == 3
    assert not warm.builder.model_loaded, "a warm start must not load the model"
    np.testing.assert_array_equal(warm(**x(5))["y"], cold(**x(5))["y"])
    np.testing.assert_array_equal(warm(**x(5))["y"], 2 * x(5)["x"])
    report = warm.compile_report
    assert report.hits == 3
    assert report.saved_seconds > 0.1  # three recorded 0.05 s compiles, loads take ~1 ms
    for build_ in report.builds.values():
        assert build_.compile_seconds >= 0.05 and build_.disk_bytes > 0


def test_key_changes_with_model_backend_version_and_bucket(tmp_path):
    cache = ArtifactCache(tmp_path)
    build(cache)
    assert set(sources(build(cache, model=scale_model(3.0))).values()) == {"compiled"}
    bm = BucketedModel(scale_model(), SPEC, PLAN, backend=SlowScaleBackend(version="2"), cache=cache, warmup_runs=0)
    assert set(sources(bm.compile(progress=False)).values()) == {"compiled"}
    bigger = Plan.grid(batch=[1], seq=[8, 16, 32, 64])
    assert sources(build(cache, plan=bigger)) == {
        "batch=1,seq=8": "cache", "batch=1,seq=16": "cache", "batch=1,seq=32": "cache", "batch=1,seq=64": "compiled"}
    assert len(cache.entries()) == 3 + 3 + 3 + 1


def test_fingerprint_follows_weights_and_graph_not_pad_values():
    torch = pytest.importorskip("torch")
    from bucketwise import InputSpec, ModelSpec, OutputSpec

    spec = ModelSpec((InputSpec("x", ("batch", "seq"), "float32"),), (OutputSpec("y", ("batch", "seq")),))
    padded = ModelSpec((InputSpec("x", ("batch", "seq"), "float32", pad_value=7),), (OutputSpec("y", ("batch", "seq")),))
    torch.manual_seed(0)
    a = torch.nn.Linear(4, 4)
    b = torch.nn.Linear(4, 4)
    b.load_state_dict(a.state_dict())
    assert fingerprint(a, spec) == fingerprint(b, spec) == fingerprint(a, padded)
    with torch.no_grad():
        b.bias[0] += 1e-3
    assert fingerprint(a, spec) != fingerprint(b, spec)
    assert fingerprint(torch.nn.Linear(4, 5), spec) != fingerprint(a, spec)  # another architecture
    with pytest.raises(Exception, match="LazyModel"):
        fingerprint(lambda x: x, spec)


# -- corrupt entries and atomic writes -------------------------------------------------------


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "meta", "meta_missing_key", "meta_wrong_type"])
def test_corrupt_entry_is_rebuilt_with_a_warning_never_loaded(tmp_path, damage):
    cache, log = ArtifactCache(tmp_path / "c"), tmp_path / "log"
    build(cache)
    entry = next(e for e in cache.entries() if e.bucket == Bucket(batch=1, seq=16))
    artifact = entry.path("scale.npy")
    if damage == "flip":
        data = bytearray(artifact.read_bytes())
        data[-1] ^= 0xFF  # the scale's last byte: would load as another number
        artifact.write_bytes(bytes(data))
    elif damage == "truncate":
        artifact.write_bytes(artifact.read_bytes()[:10])
    elif damage == "delete":
        artifact.unlink()
    elif damage == "meta":
        entry.path("meta.json").write_text("{not json")
    else:  # valid JSON that lacks a field, or has one of the wrong type: rebuilt, not a KeyError
        meta = json.loads(entry.path("meta.json").read_text())
        record = meta["files"]["scale.npy"]
        if damage == "meta_missing_key":
            del record["sha256"]
        else:
            record["bytes"] = str(record["bytes"])
        entry.path("meta.json").write_text(json.dumps(meta))
    with pytest.warns(CacheWarning, match="rebuilding"):
        bm = build(cache, log)
    assert sources(bm) == {"batch=1,seq=8": "cache", "batch=1,seq=16": "rebuilt", "batch=1,seq=32": "cache"}
    assert events(log).count(("compile", "batch=1,seq=16")) == 1
    np.testing.assert_array_equal(bm(**x(12))["y"], 2 * x(12)["x"])
    # The rebuilt entry is whole again: the next start loads everything.
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        assert set(sources(build(cache)).values()) == {"cache"}


def test_what_a_killed_build_left_is_swept_but_a_live_writer_is_not(tmp_path):
    cache = ArtifactCache(tmp_path / "c")
    build(cache)
    tmp = cache.root / "tmp"
    orphan = tmp / "0123456789abcdef0123456789abcdef-deadbeef"  # a kill -9 mid-compile
    orphan.mkdir(parents=True)
    (orphan / "model.onnx").write_bytes(b"\0" * 4096)
    (tmp / "trash-abc-12345678").mkdir()  # a kill -9 mid-removal
    live = tmp / "fedcba9876543210fedcba9876543210-cafebabe"
    live.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from bucketwise.runtime.cache import ArtifactCache
            with ArtifactCache({str(cache.root)!r}).lock("fedcba9876543210fedcba9876543210"):
                print("held", flush=True)
                time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        build(cache)  # every build starts with a sweep
        assert not orphan.exists() and not (tmp / "trash-abc-12345678").exists()
        assert live.exists()  # another process is writing it
    finally:
        holder.kill()
        holder.wait()
    assert cache.sweep() == 1 and not live.exists()  # its writer died: now an orphan


def test_a_cache_that_cannot_be_written_builds_without_it_with_one_warning(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.warns(CacheWarning, match="cannot be written") as caught:
        bm = build(ArtifactCache(blocker / "cache"))
    assert len([w for w in caught if issubclass(w.category, CacheWarning)]) == 1
    assert set(sources(bm).values()) == {"uncached"} and bm.compile_report.cache is None
    np.testing.assert_array_equal(bm(**x(12))["y"], 2 * x(12)["x"])


def test_a_failed_write_leaves_no_entry_and_no_temporary_files(tmp_path):
    cache = ArtifactCache(tmp_path)
    ident = cache.identity(model="m", backend={"name": "b"}, bucket=Bucket(seq=8))

    def write(folder):
        (folder / "half.bin").write_bytes(b"12")
        raise RuntimeError("compiler crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        cache.put(ident, write)
    assert cache.get(cache.key(ident)) is None
    assert not any((tmp_path / "tmp").iterdir())
    entry, _ = cache.put(ident, lambda folder: (folder / "a.bin").write_bytes(b"abc"))
    assert cache.get(entry.key).meta["files"]["a.bin"]["bytes"] == 3


# -- concurrency ---------------------------------------------------------------------------


def test_two_processes_compiling_at_once_compile_each_bucket_once(tmp_path):
    cache_dir, log = tmp_path / "c", tmp_path / "log"
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import numpy as np
        from cache_double import SPEC, SlowScaleBackend, scale_model
        from bucketwise import BucketedModel, Plan
        plan = Plan.grid(batch=[1], seq=[8, 16, 32])
        bm = BucketedModel(scale_model(), SPEC, plan, cache={str(cache_dir)!r}, warmup_runs=0,
                           backend=SlowScaleBackend(delay=0.4, log={str(log)!r}))
        bm.compile(progress=False, workers=1)
        y = bm(x=np.ones((1, 20), np.float32))["y"]
        print(json.dumps({{"sources": sorted(r.source for r in bm.compile_report.builds.values()), "y": float(y.sum())}}))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    compiles = [b for e, b in events(log) if e == "compile"]
    assert sorted(compiles) == sorted(["batch=1,seq=8", "batch=1,seq=16", "batch=1,seq=32"]), compiles
    assert sorted(s for r in results for s in r["sources"]) == ["cache"] * 3 + ["compiled"] * 3
    assert all(r["y"] == 40.0 for r in results)
    assert len(ArtifactCache(cache_dir).entries()) == 3


# -- memory ------------------------------------------------------------------------------------


def test_check_memory_budget_names_the_largest_buckets_and_the_fix():
    sizes = {Bucket(seq=8): 10 << 20, Bucket(seq=16): 30 << 20, Bucket(seq=32): 50 << 20, Bucket(seq=64): None}
    assert check_memory_budget(sizes, 100 << 20, backend="b") == 90 << 20
    with pytest.raises(MemoryBudgetError) as err:
        check_memory_budget(sizes, 60 << 20, backend="onnxruntime")
    msg = str(err.value)
    assert "90.0 MiB" in msg and "60.0 MiB" in msg
    assert msg.index("seq=32 (50.0 MiB)") < msg.index("seq=16 (30.0 MiB)")
    assert "Fix" in msg and "bucketwise plan --memory-budget" in msg and "about 2 " in msg
    assert format_bytes(None) == "-" and format_bytes(512) == "512 B"


def test_budget_refusal_after_measuring_then_before_compiling(tmp_path):
    cache, log = ArtifactCache(tmp_path / "c"), tmp_path / "log"
    # Each artifact holds 48 MiB; three buckets cannot fit in 100 MiB.
    with pytest.raises(MemoryBudgetError, match=r"Largest buckets: batch=1,seq="):
        build(cache, log, hold_mib=48, memory_budget=100 << 20)
    measured = cache.measured(model=fingerprint(scale_model(), SPEC), backend="slow-scale")
    assert len(measured) == 3 and all(e.resident_bytes >= 40 << 20 for e in measured.values())
    # Now the cache knows the sizes: the refusal comes before anything is loaded or compiled.
    before = len(events(log))
    with pytest.raises(MemoryBudgetError, match="measured resident memory"):
        build(cache, log, hold_mib=48, memory_budget=100 << 20)
    assert len(events(log)) == before
    ok = build(cache, log, hold_mib=48, memory_budget=400 << 20)
    assert ok.ready and sum(r.resident_bytes for r in ok.compile_report.builds.values()) >= 120 << 20


def test_memory_shared_by_every_bucket_counts_once(tmp_path):
    """Weights every bucket shares (64 MiB, loaded once per process) count once; each bucket
    is measured by what it adds (8 MiB). Recorded, the budget check and the planner's
    figures count them the same way."""
    from bucketwise.planning.planner import bucket_budget

    cache = ArtifactCache(tmp_path / "c")
    SharedWeightsBackend._resident.clear()

    def shared_build(budget=None, **options):
        bm = BucketedModel(scale_model(), SPEC, PLAN, cache=cache, warmup_runs=0,
                           backend=SharedWeightsBackend(shared_mib=64, hold_mib=8))
        return bm.compile(progress=False, workers=1, memory_budget=budget, **options)

    bm = shared_build()
    report = bm.compile_report
    assert list(report.shared_bytes.values()) == [64 << 20]
    added = [r.resident_bytes for r in report.builds.values()]
    assert all(6 << 20 <= a <= 24 << 20 for a in added), added  # the first bucket does not own the weights
    assert "64.0 MiB of weights shared by every bucket, once" in "\n".join(compile_table(report, wall_seconds=1.0))
    largest, count, shared = cache.largest_resident(model=fingerprint(scale_model(), SPEC), backend="shared-weights")
    assert count == 3 and largest <= 24 << 20 and shared == 64 << 20
    # 64 MiB + 3 x ~8 MiB fits 120 MiB; counting the weights per bucket (3 x 72 MiB) would not.
    SharedWeightsBackend._resident.clear()
    assert shared_build(budget=120 << 20).ready
    with pytest.raises(MemoryBudgetError, match=r"64.0 MiB shared by every bucket, once"):
        shared_build(budget=70 << 20)  # refused from the recorded sizes, before loading
    assert bucket_budget(memory_budget=120 << 20, bytes_per_bucket=largest, shared_bytes=shared) >= 3
    assert bucket_budget(memory_budget=120 << 20, bytes_per_bucket=largest + shared) == 1


def test_sizes_recorded_before_shared_memory_was_counted_apart_are_measured_again(tmp_path):
    cache = ArtifactCache(tmp_path / "c")
    SharedWeightsBackend._resident.clear()
    backend = SharedWeightsBackend(shared_mib=32)
    BucketedModel(scale_model(), SPEC, PLAN, cache=cache, warmup_runs=0, backend=backend).compile(progress=False, workers=1)
    for e in cache.entries():  # as an older bucketwise wrote them: weights counted in a bucket
        meta = json.loads(e.path("meta.json").read_text())
        meta.pop("resident_shared")
        meta.update(resident_bytes=40 << 20, resident_measured_on="load")
        e.path("meta.json").write_text(json.dumps(meta))
    SharedWeightsBackend._resident.clear()
    bm = BucketedModel(scale_model(), SPEC, PLAN, cache=cache, warmup_runs=0, backend=backend).compile(progress=False)
    assert all(r.resident_bytes < 16 << 20 for r in bm.compile_report.builds.values())
    assert all(e.resident_shared and e.resident_bytes < 16 << 20 for e in cache.entries())


# -- compile lifecycle ---------------------------------------------------------------------


def test_compile_order_follows_expected_traffic(tmp_path):
    log = tmp_path / "log"
    plan = Plan(PLAN.buckets, meta={"traffic": {"batch=1,seq=32": 0.6, "batch=1,seq=8": 0.3, "batch=1,seq=16": 0.1}})
    build(None, log, plan=plan, workers=1)
    assert [b for _, b in events(log)] == ["batch=1,seq=32", "batch=1,seq=8", "batch=1,seq=16"]


@pytest.mark.parametrize("cached", [True, False])
def test_parallel_compile_builds_every_bucket_once(tmp_path, cached):
    log = tmp_path / "log"
    plan = Plan.grid(batch=[1], seq=[8, 16, 32, 64, 128])
    bm = build(ArtifactCache(tmp_path / "c") if cached else None, log, plan=plan, delay=0.2, workers=4,
               measure_memory=True)
    assert bm.ready and sorted(b for _, b in events(log)) == sorted(b.label() for b in plan.buckets)
    # The first miss is compiled alone (and measured); the rest ran at once.
    assert sum(r.resident_bytes is None for r in bm.compile_report.builds.values()) == 4


def test_lazy_start_serves_from_the_largest_bucket_until_the_rest_are_built(tmp_path):
    log = tmp_path / "log"
    bm = build(None, log, delay=0.3, lazy=True)
    assert bm.can_serve and not bm.ready
    assert events(log)[0] == ("compile", "batch=1,seq=32")  # the bucket that covers every shape
    out = bm(**x(5))["y"]  # wants seq=8, not built yet
    np.testing.assert_array_equal(out, 2 * x(5)["x"])
    assert bm.stats.substitutions[(Bucket(batch=1, seq=8), Bucket(batch=1, seq=32))] == 1
    assert bm.stats.hits[Bucket(batch=1, seq=32)] == 1
    assert bm.wait_ready(timeout=30)
    bm(**x(5))
    assert bm.stats.hits[Bucket(batch=1, seq=8)] == 1
    assert sum(bm.stats.substitutions.values()) == 1
    assert [e for e, _ in events(log)].count("compile") == 3  # none on the request path
    bm.close()


def test_only_builds_the_named_buckets_and_those_covering_every_shape(tmp_path):
    from bucketwise import ConfigError

    log = tmp_path / "log"
    bm = build(None, log, only={Bucket(batch=1, seq=8)})
    assert set(bm.compile_report.builds) == {Bucket(batch=1, seq=8), Bucket(batch=1, seq=32)}
    np.testing.assert_array_equal(bm(**x(12))["y"], 2 * x(12)["x"])  # seq 16 left unbuilt: runs on 32
    assert bm.stats.substitutions[(Bucket(batch=1, seq=16), Bucket(batch=1, seq=32))] == 1
    bm.compile(progress=False)  # a later compile builds the rest
    assert bm.ready and [e for e, _ in events(log)].count("compile") == 3
    with pytest.raises(ConfigError, match=r"only=.*seq=64.*not a bucket of the plan"):
        build(None, only={Bucket(batch=1, seq=64)})


def test_an_embedder_built_for_its_texts_runs_them_without_substitutes():
    from serve_double import SPEC as TEXT_SPEC
    from serve_double import WordTokenizer, embed

    from bucketwise.models.text import SentenceEmbedder

    plan = Plan.grid(batch=[1, 4], seq=[8, 16, 32])
    texts = ["a b", "c d e", "f g", "h", "one two three four five six seven eight nine ten"]
    full = SentenceEmbedder(BucketedModel(embed, TEXT_SPEC, plan, warmup_runs=0).compile(progress=False),
                            WordTokenizer())
    part = SentenceEmbedder(BucketedModel(embed, TEXT_SPEC, plan, warmup_runs=0), WordTokenizer())
    encoded = part.tokenize(texts)
    wanted = part.buckets_for(encoded)
    assert wanted == {Bucket(batch=4, seq=8), Bucket(batch=1, seq=16)}
    part.prepare(progress=False, only=wanted)
    assert set(part.model.compile_report.builds) == wanted | {Bucket(batch=4, seq=32)}  # and the largest
    np.testing.assert_array_equal(part.embed_tokenized(encoded), full.embed(texts))
    assert set(part.model.stats.hits) == wanted and not part.model.stats.substitutions


def test_a_bulk_embed_fills_smaller_buckets_rather_than_pad_a_large_one():
    from serve_double import SPEC as TEXT_SPEC
    from serve_double import WordTokenizer, embed

    from bucketwise.models.text import SentenceEmbedder

    plan = Plan.grid(batch=[1, 2, 4, 8], seq=[8])
    embedder = SentenceEmbedder(BucketedModel(embed, TEXT_SPEC, plan, warmup_runs=0).compile(progress=False),
                                WordTokenizer())
    texts = [" ".join(["w"] * (i % 5 + 1)) for i in range(13)]  # 13 texts of one length edge
    want = np.stack([embedder.embed([t])[0] for t in texts])
    embedder.model.reset_stats()
    np.testing.assert_array_equal(embedder.embed(texts), want)
    # 8 + 4 + 1 rows, every run full: not 8 + a batch of 8 holding 5 rows (3 pad rows).
    hits = {b[BATCH]: n for b, n in embedder.model.stats.hits.items()}
    assert hits == {8: 1, 4: 1, 1: 1}
    embedder.model.reset_stats()
    embedder.embed(texts[:7])  # 7 rows: one batch of 8 pads 1 row (1/8), cheaper than 4 + 2 + 1 runs
    assert {b[BATCH]: n for b, n in embedder.model.stats.hits.items()} == {8: 1}


def test_the_default_text_plan_is_fine_where_lengths_share_a_session():
    from bucketwise.backends.onnxruntime import OnnxRuntimeBackend
    from bucketwise.models.text import default_text_plan, length_free

    fine, classic = default_text_plan(256, "onnxruntime"), default_text_plan(256, "openvino")
    assert fine.sizes("batch") == [1, 2, 4, 8, 16, 32] and fine.sizes("seq")[:3] == [8, 12, 16] and len(fine) == 114
    assert classic == Plan.grid(batch=[1, 8], seq=[16, 32, 64, 128, 256]) == default_text_plan(256)
    assert length_free(OnnxRuntimeBackend()) and not length_free(OnnxRuntimeBackend(free_dims=()))
    assert default_text_plan(128, OnnxRuntimeBackend(free_dims=())).sizes("seq") == [16, 32, 64, 128]
    assert default_text_plan(100, "onnxruntime").sizes("seq")[-2:] == [96, 100]
    from bucketwise.runtime.stats import BucketStats
    from bucketwise.runtime.tables import hits_table

    stats = BucketStats()
    stats.hits[Bucket(batch=2, seq=12)] = 3
    stats.runs = 3
    assert hits_table(stats, fine)[1:] == ["  batch=2,seq=12               3   100.0%", "  (113 other buckets did not run)"]
    assert len(hits_table(stats, classic)) == 11  # a small plan lists every bucket


# -- real backends -----------------------------------------------------------------------


def _constant_storages(module) -> set[int]:
    """Where a frozen TorchScript module's tensor constants (its weights) live in memory."""
    return {n.output().toIValue().untyped_storage().data_ptr() for n in module.graph.nodes()
            if n.kind() == "prim::Constant" and n.output().type().kind() == "TensorType"}


def _torch_net():
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(50, 16)
            self.proj = torch.nn.Linear(16, 8)

        def forward(self, ids, mask):
            h = self.proj(self.emb(ids)) * mask.unsqueeze(-1)
            return h, h.sum(1) / mask.sum(1, keepdim=True)

    torch.manual_seed(0)
    return Net().eval()


def _jax_net():
    """The same network in JAX, its weights as params (shared by every bucket)."""
    from bucketwise.backends.jax import JaxModel

    rng = np.random.default_rng(0)
    params = {"emb": rng.normal(size=(50, 16)).astype(np.float32),
              "proj": {"w": rng.normal(size=(16, 8)).astype(np.float32), "b": rng.normal(size=8).astype(np.float32)}}
    return JaxModel(_jax_forward, params, name="tiny-jax")


def _jax_forward(params, ids, mask):
    h = (params["emb"][ids] @ params["proj"]["w"] + params["proj"]["b"]) * mask[..., None]
    return h, h.sum(1) / mask.sum(1, keepdims=True)


@pytest.mark.parametrize("backend, options", [
    ("onnxruntime", {}), ("onnxruntime", {"free_dims": ["seq"]}), ("openvino", {}), ("openvino", {"layout": "blob"}),
    ("torchscript", {}), ("jax", {}),
])
def test_real_backend_round_trip_through_the_cache(tmp_path, backend, options):
    from bucketwise.backends.base import get_backend, is_available

    if not is_available(backend):
        pytest.skip(f"{backend} not installed")
    from bucketwise import InputSpec, ModelSpec, OutputSpec

    spec = ModelSpec(
        (InputSpec("ids", ("batch", "seq"), "int64"), InputSpec("mask", ("batch", "seq"), "int64", example=1)),
        (OutputSpec("tokens", ("batch", "seq", None)), OutputSpec("pooled", ("batch", None))),
    )
    net = _jax_net() if backend == "jax" else _torch_net()
    plan = Plan.grid(batch=[1, 2], seq=[8, 16])
    ids = np.random.default_rng(0).integers(1, 50, (2, 11))
    inputs = {"ids": ids, "mask": np.ones_like(ids)}
    cache = ArtifactCache(tmp_path)
    cold = BucketedModel(net, spec, plan, backend=get_backend(backend, **options), cache=cache).compile(progress=False)
    warm = BucketedModel(net, spec, plan, backend=get_backend(backend, **options), cache=cache).compile(progress=False)
    assert {r.source for r in cold.compile_report.builds.values()} == {"compiled"}
    assert {r.source for r in warm.compile_report.builds.values()} == {"cache"}
    if options.get("free_dims"):  # buckets that differ only in length share a session: one per batch size
        for bm in (cold, warm):
            assert len({id(bm.artifact(b).session) for b in plan.buckets}) == 2
            assert sum(r.warmup_seconds > 0 for r in bm.compile_report.builds.values()) == 2  # once a session
    if backend == "torchscript":  # warm buckets point at one copy of the weights, as cold ones do
        for bm in (cold, warm):
            weights = [_constant_storages(bm.artifact(b).module) for b in plan.buckets]
            assert all(w and w == weights[0] for w in weights), weights
    if backend == "jax":  # every bucket's executable takes the one copy of the params on the device
        for bm in (cold, warm):
            assert len({id(bm.artifact(b).params["emb"]) for b in plan.buckets}) == 1
    ref = cold.reference(inputs)
    for name in ("tokens", "pooled"):
        np.testing.assert_allclose(warm(**inputs)[name], ref[name], atol=1e-5)
        np.testing.assert_allclose(cold(**inputs)[name], ref[name], atol=1e-5)
    entry = next(e for e in cache.entries() if e.identity["kind"] == "artifact")
    victim = max(entry.meta["files"], key=lambda f: entry.meta["files"][f]["bytes"])
    # Entries that share the file (one inode: ONNX Runtime's weights, stored once) all see
    # the damage, and each is rebuilt; the others load.
    inode = entry.path(victim).stat().st_ino
    artifacts = [e for e in cache.entries() if e.identity["kind"] == "artifact"]
    sharing = sum(any(e.path(f).stat().st_ino == inode for f in e.meta["files"]) for e in artifacts)
    shared_files = getattr(get_backend(backend, **options), "shared_files", lambda folder: [])(entry.path("."))
    assert sharing == (4 if backend == "onnxruntime" or (backend == "jax" and victim in shared_files) else 1)
    data = bytearray(entry.path(victim).read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.path(victim).write_bytes(bytes(data))
    with pytest.warns(CacheWarning):
        again = BucketedModel(net, spec, plan, backend=get_backend(backend, **options), cache=cache).compile(progress=False)
    assert sorted(r.source for r in again.compile_report.builds.values()) == ["cache"] * (4 - sharing) + ["rebuilt"] * sharing
    np.testing.assert_allclose(again(**inputs)["pooled"], ref["pooled"], atol=1e-5)
    for bm in (cold, warm, again):
        bm.close()


def test_serve_runs_without_an_unwritable_cache_where_compile_refuses_it(tmp_path, capsys):
    from argparse import Namespace

    from bucketwise.cli._common import cache_from_args
    from bucketwise.errors import ConfigError

    (tmp_path / "a-file").write_text("not a folder")
    args = Namespace(no_cache=False, cache_dir=str(tmp_path / "a-file" / "cache"))
    with pytest.raises(ConfigError, match="cannot be written"):
        cache_from_args(args, required=True)  # compile: the cache is its purpose
    assert cache_from_args(args, fallback=True) is None  # serve: keeps serving, warns once
    assert capsys.readouterr().err.count("running without a cache") == 1


def test_onnxruntime_buckets_store_and_map_the_weights_once(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from bucketwise import InputSpec, ModelSpec, OutputSpec
    from bucketwise.backends.onnxruntime import OnnxRuntimeBackend

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(8000, 64)  # 2 MB of weights
            self.proj = torch.nn.Linear(64, 64)

        def forward(self, ids):
            return self.proj(self.emb(ids))

    spec = ModelSpec((InputSpec("ids", ("batch", "seq"), "int64"),), (OutputSpec("tokens", ("batch", "seq", None)),))
    torch.manual_seed(0)
    net = Net().eval()
    plan = Plan.grid(batch=[1, 4], seq=[8, 16, 32])
    weights = sum(p.numel() * 4 for p in net.parameters())
    ids = np.random.default_rng(0).integers(1, 8000, (3, 20))
    cache = ArtifactCache(tmp_path / "c")
    shared = OnnxRuntimeBackend()
    bm = BucketedModel(net, spec, plan, backend=shared, cache=cache).compile(progress=False)
    # 6 buckets and the export: about twice the weights on disk, not seven times.
    assert cache.disk_bytes() < 2.5 * weights, (cache.disk_bytes(), weights)
    assert len(shared._mapped) == 1  # every bucket's session reads one memory map
    unshared = BucketedModel(net, spec, plan, backend=OnnxRuntimeBackend(share_weights=False, prepack=False),
                             cache=ArtifactCache(tmp_path / "c2")).compile(progress=False)
    uncached = BucketedModel(net, spec, plan, backend=OnnxRuntimeBackend(prepack=[Bucket(batch=4, seq=32)]))
    uncached.compile(progress=False)
    ref = bm.reference({"ids": ids})["tokens"]
    for model in (bm, unshared, uncached):
        np.testing.assert_allclose(model(ids=ids)["tokens"], ref, atol=1e-5)
    warm = BucketedModel(net, spec, plan, backend=OnnxRuntimeBackend(), cache=cache).compile(progress=False)
    assert {r.source for r in warm.compile_report.builds.values()} == {"cache"}
    np.testing.assert_allclose(warm(ids=ids)["tokens"], ref, atol=1e-5)
    for model in (bm, unshared, uncached, warm):
        model.close()
    cache.clear()
    assert not any((cache.root / sub).exists() for sub in ("blobs", "locks", "tmp"))


# -- a capped cache ----------------------------------------------------------------------------


def test_a_capped_cache_evicts_the_least_recently_used_never_what_is_in_use(tmp_path):
    root = tmp_path / "c"
    old = build(ArtifactCache(root), model=scale_model(3.0))
    used_before = ArtifactCache(root).disk_bytes()
    time.sleep(0.05)
    cap = used_before * 1.1  # room for one model's entries, not two
    new = build(ArtifactCache(root, max_bytes=cap), model=scale_model(5.0))
    cache = ArtifactCache(root)
    models = {e.model_name for e in cache.entries()}
    assert models == {"scale-5.0"} and cache.disk_bytes() <= cap  # the older model's entries went
    assert len(new.compile_report.evicted) == 3
    np.testing.assert_array_equal(new(**x(12))["y"], 5 * x(12)["x"])
    np.testing.assert_array_equal(old(**x(12))["y"], 3 * x(12)["x"])  # a loaded model keeps working
    with pytest.warns(CacheWarning, match="every remaining entry is in use"):
        tiny = build(ArtifactCache(root, max_bytes=10), model=scale_model(5.0))
    assert sources(tiny) == {b: "cache" for b in sources(tiny)}  # its own entries stay
    assert {e.model_name for e in ArtifactCache(root).entries()} == {"scale-5.0"}


def test_a_compile_in_another_process_survives_eviction_at_the_same_time(tmp_path):
    """Two real processes: one compiles (0.4 s a bucket, under each entry's lock) while this
    one evicts against a cap of 1 byte, over and over. The compile finishes whole."""
    cache_dir = tmp_path / "c"
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import numpy as np
        from cache_double import SPEC, SlowScaleBackend, scale_model
        from bucketwise import BucketedModel, Plan
        bm = BucketedModel(scale_model(), SPEC, Plan.grid(batch=[1], seq=[8, 16, 32]), cache={str(cache_dir)!r},
                           warmup_runs=0, backend=SlowScaleBackend(delay=0.4))
        bm.compile(progress=False, workers=1)
        print(json.dumps({{"y": float(bm(x=np.ones((1, 20), np.float32))["y"].sum()),
                          "sources": sorted(r.source for r in bm.compile_report.builds.values())}}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    capped, evicted = ArtifactCache(cache_dir, max_bytes=1), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)
        while proc.poll() is None:
            evicted += capped.evict()
            time.sleep(0.02)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["y"] == 40.0 and result["sources"] == ["compiled"] * 3
    # Entries were evicted once their compile had finished, never while it ran.
    assert len(evicted) >= 1


def test_recording_a_measurement_on_an_entry_evicted_meanwhile_does_nothing(tmp_path, monkeypatch):
    """The builder records a bucket's resident size after it releases the entry's lock, so
    another process may evict the entry in between (seen in CI): that must not fail the build."""
    import bucketwise.runtime.cache as cache_module

    cache = ArtifactCache(tmp_path / "c")
    build(cache)
    key = cache.entries()[0].key
    real_write = cache_module._write_json

    def write_then_lose_the_entry(path, data):
        real_write(path, data)
        cache.remove(key)  # the evictor wins the race between the write and the rename

    monkeypatch.setattr(cache_module, "_write_json", write_then_lose_the_entry)
    cache.update(key, resident_bytes=123)
    assert not cache.folder(key).exists()
    monkeypatch.setattr(cache_module, "_write_json", real_write)
    cache.update(key, resident_bytes=123)  # already gone: nothing to do
    assert not list((tmp_path / "c" / "entries").rglob(".meta-*"))


def test_prune_removes_entries_this_host_cannot_load_and_those_unused_for_days(tmp_path):
    import os

    cache = ArtifactCache(tmp_path / "c")
    build(cache)
    entries = cache.entries()
    foreign = entries[0]
    meta = json.loads(foreign.path("meta.json").read_text())
    meta["identity"]["host"] = {"cpu": "another machine"}
    foreign.path("meta.json").write_text(json.dumps(meta))
    stale = entries[1]
    os.utime(stale.folder, (time.time() - 40 * 86400,) * 2)
    assert cache.prune() == [foreign.key]
    assert cache.prune(older_than_days=30) == [stale.key]
    assert [e.key for e in cache.entries()] == [entries[2].key]


def test_inspect_prune_and_clear_on_the_command_line(tmp_path, capsys):
    import os

    from bucketwise.cli import main

    cache = ArtifactCache(tmp_path / "c")
    build(cache)
    first = cache.entries()[0]
    os.utime(first.folder, (time.time() - 40 * 86400,) * 2)
    assert main(["inspect", "--prune", "--older-than", "30", "--cache-dir", str(cache.root)]) == 0
    out = capsys.readouterr().out
    assert "removed  1 entries that cannot load here or were unused for 30 days" in out and "2 entries" in out
    assert main(["inspect", "--older-than", "30", "--cache-dir", str(cache.root)]) == 2  # only with --prune
    assert "--older-than goes with --prune" in capsys.readouterr().err
    assert main(["inspect", "--clear", "--cache-dir", str(cache.root)]) == 0
    assert not (cache.root / "locks").exists() and cache.entries() == []


def test_entries_measured_on_an_earlier_load_load_in_parallel_and_keep_their_figure(tmp_path):
    cache = ArtifactCache(tmp_path / "c")
    build(cache)  # compiles
    second = build(cache)  # loads, one at a time, and measures each
    third = build(cache, workers=2)  # loads in parallel: nothing left to measure
    assert set(sources(third).values()) == {"cache"}
    measured = {b: r.resident_bytes for b, r in second.compile_report.builds.items()}
    assert {b: r.resident_bytes for b, r in third.compile_report.builds.items()} == measured
    np.testing.assert_array_equal(third(**x(20))["y"], 2 * x(20)["x"])


def test_warm_ups_run_one_at_a_time_while_buckets_compile_and_load_in_parallel(tmp_path):
    """docs/decisions.md (Packing): two OpenVINO warm-ups at once, from parallel cache loads,
    once hung for good in InferRequest.infer. Buckets still compile and load in parallel,
    but no two warm-up runs overlap: on a cold start (parallel compiles), a measuring warm
    start (one load at a time) and a parallel warm start alike."""
    cache = ArtifactCache(tmp_path / "c")
    plan = Plan.grid(batch=[1], seq=[8, 16, 32, 64])
    for step, source in (("cold", "compiled"), ("measuring", "cache"), ("parallel loads", "cache")):
        backend = OverlapBackend(run_delay=0.1)
        bm = BucketedModel(scale_model(), SPEC, plan, backend=backend, cache=cache, warmup_runs=2)
        bm.compile(progress=False, workers=4)
        assert set(sources(bm).values()) == {source}, step
        assert backend.most == 1, f"{step}: {backend.most} warm-up runs at once"
        np.testing.assert_array_equal(bm(**x(20))["y"], 2 * x(20)["x"])
        bm.close()


def test_no_temporary_links_are_left_after_compiles(tmp_path):
    """#28: `bucketwise compile` left `.weights.bin.*` temporary hard links in the entries
    (rename() of two links to one file does nothing): 7 after two compiles."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("sentence_transformers")

    import tiny_encoders as te

    from bucketwise.cli import main

    folder = str(te.build("bert-cls", tmp_path / "models"))
    cache = tmp_path / "cache"
    for seqs in ("16,48", "16,32,48"):  # the second adds a bucket beside cached ones
        assert main(["compile", "--model", folder, "--batch-sizes", "1,4", "--seq-sizes", seqs,
                     "--cache-dir", str(cache), "--no-progress"]) == 0
    leftovers = [p.relative_to(cache) for p in cache.rglob(".*") if p.is_file() and not p.name.endswith(".lock")]
    assert leftovers == []
