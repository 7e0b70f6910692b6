"""The ``cuda-graphs`` backend: one CUDA graph per bucket, replayed over static buffers.

Written to torch's documented CUDA graph API (``torch.cuda.CUDAGraph``,
``torch.cuda.graph``, ``torch.cuda.graph_pool_handle``); **not run on a GPU yet** (none
was lent to this project). Its wiring is tested on CPU with a test double standing in for
``torch.cuda`` (``tests/cuda_double.py``) that records the ops a capture runs and replays
them, as a graph does.

At a fixed shape an encoder launches the same kernels in the same order every call; a
CUDA graph records them once and replays them as one launch, which is what a small model
at batch 1 spends most of its time on (vLLM, SGLang and TGI capture one graph per padded
batch size for the same reason). Per bucket:

- static input buffers are allocated on the device at the bucket's padded shapes and the
  spec's dtypes (:func:`buffer_layout`), filled with the spec's example inputs;
- the module runs ``warmup_runs`` times on a side stream (lazy initialisation, cuBLAS
  handles and autotuning happen there, outside the capture), then it is captured into a
  ``torch.cuda.CUDAGraph`` whose outputs are the static output buffers;
- a call checks the inputs against the layout (:func:`check_inputs`), copies them into the
  static inputs, replays, and returns a copy of the outputs, on the device (the runner
  crops them). NumPy inputs arrive as host tensors and are copied to the device by that
  copy; torch CUDA tensors never leave the device.

Memory: every bucket's graph allocates from one memory pool (``graph_pool_handle``), so
an extra bucket costs its activations' share of the pool, not another pool. The builder
builds the buckets largest first (:func:`capture_order`, the backend's ``build_order``):
the first capture sizes the pool and the smaller ones reuse what it freed. A pool shared
across graphs is safe only for memory that is dead when another graph runs, which is why
a call copies the outputs out before any other replay (a device-to-device copy, no host
trip) and why replays (and captures) of one backend's buckets are serialised by one lock.
``share_pool=False`` gives each bucket its own pool (for measuring the difference).

The module is moved to ``device`` in place (``Module.to``), as the graphs need it there.
Where CUDA is absent, ``compile`` refuses with a :class:`~bucketwise.ConfigError`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import torch

from ..errors import BackendError, ConfigError, InputError
from ..shapes import Bucket
from ..spec import ModelSpec
from ._torch import positional

__all__ = [
    "CudaGraphsBackend",
    "CudaGraphArtifact",
    "BufferLayout",
    "buffer_layout",
    "capture_order",
    "check_inputs",
    "cuda_api",
]


# -- pure bookkeeping (no device) ---------------------------------------------------------


@dataclass(frozen=True)
class BufferLayout:
    """The static input buffers of one bucket's graph: ``(name, shape, dtype)`` per input,
    in the spec's order, dtypes as NumPy names (``"int64"``, ``"float32"``)."""

    bucket: Bucket
    inputs: tuple[tuple[str, tuple[int, ...], str], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.inputs)

    @property
    def nbytes(self) -> int:
        """Bytes the static input buffers take on the device."""
        return sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for _, shape, dtype in self.inputs)


def buffer_layout(spec: ModelSpec, bucket: Bucket) -> BufferLayout:
    """What ``bucket``'s graph is captured for: each input at its padded shape and dtype."""
    return BufferLayout(bucket, tuple((s.name, tuple(s.padded_shape(bucket)), np.dtype(s.dtype).name) for s in spec.inputs))


def check_inputs(layout: BufferLayout, got: Mapping[str, tuple[tuple[int, ...], str]]) -> None:
    """Refuse inputs a replay would get wrong: ``got`` maps each input's name to its
    ``(shape, dtype name)``. A graph replays exactly what it captured, so a shape or
    dtype that differs would be read through the captured buffer's layout (or cast)."""
    missing = [n for n in layout.names if n not in got]
    extra = [n for n in got if n not in layout.names]
    if missing or extra:
        raise InputError(
            f"cuda-graphs bucket {layout.bucket.label()}: got inputs {list(got)}, but its graph was captured for "
            f"{list(layout.names)}" + (f"; missing {missing}" if missing else "") + (f"; unexpected {extra}" if extra else "")
        )
    for name, shape, dtype in layout.inputs:
        have_shape, have_dtype = got[name]
        if tuple(have_shape) != shape:
            raise InputError(
                f"cuda-graphs bucket {layout.bucket.label()}: input {name!r} has shape {tuple(have_shape)}, but the "
                f"graph was captured for {shape}; pad it to the bucket first (BucketedModel does)"
            )
        if have_dtype != dtype:
            raise InputError(
                f"cuda-graphs bucket {layout.bucket.label()}: input {name!r} has dtype {have_dtype}, but the graph "
                f"was captured for {dtype}; cast it first (BucketedModel casts to the spec's dtypes)"
            )


