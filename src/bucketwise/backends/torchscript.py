"""The ``torchscript`` backend: one ``torch.jit.trace`` per bucket, frozen.

Tracing at a fixed shape is the closest relative of ``torch.neuron.trace`` and
``torch_xla``'s static graphs: shape-dependent Python control flow is baked in per
bucket, which is exactly why each bucket gets its own trace. For the artifact cache
each trace is saved with ``torch.jit.save`` (weights included) and loaded without the
original module.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from ..errors import BackendError
from ..shapes import Bucket
from ..spec import ModelSpec
from ._torch import example_args, named_outputs, positional


@dataclass
class TorchScriptArtifact:
    bucket: Bucket
    module: Any
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    array_kind: Literal["torch"] = "torch"

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        with torch.inference_mode():
            return named_outputs(self.module(*(inputs[n] for n in self.input_names)), self.output_names)


class TorchScriptBackend:
    """Args: freeze: run ``torch.jit.freeze`` on each trace (inlines weights, folds ops)."""

    name: ClassVar[str] = "torchscript"
    export_format: ClassVar[str | None] = None  # each bucket traces the module itself
    parallel_compile: ClassVar[bool] = False  # tracing holds the GIL

    def __init__(self, *, freeze: bool = True) -> None:
        self.freeze = freeze

    def export_key(self) -> dict[str, Any]:
        return {}

    def export(self, model: Any, spec: ModelSpec, example: Bucket, folder: Path) -> Any:
        return model

    def compile(self, model: Any, spec: ModelSpec, bucket: Bucket) -> TorchScriptArtifact:
        wrapper = positional(model, spec)
        args = example_args(spec, bucket)
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # TracerWarnings are expected: shapes are fixed
                traced = torch.jit.trace(wrapper, args, check_trace=False)
                if self.freeze:
                    traced = torch.jit.freeze(traced.eval())
        except Exception as err:
            raise BackendError(f"torchscript could not trace bucket {bucket!r}: {err}") from err
        return TorchScriptArtifact(bucket, traced, spec.input_names, spec.output_names)

    def cache_key(self) -> dict[str, Any]:
        return {"name": self.name, "version": torch.__version__, "options": {"freeze": self.freeze}}

    def compile_to(self, model: Any, spec: ModelSpec, bucket: Bucket, folder: Path) -> TorchScriptArtifact:
        artifact = self.compile(model, spec, bucket)
        torch.jit.save(artifact.module, str(folder / "model.pt"))
        return artifact

    def load(self, folder: Path, spec: ModelSpec, bucket: Bucket) -> TorchScriptArtifact:
        try:
            module = torch.jit.load(str(folder / "model.pt"), map_location="cpu")
        except Exception as err:
            raise BackendError(f"torchscript could not load the cached trace of bucket {bucket!r}: {err}") from err
        return TorchScriptArtifact(bucket, module, spec.input_names, spec.output_names)

    def close(self) -> None:
        pass
