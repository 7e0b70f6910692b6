"""Images: reading, padding, dense cropping with stride, detection filtering, resize-to-fit,
image planning, and the ready torchvision models (those skip without torchvision)."""

import numpy as np
import pytest
from conftest import COCO_IMAGES as COCO
from test_vision_geometry import fake_detector, strided_net

from bucketwise import Bucket, BucketedModel, BucketOverflowError, InputError, Plan, pad, route
from bucketwise.models.vision import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageModel,
    classifier_spec,
    detector_spec,
    image_size,
    to_array,
)

Image = pytest.importorskip("PIL.Image")


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# -- reading images ------------------------------------------------------------------------


def test_image_size_of_pil_numpy_and_tensor():
    arr = rgb(30, 40)
    assert image_size(arr) == (30, 40)
    assert image_size(arr[:, :, 0]) == (30, 40)
    assert image_size(Image.fromarray(arr)) == (30, 40)
    torch = pytest.importorskip("torch")
    assert image_size(torch.zeros(3, 30, 40)) == (30, 40)
    with pytest.raises(InputError, match="PIL image, a NumPy array"):
        image_size([[1, 2]])
    with pytest.raises(InputError, match="HWC or HW"):
        image_size(np.zeros((1, 2, 3, 4)))


def test_to_array_normalises_every_kind_alike():
    arr = rgb(6, 5)
    want = (arr.transpose(2, 0, 1) / 255.0 - np.array(IMAGENET_MEAN).reshape(3, 1, 1)) / np.array(IMAGENET_STD).reshape(3, 1, 1)
    np.testing.assert_allclose(to_array(arr), want, atol=1e-5)
    np.testing.assert_allclose(to_array(Image.fromarray(arr)), want, atol=1e-5)
    rgba = np.concatenate([arr, np.full((6, 5, 1), 255, np.uint8)], axis=2)
    np.testing.assert_allclose(to_array(rgba), want, atol=1e-5)
    grey = to_array(arr[:, :, 0], mean=None)
    assert grey.shape == (3, 6, 5) and np.all(grey[0] == grey[2])
    torch = pytest.importorskip("torch")
    np.testing.assert_allclose(to_array(torch.from_numpy(arr.transpose(2, 0, 1) / 255.0)), want, atol=1e-5)
    with pytest.raises(InputError, match="2 channels"):
        to_array(np.zeros((4, 4, 2), np.uint8))


# -- overflow: resize to fit ------------------------------------------------------------------


def test_resize_to_fit_maps_boxes_and_dense_outputs_back():
    plan = Plan.grid(height=[64], width=[64])
    det = BucketedModel(fake_detector, detector_spec(), plan, warmup_runs=0).compile(progress=False)
    big = rgb(160, 80)
    with pytest.raises(BucketOverflowError):
        ImageModel(det)(big)
    model = ImageModel(det, resize=True)
    out = model(big)["detections"]
    # Fitted to 64 x 32; the box over the real top-left 8 x 8 maps back to 16 x 20 pixels.
    np.testing.assert_allclose(out[0, :4], [0, 0, 8 * 80 / 32, 8 * 160 / 64])
    np.testing.assert_allclose(out[-1, :4], [0, 0, 80, 160])  # the fitted image's full extent
    assert det.stats.overflow["resize"] == 1

    spec = classifier_spec(features_stride=4)
    dense = BucketedModel(strided_net(4), spec, Plan.grid(batch=[1], height=[64], width=[64]), warmup_runs=0)
    out = ImageModel(dense.compile(progress=False), resize=True)(Image.fromarray(rgb(100, 130)))
    assert out["features"].shape == (1, 3, 25, 33)  # ceil(100 / 4), ceil(130 / 4): the image's own size


# -- planning ---------------------------------------------------------------------------


def test_plan_from_an_image_folder(tmp_path, capsys):
    from bucketwise.cli import main
    from bucketwise.planning import plan

    p = plan(COCO, k=3, grid=32)
    assert p.dims == ("height", "width") and len(p) <= 3
    for f in sorted(COCO.iterdir()):
        with Image.open(f) as im:
            w, h = im.size
        assert route(p, {"height": h, "width": w}).covers({"height": h, "width": w})
    out = tmp_path / "p.json"
    assert main(["plan", str(COCO), "--k", "3", "--grid", "32", "--output", str(out)]) == 0
    assert "6 inputs" in capsys.readouterr().out