def capture_order(buckets: Iterable[Bucket]) -> list[Bucket]:
    """The order buckets are captured in: largest volume first (its activations size the
    shared pool, and each smaller bucket's fit in what it freed); among equal volumes the
    larger sizes dim by dim first, so the order never depends on the order given."""
    return sorted(set(buckets), key=lambda b: (-b.volume, tuple(-s for _, s in b.sizes), b.label()))


def dtype_name(tensor: Any) -> str:
    """A torch tensor's dtype as its NumPy name: ``torch.int64`` -> ``"int64"``."""
    return str(tensor.dtype).removeprefix("torch.")


# -- the CUDA API, behind a seam for the CPU tests ----------------------------------------


class CudaApi(Protocol):
    """The part of ``torch.cuda`` the backend calls. ``device_type`` is the torch device
    type it drives (``"cuda"``); a test double drives ``"cpu"``."""

    device_type: str

    def is_available(self) -> bool: ...

    def graph_pool_handle(self) -> Any: ...

    def new_graph(self) -> Any: ...

    def graph(self, graph: Any, *, pool: Any) -> contextlib.AbstractContextManager[Any]: ...

    def new_stream(self, device: torch.device) -> Any: ...

    def stream(self, stream: Any) -> contextlib.AbstractContextManager[Any]: ...

    def current_stream(self, device: torch.device) -> Any: ...

    def device_count(self) -> int: ...


class _TorchCuda:
    device_type = "cuda"

    def is_available(self) -> bool:
        return bool(torch.cuda.is_available())

    def graph_pool_handle(self) -> Any:
        return torch.cuda.graph_pool_handle()

    def new_graph(self) -> Any:
        return torch.cuda.CUDAGraph()

    def graph(self, graph: Any, *, pool: Any) -> contextlib.AbstractContextManager[Any]:
        return torch.cuda.graph(graph, pool=pool)

    def new_stream(self, device: torch.device) -> Any:
        return torch.cuda.Stream(device)

    def stream(self, stream: Any) -> contextlib.AbstractContextManager[Any]:
        return torch.cuda.stream(stream)

    def current_stream(self, device: torch.device) -> Any:
        return torch.cuda.current_stream(device)

    def device_count(self) -> int:
        return int(torch.cuda.device_count())


def cuda_api() -> CudaApi:
    """The CUDA API a new backend uses (tests replace this function with a double)."""
    return _TorchCuda()


def no_cuda_message() -> str:
    built = torch.version.cuda or "none (a CPU-only build)"
    return (
        f"the 'cuda-graphs' backend needs a CUDA GPU, but torch.cuda.is_available() is False here (torch "
        f"{torch.__version__}, built for CUDA {built}). Fix: run on a machine with an NVIDIA GPU and a CUDA build "
        "of torch, or pick another backend, such as 'inductor' or 'onnxruntime'"
    )


# -- capture and replay -------------------------------------------------------------------


def capture(module: Any, static_inputs: Sequence[torch.Tensor], *, api: CudaApi, device: torch.device, pool: Any,
            warmup_runs: int) -> tuple[Any, tuple[torch.Tensor, ...]]:
    """Warm ``module`` up on a side stream, then capture one call over ``static_inputs``.
    Returns the graph and its static outputs. Run under ``torch.inference_mode``."""
    side = api.new_stream(device)
    side.wait_stream(api.current_stream(device))
    with api.stream(side):
        for _ in range(warmup_runs):
            module(*static_inputs)
    api.current_stream(device).wait_stream(side)
    graph = api.new_graph()
    with api.graph(graph, pool=pool):
        outputs = module(*static_inputs)
    return graph, tuple(outputs)


@dataclass
class CudaGraphArtifact:
    """One bucket's graph and its static buffers. ``run`` takes and returns torch tensors;
    the outputs are copies on the device, never the graph's own buffers."""

    bucket: Bucket
    layout: BufferLayout
    graph: Any
    static_inputs: dict[str, torch.Tensor]
    static_outputs: tuple[torch.Tensor, ...]
    output_names: tuple[str, ...]
    lock: Any  # the backend's: one replay at a time over the shared pool
    array_kind: Literal["torch"] = "torch"

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        check_inputs(self.layout, {n: (tuple(v.shape), dtype_name(v)) for n, v in inputs.items()})
        with self.lock, torch.inference_mode():
            for name, buffer in self.static_inputs.items():
                buffer.copy_(inputs[name])
            self.graph.replay()
            return {n: out.clone() for n, out in zip(self.output_names, self.static_outputs)}


