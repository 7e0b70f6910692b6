"""The backend protocol, the artifact protocol and the registry.

A backend turns ``(model, spec, bucket)`` into an :class:`Artifact` that runs at exactly
that bucket's shape. The protocol declares everything the runtime calls:

- ``export_format``: ``"onnx"`` where every bucket compiles from one exported file. The
  builder then calls ``export`` once per model (cached on disk with the artifact cache,
  keyed by ``export_key()``) and hands the exported path to ``compile``. ``None`` where
  buckets compile from the model itself (``export`` is then never called).
- ``parallel_compile``: whether ``compile``/``compile_to`` may run in several threads.
- ``compile(source, spec, bucket)``: the artifact of one bucket. Backends never change the
  bucket they are given: the router chose it.

A backend whose buckets share state built in order may also define
``build_order(buckets) -> list[Bucket]``: the builder then builds in that order (the
``cuda-graphs`` backend captures its largest bucket first, whose memory pool the smaller
ones reuse).

Artifacts declare ``array_kind``: ``"numpy"``, ``"torch"`` or ``"jax"``, what ``run``
takes and returns. The runner hands each artifact its own kind, so a torch tensor on a device goes
through a torch backend without a host round trip.

Model convention: ``model(**inputs)`` takes the spec's inputs by keyword and returns one
tensor, a tuple/list in the order of the spec's outputs, or a mapping by output name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from .._optional import is_importable, require
from ..errors import BackendError, ConfigError, MissingDependencyError
from ..shapes import Bucket
from ..spec import ModelSpec

__all__ = [
    "Artifact",
    "Backend",
    "CacheableBackend",
    "register_backend",
    "get_backend",
    "backend_names",
    "is_available",
    "REQUIREMENTS",
    "named_outputs",
]


@runtime_checkable
class Artifact(Protocol):
    """One compiled model for one bucket.

    An artifact may also have a hashable ``warm_key``: artifacts with equal keys share
    their runtime state (one ONNX Runtime session for every length), and only the first of
    them is warmed up.
    """

    bucket: Bucket

    @property
    def array_kind(self) -> Literal["numpy", "torch", "jax"]: ...

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run on inputs of exactly the bucket's shape, of ``array_kind``; outputs keyed by
        output name, of the same kind."""
        ...


@runtime_checkable
class Backend(Protocol):
    """Compiles one artifact per bucket. ``close()`` frees what compile left behind."""

    name: ClassVar[str]
    export_format: ClassVar[str | None]
    parallel_compile: ClassVar[bool]

    def export_key(self) -> dict[str, Any]:
        """What tells one export from another (format, exporter versions, options)."""
        ...

    def export(self, model: Any, spec: ModelSpec, example: Bucket, folder: Path) -> Any:
        """Export ``model`` once into ``folder``, tracing at ``example``; returns what
        ``compile`` takes (a path). Called only where ``export_format`` is set."""
        ...

    def compile(self, source: Any, spec: ModelSpec, bucket: Bucket) -> Artifact: ...

    def close(self) -> None: ...


@runtime_checkable
class CacheableBackend(Backend, Protocol):
    """A backend whose artifacts can be written to disk and loaded back without the model.

    ``cache_key()`` names everything that changes the artifact: ``{"name", "version",
    "options"}``. ``compile_to`` compiles and writes the artifact's files into ``folder``;
    ``load`` rebuilds the artifact from those files alone.

    A backend whose loaded buckets share memory, such as one weights file mapped once for
    every bucket, may also define ``shared_files(folder) -> list[str]``: the names of the
    entry's files that are resident once per process however many buckets load them. The
    memory accounting then counts them once, and each bucket by what it adds.
    """

    def cache_key(self) -> dict[str, Any]: ...

    def compile_to(self, source: Any, spec: ModelSpec, bucket: Bucket, folder: Path) -> Artifact: ...

    def load(self, folder: Path, spec: ModelSpec, bucket: Bucket) -> Artifact: ...


def named_outputs(result: Any, names: Sequence[str]) -> dict[str, Any]:
    """Normalise a model's return value (tensor, sequence or mapping) to {name: value}.
    Values stay as the model returned them: tensors stay tensors, on their device."""
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
    return dict(zip(names, values))


