"""The backend protocol, the artifact protocol and the registry.

A backend turns ``(model, spec, bucket)`` into an :class:`Artifact` that runs at exactly
that bucket's shape. Backends are created per model (``get_backend(name, **options)``) so
that one-time work, such as an ONNX export, is done once and shared by every bucket.
Artifacts take and return NumPy arrays keyed by the spec's input and output names.

Model convention: ``model(**inputs)`` takes the spec's inputs by keyword and returns one
tensor, a tuple/list in the order of the spec's outputs, or a mapping by output name.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from ..errors import BackendError, MissingDependencyError
from ..shapes import Bucket
from ..spec import ModelSpec

__all__ = [
    "Artifact",
    "Backend",
    "CacheableBackend",
    "register_backend",
    "get_backend",
    "backend_names",
    "require",
]


@runtime_checkable
class Artifact(Protocol):
    """One compiled model for one bucket."""

    bucket: Bucket

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Run on inputs of exactly the bucket's shape; outputs keyed by output name."""
        ...

    @property
    def nbytes(self) -> int | None:
        """Bytes the artifact holds (weights and compiled code), where known."""
        ...


@runtime_checkable
class Backend(Protocol):
    """Compiles one artifact per bucket. ``close()`` frees what compile left behind."""

    name: ClassVar[str]

    def compile(self, model: Any, spec: ModelSpec, bucket: Bucket) -> Artifact: ...

    def close(self) -> None: ...


@runtime_checkable
class CacheableBackend(Backend, Protocol):
    """A backend whose artifacts can be written to disk and loaded back without the model.

    ``cache_key()`` names everything that changes the artifact: ``{"name", "version",
    "options"}``. ``compile_to`` compiles and writes the artifact's files into ``folder``;
    ``load`` rebuilds the artifact from those files alone. ``parallel_compile`` says whether
    ``compile_to`` may run in several threads at once (after one call has finished).
    """

    parallel_compile: ClassVar[bool]

    def cache_key(self) -> dict[str, Any]: ...

    def compile_to(self, model: Any, spec: ModelSpec, bucket: Bucket, folder: Path) -> Artifact: ...

    def load(self, folder: Path, spec: ModelSpec, bucket: Bucket) -> Artifact: ...


# name -> "module:attribute" (imported lazily) or a factory registered at run time.
_REGISTRY: dict[str, str | Callable[..., Backend]] = {
    "eager": "bucketwise.backends.eager:EagerBackend",
    "onnxruntime": "bucketwise.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "bucketwise.backends.openvino:OpenVinoBackend",
    "torchscript": "bucketwise.backends.torchscript:TorchScriptBackend",
    "inductor": "bucketwise.backends.inductor:InductorBackend",
}

# The optional packages each backend needs, and the extra that installs them.
REQUIREMENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "eager": (),
    "onnxruntime": (("torch", "onnx"), ("onnx", "onnx"), ("onnxruntime", "onnx")),
    "openvino": (("torch", "openvino"), ("onnx", "openvino"), ("openvino", "openvino")),
    "torchscript": (("torch", "torch"),),
    "inductor": (("torch", "torch"),),
}


def register_backend(name: str, factory: Callable[..., Backend]) -> None:
    """Make ``get_backend(name, **options)`` call ``factory(**options)``."""
    if not name or not isinstance(name, str):
        raise BackendError(f"backend names are non-empty strings, got {name!r}")
    _REGISTRY[name] = factory


def backend_names() -> list[str]:
    """Names of every registered backend, installed or not."""
    return list(_REGISTRY)


def get_backend(name: str, **options: Any) -> Backend:
    """A new backend instance. Unknown options raise ``TypeError`` naming them."""
    try:
        entry = _REGISTRY[name]
    except KeyError:
        raise BackendError(
            f"unknown backend {name!r}; known backends: {', '.join(_REGISTRY)}"
        ) from None
    for module, extra in REQUIREMENTS.get(name, ()):
        require(module, extra, purpose=f"the {name!r} backend")
    if isinstance(entry, str):
        mod_name, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(mod_name), attr)
    return entry(**options)


def require(module: str, extra: str, *, purpose: str | None = None) -> Any:
    """Import an optional dependency, or raise an error that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        why = f" for {purpose}" if purpose else ""
        raise MissingDependencyError(
            f"{module} is not installed{why}: pip install 'bucketwise[{extra}]'"
        ) from err


def is_torch_module(model: Any) -> bool:
    """True for a ``torch.nn.Module``; never imports torch (a module needs it loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def is_available(name: str) -> bool:
    """True when every package the backend needs imports."""
    for module, _ in REQUIREMENTS.get(name, ()):
        try:
            importlib.import_module(module)
        except ImportError:
            return False
    return True
