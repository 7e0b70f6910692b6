"""Padding and cropping by a spec: pure functions that keep the data's kind.

:func:`pad` writes a call's inputs once into buffers of the bucket's shape; :func:`pad_rows`
writes single rows straight into them; :func:`unpad` and :func:`crop` cut each output back
to the real size (with stride and side), and :func:`crop_row` cuts one row's outputs of a
batched run. NumPy stays NumPy; a torch tensor stays a tensor, a jax array a jax array, on
its device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import _arrays
from .errors import InputError, SpecError
from .shapes import BATCH, Bucket, Shape
from .spec import ModelSpec, OutputSpec

__all__ = ["pad", "pad_rows", "unpad", "crop", "crop_row", "stack_rows"]


def pad(spec: ModelSpec, inputs: Mapping[str, Any], bucket: Bucket) -> dict[str, Any]:
    """Pad each input up to ``bucket`` with its pad value, on its side. Pure.

    Each input is written once into a new buffer of the bucket's shape, of its own kind and
    device. Inputs already at the bucket's shape are returned as they are (no copy).
    """
    out: dict[str, Any] = {}
    for s in spec.inputs:
        arr = inputs[s.name]
        target = s.padded_shape(bucket)
        if arr.shape == target:
            out[s.name] = arr
            continue
        for axis, (have, want) in enumerate(zip(arr.shape, target)):
            if have > want:
                raise InputError(
                    f"input {s.name!r} has size {have} on axis {axis} ({s.shape[axis]!r}) but "
                    f"bucket {bucket!r} holds only {want}"
                )
        full = s._fill_array(s.pad_value, target, like=arr)
        out[s.name] = _arrays.put(full, _region(arr.shape, target, s.side, s.shape), arr)
    return out


def pad_rows(spec: ModelSpec, rows: Sequence[Mapping[str, Any]], bucket: Bucket) -> dict[str, Any]:
    """Write single rows (each input without its leading batch axis) straight into buffers
    of the bucket's shape: each row is written once, the rest is padding. Pure.

    Rows may differ in length; each fits the bucket (the router chose it).
    """
    if not rows:
        raise InputError("pad_rows: give at least one row")
    out: dict[str, Any] = {}
    for s in spec.inputs:
        if s.shape[0] != BATCH:
            raise SpecError(f"input spec {s.name!r}: batching rows needs 'batch' as the first axis, got {s.shape}")
        target = s.padded_shape(bucket)
        first = rows[0][s.name]
        full = s._fill_array(s.pad_value, target, like=first if _arrays.kind_of(first) != "numpy" else None)
        for i, r in enumerate(rows):
            a = r[s.name]
            full = _arrays.put(full, (i,) + _region(a.shape, target[1:], s.side, s.shape[1:]), a)
        out[s.name] = full
    return out


def _region(
    real: Sequence[int], padded: Sequence[int], side: str, axes: Sequence[Any]
) -> tuple[slice, ...]:
    # Pad rows of the batch always go at the end, whatever side the other dims pad on.
    return tuple(
        slice(0, r) if side == "end" or a == BATCH else slice(p - r, p)
        for r, p, a in zip(real, padded, axes)
    )


def unpad(
    spec: ModelSpec, outputs: Mapping[str, Any], shape: Shape, bucket: Bucket
) -> dict[str, Any]:
    """Strip the padding from each output: crop dim axes to the real size, or call the hook.

    ``shape`` is the real shape of the call, ``bucket`` the bucket it ran in. Pure.
    """
    result = crop(spec, outputs, shape)
    for o in spec.outputs:
        if o.hook is not None:
            result[o.name] = o.hook(outputs[o.name], shape=shape, bucket=bucket)
    return result


def crop(spec: ModelSpec, outputs: Mapping[str, Any], shape: Shape) -> dict[str, Any]:
    """Crop each output's dim axes to ``shape`` (with stride and side). Pure.

    Outputs with a hook are returned as they are: the hook is :func:`unpad`'s to call.
    """
    result: dict[str, Any] = {}
    for o in spec.outputs:
        value = outputs[o.name]
        if o.hook is not None:
            result[o.name] = value
            continue
        arr = value if isinstance(value, np.ndarray) or _arrays.kind_of(value) != "numpy" else np.asarray(value)
        if not o.dims:
            result[o.name] = arr
            continue
        if arr.ndim != len(o.shape):
            raise InputError(
                f"output {o.name!r} has rank {arr.ndim} (shape {arr.shape}) but its spec "
                f"names {len(o.shape)} axes {o.shape}; fix the OutputSpec"
            )
        result[o.name] = arr[_crop_index(spec, o, arr.shape, shape)]
    return result


def _crop_index(spec: ModelSpec, o: OutputSpec, size: Sequence[int], shape: Shape, row: int | None = None) -> tuple:
    index: list[Any] = [slice(None)] * len(size)
    for axis, dim in o.dims.items():
        if dim == BATCH and row is not None:
            index[axis] = row
            continue
        keep = min(math.ceil(shape[dim] / o.stride_of(dim)), size[axis])
        at_end = dim == BATCH or (o.side or spec.side_of(dim)) == "end"
        index[axis] = slice(0, keep) if at_end else slice(size[axis] - keep, size[axis])
    return tuple(index)


def crop_row(spec: ModelSpec, outputs: Mapping[str, Any], row: int, shape: Shape, bucket: Bucket) -> dict[str, Any]:
    """Outputs of row ``row`` of a batched run, without the batch axis, each cropped once to
    the row's own ``shape`` (its sizes, batch excluded). Hooks get the row as a batch of 1."""
    result: dict[str, Any] = {}
    for o in spec.outputs:
        value = outputs[o.name]
        if o.hook is not None:
            one = {**shape, BATCH: 1}
            result[o.name] = o.hook(value[row : row + 1], shape=one, bucket=bucket)[0]
            continue
        if BATCH not in o.dims.values():
            raise SpecError(f"output spec {o.name!r} has no 'batch' axis; batched rows need one")
        result[o.name] = value[_crop_index(spec, o, value.shape, shape, row)]
    return result


def stack_rows(spec: ModelSpec, rows: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Stack single rows (each input without its leading batch axis) into one batch.

    Rows may differ in length along their dims; each input is padded to the longest row
    with its pad value, on its side, as :func:`pad` would. Pure.
    """
    if not rows:
        raise InputError("stack_rows: give at least one row")
    out: dict[str, np.ndarray] = {}
    for s in spec.inputs:
        if s.shape[0] != BATCH:
            raise SpecError(f"input spec {s.name!r}: stacking rows needs 'batch' as the first axis, got {s.shape}")
        arrays = [np.asarray(r[s.name]) for r in rows]
        inner = tuple(max(a.shape[i] for a in arrays) for i in range(s.rank - 1))
        full = s._fill_array(s.pad_value, (len(arrays),) + inner)
        for i, a in enumerate(arrays):
            full[(i,) + _region(a.shape, inner, s.side, s.shape[1:])] = a
        out[s.name] = full
    return out
