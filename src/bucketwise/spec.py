"""What a model's inputs and outputs look like, and the pure pad/unpad functions.

An :class:`InputSpec` says which axes of an input are which dims (its ``shape`` mixes dim
names and fixed sizes, e.g. ``("batch", "seq")`` or ``("batch", 3, "height", "width")``),
the value padding uses, and the side it goes on. An :class:`OutputSpec` says which axes of
an output to crop back to the input's size (with a stride for downsampled outputs), or
names a hook for outputs that need more. :meth:`ModelSpec.validate` checks a call's inputs
against it; ``bucketwise.padding`` pads and crops by it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import numpy as np

from . import _arrays
from .errors import InputError, SpecError
from .shapes import BATCH, Bucket

__all__ = ["InputSpec", "OutputSpec", "ModelSpec", "OutputHook", "BATCH"]

PadValue = Union[int, float, Sequence[float]]
OutputHook = Callable[..., Any]
"""``hook(value, *, shape, bucket) -> value``: strips padding from one output itself.

``value`` is the raw output for the whole padded bucket (batch rows included), ``shape``
the real shape of the call, ``bucket`` the bucket that ran.
"""

_SIDES = ("end", "start")


@dataclass(frozen=True)
class InputSpec:
    """One model input.

    Args:
        name: the keyword the model takes it by.
        shape: one entry per axis: a dim name (``"batch"``, ``"seq"``, ``"height"``,
            ``"width"``) for axes that vary, or an int for axes of fixed size.
        dtype: the NumPy dtype the artifact is fed. Integer inputs accept any integer
            dtype and are cast; float inputs accept any float dtype.
        pad_value: value of padded positions: the tokenizer's pad id for input ids, 0 for
            masks, a value per channel for images (then ``channel_axis`` is required).
        side: ``"end"`` pads after the data (end of a sequence; bottom/right of an image),
            ``"start"`` before it (left padding).
        channel_axis: the axis a per-channel ``pad_value`` runs along.
        bounds: inclusive ``(low, high)`` range of allowed values, checked on each call
            (e.g. token ids must lie in ``[0, vocab_size - 1]``). ``None`` skips the check.
        example: value used to fill warm-up and tracing inputs; defaults to ``pad_value``.
            Set it where an all-padding input is degenerate (attention masks: 1).
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"
    pad_value: PadValue = 0
    side: Literal["end", "start"] = "end"
    channel_axis: int | None = None
    bounds: tuple[float, float] | None = None
    example: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))
        where = f"input spec {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"input spec: name must be a non-empty string, got {self.name!r}")
        if not self.shape:
            raise SpecError(f"{where}: shape must name at least one axis, e.g. ('batch', 'seq')")
        seen: set[str] = set()
        for entry in self.shape:
            if isinstance(entry, str):
                if entry in seen:
                    raise SpecError(f"{where}: dim {entry!r} appears on two axes of {self.shape}")
                seen.add(entry)
            elif isinstance(entry, bool) or not isinstance(entry, int) or entry < 1:
                raise SpecError(
                    f"{where}: shape entries are dim names or positive fixed sizes, got {entry!r}"
                )
        try:
            np.dtype(self.dtype)
        except TypeError as err:
            raise SpecError(f"{where}: dtype {self.dtype!r} is not a NumPy dtype") from err
        if self.side not in _SIDES:
            raise SpecError(f"{where}: side must be one of {_SIDES}, got {self.side!r}")
        if isinstance(self.pad_value, (list, tuple, np.ndarray)):
            if self.channel_axis is None:
                raise SpecError(f"{where}: a per-channel pad_value needs channel_axis")
            ax = self.channel_axis
            if not -len(self.shape) <= ax < len(self.shape) or isinstance(self.shape[ax], str):
                raise SpecError(f"{where}: channel_axis {ax} must be a fixed-size axis of {self.shape}")
            if len(self.pad_value) != self.shape[ax]:
                raise SpecError(
                    f"{where}: pad_value has {len(self.pad_value)} values but channel axis "
                    f"{ax} has {self.shape[ax]} channels"
                )
            object.__setattr__(self, "pad_value", tuple(float(v) for v in self.pad_value))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def dims(self) -> dict[int, str]:
        """Axis index -> dim name, for the axes that vary."""
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def padded_shape(self, bucket: Bucket) -> tuple[int, ...]:
        return tuple(bucket[d] if isinstance(d, str) else d for d in self.shape)

    def _fill_array(self, value: PadValue, shape: tuple[int, ...], like: Any = None) -> Any:
        return _arrays.full(shape, value, self.dtype, like=like, channel_axis=self.channel_axis)

    def example_array(self, bucket: Bucket) -> np.ndarray:
        value = self.pad_value if self.example is None else self.example
        return self._fill_array(value, self.padded_shape(bucket))


