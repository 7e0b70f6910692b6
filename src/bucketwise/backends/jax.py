"""The ``jax`` backend: XLA through ``jax.jit``, compiled ahead of time once per bucket.

``jax.jit`` compiles once per distinct input shape, which is the TPU path and the reason
JAX users bucket. Here each bucket is lowered and compiled ahead of time
(``jax.jit(fn).lower(<ShapeDtypeStructs>).compile()``) and warmed up before any request;
nothing compiles on the request path.

The model is a :class:`JaxModel`: a function ``fn(params, **inputs)`` and its ``params``
(any pytree of arrays). The params are an argument of every bucket's executable, not
constants baked into it, so every bucket shares one copy on the device, and a cached
executable holds no weights.

For the artifact cache each bucket's entry holds:

- ``executable.bin``: the serialized executable (``jax.experimental.serialize_executable``);
- ``trees.pkl``: the pytree structures of its arguments and results, pickled (as jax's
  own docs do it; like ``torch.jit.load``, only load a cache you trust);
- ``params.bin`` and ``params.json``: the params' leaves, raw, and their dtypes and
  shapes. The bytes are the same for every bucket, so the cache stores them once, and a
  process loads them once per file (:meth:`JaxBackend.shared_files`).

Entries are keyed by the jax and jaxlib versions, the platform and the device kind.
Inputs and outputs are jax arrays on the backend's device: jax arrays that come in are
padded on their device, with no NumPy round trip. 64-bit dtypes in the spec run as
32-bit unless ``jax_enable_x64`` is on, as everywhere in jax.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import pickle
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import jax
import jaxlib
import numpy as np
from jax.experimental import serialize_executable

from .._arrays import jax_dtype
from ..errors import BackendError
from ..shapes import Bucket
from ..spec import ModelSpec
from .base import named_outputs

__all__ = ["JaxModel", "JaxBackend", "JaxArtifact", "input_structs"]

_SMALL = 1 << 20  # the artifact cache stores identical files from this size on once
_ALIGN = 64  # params.bin aligns each leaf to this many bytes


@dataclass(eq=False)
class JaxModel:
    """A JAX model for bucketwise: ``fn(params, **inputs) -> outputs``.

    Args:
        fn: a pure function of the params and the spec's inputs (by keyword) that returns
            one array, a tuple in the order of the spec's outputs, or a dict by output
            name. Shape-dependent Python (``x.shape[1]``) is fine: each bucket traces it at
            its own shape.
        params: a pytree of arrays (weights), shared by every bucket; ``None`` for a
            function without params (it is then called as ``fn(**inputs)``).
        name: shown by ``bucketwise inspect``.
        fingerprint: identifies the model for the artifact cache. By default: the
            function's module, name and source, plus the params' structure and bytes.
            Give your own where the source does not identify the computation (a closure
            over other values, a function built at run time).
    """

    fn: Callable[..., Any]
    params: Any = None
    name: str = ""
    fingerprint: str | None = None
    _jitted: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise BackendError(f"JaxModel.fn must be callable, got {type(self.fn).__name__}")

    def apply(self, params: Any, inputs: Mapping[str, Any]) -> Any:
        return self.fn(**inputs) if params is None else self.fn(params, **inputs)

    def __call__(self, **inputs: Any) -> Any:
        """The model at the inputs' exact shape (``jax.jit``: one compile per new shape).
        The reference that parity checks and ``overflow="fallback"`` use."""
        if self._jitted is None:
            self._jitted = jax.jit(self.apply)
        return self._jitted(self.params, inputs)

    def cache_fingerprint(self) -> str:
        if self.fingerprint:
            return self.fingerprint
        fn = getattr(self.fn, "func", self.fn)  # functools.partial: the function it wraps
        try:
            source = inspect.getsource(fn)
        except (OSError, TypeError) as err:
            raise BackendError(
                f"cannot fingerprint JaxModel {self.name or fn!r} for the artifact cache: its "
                f"source is not available ({err}); pass JaxModel(..., fingerprint='...')"
            ) from err
        h = hashlib.sha256(f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', '')}\n{source}".encode())
        if fn is not self.fn:  # a partial: its bound arguments are part of the computation
            h.update(repr((self.fn.args, sorted(self.fn.keywords.items()))).encode())  # type: ignore[attr-defined]
        leaves, tree = jax.tree.flatten(self.params)
        h.update(str(tree).encode())
        for leaf in leaves:
            a = np.asarray(leaf)
            h.update(f"{a.dtype}\0{a.shape}\n".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


def as_jax_model(model: Any) -> JaxModel:
    if isinstance(model, JaxModel):
        return model
    if callable(model):
        return JaxModel(model)
    raise BackendError(
        f"the jax backend takes a JaxModel(fn, params) or a function of the inputs, got "
        f"{type(model).__name__}"
    )


def input_structs(spec: ModelSpec, bucket: Bucket, *, sharding: Any = None) -> dict[str, Any]:
    """The spec's inputs at ``bucket``'s shape, as jax lowers a function for them (placed
    by ``sharding`` where given, else where jax places uncommitted arrays)."""
    return {s.name: jax.ShapeDtypeStruct(s.padded_shape(bucket), jax_dtype(s.dtype), sharding=sharding)
            for s in spec.inputs}


@dataclass
class JaxArtifact:
    bucket: Bucket
    executable: Any
    params: Any
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    array_kind: Literal["jax"] = "jax"

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return named_outputs(self.executable(self.params, {n: inputs[n] for n in self.input_names}),
                             self.output_names)


class JaxBackend:
    """Args:
        device: ``"cpu"``, ``"gpu"``, ``"tpu"`` (the first device of that platform), or
            ``None`` for jax's default device.
        compiler_options: XLA compiler options for every bucket, passed to
            ``Lowered.compile(compiler_options=...)`` (e.g. ``{"xla_cpu_...": ...}``);
            part of the cache key.
    """

    name: ClassVar[str] = "jax"
    export_format: ClassVar[str | None] = None  # each bucket lowers the function itself
    parallel_compile: ClassVar[bool] = False

    def __init__(self, *, device: str | None = None, compiler_options: Mapping[str, Any] | None = None) -> None:
        try:
            self.device = jax.devices(device)[0] if device else jax.devices()[0]
        except RuntimeError as err:
            raise BackendError(f"jax: no {device!r} device here ({err}); jax sees {jax.devices()}") from err
        self.compiler_options = dict(compiler_options or {})
        self._lock = threading.Lock()
        # a JaxModel (hashed by identity) or the key of a params.bin -> its params on the device
        self._params: dict[Any, Any] = {}

    def export_key(self) -> dict[str, Any]:
        return {}

    def export(self, model: Any, spec: ModelSpec, example: Bucket, folder: Path) -> Any:
        return model

    # -- compile ----------------------------------------------------------------------------

    def _device_params(self, model: JaxModel) -> Any:
        with self._lock:
            if model not in self._params:
                self._params[model] = None if model.params is None else jax.device_put(model.params, self.device)
            return self._params[model]

    def _executable(self, model: JaxModel, spec: ModelSpec, bucket: Bucket) -> Any:
        """Lower and compile ``bucket`` for the backend's device (not jax's default one,
        which differs where ``device`` names another platform); the params enter as
        shapes only (no copy)."""
        on = jax.sharding.SingleDeviceSharding(self.device)
        # An array's own dtype: np.result_type of a jax array is a deprecated implicit conversion.
        shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jax_dtype(x.dtype if hasattr(x, "dtype") else np.result_type(x)),
                                                             sharding=on), model.params)
        inputs = input_structs(spec, bucket, sharding=on)
        try:
            return jax.jit(model.apply).lower(shapes, inputs).compile(self.compiler_options or None)
        except Exception as err:
            raise BackendError(f"jax could not compile bucket {bucket!r}: {type(err).__name__}: {err}") from err

    def compile(self, model: Any, spec: ModelSpec, bucket: Bucket) -> JaxArtifact:
        model = as_jax_model(model)
        executable = self._executable(model, spec, bucket)
        return JaxArtifact(bucket, executable, self._device_params(model), spec.input_names, spec.output_names)

    # -- cache ------------------------------------------------------------------------------

    def cache_key(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": f"jax {jax.__version__}, jaxlib {jaxlib.__version__}",
            "options": {"platform": self.device.platform, "device_kind": self.device.device_kind,
                        "compiler_options": self.compiler_options},
        }

    def compile_to(self, model: Any, spec: ModelSpec, bucket: Bucket, folder: Path) -> JaxArtifact:
        model = as_jax_model(model)
        executable = self._executable(model, spec, bucket)
        payload, in_tree, out_tree = serialize_executable.serialize(executable)
        (folder / "executable.bin").write_bytes(payload)
        leaves, params_tree = jax.tree.flatten(model.params)
        (folder / "trees.pkl").write_bytes(pickle.dumps((in_tree, out_tree, params_tree)))
        index = []
        with open(folder / "params.bin", "wb") as f:
            for leaf in leaves:
                a = np.ascontiguousarray(np.asarray(leaf))
                f.write(b"\0" * (-f.tell() % _ALIGN))  # aligned: the CPU device can use the mapped bytes
                index.append({"dtype": a.dtype.str, "shape": list(a.shape), "offset": f.tell()})
                f.write(a.tobytes())
        (folder / "params.json").write_text(json.dumps(index))
        # The bucket runs on the params as a warm start has them: the cached file, mapped.
        params = self._load_params(folder, params_tree)
        return JaxArtifact(bucket, executable, params, spec.input_names, spec.output_names)

    def load(self, folder: Path, spec: ModelSpec, bucket: Bucket) -> JaxArtifact:
        try:
            in_tree, out_tree, params_tree = pickle.loads((folder / "trees.pkl").read_bytes())
            params = self._load_params(folder, params_tree)
            executable = serialize_executable.deserialize_and_load(
                (folder / "executable.bin").read_bytes(), in_tree, out_tree, execution_devices=[self.device])
        except Exception as err:
            raise BackendError(f"jax could not load the cached executable of bucket {bucket!r}: "
                               f"{type(err).__name__}: {err}") from err
        return JaxArtifact(bucket, executable, params, spec.input_names, spec.output_names)

    def _load_params(self, folder: Path, tree: Any) -> Any:
        """The params in ``folder``, read and put on the device once per file: per inode,
        since the cache hard-links one copy of a large file into every bucket's entry,
        and by content below the cache's 1 MiB de-duplication threshold."""
        st = os.stat(folder / "params.bin")
        if st.st_size < _SMALL:
            key: tuple = ("sha256", hashlib.sha256((folder / "params.bin").read_bytes()).hexdigest())
        else:
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if key not in self._params:
                index = json.loads((folder / "params.json").read_text())
                raw = np.memmap(folder / "params.bin", mode="r") if st.st_size else np.zeros(0, np.uint8)
                leaves = []
                for item in index:
                    dtype = np.dtype(item["dtype"])
                    count = int(np.prod(item["shape"], dtype=np.int64))
                    start = item["offset"]
                    data = raw[start:start + count * dtype.itemsize].view(dtype).reshape(item["shape"])
                    # On a CPU device jax uses the mapped, aligned bytes as they are (no
                    # copy: the page cache holds the weights once, even across processes);
                    # elsewhere it copies them to the device. Cache files never change in
                    # place, so the mapping stays valid.
                    leaves.append(jax.device_put(data, self.device))
                self._params[key] = jax.tree.unflatten(tree, leaves)
            return self._params[key]

    def shared_files(self, folder: Path) -> list[str]:
        return ["params.bin"]

    def close(self) -> None:
        with self._lock:
            self._params.clear()
