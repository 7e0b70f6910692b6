"""One memory budget split across models (#29): exact against brute force, never over the
budget, never worse than an equal split, and refused clearly when nothing fits."""

import itertools

import numpy as np
import pytest

from bucketwise import PlanError
from bucketwise.planning import PolynomialCost
from bucketwise.planning.joint import ModelDemand, equal_split, split_budget
from bucketwise.planning.joint import _choices as choices_of

MiB = 2**20


def demands(seed=0):
    rng = np.random.default_rng(seed)
    short = np.minimum(4 + rng.geometric(1 / 30, 4000), 256)  # an embedder's queries: most of the requests
    docs = np.concatenate([rng.integers(20, 120, 600), rng.integers(200, 256, 150)])  # a reranker's pairs
    mixed = rng.integers(8, 200, 250)  # a classifier
    cost = PolynomialCost.transformer(40.0, 1.0, 0.004)
    return [ModelDemand("embed", short, 0.80, 30 * MiB, 90 * MiB, max_k=8, options={"cost": cost, "grid": 8}),
            ModelDemand("rerank", docs, 0.15, 60 * MiB, 130 * MiB, max_k=8, options={"cost": cost, "grid": 8}),
            ModelDemand("classify", mixed, 0.05, 60 * MiB, 130 * MiB, max_k=8, options={"cost": cost, "grid": 8})]


@pytest.mark.parametrize("budget_mib", [600, 800, 1100])
def test_the_split_is_the_brute_force_optimum_within_the_budget(budget_mib):
    ds = demands()
    joint = split_budget(ds, budget_mib * MiB)
    assert joint.memory <= budget_mib * MiB
    options = {d.name: choices_of(d) for d in ds}
    shares = {d.name: d.share for d in ds}
    best = min((sum(shares[n] * c.expected_cost for n, c in zip(options, combo)), combo)
               for combo in itertools.product(*options.values())
               if sum(c.memory for c in combo) <= budget_mib * MiB)
    assert joint.expected_cost == pytest.approx(best[0] / sum(shares.values()))
    equal = equal_split(ds, budget_mib * MiB)
    assert joint.expected_cost <= equal.expected_cost + 1e-12


def test_a_skewed_mix_gives_the_busy_model_more_buckets_than_an_equal_split():
    ds = demands()
    joint, equal = split_budget(ds, 800 * MiB), equal_split(ds, 800 * MiB)
    assert joint.choices["embed"].k > equal.choices["embed"].k
    assert joint.expected_cost < equal.expected_cost
    text = str(joint)
    assert "embed" in text and "budget 800 MiB" in text


def test_a_budget_that_cannot_hold_one_bucket_each_is_refused_naming_what_each_needs():
    with pytest.raises(PlanError, match=r"one bucket per model needs 500 MiB \(embed 120 MiB, rerank 190 MiB, classify 190 MiB\)"):
        split_budget(demands(), 400 * MiB)
    with pytest.raises(PlanError, match="share of the requests must be > 0"):
        split_budget([ModelDemand("a", [5, 6], 0.0, MiB)], 10 * MiB)


def test_bucketwise_plan_splits_one_budget_across_traffic_files(tmp_path, capsys):
    import json

    from bucketwise import Plan
    from bucketwise.cli import main

    fmt = "bucketwise.traffic-shapes/1"
    rng = np.random.default_rng(1)
    files = {}
    for name, sizes in (("embed", np.minimum(4 + rng.geometric(1 / 30, 3000), 256)), ("rerank", rng.integers(20, 256, 400))):
        values, counts = np.unique(sizes, return_counts=True)
        files[name] = tmp_path / f"traffic.{name}.json"
        files[name].write_text(json.dumps({"format": fmt, "dims": ["seq"], "shapes": [[int(v)] for v in values],
                                           "counts": counts.tolist()}))
    spec = tmp_path / "models.json"
    spec.write_text(json.dumps({"models": {
        "embed": {"traffic": str(files["embed"]), "bytes_per_bucket": "30MiB", "shared_bytes": "90MiB"},
        "rerank": {"traffic": str(files["rerank"]), "bytes_per_bucket": "60MiB", "shared_bytes": "130MiB"}}}))
    out = tmp_path / "plan.json"
    report = tmp_path / "r.json"
    assert main(["plan", "--models", str(spec), "--memory-budget", "700MiB", "--output", str(out),
                 "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "one budget of 700 MiB across 2 models" in printed and "equal    each model alone in 350 MiB" in printed
    data = json.loads(report.read_text())
    assert data["joint"]["memory"] <= 700 * MiB
    assert data["joint"]["expected_cost"] <= data["equal"]["expected_cost"]
    for name in ("embed", "rerank"):
        written = Plan.load(tmp_path / f"plan.{name}.json")
        assert len(written) == data["joint"]["models"][name]["buckets"]
    # Shares default to each traffic's count of inputs: the embedder's 3000 against 400.
    assert data["joint"]["models"]["embed"]["share"] == pytest.approx(3000 / 3400)
    assert main(["plan", "--models", str(spec)]) == 2
    assert "--models splits one --memory-budget" in capsys.readouterr().err
