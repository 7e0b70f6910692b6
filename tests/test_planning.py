"""Planner: exact 1-D DP vs brute force, N-D heuristic vs exact MILP, budgets, reports."""

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bucketwise import Bucket, InputError, Plan, PlanError, TableCost, route
from bucketwise.planning import (
    Observations,
    PolynomialCost,
    bucket_budget,
    fit_cost,
    neuron_bucket_count,
    optimal_1d,
    plan,
    report,
)
from bucketwise.planning.nd import _cells, assignment_cost, candidates_nd, exact_milp, greedy_local_search


def brute_1d(sizes, counts, cands, costs, k):
    """Every subset of candidates holding the top one; each size routes to the cheapest cover."""
    top = len(cands) - 1
    best = np.inf
    for r in range(0, min(k, len(cands)) ):
        for rest in itertools.combinations(range(top), r):
            chosen = list(rest) + [top]
            total = 0.0
            for s, c in zip(sizes, counts):
                total += c * min(costs[j] for j in chosen if cands[j] >= s)
            best = min(best, total)
    return best


def total_of(sizes, counts, chosen, cost):
    p = Plan(tuple(Bucket(seq=int(t)) for t in chosen), cost)
    return sum(c * p.cost(route(p, {"seq": int(s)})) for s, c in zip(sizes, counts))


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(1, 60), st.integers(1, 20)), min_size=1, max_size=9, unique_by=lambda t: t[0]),
    extra=st.lists(st.integers(1, 80), max_size=3),
    k=st.integers(1, 5),
    measured=st.booleans(),
    costs=st.lists(st.integers(1, 400), min_size=12, max_size=12),
)
def test_exact_1d_equals_brute_force(data, extra, k, measured, costs):
    sizes = np.array([s for s, _ in data])
    counts = np.array([c for _, c in data], dtype=float)
    cands = np.unique(np.concatenate([sizes, [e for e in extra if e >= sizes.max()] or [sizes.max()], [e for e in extra]]))
    cands = cands[cands <= max(cands.max(), sizes.max())]
    if cands.max() < sizes.max():
        cands = np.append(cands, sizes.max())
    w = [float(costs[i % 12]) for i in range(len(cands))] if measured else [float(t) for t in cands]
    sol = optimal_1d(sizes, counts, cands, w, k)
    want = brute_1d(sizes, counts, cands, w, k)
    assert sol.total_cost == pytest.approx(want)
    assert len(sol.sizes) <= k and max(sol.sizes) >= sizes.max()
    table = TableCost({Bucket(seq=int(t)): c for t, c in zip(cands, w)})
    assert total_of(sizes, counts, sol.sizes, table) == pytest.approx(want)


def test_plan_1d_basics():
    sizes = [5] * 10 + [9] * 5 + [30] * 2 + [100]
    assert [b["seq"] for b in plan(sizes, k=1).buckets] == [100]
    exact = plan(sizes, k=4)
    assert sorted(b["seq"] for b in exact.buckets) == [5, 9, 30, 100]
    assert exact.meta["planner"] == "exact-1d" and exact.meta["above_cap_share"] == 0
    two = plan(sizes, k=2)
    assert sorted(b["seq"] for b in two.buckets) == [9, 100]  # 15 short inputs dominate


def test_grid_rounds_every_bucket_including_the_top():
    assert sorted(b["seq"] for b in plan([5, 13, 13], k=2, grid=8).buckets) == [8, 16]
    p2 = plan([(427, 640), (300, 500)], dims=("height", "width"), k=2, grid=32)
    assert all(b["height"] % 32 == 0 and b["width"] % 32 == 0 for b in p2.buckets)


def test_plan_cap_grid_batch_and_histogram():
    p = plan({5: 10, 9: 5, 30: 2, 100: 1}, k=2, cap=64, grid=8, batch_sizes=[1, 8])
    assert p.meta["above_cap_share"] == pytest.approx(1 / 18)
    seqs = sorted({b["seq"] for b in p.buckets})
    assert seqs[-1] == 64 and all(s % 8 == 0 for s in seqs)
    assert set(p.sizes("batch")) == {1, 8} and len(p) == 4


