"""Images through the whole command line: plan a folder, compile its buckets, predict.
Classifiers write top-k JSONL, detectors COCO-style JSON, segmentation models per-image
class counts; outputs are cropped to (and boxes filtered to) each image's own pixels."""

import json

import numpy as np
import pytest
from conftest import COCO_IMAGES as COCO

from bucketwise.cli import main

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("torchvision")

FACTORY = '''
import torch
from bucketwise.models.vision import classifier_spec

class Net(torch.nn.Module):
    def forward(self, image):
        return torch.stack([image.mean(dim=(1, 2, 3)), image.amax(dim=(1, 2, 3))], dim=1)

def build():
    return Net(), classifier_spec(pad="zero")
'''


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 60), (64, 48), (50, 50)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image: skipped")
    return folder


def _plan(photos, tmp_path):
    plan = tmp_path / "plan.json"
    assert main(["plan", str(photos), "--k", "2", "--output", str(plan)]) == 0
    return plan


@pytest.mark.parametrize("model,kind", [("mobilenet_v3_small", "classifier"), ("lraspp_mobilenet_v3_large", "dense"),
                                        ("{factory}", "classifier")])
def test_predict_any_image_model_on_a_folder(photos, tmp_path, capsys, model, kind):
    if model == "{factory}":
        (tmp_path / "mine.py").write_text(FACTORY)
        model = f"{tmp_path / 'mine.py'}:build"
    plan = _plan(photos, tmp_path)
    assert "bucketwise predict" in capsys.readouterr().out  # plan names the next step
    out = tmp_path / "out.jsonl"
    code = main(["predict", str(photos), "--model", model, "--plan", str(plan), "--backend", "eager",
                 "--no-cache", "--no-progress", "--output", str(out), "--top-k", "2"])
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["file"] for r in rows] == ["0.png", "1.png", "2.png"]
    if kind == "classifier":
        assert all(len(r["top"]) == 2 and r["top"][0]["score"] >= r["top"][1]["score"] for r in rows)
    else:  # masks at each image's own size, padding cropped
        assert [r["shape"][1:] for r in rows] == [[40, 60], [64, 48], [50, 50]]
        assert all(sum(r["classes"].values()) == r["height"] * r["width"] for r in rows)


@pytest.mark.slow
def test_coco_images_compile_and_predict_on_onnxruntime(tmp_path, capsys):
    n = len(list(COCO.iterdir()))
    plan, cache = tmp_path / "plan.json", str(tmp_path / "cache")
    assert main(["plan", str(COCO), "--k", "3", "--output", str(plan)]) == 0
    assert main(["compile", "--model", "resnet50", "--plan", str(plan), "--backend", "onnxruntime",
                 "--cache-dir", cache, "--no-progress"]) == 0
    assert "compiled" in capsys.readouterr().out
    top = tmp_path / "top.jsonl"
    assert main(["predict", str(COCO), "--model", "resnet50", "--plan", str(plan), "--backend", "onnxruntime",
                 "--cache-dir", cache, "--no-progress", "--output", str(top), "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["images"] == n == 6 and report["stats"]["runs"] == n
    rows = [json.loads(line) for line in top.read_text().splitlines()]
    assert len(rows) == n and all(len(r["top"]) == 5 for r in rows)
    dets = tmp_path / "dets.json"
    # Random weights score every box alike and low: keep them all, to see them filtered.
    assert main(["predict", str(COCO), "--model", "fasterrcnn", "--plan", str(plan), "--backend", "onnxruntime",
                 "--cache-dir", cache, "--no-progress", "--output", str(dets), "--score-threshold", "0"]) == 0
    coco = json.loads(dets.read_text())
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    assert len(sizes) == n and coco["annotations"]
    for a in coco["annotations"]:  # boxes in the padding were dropped, the rest clipped
        x, y, w, h = a["bbox"]
        width, height = sizes[a["image_id"]]
        assert 0 <= x and 0 <= y and x + w <= width + 0.01 and y + h <= height + 0.01
