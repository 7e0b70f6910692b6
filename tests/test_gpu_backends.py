"""GPU buckets: the cuda-graphs backend, inductor's CUDA modes, jax's device key, the GPU
benchmark script. None of it has run on a GPU yet: the tests here run on CPU (the capture
logic over a test double for torch.cuda, tests/cuda_double.py), and the ones marked
``gpu`` are skipped where CUDA is absent."""

from __future__ import annotations

import numpy as np
import pytest

from bucketwise import BackendError, Bucket, BucketedModel, ConfigError, InputError, Plan, check_parity, get_backend

torch = pytest.importorskip("torch")

from cuda_double import FakeCuda  # noqa: E402
from test_backends import TEXT_SPEC, TinyEncoder, text_samples  # noqa: E402

from bucketwise.backends import cuda_graphs  # noqa: E402
from bucketwise.backends.cuda_graphs import buffer_layout, capture_order, check_inputs  # noqa: E402

PLAN = Plan.grid(batch=[1, 2], seq=[8, 24])


# -- pure bookkeeping ---------------------------------------------------------------------


def test_capture_order_is_largest_first_whatever_order_the_buckets_come_in():
    buckets = [Bucket(batch=1, seq=8), Bucket(batch=2, seq=24), Bucket(batch=4, seq=8), Bucket(batch=1, seq=32),
               Bucket(batch=2, seq=16), Bucket(batch=1, seq=24)]
    want = [Bucket(batch=2, seq=24), Bucket(batch=4, seq=8), Bucket(batch=2, seq=16), Bucket(batch=1, seq=32),
            Bucket(batch=1, seq=24), Bucket(batch=1, seq=8)]
    assert capture_order(buckets) == want  # volume 48, the three 32s (larger batch first), 24, 8
    assert capture_order(reversed(buckets)) == want
    assert capture_order(buckets + buckets[:2]) == want  # each bucket once


def test_buffer_layout_names_each_static_buffer_and_check_inputs_refuses_what_a_replay_would_misread():
    layout = buffer_layout(TEXT_SPEC, Bucket(batch=2, seq=24))
    assert layout.inputs == (("input_ids", (2, 24), "int64"), ("attention_mask", (2, 24), "int64"))
    assert layout.nbytes == 2 * 2 * 24 * 8
    ok = {"input_ids": ((2, 24), "int64"), "attention_mask": ((2, 24), "int64")}
    check_inputs(layout, ok)
    with pytest.raises(InputError, match=r"'input_ids' has shape \(2, 23\).*captured for \(2, 24\); pad it"):
        check_inputs(layout, {**ok, "input_ids": ((2, 23), "int64")})
    with pytest.raises(InputError, match=r"'attention_mask' has dtype int32.*captured for int64; cast it"):
        check_inputs(layout, {**ok, "attention_mask": ((2, 24), "int32")})
    with pytest.raises(InputError, match=r"missing \['attention_mask'\]"):
        check_inputs(layout, {"input_ids": ok["input_ids"]})
    with pytest.raises(InputError, match=r"unexpected \['token_type_ids'\]"):
        check_inputs(layout, {**ok, "token_type_ids": ((2, 24), "int64")})


# -- where CUDA is absent -----------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")
def test_cuda_graphs_refuses_to_compile_where_cuda_is_absent_and_names_the_fix():
    bm = BucketedModel(TinyEncoder(), TEXT_SPEC, PLAN, backend="cuda-graphs")
    with pytest.raises(ConfigError) as err:
        bm.compile(progress=False)
    message = str(err.value)
    assert "torch.cuda.is_available() is False" in message
    assert "CUDA build of torch" in message and "'inductor'" in message and "'onnxruntime'" in message


def test_cuda_graphs_options_are_checked_when_the_backend_is_made():
    with pytest.raises(ConfigError, match="'cpu' is not a CUDA device"):
        get_backend("cuda-graphs", device="cpu")
    with pytest.raises(ConfigError, match="'nope' is not a torch device"):
        get_backend("cuda-graphs", device="nope")
    with pytest.raises(ConfigError, match="warmup_runs must be an integer >= 1, got 0"):
        get_backend("cuda-graphs", warmup_runs=0)


