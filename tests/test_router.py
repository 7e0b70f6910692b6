"""The router: every routing, chunking and overflow decision. Pure: NumPy only."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bucketwise import Bucket, BucketOverflowError, ConfigError, Plan, PolynomialCost, Router


def brute_force(plan, shape):
    covering = [b for b in plan.buckets if all(shape[d] <= b[d] for d in b.dims)]
    if not covering:
        return None
    return min(covering, key=lambda b: (plan.cost(b), b.volume, b.sizes))


def test_resolve_chunks_rows_by_the_buckets_that_exist():
    router = Router(Plan((Bucket(batch=8, seq=8), Bucket(batch=2, seq=32))))
    # 20 tokens: only (2, 32) covers it, so 5 rows take 3 runs of at most 2 rows.
    decision = router.resolve({"batch": 5, "seq": 20})
    assert decision.policy == "bucket"
    assert [(a, b, k) for a, b, k in decision.chunks] == [
        (0, 2, Bucket(batch=2, seq=32)), (2, 4, Bucket(batch=2, seq=32)), (4, 5, Bucket(batch=2, seq=32))]
    # 4 tokens: (8, 8) holds all 5 rows in one run.
    assert router.resolve({"batch": 5, "seq": 4}).chunks == ((0, 5, Bucket(batch=8, seq=8)),)


def test_take_picks_rows_and_bucket_for_a_queue():
    router = Router(Plan((Bucket(batch=8, seq=8), Bucket(batch=2, seq=32))))
    assert router.take(3, seq=32) == (Bucket(batch=2, seq=32), 2)
    assert router.take(1, seq=32) == (Bucket(batch=2, seq=32), 1)
    assert router.take(5, seq=8) == (Bucket(batch=8, seq=8), 5)
    assert router.take(20, seq=8) == (Bucket(batch=8, seq=8), 8)
    with pytest.raises(BucketOverflowError, match="seq=33 > largest 32"):
        router.take(1, seq=33)


def test_overflow_policies():
    plan = Plan.grid(batch=[1, 4], seq=[8, 16])
    with pytest.raises(BucketOverflowError, match="seq=20 > largest 16"):
        Router(plan).resolve({"batch": 2, "seq": 20})
    cut = Router(plan, overflow="truncate").resolve({"batch": 2, "seq": 20})
    assert cut.policy == "truncate" and cut.shape == {"batch": 2, "seq": 16}
    assert cut.chunks == ((0, 2, Bucket(batch=4, seq=16)),)
    fb = Router(plan, overflow="fallback").resolve({"batch": 2, "seq": 20})
    assert fb.policy == "fallback" and fb.chunks == ()
    with pytest.raises(ConfigError, match="overflow must be one of"):
        Router(plan, overflow="resize")


def test_truncate_refuses_when_no_single_bucket_is_largest_in_every_dim():
    plan = Plan((Bucket(height=64, width=32), Bucket(height=32, width=64)))
    with pytest.raises(BucketOverflowError, match="no single bucket"):
        Router(plan, overflow="truncate").resolve({"height": 80, "width": 80})


def test_route_among_built_buckets_during_a_lazy_start():
    plan = Plan.grid(seq=[8, 16, 32])
    router = Router(plan)
    assert router.route({"seq": 5}) == Bucket(seq=8)
    assert router.route({"seq": 5}, among={Bucket(seq=32)}) == Bucket(seq=32)
    assert router.maximal() == [Bucket(seq=32)]
    assert router.serves_all({Bucket(seq=32)}) and not router.serves_all({Bucket(seq=16)})


def test_route_many_agrees_with_route():
    rng = np.random.default_rng(0)
    plan = Plan((Bucket(height=64, width=32), Bucket(height=32, width=64), Bucket(height=64, width=64)))
    router = Router(plan)
    shapes = rng.integers(1, 80, size=(500, 2))
    got = router.route_many(shapes, ["height", "width"])
    for (h, w), i in zip(shapes, got):
        expect = brute_force(plan, {"height": int(h), "width": int(w)})
        assert (i < 0) if expect is None else plan.buckets[i] == expect


buckets_strategy = st.lists(
    st.tuples(st.integers(1, 6), st.integers(1, 40)), min_size=1, max_size=6, unique=True
)


@settings(max_examples=200, deadline=None)
@given(buckets_strategy, st.integers(1, 40), st.integers(1, 12), st.booleans())
def test_chunks_cover_every_row_in_covering_buckets(sizes, seq, rows, cost_by_poly):
    cost = PolynomialCost.transformer(1.0, 0.1, 0.01) if cost_by_poly else None
    plan = Plan(tuple(Bucket(batch=b, seq=s) for b, s in sizes), *(() if cost is None else (cost,)))
    router = Router(plan)
    shape = {"batch": rows, "seq": seq}
    if not router.fits(shape):
        with pytest.raises(BucketOverflowError):
            router.resolve(shape)
        return
    decision = router.resolve(shape)
    covered = []
    for start, stop, bucket in decision.chunks:
        assert bucket in plan.buckets and bucket["seq"] >= seq and bucket["batch"] >= stop - start
        assert bucket == brute_force(plan, {"batch": stop - start, "seq": seq})
        covered.extend(range(start, stop))
    assert covered == list(range(rows))
    assert len(decision.chunks) == -(-rows // router.max_rows(shape))  # fewest runs