def test_plan_json_round_trip_keeps_the_cost_model(tmp_path):
    p = plan([3, 7, 7, 20], k=2, cost=PolynomialCost.transformer(1.0, 0.5, 0.01))
    p.save(tmp_path / "p.json")
    again = Plan.load(tmp_path / "p.json")
    assert again == p and again.cost(Bucket(seq=10)) == pytest.approx(1 + 5 + 1)


def test_measured_costs_never_choose_a_dominated_bucket():
    # 48 is slower than 64 (say, no fast kernel for it): padding 40 -> 64 is free.
    table = TableCost({Bucket(seq=32): 1.0, Bucket(seq=48): 5.0, Bucket(seq=64): 2.0})
    p = plan([20, 40, 40, 40, 60], k=3, cost=table)
    assert {b["seq"] for b in p.buckets} <= {32, 64}


def test_budgets():
    assert bucket_budget(k=8, memory_budget=400e6, bytes_per_bucket=87e6) == 4
    assert bucket_budget(compile_budget=60, seconds_per_bucket=15, batch_sizes=2) == 2
    assert neuron_bucket_count(22_700_000) == 44
    p = plan(list(range(1, 200)), k=10, memory_budget=300e6, bytes_per_bucket=87e6)
    assert len(p) == 3 and p.meta["k"] == 3
    with pytest.raises(PlanError, match="no plan meets the budget"):
        plan([1, 2, 3], k=4, memory_budget=50e6, bytes_per_bucket=87e6)
    with pytest.raises(PlanError, match="bytes_per_bucket"):
        plan([1, 2, 3], memory_budget=50e6)


@pytest.mark.parametrize(
    "observed, kwargs, error, needle",
    [
        ([], {}, InputError, "empty"),
        ([3, 0, 5], {}, InputError, "must be positive"),
        ([3, -2], {}, InputError, "must be positive"),
        ([3.5, 4], {}, InputError, "whole numbers"),
        ([3, 4], {"k": 0}, PlanError, "at least 1"),
        ([3, 4], {"cap": 0}, PlanError, "cap"),
        ([30, 40], {"cap": 10}, PlanError, "above the cap"),
        ([3, 4], {"grid": 0}, PlanError, "grid"),
        ({}, {}, InputError, "empty"),
        ("nope", {}, InputError, "cannot plan from a str"),
    ],
)
def test_plan_bad_input(observed, kwargs, error, needle):
    with pytest.raises(error, match=needle):
        plan(observed, **kwargs)


# -- N-D -----------------------------------------------------------------------------------


def small_instance(seed, n=30):
    rng = np.random.default_rng(seed)
    shapes = np.stack([rng.integers(1, 12, n), rng.integers(1, 12, n)], axis=1)
    obs = Observations(("height", "width"), shapes, rng.integers(1, 5, n).astype(float))
    caps = {"height": obs.max("height"), "width": obs.max("width")}
    values = candidates_nd(obs, caps, None)
    cells, counts = _cells(obs, values)
    mesh = np.stack(np.meshgrid(*values, indexing="ij"), axis=-1).reshape(-1, 2)
    w = mesh.prod(axis=1).astype(float)
    cover = np.all(cells[:, None, :] <= mesh[None, :, :], axis=2)
    top = int(np.flatnonzero((mesh == [caps["height"], caps["width"]]).all(axis=1))[0])
    return cover, w, counts, top


@pytest.mark.parametrize("seed", range(3))
def test_milp_equals_brute_force_on_tiny_instances(seed):
    cover, w, counts, top = small_instance(seed, n=6)
    m = len(w)
    best = min(
        assignment_cost(cover, w, counts, list(c) + [top])
        for r in range(0, 3)
        for c in itertools.combinations([j for j in range(m) if j != top], r)
    )
    chosen = exact_milp(cover, w, counts, 3, top)
    assert assignment_cost(cover, w, counts, chosen) == pytest.approx(best)


