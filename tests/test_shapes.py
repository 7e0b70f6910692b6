import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bucketwise import Bucket, BucketOverflowError, Plan, PlanError, TableCost, VolumeCost, covers, route


def test_bucket_is_frozen_hashable_and_order_free():
    a = Bucket(batch=8, seq=128)
    b = Bucket({"seq": 128, "batch": 8})
    assert a == b and hash(a) == hash(b)
    assert a.dims == ("batch", "seq")
    assert a["seq"] == 128 and a.volume == 1024
    assert repr(a) == "Bucket(batch=8, seq=128)" and str(a) == "8x128"
    with pytest.raises(Exception):
        a.sizes = ()  # type: ignore[misc]
    assert len({a, b, Bucket(batch=8, seq=64)}) == 2


@pytest.mark.parametrize("bad", [{"seq": 0}, {"seq": -3}, {"seq": 2.5}, {"seq": True}, {"": 4}, {}])
def test_bucket_rejects_bad_sizes(bad):
    with pytest.raises(PlanError):
        Bucket(bad)


def test_bucket_accepts_numpy_integers():
    np = pytest.importorskip("numpy")
    assert Bucket(seq=np.int64(16)) == Bucket(seq=16)


def test_plan_json_round_trip(tmp_path):
    plan = Plan.grid(batch=[1, 8], seq=[32, 64, 128])
    path = tmp_path / "plan.json"
    plan.save(path)
    again = Plan.load(path)
    assert again == plan
    assert set(again.buckets) == set(plan.buckets)
    assert json.loads(path.read_text())["format"] == "bucketwise.plan/1"


def test_plan_json_round_trip_with_table_cost():
    costs = {Bucket(seq=64): 3.0, Bucket(seq=128): 2.0}
    plan = Plan((Bucket(seq=64), Bucket(seq=128)), TableCost(costs))
    again = Plan.from_json(json.loads(json.dumps(plan.to_json())))
    assert again.cost(Bucket(seq=64)) == 3.0 and again.cost(Bucket(seq=128)) == 2.0


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"buckets": [{"seq": 8}], "oops": 1}, "unknown key"),
        ({"buckets": []}, "at least one bucket"),
        ({"buckets": [{"seq": 8}, {"seq": 8}]}, "duplicate"),
        ({"buckets": [{"seq": 8}, {"batch": 1, "seq": 8}]}, "same dims"),
        ({"buckets": [{"seq": 8}], "format": "other/9"}, "not supported"),
        ({"buckets": [{"seq": 8}], "cost_model": {"kind": "magic"}}, "unknown cost_model"),
        ({"buckets": "seq=8"}, "must be a list"),
        ([1, 2], "expected an object"),
    ],
)
def test_plan_json_errors_name_the_problem(data, needle):
    with pytest.raises(PlanError, match=needle):
        Plan.from_json(data)


def test_plan_load_reports_bad_files(tmp_path):
    with pytest.raises(PlanError, match="cannot be read"):
        Plan.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        Plan.load(bad)


# -- routing at the edges --------------------------------------------------------------

PLAN_1D = Plan.grid(seq=[16, 32, 64, 128])


@pytest.mark.parametrize(
    "size, want",
    [(1, 16), (15, 16), (16, 16), (17, 32), (31, 32), (32, 32), (33, 64), (64, 64), (65, 128), (128, 128)],
)
def test_route_1d_edges(size, want):
    assert route(PLAN_1D, {"seq": size}) == Bucket(seq=want)


def test_route_overflow_names_the_dim_and_the_fix():
    with pytest.raises(BucketOverflowError, match=r"seq=129 > largest 128.*truncate.*fallback"):
        route(PLAN_1D, {"seq": 129})


def test_route_rejects_shapes_with_other_dims():
    with pytest.raises(PlanError, match="same dims"):
        route(PLAN_1D, {"seq": 3, "batch": 1})


def test_route_nd_edges():
    plan = Plan.grid(batch=[1, 4], seq=[32, 64])
    assert route(plan, {"batch": 1, "seq": 32}) == Bucket(batch=1, seq=32)
    assert route(plan, {"batch": 2, "seq": 32}) == Bucket(batch=4, seq=32)
    assert route(plan, {"batch": 1, "seq": 33}) == Bucket(batch=1, seq=64)
    assert route(plan, {"batch": 4, "seq": 64}) == Bucket(batch=4, seq=64)
    with pytest.raises(BucketOverflowError, match="batch=5 > largest 4"):
        route(plan, {"batch": 5, "seq": 8})


def test_route_nd_no_single_bucket_covers():
    plan = Plan((Bucket(height=800, width=400), Bucket(height=400, width=800)))
    with pytest.raises(BucketOverflowError, match="no single bucket"):
        route(plan, {"height": 600, "width": 600})


def test_route_prefers_a_cheaper_larger_bucket_under_measured_costs():
    # Measured latency can make a larger shape faster (e.g. a better kernel): route by cost.
    costs = {Bucket(seq=64): 5.0, Bucket(seq=96): 9.0, Bucket(seq=128): 4.0}
    plan = Plan(tuple(costs), TableCost(costs))
    assert route(plan, {"seq": 50}) == Bucket(seq=128)
    assert route(plan, {"seq": 128}) == Bucket(seq=128)


def _brute(plan, shape):
    cands = [b for b in plan.buckets if covers(b, shape)]
    if not cands:
        return None
    return min(cands, key=lambda b: (plan.cost(b), b.volume))


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=12, unique=True),
    costs=st.lists(st.floats(0.5, 100, allow_nan=False), min_size=12, max_size=12),
    query=st.integers(1, 320),
    use_table=st.booleans(),
)
def test_route_1d_matches_brute_force(sizes, costs, query, use_table):
    buckets = tuple(Bucket(seq=s) for s in sizes)
    cost = TableCost(dict(zip(buckets, costs))) if use_table else VolumeCost()
    plan = Plan(buckets, cost)
    want = _brute(plan, {"seq": query})
    if want is None:
        with pytest.raises(BucketOverflowError):
            route(plan, {"seq": query})
    else:
        got = route(plan, {"seq": query})
        assert plan.cost(got) == plan.cost(want)
        assert got.covers({"seq": query})


@settings(max_examples=200, deadline=None)
@given(
    dims=st.lists(st.tuples(st.integers(1, 16), st.integers(1, 64)), min_size=1, max_size=10, unique=True),
    query=st.tuples(st.integers(1, 20), st.integers(1, 70)),
)
def test_route_nd_matches_brute_force(dims, query):
    plan = Plan(tuple(Bucket(batch=b, seq=s) for b, s in dims))
    shape = {"batch": query[0], "seq": query[1]}
    want = _brute(plan, shape)
    if want is None:
        with pytest.raises(BucketOverflowError):
            route(plan, shape)
    else:
        assert route(plan, shape) == want


def test_plan_grid_and_queries():
    plan = Plan.grid(batch=[8, 1], seq=[64, 32, 64])
    assert len(plan) == 4
    assert plan.sizes("seq") == [32, 64] and plan.max_size("batch") == 8
    assert plan.buckets[0] == Bucket(batch=1, seq=32)  # cheapest first
    assert Bucket(batch=8, seq=64) in plan