# -- capture and replay, over the torch.cuda double ---------------------------------------


class Counting(TinyEncoder):
    """TinyEncoder that records on which (fake) stream each forward ran."""

    def __init__(self, api):
        super().__init__()
        self.api, self.calls = api, []

    def forward(self, input_ids, attention_mask):
        self.calls.append(self.api.current_stream(None).name)
        return super().forward(input_ids, attention_mask)


@pytest.fixture
def fake(monkeypatch):
    api = FakeCuda()
    monkeypatch.setattr(cuda_graphs, "cuda_api", lambda: api)
    return api


def test_buckets_are_captured_largest_first_into_one_pool_after_a_side_stream_warm_up(fake):
    module = Counting(fake)
    backend = get_backend("cuda-graphs", device="cpu", warmup_runs=2)
    bm = BucketedModel(module, TEXT_SPEC, PLAN, backend=backend).compile(progress=False)
    assert backend.captured == capture_order(PLAN.buckets) == [Bucket(batch=2, seq=24), Bucket(batch=1, seq=24),
                                                                 Bucket(batch=2, seq=8), Bucket(batch=1, seq=8)]
    assert set(backend.layouts) == set(PLAN.buckets)
    assert fake.pools == [("pool", 0)]
    assert [e for e in fake.events if e[0] == "capture"] == [("capture", ("pool", 0))] * 4
    # Per bucket: two warm-up runs on a side stream, then the capture's one run, then the
    # builder's warm-up call, which replays (no forward at all).
    assert module.calls == ["side1", "side1", "default", "side2", "side2", "default",
                            "side3", "side3", "default", "side4", "side4", "default"]
    assert [g.replays for g in fake.graphs] == [1, 1, 1, 1]
    bm.close()


def test_calls_replay_the_graphs_and_match_eager_numpy_in_numpy_out_torch_in_torch_out(fake):
    module = Counting(fake)
    with BucketedModel(module, TEXT_SPEC, PLAN, backend=get_backend("cuda-graphs", device="cpu")) as bm:
        bm.compile(progress=False)
        forwards = len(module.calls)
        report = check_parity(bm, text_samples(), atol=1e-5)  # 12 samples, 1-3 rows, lengths 2-24
        assert report.ok, str(report)
        assert len(bm.stats.hits) >= 3
        x = text_samples(1)[0]
        out = bm(**x)
        assert isinstance(out["pooled"], np.ndarray) and out["hidden"].shape == (1, x["input_ids"].shape[1], 16)
        t = bm(**{k: torch.from_numpy(v) for k, v in x.items()})
        assert isinstance(t["pooled"], torch.Tensor) and t["pooled"].device.type == "cpu"
        np.testing.assert_allclose(t["pooled"].numpy(), out["pooled"], atol=0)
        # The module ran only for the 12 references; every bucketed run (and each bucket's
        # warm-up by the builder) was a replay.
        assert len(module.calls) - forwards == 12
        assert sum(g.replays for g in fake.graphs) == 4 + bm.stats.runs and bm.stats.runs >= 14


def test_outputs_are_copies_that_a_later_replay_does_not_overwrite(fake):
    with BucketedModel(TinyEncoder(), TEXT_SPEC, PLAN, backend=get_backend("cuda-graphs", device="cpu")) as bm:
        bm.compile(progress=False)
        a = {"input_ids": np.full((1, 20), 3), "attention_mask": np.ones((1, 20), np.int64)}
        b = {"input_ids": np.full((1, 20), 7), "attention_mask": np.ones((1, 20), np.int64)}
        first = bm(**{k: torch.from_numpy(v) for k, v in a.items()})["pooled"]
        kept = first.clone()
        second = bm(**{k: torch.from_numpy(v) for k, v in b.items()})["pooled"]
        assert not torch.equal(first, second)
        assert torch.equal(first, kept)  # the second replay left the first result alone