def test_heuristic_is_close_to_the_exact_optimum(capsys):
    gaps = []
    for seed in range(8):
        cover, w, counts, top = small_instance(seed)
        for k in (2, 3, 4):
            exact = assignment_cost(cover, w, counts, exact_milp(cover, w, counts, k, top))
            heur = assignment_cost(cover, w, counts, greedy_local_search(cover, w, counts, k, top))
            assert heur >= exact * (1 - 1e-9)  # the MILP really is optimal
            gaps.append(heur / exact - 1)
    with capsys.disabled():
        print(f"\nN-D heuristic gap to the MILP optimum over {len(gaps)} instances: "
              f"mean {np.mean(gaps):.2%}, max {np.max(gaps):.2%}")
    assert np.mean(gaps) < 0.02 and np.max(gaps) < 0.10


def test_plan_nd_images_covers_every_shape():
    rng = np.random.default_rng(0)
    shapes = [{"height": int(h), "width": int(w)} for h, w in rng.integers(400, 801, (500, 2))]
    p = plan(shapes, k=4, grid=32, exact=False)
    assert 1 <= len(p) <= 4 and p.meta["planner"] == "greedy+local-search"
    assert Bucket(height=800, width=800) in p.buckets or all(b["height"] >= 800 or b["width"] >= 800 for b in p.buckets[-1:])
    for s in shapes:
        route(p, s)  # every observed shape has a bucket
    assert report(p, shapes).best().name == "planned"


# -- cost models and reports ----------------------------------------------------------


def test_fit_cost_recovers_a_known_polynomial():
    true = PolynomialCost.transformer(2.0, 0.3, 0.004)
    buckets = [Bucket(batch=b, seq=s) for s in (16, 32, 64, 128, 256) for b in (1, 4)]
    fitted = fit_cost(buckets, [true.cost(b) for b in buckets])
    for b in buckets:
        assert fitted.cost(b) == pytest.approx(true.cost(b), rel=1e-6)
    with pytest.raises(PlanError, match="form must be"):
        fit_cost(buckets, [1.0] * len(buckets), form="rnn")


def test_report_ranks_strategies_and_sums_traffic():
    rng = np.random.default_rng(1)
    sizes = np.clip(rng.normal(50, 12, 5000).round(), 3, 120).astype(int)
    p = plan(sizes, k=4)
    r = report(p, sizes, user=[32, 64, 96, 128])
    names = [s.name for s in r.strategies]
    assert names[:3] == ["planned", "pad-to-max", "powers-of-two"] and "user" in names
    planned = r.strategies[0]
    assert all(planned.expected_cost <= s.expected_cost + 1e-9 for s in r.strategies if len(s.buckets) <= 4)
    assert sum(planned.traffic.values()) == pytest.approx(1.0)
    assert 0 < planned.speedup_vs_exact <= 1 and planned.speedup_vs_max >= 1
    assert "planned" in str(r) and "lower bound" in str(r)
    json.dumps(r.as_dict())


@pytest.mark.slow
def test_sentence_pairs_planned_k4_beat_powers_of_two_and_quantiles():
    pytest.importorskip("transformers")
    from sentences import sentence_pairs

    from bucketwise.models.text import load_default_encoder

    _, tokenizer, _ = load_default_encoder()
    pairs = sentence_pairs(4080)  # as many as MRPC's train split, of its lengths
    obs = Observations.from_texts(pairs, tokenizer)
    assert obs.total == len(pairs)
    p = plan(obs, k=4)
    r = report(p, obs)
    cost = {s.name: s.expected_cost for s in r.strategies}
    assert cost["planned"] < cost["powers-of-two"] and cost["planned"] < cost["quantiles-4"]


