"""The ``inductor`` backend: ``torch.compile`` with static shapes, one graph per bucket.

Compilation happens in ``compile`` (by running the bucket's example once), never on the
request path. Dynamo stops recompiling after ``recompile_limit`` shapes per function (8 by
default), which would silently fall back to eager past the 8th bucket, so the limit is
raised to hold every bucket.
"""

from __future__ import annotations

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
class InductorArtifact:
    bucket: Bucket
    fn: Any
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    array_kind: Literal["torch"] = "torch"

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        with torch.no_grad():
            return named_outputs(self.fn(*(inputs[n] for n in self.input_names)), self.output_names)


_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class InductorBackend:
    """Args: mode: ``torch.compile`` mode. recompile_limit: at least this many graphs."""

    name: ClassVar[str] = "inductor"
    export_format: ClassVar[str | None] = None  # each bucket compiles the module itself
    parallel_compile: ClassVar[bool] = False

    def __init__(self, *, mode: str = "default", recompile_limit: int = 64) -> None:
        if mode not in _MODES:
            raise BackendError(f"inductor: mode must be one of {_MODES}, got {mode!r}")
        self.mode = mode
        self.recompile_limit = recompile_limit
        self._compiled = 0

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
        args = example_args(spec, bucket)
        try:
            with torch.no_grad():
                fn(*args)  # compiles now, not on the first request
        except Exception as err:
            raise BackendError(f"inductor could not compile bucket {bucket!r}: {err}") from err
        self._compiled += 1
        return InductorArtifact(bucket, fn, spec.input_names, spec.output_names)

    def close(self) -> None:
        pass