def test_unshared_pools_give_each_bucket_its_own(fake):
    backend = get_backend("cuda-graphs", device="cpu", share_pool=False)
    BucketedModel(TinyEncoder(), TEXT_SPEC, PLAN, backend=backend).compile(progress=False)
    assert len(fake.pools) == 4
    assert [e[1] for e in fake.events if e[0] == "capture"] == fake.pools


def test_a_module_that_syncs_with_the_host_cannot_be_captured_and_the_error_says_why(fake):
    class Syncing(TinyEncoder):
        def forward(self, input_ids, attention_mask):
            if attention_mask.all():  # bool(tensor): a host sync, refused inside a capture
                attention_mask = attention_mask.clone()
            return super().forward(input_ids, attention_mask)

    with pytest.raises(BackendError, match=r"could not capture bucket Bucket\(batch=2, seq=24\).*syncs with the host"):
        BucketedModel(Syncing(), TEXT_SPEC, PLAN, backend=get_backend("cuda-graphs", device="cpu")).compile(progress=False)



def test_the_benchmarks_transformers_bert_captures_without_host_syncs_and_matches_eager(fake, tmp_path):
    # The model benchmarks/gpu runs (Hugging Face BERT, SDPA attention, mean pooling),
    # tiny: transformers skips its mask checks (host syncs) while a stream captures.
    pytest.importorskip("transformers")
    pytest.importorskip("jax")
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
    try:
        import bench_gpu
    finally:
        sys.path.pop(0)
    module, _, spec = bench_gpu.build_models(bench_gpu.TINY, "cpu", tmp_path)
    rng = np.random.default_rng(0)
    samples = [bench_gpu.token_batch(rng, lengths) for lengths in ([5], [17, 9], [30], [12, 32])]
    with BucketedModel(module, spec, Plan.grid(batch=[1, 2], seq=[16, 32]),
                       backend=get_backend("cuda-graphs", device="cpu")) as bm:
        bm.compile(progress=False)
        report = check_parity(bm, samples, atol=1e-5)
        assert report.ok, str(report)
        assert sum(g.replays for g in fake.graphs) == 4 + bm.stats.runs

# -- inductor's modes ---------------------------------------------------------------------


def test_inductor_refuses_an_unknown_mode_naming_the_modes_there_are():
    with pytest.raises(ConfigError, match=r"mode 'fast' is not a torch.compile mode; use one of 'default', "
                                          r"'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs'"):
        get_backend("inductor", mode="fast")
    for mode in ("reduce-overhead", "max-autotune-no-cudagraphs"):
        assert get_backend("inductor", mode=mode).mode == mode


@pytest.mark.slow
def test_inductor_reduce_overhead_on_cpu_compiles_as_before_without_cuda_graphs():
    plan = Plan.grid(batch=[2], seq=[24])
    with BucketedModel(TinyEncoder(), TEXT_SPEC, plan, backend=get_backend("inductor", mode="reduce-overhead")) as bm:
        bm.compile(progress=False)
        artifact = bm.builder.artifact(plan.buckets[0])
        assert artifact.cudagraphs is False and artifact.device.type == "cpu"
        assert check_parity(bm, text_samples(4), atol=1e-5).ok


# -- jax: executables keyed by the device they run on --------------------------------------


def test_jax_executables_are_keyed_by_the_device_kind_and_placed_on_the_backends_device():
    jax = pytest.importorskip("jax")
    from test_jax import SPEC, forward, params

    from bucketwise.backends.jax import JaxModel
    from bucketwise.jax import bucket_jit, placement

    device = jax.devices()[0]
    p = params()
    assert placement(p) == ((device.platform, device.device_kind, device.id),)
    assert placement({k: np.asarray(v) for k, v in p.items()}) == placement(p)  # host params: the default device
    fast = bucket_jit(forward, spec=SPEC, plan=Plan.grid(batch=[1], seq=[8, 16])).compile(p)
    assert {key[2] for key in fast._executables} == {placement(p)}
    backend = get_backend("jax", device="cpu")
    assert backend.cache_key()["options"]["device_kind"] == device.device_kind
    assert backend.cache_key()["options"]["platform"] == "cpu"
    artifact = backend.compile(JaxModel(forward, p), SPEC, Bucket(batch=1, seq=8))
    params_sharding, inputs_sharding = artifact.executable.input_shardings[0]
    assert all(s.device_set == {backend.device} for s in jax.tree.leaves(inputs_sharding))
    assert all(s.device_set == {backend.device} for s in jax.tree.leaves(params_sharding))


