"""Image geometry without Pillow or torch: bottom/right padding, dense cropping with a
stride, detection filtering, aspect-preserving fit, and image planning. Pure NumPy."""

import numpy as np
import pytest

from bucketwise import Bucket, BucketedModel, InputError, Plan, pad, route
from bucketwise.models.vision import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    classifier_spec,
    detector_spec,
    filter_detections,
    fit_size,
    pad_values,
    seed_plan,
    to_array,
)


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


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


def fake_detector(image):
    """Boxes at fixed places of the padded image: one over the real top-left, one far in the
    bottom-right corner (padding unless the image fills the bucket), one over everything."""
    _, h, w = image.shape
    return np.array([[0, 0, 8, 8, 0.9, 1], [w - 4, h - 4, w, h, 0.8, 2], [0, 0, w, h, 0.7, 3]], np.float32)


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


def test_detector_spec_drops_boxes_in_the_padding_through_the_model():
    bm = BucketedModel(fake_detector, detector_spec(), Plan.grid(height=[64], width=[64]), warmup_runs=0).compile(progress=False)
    out = bm(image=to_array(rgb(40, 30), mean=None))["detections"]
    np.testing.assert_array_equal(out[:, 5], [1])  # the whole-bucket box is 29% real: dropped
    full = bm(image=to_array(rgb(64, 64), mean=None))["detections"]
    np.testing.assert_array_equal(full[:, 5], [1, 2, 3])


def test_fit_size_keeps_the_aspect_ratio():
    assert fit_size(500, 400, 800, 800) == (500, 400)
    assert fit_size(1000, 500, 800, 800) == (800, 400)
    assert fit_size(900, 900, 800, 600) == (600, 600)
    assert fit_size(3000, 10, 100, 100) == (100, 1)


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
