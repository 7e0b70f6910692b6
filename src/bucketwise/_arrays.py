"""NumPy arrays, torch tensors and jax arrays behind one small set of operations.

Data stays what it is: padding a torch tensor allocates the bucket's buffer as a torch
tensor on the same device, and cropping slices it in place; a jax array is padded into a
new jax array on its device (jax arrays are immutable: :func:`put` returns the result).
Neither torch nor jax is imported here: a value can only be a tensor (an array) if its
framework is already loaded.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from ._optional import is_jax_array, is_torch_tensor

Kind = Literal["numpy", "torch", "jax"]

__all__ = ["Kind", "kind_of", "full", "put", "convert", "concat", "dtype_kind"]


def kind_of(value: Any) -> Kind:
    if is_torch_tensor(value):
        return "torch"
    return "jax" if is_jax_array(value) else "numpy"


def _jnp() -> Any:
    import jax.numpy as jnp

    return jnp


def jax_dtype(dtype: str | np.dtype) -> Any:
    """``dtype`` as jax holds it: 64-bit types become 32-bit unless jax_enable_x64 is on."""
    import jax

    return jax.dtypes.canonicalize_dtype(np.dtype(dtype))


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
    if is_jax_array(value):
        return np.dtype(value.dtype).kind  # never copies the array to the host
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
        if like is not None and is_jax_array(like):
            return _jnp().broadcast_to(_jnp().asarray(per_channel, dtype=jax_dtype(dtype), device=like.sharding), shape)
        return np.broadcast_to(per_channel, shape).copy()
    if like is not None and is_torch_tensor(like):
        torch = _torch()
        return torch.full(shape, value, dtype=torch_dtype(dtype), device=like.device)
    if like is not None and is_jax_array(like):
        return _jnp().full(shape, value, dtype=jax_dtype(dtype), device=like.sharding)
    return np.full(shape, value, dtype=np.dtype(dtype))


def put(buffer: Any, index: tuple, value: Any) -> Any:
    """``buffer`` with ``value`` written at ``index``: in place for NumPy and torch, a new
    array for jax (``buffer.at[index].set(value)``). Use the result."""
    if is_jax_array(buffer):
        return buffer.at[index].set(value)
    buffer[index] = value
    return buffer


def cast(value: Any, dtype: str) -> Any:
    """``value`` as ``dtype``, same kind and device; no copy when it already is."""
    if is_torch_tensor(value):
        target = torch_dtype(dtype)
        return value if value.dtype == target else value.to(target)
    if is_jax_array(value):
        target = jax_dtype(dtype)
        return value if value.dtype == target else value.astype(target)
    return value if value.dtype == np.dtype(dtype) else value.astype(dtype)


def convert(value: Any, kind: Kind, *, device: Any = None) -> Any:
    """``value`` as a NumPy array, a torch tensor (on ``device``) or a jax array (on
    ``device``, a jax device or sharding). Zero-copy where the memory allows: NumPy <-> CPU
    tensors share it."""
    if kind == "numpy":
        if is_torch_tensor(value):
            return value.detach().cpu().numpy()
        if is_jax_array(value):
            return np.asarray(value)
        return value
    if kind == "jax":
        if is_jax_array(value):
            return value if device is None else _jax_put(value, device)
        if is_torch_tensor(value):
            value = value.detach().cpu().numpy()
        if isinstance(value, np.ndarray):
            return _jax_put(value, device)
        return value
    if is_jax_array(value):
        value = np.asarray(value)
    torch = _torch()
    if isinstance(value, torch.Tensor):
        return value if device is None or value.device == device else value.to(device)
    if isinstance(value, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(value))
        return t if device is None else t.to(device)
    return value  # not an array (e.g. a hook's list of detections): left as it is


def _jax_put(value: Any, device: Any) -> Any:
    import jax

    return jax.device_put(value, device)


def concat(values: Sequence[Any], axis: int) -> Any:
    if values and is_torch_tensor(values[0]):
        return _torch().cat(list(values), dim=axis)
    if values and is_jax_array(values[0]):
        return _jnp().concatenate(list(values), axis=axis)
    return np.concatenate(values, axis=axis)
