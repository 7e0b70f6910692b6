"""The ``eager`` backend: runs the model as it is. The reference, and the test double.

Takes a ``torch.nn.Module`` (run under ``torch.inference_mode``, on torch tensors) or any
plain callable that takes NumPy arrays by keyword, which makes any function a backend for
tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from .._optional import is_torch_module
from ..errors import BackendError
from ..shapes import Bucket
from ..spec import ModelSpec


@dataclass
class EagerArtifact:
    bucket: Bucket
    model: Any
    spec: ModelSpec
    array_kind: Literal["numpy", "torch"] = "numpy"

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return run_eager(self.model, self.spec, inputs)


class EagerBackend:
    """No compilation: each bucket's artifact calls the model itself."""

    name: ClassVar[str] = "eager"
    export_format: ClassVar[str | None] = None
    parallel_compile: ClassVar[bool] = False

    def export_key(self) -> dict[str, Any]:
        return {}

    def export(self, model: Any, spec: ModelSpec, example: Bucket, folder: Path) -> Any:
        return model

    def compile(self, model: Any, spec: ModelSpec, bucket: Bucket) -> EagerArtifact:
        if not callable(model):
            raise BackendError(f"eager backend: model must be callable, got {type(model).__name__}")
        return EagerArtifact(bucket, model, spec, model_kind(model))

    def close(self) -> None:
        pass


def model_kind(model: Any) -> Literal["numpy", "torch"]:
    """What a model called eagerly takes: torch tensors for a module, else NumPy."""
    return "torch" if is_torch_module(model) else "numpy"


def run_eager(model: Any, spec: ModelSpec, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Call ``model(**inputs)`` at whatever shape the inputs have (of ``model_kind``)."""
    if is_torch_module(model):
        import torch

        from ._torch import module_device, named_outputs, on_device

        with torch.inference_mode():  # a module on a GPU gets its inputs there
            return named_outputs(model(**on_device(inputs, module_device(model))), spec.output_names)
    result = model(**inputs)
    names = spec.output_names
    if isinstance(result, Mapping):
        return {n: result[n] for n in names}
    if isinstance(result, (tuple, list)):
        return dict(zip(names, result))
    return {names[0]: result}
