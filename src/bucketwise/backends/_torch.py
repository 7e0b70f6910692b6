"""Helpers shared by the torch-based backends. Imports torch; load only from a backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import BackendError


def is_module(model: Any) -> bool:
    return isinstance(model, torch.nn.Module)


def to_torch(inputs: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}


def named_outputs(result: Any, names: Sequence[str]) -> dict[str, Any]:
    """Normalise a model's return value (tensor, sequence or mapping) to {name: value}."""
    if isinstance(result, Mapping):
        missing = [n for n in names if n not in result]
        if missing:
            raise BackendError(
                f"model returned outputs {list(result)} but the spec names {list(names)}; "
                f"missing {missing}. Fix the spec's output names"
            )
        values = [result[n] for n in names]
    elif isinstance(result, (tuple, list)):
        if len(result) < len(names):
            raise BackendError(
                f"model returned {len(result)} outputs but the spec names {len(names)} "
                f"({list(names)}); fix the spec's outputs"
            )
        values = list(result[: len(names)])
    else:
        if len(names) != 1:
            raise BackendError(
                f"model returned one output but the spec names {len(names)} ({list(names)})"
            )
        values = [result]
    return {n: _to_numpy(v) for n, v in zip(names, values)}


def _to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value


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


def module_nbytes(module: torch.nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total