@dataclass(frozen=True)
class OutputSpec:
    """One model output, and how to strip padding from it.

    Args:
        name: the output's name.
        shape: one entry per axis: a dim name where the axis follows that dim of the input
            (it is cropped back to the input's size), ``None`` where it does not.
        stride: per dim, how much the model downsamples it: an axis of dim ``d`` keeps
            ``ceil(real / stride[d])`` positions. Ints apply to every dim.
        side: where the padding sits along cropped axes; by default the side of the
            input that carries the dim.
        hook: strips padding itself (e.g. drops detections in the padded area); called
            as ``hook(value, shape=..., bucket=...)`` on the whole raw output, instead of
            cropping.
    """

    name: str
    shape: tuple[str | None, ...] = ()
    stride: int | Mapping[str, int] = 1
    side: Literal["end", "start"] | None = None
    hook: OutputHook | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))
        where = f"output spec {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"output spec: name must be a non-empty string, got {self.name!r}")
        for entry in self.shape:
            if entry is not None and not isinstance(entry, str):
                raise SpecError(f"{where}: shape entries are dim names or None, got {entry!r}")
        if self.side is not None and self.side not in _SIDES:
            raise SpecError(f"{where}: side must be one of {_SIDES}, got {self.side!r}")
        strides = self.stride.values() if isinstance(self.stride, Mapping) else [self.stride]
        for s in strides:
            if isinstance(s, bool) or not isinstance(s, int) or s < 1:
                raise SpecError(f"{where}: stride must be a positive integer, got {s!r}")
        if self.hook is not None and not callable(self.hook):
            raise SpecError(f"{where}: hook must be callable, got {self.hook!r}")

    @property
    def dims(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if d is not None}

    def stride_of(self, dim: str) -> int:
        """Downsampling of ``dim``; the batch dim is never downsampled."""
        if dim == BATCH:
            return 1
        if isinstance(self.stride, Mapping):
            return int(self.stride.get(dim, 1))
        return int(self.stride)


