"""Images: 2-D (height, width) buckets for CNN classifiers, dense heads and detectors.

Conventions:

- An image is a PIL image, a NumPy array in HWC (or HW) layout as PIL and OpenCV give
  them, or a torch tensor in CHW layout as torchvision gives them. Integer images are
  0–255; float images are 0–1.
- Padding goes at the bottom and right, so the real image keeps its top-left corner and
  box coordinates need no shift. The pad value is ``"zero"`` (a black border) or
  ``"mean"`` (the normalisation mean, which is 0 after normalising: a neutral border).
- An image larger than the largest bucket raises by default; ``resize=True`` shrinks it to
  fit, keeping its aspect ratio, and maps boxes and dense outputs back to its own size.

Ready models, with ``weights=None`` (nothing is downloaded): :func:`resnet50_classifier`
(the seed's example; optionally with masked pooling and its stride-32 feature map) and
:func:`fasterrcnn_detector` (Faster R-CNN, MobileNetV3 backbone).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from .._optional import require
from ..errors import InputError, MissingDependencyError, SpecError
from ..plans import Plan
from ..shapes import Bucket
from ..spec import InputSpec, ModelSpec, OutputSpec

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageModel",
    "classifier_spec",
    "detector_module",
    "detector_spec",
    "filter_detections",
    "fasterrcnn_detector",
    "fit_size",
    "image_size",
    "pad_values",
    "resnet50_classifier",
    "seed_plan",
    "to_array",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PadMode = Literal["zero", "mean"]
_PAD_MODES = ("zero", "mean")


# -- reading images ------------------------------------------------------------------------


def _is_tensor(image: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(image, torch.Tensor)


def _is_pil(image: Any) -> bool:
    import sys

    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(image, pil.Image)


def image_size(image: Any) -> tuple[int, int]:
    """``(height, width)`` of a PIL image, a NumPy HWC/HW array or a torch CHW tensor."""
    if _is_pil(image):
        w, h = image.size
        return int(h), int(w)
    if _is_tensor(image):
        if image.ndim not in (2, 3):
            raise InputError(f"image tensor must be CHW or HW, got shape {tuple(image.shape)}")
        return int(image.shape[-2]), int(image.shape[-1])
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3):
            raise InputError(f"image array must be HWC or HW, got shape {image.shape}")
        return int(image.shape[0]), int(image.shape[1])
    raise InputError(
        f"image must be a PIL image, a NumPy array (HWC) or a torch tensor (CHW), got "
        f"{type(image).__name__}; open files with PIL.Image.open(path)"
    )


def to_array(
    image: Any, *, mean: Sequence[float] | None = IMAGENET_MEAN, std: Sequence[float] | None = IMAGENET_STD
) -> np.ndarray:
    """The image as a float32 ``(3, height, width)`` array, 0–1, then normalised by
    ``(x - mean) / std`` per channel (``mean=None`` skips normalising). Grey images are
    repeated to 3 channels; an alpha channel is dropped."""
    image_size(image)  # validates the type
    if _is_pil(image):
        arr = np.asarray(image.convert("RGB"))
        chw = arr.transpose(2, 0, 1)
    elif _is_tensor(image):
        chw = image.detach().cpu().numpy()
        if chw.ndim == 2:
            chw = chw[None]
    else:
        arr = image if image.ndim == 3 else image[:, :, None]
        chw = arr.transpose(2, 0, 1)
    if chw.shape[0] == 1:
        chw = np.repeat(chw, 3, axis=0)
    elif chw.shape[0] == 4:
        chw = chw[:3]
    elif chw.shape[0] != 3:
        raise InputError(f"image has {chw.shape[0]} channels; expected 1, 3 or 4 (grey, RGB, RGBA)")
    if np.issubdtype(chw.dtype, np.integer):
        out = chw.astype(np.float32) / 255.0
    else:
        out = chw.astype(np.float32, copy=True)
    if mean is not None:
        m = np.asarray(mean, np.float32).reshape(3, 1, 1)
        s = np.asarray(std if std is not None else (1.0, 1.0, 1.0), np.float32).reshape(3, 1, 1)
        out = (out - m) / s
    return np.ascontiguousarray(out)


def pad_values(pad: PadMode, mean: Sequence[float] | None, std: Sequence[float] | None) -> tuple[float, ...]:
    """Per-channel pad values in the space the model sees: after normalising, ``"mean"``
    is 0 (neutral) and ``"zero"`` is a black pixel, ``-mean / std``."""
    if pad not in _PAD_MODES:
        raise SpecError(f"pad must be one of {_PAD_MODES}, got {pad!r}")
    if mean is None:  # the model normalises itself: pad in pixel space
        return (0.0, 0.0, 0.0) if pad == "zero" else tuple(float(m) for m in IMAGENET_MEAN)
    s = std if std is not None else (1.0, 1.0, 1.0)
    if pad == "mean":
        return (0.0, 0.0, 0.0)
    return tuple(float(-m / sd) for m, sd in zip(mean, s))


# -- specs ---------------------------------------------------------------------------------


def classifier_spec(
    *,
    pad: PadMode = "mean",
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
    masked: bool = False,
    features_stride: int | None = None,
) -> ModelSpec:
    """An image classifier: ``image`` (batch, 3, height, width) → ``logits`` (batch, classes).

    ``masked`` adds a ``mask`` input (batch, 1, height, width): 1 on real pixels, 0 on
    padding, for models that pool over real pixels only. ``features_stride`` adds a dense
    ``features`` output (batch, channels, height / stride, width / stride), cropped to
    ``ceil(real / stride)``.
    """
    inputs = [InputSpec("image", ("batch", 3, "height", "width"), "float32",
                        pad_value=pad_values(pad, mean, std), channel_axis=1)]
    if masked:
        inputs.append(InputSpec("mask", ("batch", 1, "height", "width"), "float32", pad_value=0.0, example=1.0))
    outputs = [OutputSpec("logits", ("batch", None))]
    if features_stride:
        outputs.append(OutputSpec("features", ("batch", None, "height", "width"), stride=features_stride))
    return ModelSpec(tuple(inputs), tuple(outputs), meta={"mean": mean, "std": std, "pad": pad})


def filter_detections(
    detections: np.ndarray, *, height: int, width: int, min_inside: float = 0.5
) -> np.ndarray:
    """Drop boxes that lie mostly in the padded area; clip the rest to the real image.

    ``detections`` is ``(n, 4 + k)``: ``x1, y1, x2, y2`` in pixels of the padded image
    (padding at the bottom/right, so the real image is ``[0, width] x [0, height]``),
    then ``k`` more columns (score, label) that are kept as they are. A box is kept when
    at least ``min_inside`` of its area lies in the real image. Pure.
    """
    dets = np.asarray(detections)
    if dets.ndim != 2 or dets.shape[1] < 4:
        raise InputError(f"detections must be (n, 4 + k) with x1, y1, x2, y2 first, got shape {dets.shape}")
    if not 0.0 <= min_inside <= 1.0:
        raise InputError(f"min_inside must be in [0, 1], got {min_inside}")
    x1, y1, x2, y2 = (dets[:, i].astype(np.float64) for i in range(4))
    area = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    inside = (np.clip(np.minimum(x2, width) - np.maximum(x1, 0), 0, None)
              * np.clip(np.minimum(y2, height) - np.maximum(y1, 0), 0, None))
    # A degenerate (zero-area) box is kept when its corner lies in the real image.
    point_in = (x1 >= 0) & (x1 <= width) & (y1 >= 0) & (y1 <= height)
    keep = np.where(area > 0, inside >= min_inside * np.where(area > 0, area, 1), point_in)
    out = dets[keep].copy()
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
    return out


def _detections_hook(min_inside: float) -> Any:
    def hook(value: Any, *, shape: Mapping[str, int], bucket: Bucket) -> np.ndarray:
        return filter_detections(np.asarray(value), height=shape["height"], width=shape["width"],
                                 min_inside=min_inside)

    hook.__qualname__ = f"filter_detections(min_inside={min_inside})"
    return hook


def detector_spec(*, pad: PadMode = "mean", min_inside: float = 0.5) -> ModelSpec:
    """A detector on one image: ``image`` (3, height, width) in 0–1 pixels (the detector
    normalises itself) → ``detections`` (n, 6): x1, y1, x2, y2, score, label, with the
    boxes that lie mostly in the padding dropped and the rest clipped."""
    return ModelSpec(
        (InputSpec("image", (3, "height", "width"), "float32", pad_value=pad_values(pad, None, None), channel_axis=0),),
        (OutputSpec("detections", (None, None), hook=_detections_hook(min_inside)),),
        meta={"mean": None, "std": None, "pad": pad},
    )


# -- ready models --------------------------------------------------------------------------


def _torchvision(purpose: str) -> Any:
    """torchvision, or an error that explains the torch/torchvision pairing when the
    installed pair does not match (torchvision then fails to load its operators)."""
    try:
        return require("torchvision", "vision", purpose=purpose)
    except RuntimeError as err:  # e.g. "operator torchvision::nms does not exist"
        import torch

        raise MissingDependencyError(
            f"torchvision does not load beside torch {torch.__version__} ({err}); each torchvision "
            "release is built for one torch release. Install a matching pair, e.g. "
            "pip install torch==2.14.1 torchvision==0.29.1"
        ) from err


def resnet50_classifier(
    *, masked: bool = False, features: bool = False, pad: PadMode = "mean", num_classes: int = 1000
) -> tuple[Any, ModelSpec]:
    """torchvision ResNet-50 with random weights (``weights=None``) and its spec.

    Global average pooling sees the padding, so padded logits drift from unpadded ones
    (``check_parity`` reports by how much). ``masked=True`` pools over the feature cells
    that hold real pixels instead, fed by the spec's ``mask`` input. ``features=True``
    also returns the stride-32 feature map, cropped to the real image.
    """
    torch = require("torch", "vision", purpose="the ResNet-50 model")
    tv = _torchvision("the ResNet-50 model")
    F = torch.nn.functional
    net = tv.models.resnet50(weights=None, num_classes=num_classes).eval()

    class ResNet50(torch.nn.Module):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def trunk(self, image):  # type: ignore[no-untyped-def]
            n = self.net
            x = n.maxpool(n.relu(n.bn1(n.conv1(image))))
            return n.layer4(n.layer3(n.layer2(n.layer1(x))))

        def forward(self, image, mask=None):  # type: ignore[no-untyped-def]
            feats = self.trunk(image)
            if mask is None:
                pooled = feats.mean(dim=(2, 3))
            else:
                # A feature cell counts when its 32x32 block holds a real pixel: the cells
                # an unpadded run would have, ceil(real / 32) per side.
                cells = F.max_pool2d(mask, kernel_size=32, stride=32, ceil_mode=True)
                pooled = (feats * cells).sum(dim=(2, 3)) / cells.sum(dim=(2, 3)).clamp(min=1.0)
            logits = self.net.fc(pooled)
            return (logits, feats) if features else logits

    spec = classifier_spec(pad=pad, masked=masked, features_stride=32 if features else None)
    return ResNet50().eval(), spec


def fasterrcnn_detector(*, score_threshold: float = 0.05, pad: PadMode = "mean", min_inside: float = 0.5) -> tuple[Any, ModelSpec]:
    """torchvision Faster R-CNN with a MobileNetV3-Large FPN backbone, random weights, and
    its spec. The detector's own resize is turned off, so it runs at the bucket's shape
    (it still normalises); boxes come back in the padded image's pixels and the spec's
    hook drops those that lie mostly in the padding."""
    tv = _torchvision("the Faster R-CNN detector")
    det = tv.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, box_score_thresh=score_threshold
    ).eval()
    return detector_module(det), detector_spec(pad=pad, min_inside=min_inside)


def detector_module(det: Any) -> Any:
    """A torchvision detector (Faster R-CNN, RetinaNet, FCOS ...) as a module taking one
    ``image`` and returning ``(n, 6)`` detections: x1, y1, x2, y2, score, label. Its own
    resize is turned off, so it runs at the bucket's shape (it still normalises) and boxes
    come back in the padded image's pixels."""
    torch = require("torch", "vision", purpose="the detector")
    # A static-shape compiler needs the bucket's shape as is: no resizing inside.
    det.transform.resize = lambda image, target=None: (image, target)

    class Detector(torch.nn.Module):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.det = det

        def forward(self, image):  # type: ignore[no-untyped-def]
            out = self.det([image])[0]
            return torch.cat([out["boxes"], out["scores"][:, None], out["labels"][:, None].to(out["boxes"].dtype)], 1)

    return Detector().eval()