# -- on a GPU (skipped where CUDA is absent) ------------------------------------------------


@pytest.mark.gpu
def test_cuda_graphs_on_a_gpu_match_eager_and_keep_cuda_tensors_on_the_device():
    module = TinyEncoder().cuda()
    with BucketedModel(module, TEXT_SPEC, PLAN, backend="cuda-graphs") as bm:
        bm.compile(progress=False)
        assert check_parity(bm, text_samples(), atol=1e-4).ok
        x = {k: torch.from_numpy(v).cuda() for k, v in text_samples(1)[0].items()}
        out = bm(**x)
        assert out["pooled"].is_cuda


@pytest.mark.gpu
@pytest.mark.slow
def test_inductor_reduce_overhead_on_a_gpu_matches_eager():
    with BucketedModel(TinyEncoder().cuda(), TEXT_SPEC, Plan.grid(batch=[2], seq=[24]),
                       backend=get_backend("inductor", mode="reduce-overhead")) as bm:
        bm.compile(progress=False)
        assert bm.builder.artifact(bm.plan.buckets[0]).cudagraphs
        assert check_parity(bm, text_samples(4), atol=1e-4).ok


# -- the GPU benchmark script, dry run on CPU ----------------------------------------------


def test_gpu_benchmark_dry_run_writes_every_section_and_skips_the_cuda_only_ones_with_a_note(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from conftest import ROOT

    pytest.importorskip("jax")
    pytest.importorskip("transformers")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OUT": str(tmp_path)}
    # A budget no loaded CI machine runs out of: a section skipped for time would fail below.
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / "bench_gpu.py"), "--dry-run", "--budget-s", "900"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_buckets.json").read_text())
    assert result["dry_run"] is True and result["settings"]["device"] == "cpu"
    sections = result["sections"]
    assert list(sections) == ["setup", "eager_exact", "eager_padded", "cuda_graphs", "pool_memory", "jax",
                              "inductor_reduce_overhead", "torch_compile_naive"]
    for name in ("setup", "eager_exact", "eager_padded", "jax"):
        assert sections[name]["status"] == "ok", sections[name]
    for name in ("cuda_graphs", "pool_memory", "inductor_reduce_overhead", "torch_compile_naive"):
        assert sections[name] == {"status": "skipped", "note": "CUDA only: skipped in the dry run (CPU)"}
    exact, padded = sections["eager_exact"], sections["eager_padded"]
    assert exact["batch1"]["calls"] == 6 and exact["batch1"]["p50_ms"] <= exact["batch1"]["p99_ms"]
    assert exact["bulk"]["rows"] == 12 and exact["bulk"]["batches"] == 3
    assert set(padded["compile_s_per_bucket"]) == set(result["settings"]["buckets"])
    assert len(result["settings"]["buckets"]) == 8 and 0 < padded["padding_waste"] < 1
    assert max(padded["max_abs_diff_vs_eager"].values()) < 1e-4
    jx = sections["jax"]
    assert jx["naive_jit"]["calls"] == jx["bucketed"]["calls"] == 6 and jx["bucketed"]["compiles"] == 4
    assert jx["naive_jit"]["compiles"] == result["settings"]["lengths"]["sample_distinct"]  # one per length
    assert max(jx["max_abs_diff_vs_torch_eager"].values()) < 1e-4  # the same weights in plain JAX
    t = result["targets"]
    assert t["cuda_graphs_batch1_throughput_vs_eager"] == {"met": None, "note": "not measured"}
    assert t["bucketed_jax_stream_vs_naive_jit"]["met"] is None  # timings of a dry run are not judged
    assert t["max_abs_diff_vs_eager_fp32:eager_padded"]["met"] is True
