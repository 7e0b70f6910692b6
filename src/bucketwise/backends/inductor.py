"""The ``inductor`` backend: ``torch.compile`` with static shapes, one graph per bucket.

Compilation happens in ``compile`` (by running the bucket's example once), never on the
request path. Dynamo stops recompiling after ``recompile_limit`` shapes per function (8 by
default), which would silently fall back to eager past the 8th bucket, so the limit is
raised to hold every bucket.

On a GPU (the module's weights on a CUDA device), each bucket compiles there and a call's
inputs are moved to the module's device (NumPy callers' arrive as host tensors). Two modes
matter there, set per backend and applied to every bucket:

- ``mode="reduce-overhead"``: Inductor's own CUDA graphs (CUDA graph trees), one per bucket,
  which need the static shapes that buckets give. A graph's outputs are overwritten by its
  next replay, so each call marks a new step (``torch.compiler.cudagraph_mark_step_begin``)
  and returns copies of the outputs (on the device), serialised by a lock. ``max-autotune``
  uses CUDA graphs too and is handled the same way.
- ``mode="max-autotune-no-cudagraphs"``: autotuned kernels (Triton templates for matmuls),
  launched one by one.

On CPU the modes change nothing that matters here: Inductor skips CUDA graphs off the GPU.
These paths are written to torch's documented API and **not run on a GPU yet**.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from ..errors import BackendError, ConfigError
from ..shapes import Bucket
from ..spec import ModelSpec
from ._torch import example_args, module_device, named_outputs, on_device, positional


@dataclass
class InductorArtifact:
    """``cudagraphs``: the compiled function replays Inductor's CUDA graphs, whose outputs
    the next replay overwrites (so each call starts a step and copies them out)."""

    bucket: Bucket
    fn: Any
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    cudagraphs: bool = False
    lock: Any = None
    array_kind: Literal["torch"] = "torch"

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        inputs = on_device(inputs, self.device)
        args = [inputs[n] for n in self.input_names]
        if not self.cudagraphs:
            with torch.no_grad():
                return named_outputs(self.fn(*args), self.output_names)
        with self.lock, torch.no_grad():
            torch.compiler.cudagraph_mark_step_begin()
            out = named_outputs(self.fn(*args), self.output_names)
            return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in out.items()}


MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# The modes in which Inductor captures CUDA graphs (on a CUDA device only).
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


def check_mode(mode: Any) -> str:
    """``mode`` if it is a ``torch.compile`` mode, else a :class:`ConfigError` naming it."""
    if mode not in MODES:
        raise ConfigError(
            f"inductor: mode {mode!r} is not a torch.compile mode; use one of {', '.join(map(repr, MODES))} "
            "(on a GPU: 'reduce-overhead' for Inductor's CUDA graphs per bucket, 'max-autotune-no-cudagraphs' "
            "for autotuned kernels without them), e.g. --backend-option mode=reduce-overhead"
        )
    return str(mode)


class InductorBackend:
    """Args:
        mode: the ``torch.compile`` mode every bucket compiles with (one of ``MODES``).
        recompile_limit: at least this many graphs.
    """

    name: ClassVar[str] = "inductor"
    export_format: ClassVar[str | None] = None  # each bucket compiles the module itself
    parallel_compile: ClassVar[bool] = False

    def __init__(self, *, mode: str = "default", recompile_limit: int = 64) -> None:
        self.mode = check_mode(mode)
        self.recompile_limit = recompile_limit
        self._compiled = 0
        self._lock = threading.Lock()  # CUDA graph replays: one at a time, outputs copied out

    def export_key(self) -> dict[str, Any]:
        return {}

    def export(self, model: Any, spec: ModelSpec, example: Bucket, folder: Path) -> Any:
        return model

    def _raise_limits(self) -> None:
        cfg = torch._dynamo.config
        want = max(self.recompile_limit, self._compiled + 1)
        for knob in ("recompile_limit", "cache_size_limit"):
            if hasattr(cfg, knob) and getattr(cfg, knob) < want:
                setattr(cfg, knob, want)
        for knob in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
            if hasattr(cfg, knob) and getattr(cfg, knob) < 4 * want:
                setattr(cfg, knob, 4 * want)

    def compile(self, model: Any, spec: ModelSpec, bucket: Bucket) -> InductorArtifact:
        self._raise_limits()
        wrapper = positional(model, spec)
        fn = torch.compile(wrapper, dynamic=False, mode=self.mode)
        device = module_device(wrapper)
        args = example_args(spec, bucket, device)
        try:
            with torch.no_grad():
                fn(*args)  # compiles now, not on the first request
        except Exception as err:
            raise BackendError(f"inductor could not compile bucket {bucket!r}: {err}") from err
        self._compiled += 1
        cudagraphs = self.mode in CUDAGRAPH_MODES and device.type == "cuda"
        return InductorArtifact(bucket, fn, spec.input_names, spec.output_names, device, cudagraphs, self._lock)

    def close(self) -> None:
        pass
