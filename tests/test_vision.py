"""Images: reading, padding, dense cropping with stride, detection filtering, resize-to-fit,
image planning, and the ready torchvision models (those skip without torchvision)."""

import numpy as np
import pytest
from conftest import SHARED_DATA

from bucketwise import Bucket, BucketedModel, BucketOverflowError, InputError, Plan, pad, route
from bucketwise.models.vision import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageModel,
    classifier_spec,
    detector_spec,
    filter_detections,
    fit_size,
    image_size,
    pad_values,
    seed_plan,
    to_array,
)

Image = pytest.importorskip("PIL.Image")
COCO = SHARED_DATA / "coco-tiny" / "train2017"


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


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_padding_goes_bottom_right_with_a_neutral_or_black_border(mode):
    spec = classifier_spec(pad=mode)
    image = to_array(rgb(5, 7))[None]
    out = pad(spec, {"image": image}, Bucket(batch=1, height=8, width=8))["image"]
    assert out.shape == (1, 3, 8, 8)
    np.testing.assert_array_equal(out[:, :, :5, :7], image)  # the real image keeps its top-left corner
    # Undo the normalisation: the border is the mean colour, or black.
    pixels = out[0] * np.array(IMAGENET_STD).reshape(3, 1, 1) + np.array(IMAGENET_MEAN).reshape(3, 1, 1)
    border = np.concatenate([pixels[:, 5:, :].reshape(3, -1), pixels[:, :, 7:].reshape(3, -1)], axis=1)
    expect = np.zeros(3) if mode == "zero" else np.array(IMAGENET_MEAN)
    np.testing.assert_allclose(border, np.broadcast_to(expect[:, None], border.shape), atol=1e-6)
    assert pad_values("mean", IMAGENET_MEAN, IMAGENET_STD) == (0.0, 0.0, 0.0)


# -- dense outputs and detections ------------------------------------------------------------


def strided_net(stride):
    """A fully convolutional stand-in: each output cell is the sum of its stride x stride block."""

    def net(image):
        n, c, h, w = image.shape
        hh, ww = -(-h // stride), -(-w // stride)
        padded = np.zeros((n, c, hh * stride, ww * stride), image.dtype)
        padded[:, :, :h, :w] = image
        feats = padded.reshape(n, c, hh, stride, ww, stride).sum(axis=(3, 5))
        return feats.sum(axis=(1, 2, 3))[:, None], feats

    return net


def test_dense_outputs_are_cropped_with_the_stride():
    spec = classifier_spec(pad="mean", features_stride=4)
    bm = BucketedModel(strided_net(4), spec, Plan.grid(batch=[1], height=[16, 32], width=[16, 32]), warmup_runs=0)
    bm.compile(progress=False)
    for h, w in [(13, 9), (16, 16), (17, 30)]:
        image = to_array(rgb(h, w))[None]
        out = bm(image=image)
        assert out["features"].shape == (1, 3, -(-h // 4), -(-w // 4))
        np.testing.assert_allclose(out["features"], strided_net(4)(image)[1], atol=1e-4)


def test_filter_detections_known_answers():
    # Real image 100 x 200 (height x width) inside a 128 x 256 bucket.
    dets = np.array([
        [10, 10, 50, 50, 0.9, 1],      # inside: kept as is
        [210, 20, 250, 60, 0.8, 2],    # wholly in the right padding: dropped
        [180, 20, 220, 60, 0.7, 3],    # 50% inside: kept (at the threshold), clipped to x2=200
        [190, 20, 230, 60, 0.6, 4],    # 25% inside: dropped
        [20, 70, 60, 110, 0.5, 5],     # 75% inside (bottom): kept, clipped to y2=100
        [30, 30, 30, 30, 0.4, 6],      # a point inside: kept
        [150, 120, 150, 120, 0.3, 7],  # a point in the padding: dropped
    ], np.float32)
    out = filter_detections(dets, height=100, width=200)
    np.testing.assert_array_equal(out[:, 5], [1, 3, 5, 6])
    np.testing.assert_array_equal(out[1, :4], [180, 20, 200, 60])
    np.testing.assert_array_equal(out[2, :4], [20, 70, 60, 100])
    np.testing.assert_array_equal(out[0], dets[0])
    np.testing.assert_array_equal(filter_detections(dets, height=100, width=200, min_inside=0.9)[:, 5], [1, 6])
    assert filter_detections(np.zeros((0, 6)), height=5, width=5).shape == (0, 6)
    with pytest.raises(InputError, match="x1, y1, x2, y2"):
        filter_detections(np.zeros((3, 3)), height=5, width=5)


def fake_detector(image):
    """Boxes at fixed places of the padded image: one over the real top-left, one far in the
    bottom-right corner (padding unless the image fills the bucket), one over everything."""
    _, h, w = image.shape
    return np.array([[0, 0, 8, 8, 0.9, 1], [w - 4, h - 4, w, h, 0.8, 2], [0, 0, w, h, 0.7, 3]], np.float32)


def test_detector_spec_drops_boxes_in_the_padding_through_the_model():
    bm = BucketedModel(fake_detector, detector_spec(), Plan.grid(height=[64], width=[64]), warmup_runs=0).compile(progress=False)
    out = bm(image=to_array(rgb(40, 30), mean=None))["detections"]
    np.testing.assert_array_equal(out[:, 5], [1])  # the whole-bucket box is 29% real: dropped
    full = bm(image=to_array(rgb(64, 64), mean=None))["detections"]
    np.testing.assert_array_equal(full[:, 5], [1, 2, 3])


# -- overflow: resize to fit ------------------------------------------------------------------


def test_fit_size_keeps_the_aspect_ratio():
    assert fit_size(500, 400, 800, 800) == (500, 400)
    assert fit_size(1000, 500, 800, 800) == (800, 400)
    assert fit_size(900, 900, 800, 600) == (600, 600)
    assert fit_size(3000, 10, 100, 100) == (100, 1)


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


def test_seed_setup_planned_buckets_beat_the_seed_squares():
    from bucketwise.planning import Observations, plan

    rng = np.random.default_rng(0)
    sizes = rng.integers(400, 801, (20_000, 2))
    obs = Observations.from_shapes(sizes, dims=("height", "width"))
    seed = seed_plan(batch=None)
    planned = plan(obs, k=4, grid=16)
    assert all(route(planned, {"height": int(h), "width": int(w)}) for h, w in sizes[:100])
    vol = {name: np.mean([route(p, {"height": int(h), "width": int(w)}).volume for h, w in sizes])
           for name, p in (("seed", seed), ("planned", planned))}
    assert vol["planned"] < vol["seed"], vol


def test_plan_from_an_image_folder(tmp_path, capsys):
    if not COCO.is_dir():
        pytest.skip(f"coco-tiny not found at {COCO}")
    from bucketwise.cli import main
    from bucketwise.planning import plan

    p = plan(COCO, k=3, grid=32)
    assert p.dims == ("height", "width") and len(p) <= 3
    for f in sorted(COCO.iterdir())[:20]:
        with Image.open(f) as im:
            w, h = im.size
        assert route(p, {"height": h, "width": w}).covers({"height": h, "width": w})
    out = tmp_path / "p.json"
    assert main(["plan", str(COCO), "--k", "3", "--grid", "32", "--output", str(out)]) == 0
    assert "80 inputs" in capsys.readouterr().out


# -- ready torchvision models -------------------------------------------------------------------


def coco_images(n):
    if not COCO.is_dir():
        pytest.skip(f"coco-tiny not found at {COCO}")
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
