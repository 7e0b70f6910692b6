"""The error promise of the command line, case by case: every user-caused error prints
one line naming the value and the fix, and exits 2; nothing prints a traceback."""

import pytest

from bucketwise.cli import main


def _images(tmp, *, bad: bool = False):
    from PIL import Image

    folder = tmp / "photos"
    folder.mkdir()
    Image.new("RGB", (64, 48)).save(folder / "a.jpg")
    if bad:
        (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    return folder


def _file(tmp, name, text):
    p = tmp / name
    p.write_text(text)
    return p


# (case, setup(tmp) -> argv, what the one line must say)
CASES = [
    ("image folder with a file that is not an image",
     lambda t: ["plan", str(_images(t, bad=True)), "--output", str(t / "p.json")], "broken.jpg"),
    ("image folder that does not exist",
     lambda t: ["plan", str(t / "nowhere"), "--output", str(t / "p.json")], "nowhere"),
    ("predict on a folder without images",
     lambda t: ["predict", str((t / "none").mkdir() or t / "none"), "--plan", str(t / "p.json")], "holds no images"),
    ("image folder without images",
     lambda t: ["plan", str((t / "empty").mkdir() or t / "empty"), "--dims", "height,width"], "holds no images"),
    ("empty texts file",
     lambda t: ["plan", str(_file(t, "empty.txt", "\n\n")), "--output", str(t / "p.json")], "holds no texts"),
    ("texts file that is not UTF-8",
     lambda t: ["embed", "--input", str((t / "x.txt").write_bytes(b"\xff\xfe\xfa") and t / "x.txt")], "UTF-8"),
    ("malformed JSONL line",
     lambda t: ["embed", "--input", str(_file(t, "x.jsonl", "{oops\n"))], "line 1"),
    ("plan file that is not JSON",
     lambda t: ["embed", "--plan", str(_file(t, "plan.json", "{"))], "not valid JSON"),
    ("plan file with a bad bucket",
     lambda t: ["embed", "--plan", str(_file(t, "plan.json", '{"buckets": [{"seq": -1}]}'))], "positive integer"),
    ("model folder that is not a model",
     lambda t: ["embed", "--model", str(t), "--no-cache"], "not a Hugging Face model folder"),
    ("output that is not .npy",
     lambda t: ["embed", "--output", str(t / "out.txt")], "must end in .npy"),
    ("cache directory that cannot be written",
     lambda t: ["compile", "--cache-dir", str(_file(t, "afile", "x") / "cache"), "--seq-sizes", "16", "--batch-sizes", "1"],
     "cannot be written"),
    ("plan and sizes together",
     lambda t: ["embed", "--plan", str(_file(t, "p.json", "{}")), "--seq-sizes", "16"], "exclude each other"),
    ("shapes file with unknown columns",
     lambda t: ["plan", str(_file(t, "s.csv", "height,width\n10,oops\n"))], "s.csv"),
    ("memory budget without a measured bucket size",
     lambda t: ["plan", str(_file(t, "s.json", "[5, 9, 30]")), "--memory-budget", "1GB"], "--bytes-per-bucket"),
    ("an api key variable that is unset",
     lambda t: ["serve", "--api-key-env", "BUCKETWISE_TEST_UNSET_KEY"], "BUCKETWISE_TEST_UNSET_KEY"),
    ("--prepack hot with a plan that records no traffic",
     lambda t: ["embed", "--prepack", "hot", "--no-cache", "--limit", "1"], "records no traffic shares"),
    ("--prepack on a backend that has no such option",
     lambda t: ["embed", "--prepack", "none", "--backend", "openvino", "--no-cache", "--limit", "1"],
     "is an onnxruntime option"),
    ("--streams of 0 (ServeConfig's check)",
     lambda t: ["serve", "--streams", "0"], "streams (--streams) must be a whole number of at least 1, got 0"),
    ("two models under one name",
     lambda t: ["serve", "--model", "a=x", "--model", "a=y"], "two models are named 'a'"),
    ("--models-config with an unknown key",
     lambda t: ["serve", "--models-config", str(_file(t, "m.json", '{"models": {"a": {"path": "x", "batch": 4}}}'))],
     "unknown keys ['batch']"),
    ("--memory-budget with one model",
     lambda t: ["serve", "--model", "a=x", "--memory-budget", "1GB"], "serve two or more"),
    ("--memory-budget without a model's traffic or memory",
     lambda t: ["serve", "--models-config", str(_file(t, "m2.json", '{"models": {"a": {"path": "x"}, "b": {"path": "y"}}}')),
                "--memory-budget", "1GB"], "model 'a' needs its traffic"),
    ("--replan-build-share outside (0, 1]",
     lambda t: ["serve", "--replan-every", "60", "--replan-build-share", "0"], "(--replan-build-share) must be a fraction"),
    ("--replan-memory-budget that is not a size",
     lambda t: ["serve", "--replan-every", "60", "--replan-memory-budget", "lots"],
     "--replan-memory-budget: cannot read 'lots' as a size"),
    ("--replan-compile-budget of 0",
     lambda t: ["serve", "--replan-every", "60", "--replan-compile-budget", "0"], "(--replan-compile-budget) must be > 0"),
    ("--cache-max-size that is not a size",
     lambda t: ["embed", "--cache-max-size", "lots", "--limit", "1"], "cannot read 'lots' as a size"),
]


@pytest.mark.parametrize("case,argv,needle", CASES, ids=[c[0] for c in CASES])
def test_user_errors_are_one_line_and_exit_2(case, argv, needle, tmp_path, capsys, monkeypatch):
    pytest.importorskip("PIL")
    monkeypatch.delenv("BUCKETWISE_TEST_UNSET_KEY", raising=False)
    code = main(argv(tmp_path))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (case, err)
    lines = [line for line in err if line.startswith("bucketwise: error:")]
    assert len(lines) == 1 and "Traceback" not in "\n".join(err), (case, err)
    assert needle in lines[0], (case, lines[0])


def test_an_unwritable_default_cache_falls_back_to_none_with_a_warning(tmp_path, monkeypatch, capsys):
    import argparse

    from bucketwise.cli._common import cache_from_args

    blocker = tmp_path / "afile"
    blocker.write_text("x")
    monkeypatch.setenv("BUCKETWISE_CACHE", str(blocker / "cache"))
    args = argparse.Namespace(cache_dir=None, no_cache=False)
    assert cache_from_args(args) is None
    assert "running without a cache" in capsys.readouterr().err
