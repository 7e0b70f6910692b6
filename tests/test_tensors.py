"""Tensors stay where they are: torch in gives torch out, with no NumPy round trip on the
torch backends; NumPy in gives NumPy out whatever the backend; padding and cropping once."""

import numpy as np
import pytest

from bucketwise import Bucket, BucketedModel, InputSpec, ModelSpec, OutputSpec, Plan
from bucketwise.padding import crop_row, pad_rows

torch = pytest.importorskip("torch")

SPEC = ModelSpec(
    inputs=(InputSpec("input_ids", ("batch", "seq"), "int64", pad_value=0, bounds=(0, 99)),
            InputSpec("attention_mask", ("batch", "seq"), "int64", pad_value=0, example=1)),
    outputs=(OutputSpec("hidden", ("batch", "seq", None)), OutputSpec("pooled", ("batch", None))),
)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(100, 6)
        self.lin = torch.nn.Linear(6, 6)

    def forward(self, input_ids, attention_mask):
        h = torch.tanh(self.lin(self.emb(input_ids)))
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return h, (h * m).sum(1) / m.sum(1).clamp(min=1)


def _inputs(rows=3, length=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (rows, length), generator=g)
    return ids, torch.ones_like(ids)


def _no_numpy(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a NumPy round trip on a torch backend")

    monkeypatch.setattr(torch.Tensor, "numpy", refuse)
    monkeypatch.setattr(torch, "from_numpy", refuse)


@pytest.mark.parametrize("backend", ["eager", "torchscript"])
def test_torch_in_torch_out_with_no_numpy_round_trip(backend, monkeypatch):
    module = Tiny().eval()
    model = BucketedModel(module, SPEC, Plan.grid(batch=[1, 4], seq=[8, 16]), backend=backend).compile(progress=False)
    ids, mask = _inputs(rows=6, length=7)  # 6 rows: two chunks (4 + 2)
    with torch.no_grad():
        ref_hidden, ref_pooled = module(ids, mask)
    _no_numpy(monkeypatch)
    out = model(input_ids=ids, attention_mask=mask)
    assert isinstance(out["hidden"], torch.Tensor) and out["hidden"].device == ids.device
    assert out["hidden"].shape == (6, 7, 6) and out["pooled"].shape == (6, 6)
    torch.testing.assert_close(out["hidden"], ref_hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["pooled"], ref_pooled, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["eager", "torchscript", "onnxruntime"])
def test_numpy_in_numpy_out_and_torch_in_torch_out_on_every_kind(backend):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    module = Tiny().eval()
    model = BucketedModel(module, SPEC, Plan.grid(batch=[4], seq=[8]), backend=backend).compile(progress=False)
    ids, mask = _inputs()
    as_np = model(input_ids=ids.numpy(), attention_mask=mask.numpy())
    as_torch = model(input_ids=ids, attention_mask=mask)
    assert all(isinstance(v, np.ndarray) for v in as_np.values())
    assert all(isinstance(v, torch.Tensor) for v in as_torch.values())
    np.testing.assert_allclose(as_torch["pooled"].numpy(), as_np["pooled"], atol=1e-6)


def test_pad_rows_writes_each_row_once_into_the_bucket_buffer_and_crop_row_cuts_once():
    rows = [{"input_ids": np.array([5, 6, 7]), "attention_mask": np.ones(3, np.int64)},
            {"input_ids": np.array([8]), "attention_mask": np.ones(1, np.int64)}]
    bucket = Bucket(batch=4, seq=8)
    padded = pad_rows(SPEC, rows, bucket)
    assert padded["input_ids"].shape == (4, 8)
    np.testing.assert_array_equal(padded["input_ids"][:2], [[5, 6, 7, 0, 0, 0, 0, 0], [8, 0, 0, 0, 0, 0, 0, 0]])
    assert padded["attention_mask"][2:].sum() == 0  # pad rows
    outputs = {"hidden": np.arange(4 * 8 * 2).reshape(4, 8, 2), "pooled": np.arange(8).reshape(4, 2)}
    first = crop_row(SPEC, outputs, 0, {"seq": 3}, bucket)
    assert first["hidden"].shape == (3, 2) and np.shares_memory(first["hidden"], outputs["hidden"])
    np.testing.assert_array_equal(crop_row(SPEC, outputs, 1, {"seq": 1}, bucket)["pooled"], [2, 3])
    # Torch rows pad into a torch buffer.
    trows = [{k: torch.from_numpy(v) for k, v in r.items()} for r in rows]
    assert isinstance(pad_rows(SPEC, trows, bucket)["input_ids"], torch.Tensor)


def test_torch_in_torch_out_through_a_numpy_function():
    spec = ModelSpec(inputs=(InputSpec("ids", ("batch", "seq"), "int64"),), outputs=(OutputSpec("total", ("batch",)),))
    bm = BucketedModel(lambda ids: ids.sum(axis=1), spec, Plan.grid(batch=[4], seq=[8])).compile(progress=False)
    x = torch.arange(6).reshape(2, 3)
    out = bm(ids=x)
    assert isinstance(out["total"], torch.Tensor) and torch.equal(out["total"], x.sum(dim=1))
