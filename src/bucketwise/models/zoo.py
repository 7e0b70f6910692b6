"""Image models by name, for the command line and for quick starts.

``load_image_model(name)`` returns ``(module, spec, kind)`` for:

- ``"resnet50"`` and ``"fasterrcnn"``: the ready models of ``bucketwise.models.vision``;
- any torchvision model name (``torchvision.models.list_models()``): classifiers
  (``"mobilenet_v3_small"``, ...) give ``logits``; detectors (``"retinanet_resnet50_fpn"``,
  ...) give filtered ``detections``; segmentation models (``"lraspp_mobilenet_v3_large"``,
  ...) give dense ``masks`` cropped to the image;
- ``"path/to/file.py:function"``: your own ``function()`` returning ``(module, spec)``.

torchvision models come with random weights (``weights=None``; nothing is downloaded),
seeded so that the same name gives the same weights, and so the same cache entries, in
every process. ``kind`` is ``"classifier"``, ``"detector"`` or ``"dense"``, read from the
spec's outputs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from .._optional import require
from ..errors import ConfigError
from ..spec import InputSpec, ModelSpec, OutputSpec
from .vision import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PadMode,
    _torchvision,
    classifier_spec,
    detector_module,
    detector_spec,
    fasterrcnn_detector,
    pad_values,
    resnet50_classifier,
)

__all__ = ["load_image_model", "model_kind", "segmentation_spec", "is_image_model_name"]

SEED = 0


def segmentation_spec(*, pad: PadMode = "mean") -> ModelSpec:
    """A segmentation model: ``image`` (batch, 3, height, width) → ``masks`` (batch,
    classes, height, width) at the input's resolution, cropped to the real image."""
    return ModelSpec(
        (InputSpec("image", ("batch", 3, "height", "width"), "float32",
                   pad_value=pad_values(pad, IMAGENET_MEAN, IMAGENET_STD), channel_axis=1),),
        (OutputSpec("masks", ("batch", None, "height", "width")),),
        meta={"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "pad": pad},
    )


def model_kind(spec: ModelSpec) -> str:
    """``"detector"``, ``"classifier"`` or ``"dense"``, from the spec's outputs."""
    names = spec.output_names
    if "detections" in names:
        return "detector"
    if "logits" in names:
        return "classifier"
    if any("height" in o.dims.values() for o in spec.outputs):
        return "dense"
    raise ConfigError(f"cannot tell what the model's outputs {list(names)} are: name them logits, "
                      "detections, or give them height/width axes")


def is_image_model_name(name: str | None) -> bool:
    """True for names :func:`load_image_model` resolves (without importing torch for a
    folder path, which is a text model)."""
    if not name:
        return False
    if name in ("resnet50", "fasterrcnn") or ".py:" in name:
        return True
    if Path(name).exists():
        return False
    try:
        tv = _torchvision("listing torchvision models")
    except Exception:  # noqa: BLE001 - no torchvision: not an image model name
        return False
    return name in tv.models.list_models()


def load_image_model(name: str, *, pad: PadMode = "mean", score_threshold: float | None = None) -> tuple[Any, ModelSpec, str]:
    """``(module, spec, kind)`` for ``name`` (see the module docstring). ``score_threshold``
    sets the box score below which Faster R-CNN detectors drop detections (default 0.05)."""
    if ".py:" in name:
        return _from_file(name)
    torch = require("torch", "vision", purpose=f"the {name} model")
    torch.manual_seed(SEED)  # random weights, the same in every process: cacheable
    if name == "resnet50":
        module, spec = resnet50_classifier(pad=pad)
        return module, spec, "classifier"
    if name == "fasterrcnn":
        module, spec = fasterrcnn_detector(pad=pad, score_threshold=0.05 if score_threshold is None else score_threshold)
        return module, spec, "detector"
    tv = _torchvision(f"the {name} model")
    if name in tv.models.list_models(module=tv.models.detection):
        options = {"box_score_thresh": score_threshold} if score_threshold is not None and "rcnn" in name else {}
        return _detector(tv, name, options), detector_spec(pad=pad), "detector"
    if name in tv.models.list_models(module=tv.models.segmentation):
        net = tv.models.get_model(name, weights=None, weights_backbone=None, aux_loss=False).eval()
        return _Wrap.make(torch, net, key="out"), segmentation_spec(pad=pad), "dense"
    if name in tv.models.list_models(module=tv.models):
        net = tv.models.get_model(name, weights=None).eval()
        return _Wrap.make(torch, net), classifier_spec(pad=pad), "classifier"
    raise ConfigError(
        f"unknown image model {name!r}: give resnet50, fasterrcnn, a torchvision model name "
        "(torchvision.models.list_models()), or path/to/file.py:function returning (module, spec)"
    )


class _Wrap:
    @staticmethod
    def make(torch: Any, net: Any, key: str | None = None) -> Any:
        class ImageNet(torch.nn.Module):  # type: ignore[name-defined,misc]
            """Takes the spec's ``image`` by keyword (torchvision's forward names it x)."""

            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, image):  # type: ignore[no-untyped-def]
                out = self.net(image)
                return out[key] if key is not None else out

        return ImageNet().eval()


def _detector(tv: Any, name: str, options: dict[str, Any]) -> Any:
    return detector_module(tv.models.get_model(name, weights=None, weights_backbone=None, **options).eval())


def _from_file(ref: str) -> tuple[Any, ModelSpec, str]:
    path, _, func = ref.rpartition(":")
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"model {ref!r}: {path!r} is not a file; give path/to/file.py:function")
    module_spec = importlib.util.spec_from_file_location(f"bucketwise_user_model_{file.stem}", file)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"model {ref!r}: cannot import {path!r} as Python")
    mod = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(mod)
    factory = getattr(mod, func, None)
    if not callable(factory):
        raise ConfigError(f"model {ref!r}: {path!r} has no function {func!r}; it must return (module, spec)")
    result = factory()
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], ModelSpec)):
        raise ConfigError(f"model {ref!r}: {func}() must return (module, ModelSpec), got {type(result).__name__}")
    module, spec = result
    return module, spec, model_kind(spec)
