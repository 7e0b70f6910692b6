"""The ``neuron`` backend: AWS Inferentia2 and Trainium through ``torch_neuronx.trace``.

Written to the documented torch-neuronx API; **not run on Inferentia or Trainium
hardware** (none was available, and the Neuron SDK does not install here). Its wiring is
tested with ``torch.jit.trace`` standing in for ``torch_neuronx.trace``.

- Each bucket is traced and compiled by neuronx-cc at its own static shape:
  ``torch_neuronx.trace(module, example_inputs, compiler_args=..., compiler_workdir=...,
  inline_weights_to_neff=...)``, which returns a ``torch.jit.ScriptModule``.
- The artifact cache saves it with ``torch.jit.save`` and loads it with
  ``torch.jit.load`` (``torch_neuronx`` imported first, for its custom ops). Entries are
  keyed by the torch-neuronx and neuronx-cc versions and the compiler arguments.
- NeuronCore placement: by default the Neuron runtime places the model as its
  environment says (``NEURON_RT_VISIBLE_CORES``, ``NEURON_RT_NUM_CORES``), which the
  Neuron guide recommends for nearly all models. With ``start_nc`` (and ``nc_count``) a
  loaded bucket is placed with ``torch_neuronx.experimental.neuron_cores_context`` at
  ``torch.jit.load`` time, and a freshly traced one with
  ``torch_neuronx.experimental.set_neuron_cores`` (the beta placement API).
- Warm-up: the first run of a traced model loads its NEFF onto the NeuronCore, so the
  builder's warm-up runs (``warmup_runs``, default 1) happen before any request.
- ``inline_weights_to_neff=False`` keeps the weights out of the compiled graph (so they
  can be replaced or shared, see ``torch_neuronx.replace_weights``); the default follows
  torch-neuronx (inlined).
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..errors import BackendError, MissingDependencyError
from ..shapes import Bucket
from ..spec import ModelSpec
from ._torch import example_args, positional
from .base import INSTALL_HINTS
from .torchscript import TorchScriptArtifact

__all__ = ["NeuronBackend", "NeuronArtifact"]


def _neuronx() -> Any:
    try:
        return importlib.import_module("torch_neuronx")
    except ImportError as err:
        raise MissingDependencyError(
            f"torch_neuronx is not installed for the 'neuron' backend: {INSTALL_HINTS['neuron']}") from err


def compiler_version() -> str:
    """neuronx-cc's version, as the package says (``neuronxcc.__version__``)."""
    try:
        return str(importlib.import_module("neuronxcc").__version__)
    except (ImportError, AttributeError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("neuronx-cc")
        except PackageNotFoundError:
            return "unknown"


# A traced Neuron module runs as any TorchScript module does: positional tensors in.
NeuronArtifact = TorchScriptArtifact


class NeuronBackend:
    """Args:
        compiler_args: neuronx-cc arguments, passed through (a string or a list, e.g.
            ``["--auto-cast", "matmult", "--optlevel", "2"]``); part of the cache key.
        compiler_workdir: where neuronx-cc keeps its intermediate files (debugging).
        inline_weights_to_neff: torch-neuronx's option of that name (default True).
        start_nc, nc_count: place every bucket on NeuronCores ``start_nc`` ..
            ``start_nc + nc_count - 1`` (beta placement API); ``None`` leaves placement
            to the Neuron runtime's environment.
    """

    name: ClassVar[str] = "neuron"
    export_format: ClassVar[str | None] = None  # each bucket traces the module itself
    parallel_compile: ClassVar[bool] = False

    def __init__(self, *, compiler_args: str | Sequence[str] | None = None, compiler_workdir: str | None = None,
                 inline_weights_to_neff: bool = True, start_nc: int | None = None, nc_count: int | None = None) -> None:
        if isinstance(compiler_args, str):
            compiler_args = compiler_args.split()
        self.compiler_args = list(compiler_args or [])
        self.compiler_workdir = compiler_workdir
        self.inline_weights_to_neff = bool(inline_weights_to_neff)
        if nc_count is not None and start_nc is None:
            raise BackendError("neuron: nc_count needs start_nc (the first NeuronCore to place buckets on)")
        self.start_nc = start_nc
        self.nc_count = nc_count if nc_count is not None else (1 if start_nc is not None else None)

    def export_key(self) -> dict[str, Any]:
        return {}

    def export(self, model: Any, spec: ModelSpec, example: Bucket, folder: Path) -> Any:
        return model

    def _trace(self, model: Any, spec: ModelSpec, bucket: Bucket) -> Any:
        neuronx = _neuronx()
        wrapper = positional(model, spec)
        args = example_args(spec, bucket)
        kwargs: dict[str, Any] = {"compiler_args": self.compiler_args or None,
                                  "inline_weights_to_neff": self.inline_weights_to_neff}
        if self.compiler_workdir:
            kwargs["compiler_workdir"] = str(Path(self.compiler_workdir) / bucket.label().replace(",", "_"))
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # tracer warnings are expected: shapes are fixed
                return neuronx.trace(wrapper, args, **kwargs)
        except Exception as err:
            raise BackendError(f"neuron could not trace bucket {bucket!r}: {type(err).__name__}: {err}") from err

    def _place(self, module: Any) -> Any:
        if self.start_nc is not None:
            _neuronx().experimental.set_neuron_cores(module, self.start_nc, self.nc_count)
        return module

    @contextlib.contextmanager
    def _placement(self) -> Iterator[None]:
        if self.start_nc is None:
            yield
            return
        with _neuronx().experimental.neuron_cores_context(self.start_nc, self.nc_count):
            yield

    def compile(self, model: Any, spec: ModelSpec, bucket: Bucket) -> NeuronArtifact:
        traced = self._place(self._trace(model, spec, bucket))
        return NeuronArtifact(bucket, traced, spec.input_names, spec.output_names)

    def cache_key(self) -> dict[str, Any]:
        neuronx = _neuronx()
        return {
            "name": self.name,
            "version": f"torch-neuronx {getattr(neuronx, '__version__', 'unknown')}, neuronx-cc {compiler_version()}, "
                       f"torch {torch.__version__}",
            "options": {"compiler_args": self.compiler_args, "inline_weights_to_neff": self.inline_weights_to_neff},
        }

    def compile_to(self, model: Any, spec: ModelSpec, bucket: Bucket, folder: Path) -> NeuronArtifact:
        traced = self._trace(model, spec, bucket)
        torch.jit.save(traced, str(folder / "model.pt"))
        return NeuronArtifact(bucket, self._place(traced), spec.input_names, spec.output_names)

    def load(self, folder: Path, spec: ModelSpec, bucket: Bucket) -> NeuronArtifact:
        _neuronx()  # registers the Neuron ops the saved graph calls
        try:
            with self._placement():
                module = torch.jit.load(str(folder / "model.pt"))
        except Exception as err:
            raise BackendError(f"neuron could not load the cached trace of bucket {bucket!r}: {err}") from err
        return NeuronArtifact(bucket, module, spec.input_names, spec.output_names)

    def close(self) -> None:
        pass
