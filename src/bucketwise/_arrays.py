"""NumPy arrays and torch tensors behind one small set of operations.

Data stays what it is: padding a torch tensor allocates the bucket's buffer as a torch
tensor on the same device, and cropping slices it in place. torch is never imported here:
a value can only be a tensor if torch is already loaded.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from ._optional import is_torch_tensor

Kind = Literal["numpy", "torch"]

__all__ = ["Kind", "kind_of", "full", "convert", "concat", "dtype_kind"]


def kind_of(value: Any) -> Kind:
    return "torch" if is_torch_tensor(value) else "numpy"


def _torch() -> Any:
    import torch

    return torch


def torch_dtype(dtype: str | np.dtype) -> Any:
    return getattr(_torch(), np.dtype(dtype).name)


def dtype_kind(value: Any) -> str:
    """The NumPy kind letter of the value's dtype: "i", "u", "f", "b" ..."""
    if is_torch_tensor(value):
        torch = sys.modules["torch"]
        if value.dtype == torch.bool:
            return "b"
        if value.dtype.is_floating_point:
            return "f"
        if value.dtype.is_complex:
            return "c"
        return "u" if value.dtype == torch.uint8 else "i"
    return np.asarray(value).dtype.kind


def full(shape: tuple[int, ...], value: Any, dtype: str, *, like: Any = None, channel_axis: int | None = None) -> Any:
    """A new array of ``shape`` filled with ``value`` (a scalar, or one value per channel
    along ``channel_axis``), of the kind and device of ``like`` (NumPy when ``None``)."""
    if isinstance(value, tuple):
        ax = channel_axis % len(shape)  # type: ignore[operator]
        view = [1] * len(shape)
        view[ax] = len(value)
        per_channel = np.asarray(value, dtype=np.dtype(dtype)).reshape(view)
        if like is not None and is_torch_tensor(like):
            torch = _torch()
            return torch.as_tensor(per_channel, device=like.device).expand(shape).clone()
        return np.broadcast_to(per_channel, shape).copy()
    if like is not None and is_torch_tensor(like):
        torch = _torch()
        return torch.full(shape, value, dtype=torch_dtype(dtype), device=like.device)
    return np.full(shape, value, dtype=np.dtype(dtype))


def cast(value: Any, dtype: str) -> Any:
    """``value`` as ``dtype``, same kind and device; no copy when it already is."""
    if is_torch_tensor(value):
        target = torch_dtype(dtype)
        return value if value.dtype == target else value.to(target)
    return value if value.dtype == np.dtype(dtype) else value.astype(dtype)


def convert(value: Any, kind: Kind, *, device: Any = None) -> Any:
    """``value`` as a NumPy array or a torch tensor (on ``device``). Zero-copy where the
    memory allows: NumPy <-> CPU tensors share it."""
    if kind == "numpy":
        if is_torch_tensor(value):
            return value.detach().cpu().numpy()
        return value
    torch = _torch()
    if isinstance(value, torch.Tensor):
        return value if device is None or value.device == device else value.to(device)
    if isinstance(value, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(value))
        return t if device is None else t.to(device)
    return value  # not an array (e.g. a hook's list of detections): left as it is


def concat(values: Sequence[Any], axis: int) -> Any:
    if values and is_torch_tensor(values[0]):
        return _torch().cat(list(values), dim=axis)
    return np.concatenate(values, axis=axis)
