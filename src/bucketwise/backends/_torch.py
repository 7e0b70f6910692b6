"""Helpers shared by the torch-based backends. Imports torch; load only from a backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..errors import BackendError
from .base import named_outputs

__all__ = ["example_args", "is_module", "module_device", "named_outputs", "on_device", "positional", "Positional"]


def is_module(model: Any) -> bool:
    return isinstance(model, torch.nn.Module)


def module_device(model: Any) -> torch.device:
    """Where a module's weights are: the device of its first parameter or buffer (CPU for a
    module that has neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def on_device(inputs: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """``inputs`` with every tensor on ``device`` (those already there are not copied):
    NumPy callers' inputs reach a module on a GPU as host tensors."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) and v.device != device else v for k, v in inputs.items()}


def example_args(spec: Any, bucket: Any, device: torch.device | None = None) -> tuple[torch.Tensor, ...]:
    """The bucket's example inputs as positional tensors, for tracing and compiling (on
    ``device``, where given)."""
    example = spec.example_inputs(bucket)
    args = tuple(torch.from_numpy(example[n]) for n in spec.input_names)
    return args if device is None else tuple(a.to(device) for a in args)


class Positional(torch.nn.Module):
    """Adapts ``model(**inputs) -> outputs`` to ``forward(*inputs) -> tuple``.

    Tracing, ONNX export and torch.compile all want positional tensors in and a flat
    tuple out; this wrapper gives them that without touching the user's module.
    """

    def __init__(self, model: torch.nn.Module, input_names: Sequence[str], output_names: Sequence[str]):
        super().__init__()
        self.model = model
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        result = self.model(**dict(zip(self.input_names, args)))
        if isinstance(result, Mapping):
            return tuple(result[n] for n in self.output_names)
        if isinstance(result, (tuple, list)):
            return tuple(result[: len(self.output_names)])
        return (result,)


def positional(model: torch.nn.Module, spec: Any) -> Positional:
    if not is_module(model):
        raise BackendError(
            f"this backend needs a torch.nn.Module, got {type(model).__name__}; "
            "use backend='eager' for plain Python callables"
        )
    return Positional(model, spec.input_names, spec.output_names).eval()
