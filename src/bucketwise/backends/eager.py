"""The ``eager`` backend: runs the model as it is. The reference, and the test double.

Takes a ``torch.nn.Module`` (run under ``torch.inference_mode``) or any plain callable
that takes NumPy arrays by keyword, which makes any function a backend for tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..shapes import Bucket
from .base import is_torch_module
from ..spec import ModelSpec


@dataclass
class EagerArtifact:
    bucket: Bucket
    model: Any
    spec: ModelSpec

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return run_eager(self.model, self.spec, inputs)

    @property
    def nbytes(self) -> int | None:
        if is_torch_module(self.model):
            from ._torch import module_nbytes

            return module_nbytes(self.model)
        return None


class EagerBackend:
    """No compilation: each bucket's artifact calls the model itself."""

    name: ClassVar[str] = "eager"

    def compile(self, model: Any, spec: ModelSpec, bucket: Bucket) -> EagerArtifact:
        if not callable(model):
            from ..errors import BackendError

            raise BackendError(f"eager backend: model must be callable, got {type(model).__name__}")
        return EagerArtifact(bucket, model, spec)

    def close(self) -> None:
        pass


def run_eager(model: Any, spec: ModelSpec, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Call ``model(**inputs)`` at whatever shape the inputs have; outputs as NumPy."""
    if is_torch_module(model):
        import torch

        from ._torch import named_outputs, to_torch

        with torch.inference_mode():
            return named_outputs(model(**to_torch(inputs)), spec.output_names)
    result = model(**inputs)
    names = spec.output_names
    if isinstance(result, Mapping):
        return {n: result[n] for n in names}
    if isinstance(result, (tuple, list)):
        return dict(zip(names, result))
    return {names[0]: result}
