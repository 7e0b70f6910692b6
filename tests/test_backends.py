"""Every backend against eager on small torch models: parity, batch padding, errors."""

import numpy as np
import pytest

from bucketwise import (
    BackendError,
    Bucket,
    BucketedModel,
    ConfigError,
    InputSpec,
    MissingDependencyError,
    ModelSpec,
    OutputSpec,
    Plan,
    backend_names,
    check_parity,
    get_backend,
)
from bucketwise.backends import base

torch = pytest.importorskip("torch")

FAST = ["eager", "onnxruntime", "openvino", "torchscript"]
ALL = FAST + [pytest.param("inductor", marks=pytest.mark.slow)]


class TinyEncoder(torch.nn.Module):
    """Embedding + one masked self-attention layer + masked mean pooling: padding-invariant."""

    def __init__(self, vocab=50, dim=16):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(vocab, dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.out = torch.nn.Linear(dim, dim)

    def forward(self, input_ids, attention_mask):
        h = self.emb(input_ids)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        scores = q @ k.transpose(1, 2) / 4.0
        scores = scores + (1.0 - attention_mask[:, None, :].to(h.dtype)) * -1e4
        h = self.out(torch.softmax(scores, dim=-1) @ v)
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return {"hidden": h, "pooled": (h * m).sum(1) / m.sum(1).clamp(min=1.0)}


TEXT_SPEC = ModelSpec(
    inputs=(
        InputSpec("input_ids", ("batch", "seq"), "int64", pad_value=0, bounds=(0, 49), example=1),
        InputSpec("attention_mask", ("batch", "seq"), "int64", pad_value=0, bounds=(0, 1), example=1),
    ),
    outputs=(OutputSpec("hidden", ("batch", "seq", None)), OutputSpec("pooled", ("batch", None))),
)


class TinyConv(torch.nn.Module):
    """One strided conv: exact under bottom/right zero padding once cropped with stride 2."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)

    def forward(self, pixels):
        return self.conv(pixels)


IMAGE_SPEC = ModelSpec(
    inputs=(InputSpec("pixels", ("batch", 3, "height", "width"), "float32", pad_value=0.0),),
    outputs=(OutputSpec("features", ("batch", None, "height", "width"), stride=2),),
)


def text_samples(n=12, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        rows, length = 1 + i % 3, 1 + int(rng.integers(1, 24))
        out.append({"input_ids": rng.integers(1, 50, (rows, length)), "attention_mask": np.ones((rows, length), np.int64)})
    return out


@pytest.mark.parametrize("backend", ALL)
def test_text_parity_across_buckets_and_batch_padding(backend):
    plan = Plan.grid(batch=[1, 2], seq=[8, 24]) if backend != "inductor" else Plan.grid(batch=[2], seq=[24])
    with BucketedModel(TinyEncoder(), TEXT_SPEC, plan, backend=backend) as bm:
        bm.compile(progress=False)
        report = check_parity(bm, text_samples(), atol=1e-5)
        assert report.ok, str(report)
        assert report.outputs["hidden"].samples == 12
        assert sum(bm.stats.hits.values()) >= 12
        if backend != "inductor":
            assert len(bm.stats.hits) >= 3  # the samples spread over several buckets


@pytest.mark.parametrize("backend", FAST)
def test_image_parity_with_strided_crop(backend):
    plan = Plan.grid(batch=[2], height=[16, 24], width=[16, 24])
    rng = np.random.default_rng(1)
    samples = [{"pixels": rng.standard_normal((1 + i % 2, 3, h, w)).astype(np.float32)} for i, (h, w) in enumerate([(9, 13), (16, 16), (24, 17), (5, 24)])]
    with BucketedModel(TinyConv(), IMAGE_SPEC, plan, backend=backend) as bm:
        bm.compile(progress=False)
        report = check_parity(bm, samples, atol=1e-5)
        assert report.ok, str(report)
        out = bm(**samples[0])
        assert out["features"].shape == (1, 4, 5, 7)


def test_parity_report_flags_a_model_that_is_not_padding_invariant():
    class Unmasked(torch.nn.Module):  # sums over every position, padding included
        def forward(self, input_ids, attention_mask):
            h = input_ids.float().unsqueeze(-1).repeat(1, 1, 2) + 1.0
            return {"hidden": h, "pooled": h.mean(1)}

    with BucketedModel(Unmasked(), TEXT_SPEC, Plan.grid(batch=[1, 4], seq=[32])) as bm:
        bm.compile(progress=False)
        report = check_parity(bm, text_samples(4), atol=1e-5)
    assert not report.ok
    assert report.outputs["hidden"].max_abs == 0.0 and report.outputs["pooled"].max_abs > 0.1
    assert "over atol" in str(report)
    with pytest.raises(AssertionError):
        report.raise_if_failed()


def test_onnxruntime_accepts_an_onnx_file(tmp_path):
    from bucketwise.backends._onnx import to_onnx

    path = to_onnx(TinyEncoder(), TEXT_SPEC, Bucket(batch=1, seq=8), tmp_path)
    with BucketedModel(str(path), TEXT_SPEC, Plan.grid(batch=[1], seq=[8, 24]), backend="onnxruntime") as bm:
        bm.compile(progress=False)
        x = text_samples(1)[0]
        ref = TinyEncoder()(**{k: torch.from_numpy(v) for k, v in x.items()})
        np.testing.assert_allclose(bm(**x)["pooled"], ref["pooled"].detach().numpy(), atol=1e-5)
    with pytest.raises(BackendError, match="not an .onnx file"):
        BucketedModel(str(tmp_path / "nope.txt"), TEXT_SPEC, Plan.grid(batch=[1], seq=[8]), backend="onnxruntime").compile(progress=False)


def test_exports_from_two_threads_at_once_both_succeed(tmp_path):
    # torch's ONNX exporter keeps global state ("GLOBALS.in_onnx_export must be False"):
    # a server re-planning in its thread while another model compiles exports at once.
    import threading

    from bucketwise.backends._onnx import to_onnx

    errors, start = [], threading.Barrier(2)

    def export(i):
        start.wait()
        for j in range(3):
            try:
                folder = tmp_path / f"{i}-{j}"
                folder.mkdir()
                to_onnx(TinyEncoder(), TEXT_SPEC, Bucket(batch=2, seq=8), folder)
            except Exception as err:  # noqa: BLE001
                errors.append(err)

    threads = [threading.Thread(target=export, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(ConfigError, match="known backends: eager, onnxruntime"):
        get_backend("tensorrtt")


def test_unknown_backend_option_is_an_error():
    with pytest.raises(TypeError, match="unexpected keyword"):
        get_backend("onnxruntime", intra_op_thread=2)


def test_missing_optional_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(base.REQUIREMENTS, "openvino", (("not_a_real_module_xyz", "openvino"),))
    with pytest.raises(MissingDependencyError, match=r"pip install 'bucketwise\[openvino\]'"):
        get_backend("openvino")


def test_register_a_custom_backend():
    from bucketwise.backends.eager import EagerBackend

    class Counting(EagerBackend):
        name = "counting"
        compiled = 0

        def compile(self, model, spec, bucket):
            Counting.compiled += 1
            return super().compile(model, spec, bucket)

    base.register_backend("counting", Counting)
    try:
        assert "counting" in backend_names()
        BucketedModel(TinyEncoder(), TEXT_SPEC, Plan.grid(batch=[1], seq=[4, 8]), backend="counting").compile(progress=False)
        assert Counting.compiled == 2
        # A name is never replaced by accident, a built-in one least of all.
        with pytest.raises(ConfigError, match="already registered.*replace=True"):
            base.register_backend("counting", EagerBackend)
        with pytest.raises(ConfigError, match="'onnxruntime' is already registered"):
            base.register_backend("onnxruntime", Counting)
        base.register_backend("counting", EagerBackend, replace=True)
        assert type(base.get_backend("counting")) is EagerBackend
    finally:
        base._REGISTRY.pop("counting")


def test_torchscript_and_inductor_need_a_torch_module():
    with pytest.raises(BackendError, match="needs a torch.nn.Module"):
        BucketedModel(lambda **kw: kw, TEXT_SPEC, Plan.grid(batch=[1], seq=[4]), backend="torchscript").compile(progress=False)


def test_unknown_backend_option_names_the_options_there_are():
    from bucketwise.backends.base import BackendOptionError

    with pytest.raises(BackendOptionError, match="has no option 'freez'.*options are freeze") as err:
        get_backend("torchscript", freez=False)
    assert isinstance(err.value, ConfigError) and isinstance(err.value, TypeError)
    assert base.backend_options("jax" if base.is_available("jax") else "torchscript")


def _fake_neuron(monkeypatch, compiler="2.21.0"):
    """torch_neuronx and neuronxcc as test doubles: torch.jit.trace stands in for the
    Neuron compiler (the SDK does not install here); every call is recorded."""
    import contextlib
    import sys
    import types

    calls = []
    neuronx = types.ModuleType("torch_neuronx")
    neuronx.__version__ = "2.9.0+test"

    def trace(func, example_inputs, *, compiler_args=None, compiler_workdir=None, inline_weights_to_neff=True,
              **rest):
        calls.append(("trace", tuple(a.shape for a in example_inputs), compiler_args, inline_weights_to_neff, rest))
        return torch.jit.trace(func, example_inputs, check_trace=False)

    @contextlib.contextmanager
    def neuron_cores_context(start_nc, nc_count=-1):
        calls.append(("load on cores", start_nc, nc_count))
        yield

    neuronx.trace = trace
    neuronx.experimental = types.SimpleNamespace(
        neuron_cores_context=neuron_cores_context,
        set_neuron_cores=lambda module, start_nc, nc_count: calls.append(("set cores", start_nc, nc_count)))
    cc = types.ModuleType("neuronxcc")
    cc.__version__ = compiler
    monkeypatch.setitem(sys.modules, "torch_neuronx", neuronx)
    monkeypatch.setitem(sys.modules, "neuronxcc", cc)
    return calls


def test_neuron_backend_traces_each_bucket_with_the_compiler_args_and_caches_by_compiler_version(
        monkeypatch, tmp_path):
    from bucketwise.runtime.cache import ArtifactCache

    assert not base.is_available("neuron")  # the SDK is not installed here
    with pytest.raises(MissingDependencyError, match="pip.repos.neuron.amazonaws.com"):
        get_backend("neuron")
    calls = _fake_neuron(monkeypatch)
    plan = Plan.grid(batch=[1, 2], seq=[8, 32])
    options = {"compiler_args": "--auto-cast matmult --optlevel 2", "start_nc": 1, "nc_count": 2}
    cache = ArtifactCache(tmp_path)
    cold = BucketedModel(TinyEncoder(), TEXT_SPEC, plan, backend=get_backend("neuron", **options), cache=cache)
    cold.compile(progress=False)
    traces = [c for c in calls if c[0] == "trace"]
    assert sorted(t[1] for t in traces) == sorted([((b["batch"], b["seq"]),) * 2 for b in plan.buckets])
    assert all(t[2] == ["--auto-cast", "matmult", "--optlevel", "2"] and t[3] is True for t in traces)
    assert calls.count(("set cores", 1, 2)) == 4  # each fresh trace placed on NeuronCores 1-2
    sample = text_samples(1)[0]
    np.testing.assert_allclose(cold(**sample)["pooled"], cold.reference(sample)["pooled"], atol=1e-5)
    calls.clear()
    warm = BucketedModel(TinyEncoder(), TEXT_SPEC, plan, backend=get_backend("neuron", **options), cache=cache)
    warm.compile(progress=False)
    assert {r.source for r in warm.compile_report.builds.values()} == {"cache"}
    assert calls == [("load on cores", 1, 2)] * 4  # loaded straight onto the cores, nothing traced
    np.testing.assert_allclose(warm(**sample)["pooled"], cold.reference(sample)["pooled"], atol=1e-5)
    _fake_neuron(monkeypatch, compiler="2.22.0")  # another neuronx-cc: other entries
    again = BucketedModel(TinyEncoder(), TEXT_SPEC, plan, backend=get_backend("neuron"), cache=cache)
    again.compile(progress=False)
    assert {r.source for r in again.compile_report.builds.values()} == {"compiled"}
    with pytest.raises(BackendError, match="nc_count needs start_nc"):
        get_backend("neuron", nc_count=2)
