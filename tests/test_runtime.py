"""BucketedModel with the eager backend and plain NumPy callables as test doubles."""

import numpy as np
import pytest

from bucketwise import (
    Bucket,
    BucketedModel,
    BucketOverflowError,
    ConfigError,
    InputSpec,
    ModelSpec,
    NotCompiledError,
    OutputSpec,
    Plan,
    SpecError,
)

SPEC = ModelSpec(
    inputs=(
        InputSpec("ids", ("batch", "seq"), "int64", pad_value=0),
        InputSpec("mask", ("batch", "seq"), "int64", pad_value=0, example=1),
    ),
    outputs=(OutputSpec("per_token", ("batch", "seq")), OutputSpec("total", ("batch",))),
)


class Recorder:
    """A padding-invariant model: per-token value and a masked sum; records shapes it ran at."""

    def __init__(self):
        self.shapes = []

    def __call__(self, ids, mask):
        self.shapes.append(ids.shape)
        return {"per_token": ids * 2 * mask, "total": (ids * mask).sum(axis=1)}


def make(plan=None, overflow="error", model=None):
    model = model or Recorder()
    bm = BucketedModel(model, SPEC, plan or Plan.grid(batch=[1, 4], seq=[8, 16]), overflow=overflow, warmup_runs=0)
    return bm.compile(progress=False), model


def batch(rows, seq, seed=0):
    rng = np.random.default_rng(seed)
    return {"ids": rng.integers(1, 50, (rows, seq)), "mask": np.ones((rows, seq), np.int64)}


def test_routes_pads_runs_and_unpads():
    bm, rec = make()
    x = batch(3, 5)
    out = bm(**x)
    assert rec.shapes == [(4, 8)]
    np.testing.assert_array_equal(out["per_token"], x["ids"] * 2)
    np.testing.assert_array_equal(out["total"], x["ids"].sum(axis=1))
    assert bm.stats.hits[Bucket(batch=4, seq=8)] == 1
    assert bm.stats.real_volume == 15 and bm.stats.padded_volume == 32
    assert bm.stats.padding_waste == pytest.approx(1 - 15 / 32)


def test_equal_to_edge_runs_without_padding():
    bm, rec = make()
    bm(**batch(4, 16))
    assert rec.shapes == [(4, 16)] and bm.stats.padding_waste == 0


def test_more_rows_than_largest_batch_bucket_are_split_in_order():
    bm, rec = make()
    x = batch(10, 6)
    out = bm(**x)
    assert rec.shapes == [(4, 8), (4, 8), (4, 8)]  # 4 + 4 + 2 (padded to 4)
    np.testing.assert_array_equal(out["total"], x["ids"].sum(axis=1))
    assert out["per_token"].shape == (10, 6)
    assert bm.stats.calls == 1 and bm.stats.rows == 10 and bm.stats.runs == 3


def test_chunks_use_the_largest_batch_that_fits_the_length():
    plan = Plan((Bucket(batch=8, seq=8), Bucket(batch=2, seq=32)))
    bm, rec = make(plan)
    out = bm(**batch(5, 20))
    assert rec.shapes == [(2, 32)] * 3
    assert out["total"].shape == (5,)


def test_single_row_goes_to_batch_one():
    bm, rec = make()
    bm(**batch(1, 9))
    assert rec.shapes == [(1, 16)]


def test_overflow_error_is_the_default_and_names_the_fix():
    bm, _ = make()
    with pytest.raises(BucketOverflowError, match=r"seq=17 > largest 16.*overflow='truncate'"):
        bm(**batch(1, 17))
    assert bm.stats.runs == 0


def test_overflow_truncate_cuts_sequences_and_counts():
    bm, rec = make(overflow="truncate")
    x = batch(2, 20)
    out = bm(**x)
    assert rec.shapes == [(4, 16)]
    np.testing.assert_array_equal(out["per_token"], x["ids"][:, :16] * 2)
    assert bm.stats.overflow["truncate"] == 1


def test_overflow_fallback_runs_at_the_exact_shape_and_counts():
    bm, rec = make(overflow="fallback")
    x = batch(2, 20)
    out = bm(**x)
    assert rec.shapes == [(2, 20)]
    np.testing.assert_array_equal(out["total"], x["ids"].sum(axis=1))
    assert bm.stats.overflow["fallback"] == 1


def test_nothing_compiles_on_the_request_path():
    bm = BucketedModel(Recorder(), SPEC, Plan.grid(batch=[1], seq=[8]))
    assert not bm.ready
    with pytest.raises(NotCompiledError, match="call .compile"):
        bm(**batch(1, 3))


def test_compile_warms_up_each_bucket_with_example_inputs():
    rec = Recorder()
    bm = BucketedModel(rec, SPEC, Plan.grid(batch=[1, 2], seq=[4]), warmup_runs=2).compile(progress=False)
    assert bm.ready and sorted(rec.shapes) == [(1, 4)] * 2 + [(2, 4)] * 2
    assert set(bm.stats.compile_seconds) == set(bm.plan.buckets)


def test_plan_must_bucket_exactly_the_spec_dims():
    with pytest.raises(SpecError, match="exactly the spec's dims"):
        BucketedModel(Recorder(), SPEC, Plan.grid(seq=[8]))


def test_unknown_overflow_policy_is_rejected():
    with pytest.raises(ConfigError, match="overflow must be one of"):
        BucketedModel(Recorder(), SPEC, Plan.grid(batch=[1], seq=[8]), overflow="resize-ish")


def test_output_without_batch_axis_is_rejected_when_batch_is_bucketed():
    spec = ModelSpec((InputSpec("x", ("batch", "seq")),), (OutputSpec("y", ("seq",)),))
    with pytest.raises(SpecError, match="no 'batch' axis"):
        BucketedModel(lambda x: {"y": x}, spec, Plan.grid(batch=[1], seq=[4]))


def test_concurrent_calls_from_threads_keep_results_apart():
    from concurrent.futures import ThreadPoolExecutor

    bm, _ = make(Plan.grid(batch=[1, 4], seq=[8, 16, 32]))
    inputs = [batch(1 + i % 6, 1 + i % 30, seed=i) for i in range(60)]
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda x: bm(**x), inputs))
    for x, out in zip(inputs, outs):
        np.testing.assert_array_equal(out["total"], x["ids"].sum(axis=1))
    assert bm.stats.calls == 60