# name -> "module:attribute" (imported lazily) or a factory registered at run time.
_REGISTRY: dict[str, str | Callable[..., Backend]] = {
    "eager": "bucketwise.backends.eager:EagerBackend",
    "onnxruntime": "bucketwise.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "bucketwise.backends.openvino:OpenVinoBackend",
    "torchscript": "bucketwise.backends.torchscript:TorchScriptBackend",
    "inductor": "bucketwise.backends.inductor:InductorBackend",
    "jax": "bucketwise.backends.jax:JaxBackend",
    "neuron": "bucketwise.backends.neuron:NeuronBackend",
    "cuda-graphs": "bucketwise.backends.cuda_graphs:CudaGraphsBackend",
}

# The optional packages each backend needs, and the extra that installs them. (The ONNX
# backends need torch only to export a torch model, and import it then: a warm start from
# the cache, or an .onnx file, never imports it.)
REQUIREMENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "eager": (),
    "onnxruntime": (("onnx", "onnx"), ("onnxruntime", "onnx")),
    "openvino": (("onnx", "openvino"), ("openvino", "openvino")),
    "torchscript": (("torch", "torch"),),
    "inductor": (("torch", "torch"),),
    "jax": (("jax", "jax"), ("jaxlib", "jax")),
    # torch-neuronx comes from AWS's pip repository (INSTALL_HINTS).
    "neuron": (("torch", "torch"), ("torch_neuronx", "neuron")),
    # A CUDA build of torch on a machine with an NVIDIA GPU (compile checks the GPU).
    "cuda-graphs": (("torch", "torch"),),
}

# How to install a backend whose packages are not on PyPI alone.
INSTALL_HINTS: dict[str, str] = {
    "neuron": "pip install 'bucketwise[neuron]' --extra-index-url https://pip.repos.neuron.amazonaws.com "
              "(on an Inf2 or Trn1/Trn2 instance, with the Neuron driver and runtime)",
}


def register_backend(name: str, factory: Callable[..., Backend], *, replace: bool = False) -> None:
    """Make ``get_backend(name, **options)`` call ``factory(**options)``.

    Refuses a name that is already registered unless ``replace=True``.
    """
    if not name or not isinstance(name, str):
        raise ConfigError(f"backend names are non-empty strings, got {name!r}")
    if not callable(factory):
        raise ConfigError(f"backend {name!r}: factory must be callable, got {type(factory).__name__}")
    if name in _REGISTRY and not replace:
        raise ConfigError(
            f"backend {name!r} is already registered; pick another name, or pass replace=True "
            "to register_backend to replace it"
        )
    _REGISTRY[name] = factory


def backend_names() -> list[str]:
    """Names of every registered backend, installed or not."""
    return list(_REGISTRY)


class BackendOptionError(ConfigError, TypeError):
    """A backend was given an option it does not have (also a ``TypeError``, as an
    unexpected keyword argument is)."""


def _factory(name: str) -> Callable[..., Backend]:
    try:
        entry = _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown backend {name!r}; known backends: {', '.join(_REGISTRY)}"
        ) from None
    if isinstance(entry, str):
        mod_name, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(mod_name), attr)
    return entry


def backend_options(name: str) -> dict[str, Any]:
    """The options ``get_backend(name, ...)`` takes, with their defaults (imports the
    backend's module, so its packages must be installed)."""
    return _options_of(_factory(name))


def _options_of(factory: Callable[..., Backend]) -> dict[str, Any]:
    import inspect

    params = inspect.signature(factory).parameters.values()
    return {p.name: (None if p.default is inspect.Parameter.empty else p.default) for p in params
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"}


def get_backend(name: str, **options: Any) -> Backend:
    """A new backend instance. Unknown options raise :class:`BackendOptionError` naming
    them and the options the backend has."""
    if name not in _REGISTRY:
        _factory(name)  # raises, naming the known backends
    for module, extra in REQUIREMENTS.get(name, ()):
        if name in INSTALL_HINTS and not is_importable(module):
            raise MissingDependencyError(f"{module} is not installed for the {name!r} backend: {INSTALL_HINTS[name]}")
        require(module, extra, purpose=f"the {name!r} backend")
    factory = _factory(name)
    if isinstance(_REGISTRY[name], str):  # a built-in backend: check option names first
        known = _options_of(factory)
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise BackendOptionError(
                f"backend {name!r} has no option {', '.join(map(repr, unknown))} (unexpected keyword); its "
                f"options are {', '.join(known) or 'none'} (bucketwise backends lists them with defaults)"
            )
    return factory(**options)


def is_available(name: str) -> bool:
    """True when every package the backend needs imports."""
    return all(is_importable(module) for module, _ in REQUIREMENTS.get(name, ()))