@dataclass(frozen=True)
class ModelSpec:
    """The inputs a model takes and the outputs it returns, in call/return order."""

    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        if not self.inputs:
            raise SpecError("model spec: needs at least one input")
        if not self.outputs:
            raise SpecError("model spec: needs at least one output")
        for kind, items in (("input", self.inputs), ("output", self.outputs)):
            names = [s.name for s in items]
            if len(set(names)) != len(names):
                raise SpecError(f"model spec: duplicate {kind} names in {names}")
        in_dims = set(self.dims)
        for o in self.outputs:
            extra = set(o.dims.values()) - in_dims
            if extra:
                raise SpecError(
                    f"output spec {o.name!r}: dims {sorted(extra)} are not dims of any input "
                    f"({sorted(in_dims)})"
                )

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.outputs)

    @property
    def dims(self) -> tuple[str, ...]:
        """Every dim named by some input, in first-seen order."""
        out: list[str] = []
        for s in self.inputs:
            for d in s.dims.values():
                if d not in out:
                    out.append(d)
        return tuple(out)

    def side_of(self, dim: str) -> str:
        """The side the first input carrying ``dim`` pads on."""
        for s in self.inputs:
            if dim in s.dims.values():
                return s.side
        return "end"

    def example_inputs(self, bucket: Bucket) -> dict[str, np.ndarray]:
        """Inputs of the bucket's exact shape, filled with each input's example value."""
        return {s.name: s.example_array(bucket) for s in self.inputs}

    def validate(self, inputs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
        """Check ``inputs`` against the spec; return them cast to the spec's dtypes, plus
        their shape. Torch tensors stay tensors (all inputs move to the first tensor's
        device); everything else becomes NumPy. The user's edge: the runner calls it once
        per call, and never on inputs the library built itself.

        Raises :class:`InputError` naming the input, the value, what is allowed and the fix.
        """
        _check_names(self.input_names, inputs)
        arrays: dict[str, Any] = {}
        shape: dict[str, int] = {}
        first_seen: dict[str, str] = {}
        tensor = next((v for v in inputs.values() if _arrays.kind_of(v) == "torch"), None)
        for s in self.inputs:
            arr = _as_array(inputs[s.name], s.name)
            if tensor is not None:
                arr = _arrays.convert(arr, "torch", device=tensor.device)
            if arr.ndim != s.rank:
                raise InputError(
                    f"input {s.name!r} has rank {arr.ndim} (shape {tuple(arr.shape)}) but the "
                    f"spec expects rank {s.rank} with axes {s.shape}; reshape it, e.g. add the "
                    "batch axis with x[None]"
                )
            arr = _cast(arr, s)
            _check_sizes(s, arr, shape, first_seen)
            if s.bounds is not None:
                _check_bounds(s, arr)
            arrays[s.name] = arr
        return arrays, shape


def _check_names(expected: tuple[str, ...], inputs: Mapping[str, Any]) -> None:
    missing = [n for n in expected if n not in inputs]
    unknown = [n for n in inputs if n not in expected]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if unknown:
            parts.append(f"unknown {unknown}")
        raise InputError(
            f"model inputs: {'; '.join(parts)}. The model takes exactly {list(expected)}; "
            "pass each by that name"
        )


def _check_sizes(s: InputSpec, arr: Any, shape: dict[str, int], first_seen: dict[str, str]) -> None:
    """Fixed axes must match; dim axes must be non-empty and agree across inputs (recorded
    into ``shape``)."""
    for axis, entry in enumerate(s.shape):
        size = int(arr.shape[axis])
        if isinstance(entry, int):
            if size != entry:
                raise InputError(
                    f"input {s.name!r}: axis {axis} has size {size} but must be {entry} "
                    f"(spec shape {s.shape})"
                )
            continue
        if size == 0:
            raise InputError(
                f"input {s.name!r} is empty along {entry!r} (axis {axis}, shape "
                f"{tuple(arr.shape)}); every input needs at least 1 position. Drop empty "
                "items (e.g. empty texts) before the call"
            )
        if entry in shape and shape[entry] != size:
            raise InputError(
                f"input {s.name!r} has {entry}={size} but input {first_seen[entry]!r} has "
                f"{entry}={shape[entry]}; inputs that share a dim must agree on its size"
            )
        shape[entry] = size
        first_seen.setdefault(entry, s.name)


def _check_bounds(s: InputSpec, arr: Any) -> None:
    lo, hi = s.bounds  # type: ignore[misc]
    amin, amax = arr.min().item(), arr.max().item()
    if amin < lo or amax > hi:
        bad = amin if amin < lo else amax
        where = tuple(int(i) for i in np.argwhere(_arrays.convert(arr, "numpy") == bad)[0])
        raise InputError(
            f"input {s.name!r} holds {bad!r} at index {where}; allowed values are "
            f"{lo!r}..{hi!r}. Check that it was produced by the model's own tokenizer "
            "or preprocessing"
        )


def _as_array(value: Any, name: str) -> Any:
    if isinstance(value, np.ndarray) or _arrays.kind_of(value) != "numpy":
        return value  # torch tensors and jax arrays stay where they are
    if isinstance(value, (list, tuple)):
        try:
            arr = np.asarray(value)
        except ValueError as err:
            raise InputError(
                f"input {name!r} is a ragged list and cannot form an array; pad its rows to one "
                "length first (e.g. tokenizer(..., padding=True))"
            ) from err
        if arr.dtype == object:
            raise InputError(f"input {name!r} is a ragged list; pad its rows to one length first")
        return arr
    raise InputError(
        f"input {name!r} is a {type(value).__name__}; pass a NumPy array, a torch tensor or a jax array"
    )


def _cast(arr: Any, s: InputSpec) -> Any:
    target = np.dtype(s.dtype)
    kind = _arrays.dtype_kind(arr)
    if target.kind in "iu":
        if kind not in "iu":
            raise InputError(
                f"input {s.name!r} has dtype {arr.dtype} but must hold integers (fed as "
                f"{target}); token ids and masks are integers: cast with .astype('{target}') "
                "only if the values are whole numbers"
            )
    elif target.kind == "f":
        if kind != "f":
            raise InputError(
                f"input {s.name!r} has dtype {arr.dtype} but must be floating point (fed as "
                f"{target}); convert it, e.g. x.astype('float32') / 255 for uint8 images"
            )
    elif target.kind == "b" and kind != "b":
        raise InputError(f"input {s.name!r} has dtype {arr.dtype} but must be bool")
    return _arrays.cast(arr, s.dtype)