def test_plan_from_an_image_folder(tmp_path):
    pytest.importorskip("PIL")
    from conftest import COCO_IMAGES as folder

    obs = Observations.from_images(folder)
    assert obs.dims == ("height", "width") and obs.total == len(list(folder.iterdir())) == 6
    assert obs.max("height") <= 640 and obs.max("width") <= 640
    p = plan(folder, k=3, grid=32)
    assert p.dims == ("height", "width") and 1 <= len(p) <= 3
    assert all(b["height"] % 32 == 0 and b["width"] % 32 == 0 for b in p.buckets)
    r = report(p, obs)
    assert r.strategies[0].expected_cost <= r.strategies[1].expected_cost  # beats pad-to-max
    with pytest.raises(InputError, match="holds no images"):
        Observations.from_images(tmp_path)


def test_accelerator_defaults_grid_headroom_traffic_and_left_out():
    sizes = [5] * 50 + [37] * 30 + [99] * 20
    p = plan(sizes, k=3, grid="auto", headroom=0.25, batch_sizes=[1, 8])
    assert all(s % 8 == 0 for s in p.sizes("seq"))  # sequences on a grid of 8
    assert p.max_size("seq") == 128  # 99 x 1.25 = 124, rounded up onto the grid
    assert abs(sum(p.meta["traffic"].values()) - 1.0) < 1e-9  # two batch sizes share each length's part
    assert p.meta["grid"] == {"seq": 8} and p.meta["headroom"] == 0.25
    images = plan([{"height": 300, "width": 401}, {"height": 480, "width": 640}], k=2, grid="auto")
    assert all(s % 32 == 0 for d in ("height", "width") for s in images.sizes(d))
    rep = report(plan(sizes, k=2, cap=64), sizes)
    assert {round(s.left_out, 2) for s in rep.strategies} == {0.2}  # the 99s are above every choice's top
    assert "left out" in str(rep)
    with pytest.raises(PlanError, match="headroom"):
        plan(sizes, headroom=-1)
    with pytest.raises(PlanError, match="grid"):
        plan(sizes, grid="tight")


def test_hot_buckets_carry_the_asked_share_of_planned_traffic():
    from bucketwise import Bucket, Plan
    from bucketwise.errors import PlanError

    plan = Plan.grid(batch=[1], seq=[16, 32, 64, 128])
    shares = {"batch=1,seq=16": 0.5, "batch=1,seq=32": 0.3, "batch=1,seq=64": 0.15, "batch=1,seq=128": 0.05}
    planned = Plan(plan.buckets, plan.cost_model, {"traffic": shares})
    assert planned.hot_buckets(0.8) == [Bucket(batch=1, seq=16), Bucket(batch=1, seq=32)]
    assert planned.hot_buckets(0.9) == [Bucket(batch=1, seq=16), Bucket(batch=1, seq=32), Bucket(batch=1, seq=64)]
    assert len(planned.hot_buckets(1.0)) == 4
    with pytest.raises(PlanError, match="records no traffic"):
        plan.hot_buckets()


def test_reports_and_plans_ask_the_cost_model_per_bucket_not_per_shape():
    """#28: planning 200k distinct 2-D shapes took 18 s (the report asked the cost model
    for every distinct shape and summed all counts once per shape). Planning and the
    report must stay near linear: array passes over the shapes, Python work per bucket."""
    from dataclasses import dataclass

    from bucketwise.costs import VolumeCost
    from bucketwise.planning.observe import Observations

    calls = []

    @dataclass(frozen=True)
    class Counting(VolumeCost):
        def cost(self, bucket):
            calls.append(bucket)
            return super().cost(bucket)

    rng = np.random.default_rng(0)
    shapes = rng.integers(64, 1025, size=(50_000, 2))
    obs = Observations(("height", "width"), shapes, np.ones(len(shapes)))
    assert len(obs.shapes) > 40_000
    p = plan(obs, k=4, cost=Counting())
    calls.clear()
    rep = report(p, obs)
    assert len(calls) < 1_000, f"the report asked the cost model {len(calls)} times for {len(obs.shapes)} shapes"
    # Same figures as the per-shape sums they replace.
    exact = float((shapes[:, 0] * shapes[:, 1]).astype(float).mean())
    assert rep.exact_cost == pytest.approx(exact)
    assert sum(rep.strategies[0].traffic.values()) == pytest.approx(1.0)