def seed_plan(*, batch: Sequence[int] | None = (1,)) -> Plan:
    """The seed's buckets for images from 400x400 to 800x800: squares of 500, 600, 700, 800."""
    sides = (500, 600, 700, 800)
    buckets = [Bucket({"height": s, "width": s, **({"batch": b} if b else {})}) for s in sides for b in (list(batch) if batch else [None])]
    return Plan(tuple(buckets))


# -- running on images ---------------------------------------------------------------------


def fit_size(height: int, width: int, max_height: int, max_width: int) -> tuple[int, int]:
    """The largest ``(height, width)`` with the same aspect ratio that fits the bounds
    (the size itself when it fits already)."""
    if height <= max_height and width <= max_width:
        return height, width
    scale = min(max_height / height, max_width / width)
    return max(1, min(max_height, math.floor(height * scale + 1e-9))), max(1, min(max_width, math.floor(width * scale + 1e-9)))


def _resize_chw(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    Image = require("PIL.Image", "vision", purpose="resizing images")
    out = np.empty((arr.shape[0], height, width), np.float32)
    for c in range(arr.shape[0]):
        out[c] = np.asarray(Image.fromarray(arr[c].astype(np.float32), mode="F").resize((width, height), Image.BILINEAR))
    return out


class ImageModel:
    """Images in, outputs out, through a bucketed model of an image spec.

    Reads PIL images, NumPy HWC arrays and torch CHW tensors, normalises them as the
    spec's meta says, builds the mask input where the spec has one, and runs them one
    call per image (a list runs image by image). With ``resize=True`` an image larger
    than the largest bucket is shrunk to fit, keeping its aspect ratio; detections and
    dense outputs are then mapped back to the image's own pixels, and each resize is
    counted in ``model.stats.overflow["resize"]``.
    """

    def __init__(self, model: Any, *, resize: bool = False) -> None:
        spec = model.spec
        if "height" not in spec.dims or "width" not in spec.dims:
            raise SpecError(f"ImageModel needs a spec with 'height' and 'width' dims, got {spec.dims}")
        self.model = model
        self.resize = resize
        self.mean = spec.meta.get("mean")
        self.std = spec.meta.get("std")
        self._batched = spec.inputs[0].shape[0] == "batch"
        self._masked = "mask" in spec.input_names

    @property
    def max_size(self) -> tuple[int, int]:
        limits = self.model.router.limits
        return limits["height"], limits["width"]

    def __call__(self, image: Any) -> dict[str, Any]:
        arr = to_array(image, mean=self.mean, std=self.std)
        h, w = arr.shape[1:]
        max_h, max_w = self.max_size
        fit = fit_size(h, w, max_h, max_w) if self.resize else (h, w)
        if fit != (h, w):
            arr = _resize_chw(arr, *fit)
            self.model.count_overflow("resize")
        inputs = {"image": arr[None] if self._batched else arr}
        if self._masked:
            inputs["mask"] = np.ones((1, 1) + arr.shape[1:], np.float32)
        out = self.model.run(inputs)
        if fit != (h, w):
            out = self._map_back(out, (h, w), fit)
        return out

    def run_many(self, images: Sequence[Any]) -> list[dict[str, Any]]:
        return [self(im) for im in images]

    def _map_back(self, out: dict[str, Any], size: tuple[int, int], fit: tuple[int, int]) -> dict[str, Any]:
        (h, w), (fh, fw) = size, fit
        sy, sx = h / fh, w / fw
        result = dict(out)
        for o in self.model.spec.outputs:
            value = out[o.name]
            if o.name == "detections":
                boxes = np.array(value, dtype=np.float32, copy=True)
                boxes[:, [0, 2]] *= sx
                boxes[:, [1, 3]] *= sy
                result[o.name] = boxes
            elif o.dims and "height" in o.dims.values():
                stride_h, stride_w = o.stride_of("height"), o.stride_of("width")
                arr = np.asarray(value)
                target = (math.ceil(h / stride_h), math.ceil(w / stride_w))
                lead = arr.shape[:-2]
                flat = arr.reshape((-1,) + arr.shape[-2:])
                result[o.name] = _resize_chw(flat, *target).reshape(lead + target)
        return result
