"""The ``torchscript`` backend: one ``torch.jit.trace`` per bucket, frozen.

Tracing at a fixed shape is the closest relative of ``torch.neuron.trace`` and
``torch_xla``'s static graphs: shape-dependent Python control flow is baked in per
bucket, which is exactly why each bucket gets its own trace. For the artifact cache
each trace is saved with ``torch.jit.save`` (weights included) and loaded without the
original module.

A cached bucket is saved unfrozen, with the weights as attributes. On a warm start the
backend loads each file, points every bucket's weights at the first bucket's tensors
(after checking they are equal), and freezes then: the buckets share one copy of the
weights, as buckets traced from one module in one process do.
"""

from __future__ import annotations

import threading
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
        # (attribute path, dtype, shape, stride, device) -> the tensor loaded first. Held
        # strongly: frozen buckets keep these very tensors as constants, so this holds no
        # more than one copy of the weights, and a weak reference to a script module's
        # tensor dies with the unfrozen module. close() lets go.
        self._shared: dict[tuple, torch.Tensor] = {}
        self._sharing = threading.Lock()  # the builder loads cached buckets in threads

    def export_key(self) -> dict[str, Any]:
        return {}

    def export(self, model: Any, spec: ModelSpec, example: Bucket, folder: Path) -> Any:
        return model

    def _trace(self, model: Any, spec: ModelSpec, bucket: Bucket) -> Any:
        wrapper = positional(model, spec)
        args = example_args(spec, bucket)
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # TracerWarnings are expected: shapes are fixed
                return torch.jit.trace(wrapper, args, check_trace=False).eval()
        except Exception as err:
            raise BackendError(f"torchscript could not trace bucket {bucket!r}: {err}") from err

    def _finish(self, traced: Any, spec: ModelSpec, bucket: Bucket) -> TorchScriptArtifact:
        if self.freeze:
            try:
                with torch.no_grad():
                    traced = torch.jit.freeze(traced)
            except Exception as err:
                raise BackendError(f"torchscript could not freeze bucket {bucket!r}: {err}") from err
        return TorchScriptArtifact(bucket, traced, spec.input_names, spec.output_names)

    def compile(self, model: Any, spec: ModelSpec, bucket: Bucket) -> TorchScriptArtifact:
        return self._finish(self._trace(model, spec, bucket), spec, bucket)

    def cache_key(self) -> dict[str, Any]:
        # "saved": entries hold the unfrozen trace (frozen ones, saved before, hold a copy
        # of the weights each and are not loaded)
        return {"name": self.name, "version": torch.__version__,
                "options": {"freeze": self.freeze, "saved": "unfrozen"}}

    def compile_to(self, model: Any, spec: ModelSpec, bucket: Bucket, folder: Path) -> TorchScriptArtifact:
        traced = self._trace(model, spec, bucket)
        torch.jit.save(traced, str(folder / "model.pt"))
        return self._finish(traced, spec, bucket)

    def load(self, folder: Path, spec: ModelSpec, bucket: Bucket) -> TorchScriptArtifact:
        try:
            module = torch.jit.load(str(folder / "model.pt"), map_location="cpu")
        except Exception as err:
            raise BackendError(f"torchscript could not load the cached trace of bucket {bucket!r}: {err}") from err
        self.share_weights(module)
        return self._finish(module, spec, bucket)

    def share_weights(self, module: Any) -> int:
        """Point ``module``'s parameters and buffers at equal tensors loaded before.

        Each cached bucket's file carries the weights; loaded as they are, every bucket
        would hold its own copy. Returns how many tensors now share an earlier copy.
        """
        shared = 0
        with self._sharing:
            for path, owner, name, tensor in _tensors(module):
                shared += self._share(path, owner, name, tensor)
        return shared

    def _share(self, path: str, owner: Any, name: str, tensor: torch.Tensor) -> int:
        key = (path, tensor.dtype, tuple(tensor.shape), tuple(tensor.stride()), tensor.device)
        earlier = self._shared.get(key)
        if earlier is None:
            self._shared[key] = tensor
        elif earlier is not tensor and torch.equal(earlier, tensor):
            setattr(owner, name, earlier)
            return 1
        return 0

    def close(self) -> None:
        with self._sharing:
            self._shared.clear()


def _tensors(module: Any) -> list[tuple[str, Any, str, torch.Tensor]]:
    """(dotted path, owning submodule, attribute name, tensor) for every parameter and buffer."""
    out = []
    for prefix, sub in module.named_modules():
        for name, tensor in [*sub.named_parameters(recurse=False), *sub.named_buffers(recurse=False)]:
            if tensor is not None:
                out.append((f"{prefix}.{name}" if prefix else name, sub, name, tensor))
    return out