class CudaGraphsBackend:
    """Args:
        device: the CUDA device the module and its graphs live on (``"cuda"``, ``"cuda:1"``).
        warmup_runs: runs on a side stream before each capture (at least 1).
        share_pool: every bucket's graph allocates from one memory pool (default); False
            gives each its own (costs more memory; for measuring the difference).
    """

    name: ClassVar[str] = "cuda-graphs"
    export_format: ClassVar[str | None] = None  # each bucket captures the module itself
    parallel_compile: ClassVar[bool] = False  # captures share a pool and a lock

    def __init__(self, *, device: str = "cuda", warmup_runs: int = 3, share_pool: bool = True) -> None:
        self._api = cuda_api()
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ConfigError(f"cuda-graphs: device {device!r} is not a torch device; use 'cuda' or 'cuda:N'") from err
        if self.device.type != self._api.device_type:
            raise ConfigError(f"cuda-graphs: device {device!r} is not a CUDA device; use 'cuda' or 'cuda:N' "
                              "(for CPU, pick another backend, such as 'inductor' or 'onnxruntime')")
        if isinstance(warmup_runs, bool) or not isinstance(warmup_runs, int) or warmup_runs < 1:
            raise ConfigError(f"cuda-graphs: warmup_runs must be an integer >= 1, got {warmup_runs!r}")
        self.warmup_runs = warmup_runs
        self.share_pool = bool(share_pool)
        self._lock = threading.Lock()
        self._pool: Any = None
        self.captured: list[Bucket] = []  # buckets in the order they were captured
        self.layouts: dict[Bucket, BufferLayout] = {}  # the static input buffers of each captured bucket

    def export_key(self) -> dict[str, Any]:
        return {}

    def export(self, model: Any, spec: ModelSpec, example: Bucket, folder: Path) -> Any:
        return model

    def build_order(self, buckets: Sequence[Bucket]) -> list[Bucket]:
        """The builder builds buckets in this order: :func:`capture_order`."""
        return capture_order(buckets)

    def _check_device(self) -> None:
        if not self._api.is_available():
            raise ConfigError(no_cuda_message())
        if self.device.type == "cuda" and self.device.index is not None and self.device.index >= self._api.device_count():
            raise ConfigError(f"cuda-graphs: device {str(self.device)!r} does not exist; this machine has "
                              f"{self._api.device_count()} CUDA device(s): use 'cuda:0' .. 'cuda:{self._api.device_count() - 1}'")

    def compile(self, model: Any, spec: ModelSpec, bucket: Bucket) -> CudaGraphArtifact:
        self._check_device()
        module = positional(model, spec).to(self.device)  # moves the user's module (in place)
        layout = buffer_layout(spec, bucket)
        example = spec.example_inputs(bucket)
        with self._lock:
            if self.share_pool and self._pool is None:
                self._pool = self._api.graph_pool_handle()
            pool = self._pool if self.share_pool else self._api.graph_pool_handle()
            static = {name: torch.from_numpy(np.ascontiguousarray(example[name])).to(self.device) for name in layout.names}
            try:
                with torch.inference_mode():
                    graph, outputs = capture(module, [static[n] for n in layout.names], api=self._api, device=self.device,
                                             pool=pool, warmup_runs=self.warmup_runs)
            except Exception as err:
                raise BackendError(
                    f"cuda-graphs could not capture bucket {bucket!r}: {type(err).__name__}: {err}. A module that "
                    "syncs with the host (.item(), data-dependent shapes or branches) cannot be captured; "
                    "use backend 'inductor' or 'eager' for it") from err
            bad = [type(o).__name__ for o in outputs if not isinstance(o, torch.Tensor)]
            if bad or len(outputs) != len(spec.output_names):
                raise BackendError(f"cuda-graphs: bucket {bucket!r}'s module returned {len(outputs)} outputs "
                                   f"({bad or 'tensors'}); the spec names {len(spec.output_names)} tensors "
                                   f"{list(spec.output_names)}. Fix the spec's outputs")
            self.captured.append(bucket)
            self.layouts[bucket] = layout
        return CudaGraphArtifact(bucket, layout, graph, static, outputs, spec.output_names, self._lock)

    def close(self) -> None:
        with self._lock:
            self._pool = None
