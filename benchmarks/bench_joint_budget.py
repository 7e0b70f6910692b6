"""One memory budget across three models (issue #29): the planned split against an equal one.

The mix is skewed as a search service's is: 80% of the requests embed one sentence, 15%
rerank a (query, document) pair, 5% classify a pair. The lengths are the held-out MRPC test
split's, tokenized by the bundled all-MiniLM-L6-v2 tokenizer (sentences for the embedder,
pairs for the other two).

Costs and memory (stated, not measured here):
- the embedder's cost per row is the one fitted on this machine for all-MiniLM-L6-v2 on ONNX
  Runtime (benchmarks/results/plan_vs_measured_onnxruntime.json: a + bL + cL^2 ms); the
  reranker and the classifier are taken as 12-layer models, twice that per row;
- memory is that of a compiler that builds one executable per bucket, as measured for
  MiniLM on XLA (the README's JAX row: 86 MiB of parameters, 23-35 MiB per bucket): 86 MiB
  shared and 30 MiB per bucket for the embedder, twice both for the 12-layer models.

For each budget it prints the buckets each model gets and the expected cost per request
over the mix, planned (bucketwise.planning.joint.split_budget, exact) and split equally
(each model planned alone in a third of the budget), side by side.

    python benchmarks/bench_joint_budget.py
Writes benchmarks/results/joint_budget.json.
"""

from __future__ import annotations

import json
import sys

from _common import RESULTS, SHARED_DATA, save, table

from bucketwise.costs import PolynomialCost
from bucketwise.data import read_mrpc
from bucketwise.models.text import load_default_tokenizer
from bucketwise.planning.joint import ModelDemand, equal_split, plan_choices, split_budget

MiB = 2**20
BUDGETS_MIB = (720, 900, 1200, 1600, 2400)


def main() -> int:
    pairs = read_mrpc(SHARED_DATA / "mrpc" / "msr_paraphrase_test.txt")
    tok = load_default_tokenizer(None)
    sentences = [len(tok(s)["input_ids"]) for pair in pairs for s in pair]
    pair_lengths = [len(tok(a, b)["input_ids"]) for a, b in pairs]
    fitted = json.loads((RESULTS / "plan_vs_measured_onnxruntime.json").read_text())["fitted_cost_ms"]["terms"]
    a, b, c = (coef for _, coef in fitted)
    small = PolynomialCost.transformer(a, b, c)
    large = PolynomialCost.transformer(2 * a, 2 * b, 2 * c)
    demands = [
        ModelDemand("embed", sentences, 0.80, 30 * MiB, 86 * MiB, max_k=12, options={"cost": small, "grid": 8}),
        ModelDemand("rerank", pair_lengths, 0.15, 60 * MiB, 172 * MiB, max_k=12, options={"cost": large, "grid": 8}),
        ModelDemand("classify", pair_lengths, 0.05, 60 * MiB, 172 * MiB, max_k=12, options={"cost": large, "grid": 8}),
    ]
    rows, out = [], []
    choices = plan_choices(demands)  # every model's plan for each k, once for all budgets
    for budget in BUDGETS_MIB:
        joint = split_budget(demands, budget * MiB, choices=choices)
        equal = equal_split(demands, budget * MiB, choices=choices)
        ks = lambda p: "/".join(str(ch.k) for ch in p.choices.values())  # noqa: E731
        rows.append([budget, ks(joint), f"{joint.expected_cost:.3f}", f"{joint.memory / MiB:.0f}", ks(equal),
                     f"{equal.expected_cost:.3f}", f"{equal.memory / MiB:.0f}", f"{equal.expected_cost / joint.expected_cost:.3f}"])
        out.append({"budget_mib": budget, "planned": joint.as_dict(), "equal": equal.as_dict(),
                    "equal_over_planned": equal.expected_cost / joint.expected_cost})
    print(table(rows, ["budget MiB", "planned k (embed/rerank/classify)", "ms/request", "MiB used",
                       "equal-split k", "ms/request", "MiB used", "equal / planned"]))
    path = save("joint_budget", {"mix": {d.name: d.share for d in demands}, "inputs": {
        "embed": len(sentences), "pairs": len(pair_lengths)}, "results": out})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