def test_the_shipped_coco_images_are_those_annotated_and_each_is_attributed():
    """tests/data/coco: every image has its COCO record (size as read), a license that
    allows any use (CC BY 2.0 or no known restrictions) and a line in ATTRIBUTION.md."""
    import json

    meta = json.loads((COCO.parent / "annotations.json").read_text())
    attribution = (COCO.parent / "ATTRIBUTION.md").read_text()
    licenses = {lic["id"]: lic for lic in meta["licenses"]}
    assert set(licenses) <= {4, 7}  # COCO's ids of "Attribution License" and "No known copyright restrictions"
    records = {im["file_name"]: im for im in meta["images"]}
    files = sorted(f.name for f in COCO.iterdir())
    assert files == sorted(records) and len(files) == 6
    for name in files:
        im = records[name]
        with Image.open(COCO / name) as opened:
            assert opened.size == (im["width"], im["height"])
        row = next(line for line in attribution.splitlines() if line.startswith(f"| {name} |"))
        assert im["flickr_url"] in row and im["coco_url"] in row and licenses[im["license"]]["url"] in row
    assert {a["image_id"] for a in meta["annotations"]} == {im["id"] for im in meta["images"]}


# -- ready torchvision models -------------------------------------------------------------------


def coco_images(n):
    return [Image.open(f).convert("RGB") for f in sorted(COCO.iterdir())[:n]]


@pytest.mark.slow
def test_resnet50_on_onnxruntime_matches_eager_and_reports_the_padding_shift():
    pytest.importorskip("torchvision")
    from bucketwise import check_parity
    from bucketwise.backends.base import is_available
    from bucketwise.models.vision import resnet50_classifier

    if not is_available("onnxruntime"):
        pytest.skip("onnxruntime not installed")
    images = coco_images(2)
    module, spec = resnet50_classifier(masked=True, features=True)
    plan = Plan.grid(batch=[1], height=[480, 640], width=[480, 640])
    bm = BucketedModel(module, spec, plan, backend="onnxruntime").compile(progress=False)
    samples = []
    for im in images:
        a = to_array(im)[None]
        samples.append({"image": a, "mask": np.ones((1, 1) + a.shape[2:], np.float32)})
        out = bm(**samples[-1])
        assert out["logits"].shape == (1, 1000)
        assert out["features"].shape == (1, 2048, -(-a.shape[2] // 32), -(-a.shape[3] // 32))
        # The compiled bucket computes what eager computes on the same padded input.
        bucket = route(plan, {"batch": 1, "height": a.shape[2], "width": a.shape[3]})
        padded = pad(spec, samples[-1], bucket)
        want = bm.reference(padded)["logits"]
        np.testing.assert_allclose(bm.artifact(bucket).run(padded)["logits"], want,
                                   atol=1e-3 * float(np.abs(want).max()))
    report = check_parity(bm, samples, atol=1e-3)
    # Not padding-invariant: the report shows the shift instead of hiding it.
    assert 0 < report.outputs["logits"].max_rel < 0.5
    assert not report.ok
    bm.close()


@pytest.mark.slow
def test_fasterrcnn_detector_keeps_boxes_on_the_real_image():
    pytest.importorskip("torchvision")
    import torch

    from bucketwise.models.vision import fasterrcnn_detector

    (image,) = coco_images(1)
    h, w = image.height, image.width
    module, spec = fasterrcnn_detector(score_threshold=0.0)
    bm = BucketedModel(module, spec, Plan.grid(height=[640], width=[640]), backend="eager").compile(progress=False)
    dets = ImageModel(bm)(image)["detections"]
    assert dets.shape[1] == 6 and len(dets) > 0
    assert dets[:, [0, 2]].max() <= w and dets[:, [1, 3]].max() <= h and dets[:, :4].min() >= 0
    artifact = bm.artifact(Bucket(height=640, width=640))
    assert artifact.array_kind == "torch"  # an artifact takes its own kind of array
    padded = pad(spec, {"image": torch.from_numpy(to_array(image, mean=None))}, Bucket(height=640, width=640))
    raw = artifact.run(padded)
    assert len(raw["detections"]) >= len(dets)  # the hook only removes and clips
