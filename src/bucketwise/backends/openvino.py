"""The ``openvino`` backend: one ONNX export, reshaped statically and compiled per bucket.

Compiled models built from one ``ov.Model`` share its constant weights, so extra buckets
cost compiled code and activations, not another copy of the weights.

For the artifact cache there are two layouts (``layout``):

- ``"shared-ir"`` (default): each bucket's entry holds the model's shape-free OpenVINO IR
  (``model.xml`` and ``model.bin``, the same bytes for every bucket, so the cache stores
  the weights once); ``load`` reads the IR once per process (its weights memory-mapped)
  and reshapes and compiles each bucket from it, so a warm start shares the weights as a
  cold one does. OpenVINO's own weightless cache (``CACHE_MODE=OPTIMIZE_SIZE``) was
  measured here and dropped: on CPU it loaded 10 MiniLM buckets no faster than compiling
  them from the IR (2.5 s against 2.3 s), which takes about 0.2 s a bucket.
- ``"blob"``: the compiled model's blob (``CompiledModel.export_model``), imported by
  ``load`` (``Core.import_model``): no reshape, no compile, the fastest warm start, but
  every blob carries its own copy of the weights, on disk and in memory.

Inference runs in float32 (``INFERENCE_PRECISION_HINT``) by default: on CPUs with bf16
units OpenVINO otherwise computes in bf16, whose outputs drift from the model's by about
1e-2, beyond any parity tolerance. ``precision="bf16"`` opts in where that is acceptable.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from ..errors import BackendError, ConfigError
from ..shapes import Bucket
from ..spec import ModelSpec
from ._onnx import export_key, to_onnx


@dataclass
class OpenVinoArtifact:
    bucket: Bucket
    compiled: Any
    output_names: tuple[str, ...]
    array_kind: Literal["numpy"] = "numpy"
    _request: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._request = self.compiled.create_infer_request()
        self._ports = [self.compiled.output(n) for n in self.output_names]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        # An infer request is not thread-safe; one request per artifact, used in turn.
        with self._lock:
            results = self._request.infer(dict(inputs))
            return {n: np.array(results[p]) for n, p in zip(self.output_names, self._ports)}


class OpenVinoBackend:
    """OpenVINO on CPU (or another device).

    Args:
        device: OpenVINO device name.
        hint: performance hint, ``"LATENCY"`` or ``"THROUGHPUT"``.
        precision: inference precision, ``"f32"`` (default) or ``"bf16"``/``"f16"``.
        opset: ONNX opset of the export.
        layout: what a cache entry holds: ``"shared-ir"`` (default; weights once on disk
            and in memory) or ``"blob"`` (a compiled blob per bucket, weights in each).
    """

    name: ClassVar[str] = "openvino"
    export_format: ClassVar[str | None] = "onnx"
    parallel_compile: ClassVar[bool] = True  # compile_model releases the GIL

    def __init__(
        self, *, device: str = "CPU", hint: str = "LATENCY", precision: str = "f32", opset: int = 17,
        layout: str = "shared-ir",
    ) -> None:
        if layout not in ("shared-ir", "blob"):
            raise ConfigError(f"openvino: layout must be 'shared-ir' or 'blob', got {layout!r}")
        if hint not in ("LATENCY", "THROUGHPUT"):
            raise ConfigError(f"openvino: hint must be 'LATENCY' or 'THROUGHPUT', got {hint!r}")
        if precision not in ("f32", "bf16", "f16"):
            raise ConfigError(f"openvino: precision must be 'f32', 'bf16' or 'f16', got {precision!r}")
        self.device = device
        self.hint = hint
        self.precision = precision
        self.opset = opset
        self.layout = layout
        self._irs: dict[tuple[int, int], Any] = {}  # (device, inode) of a model.bin -> its ov.Model
        self._free_irs: dict[str, Path] = {}  # exported .onnx -> its shape-free IR (model.xml)
        self._scratch: Any = None
        self._model: Any = None
        self._model_path: str | None = None
        self._core: Any = None
        self._lock = threading.Lock()

    def export_key(self) -> dict[str, Any]:
        return export_key(self.opset)

    def export(self, model: Any, spec: ModelSpec, example: Bucket, folder: Path) -> Path:
        return to_onnx(model, spec, example, folder, opset=self.opset)

    def _static_model(self, source: Any, spec: ModelSpec, bucket: Bucket) -> Any:
        import openvino as ov

        with self._lock:  # one read_model per exported file, shared by every bucket
            if self._core is None:
                self._core = ov.Core()
            if self._model is None or self._model_path != str(source):
                if not str(source).endswith(".onnx"):
                    raise BackendError(
                        f"openvino compiles the exported .onnx file, got {type(source).__name__}; "
                        "call export() first (BucketedModel does this for you)"
                    )
                self._model = self._core.read_model(str(source))
                self._model_path = str(source)
            return _reshaped(self._model, spec, bucket)

    def compile(self, source: Any, spec: ModelSpec, bucket: Bucket) -> OpenVinoArtifact:
        return self._compile(self._static_model(source, spec, bucket), spec, bucket)

    def _compile(self, static: Any, spec: ModelSpec, bucket: Bucket) -> OpenVinoArtifact:
        try:
            compiled = self._core.compile_model(static, self.device, self._config())
        except Exception as err:
            raise BackendError(f"openvino could not compile bucket {bucket!r}: {err}") from err
        return OpenVinoArtifact(bucket, compiled, spec.output_names)

    def _config(self) -> dict[str, str]:
        return {"PERFORMANCE_HINT": self.hint, "INFERENCE_PRECISION_HINT": self.precision}

    # -- artifact cache ---------------------------------------------------------------------

    def cache_key(self) -> dict[str, Any]:
        import openvino as ov

        options = {"device": self.device, "hint": self.hint, "precision": self.precision, "opset": self.opset}
        if self.layout != "blob":  # entries written before the layout existed were blobs
            options["layout"] = self.layout
        return {"name": self.name, "version": ov.get_version(), "options": options}

    def compile_to(self, source: Any, spec: ModelSpec, bucket: Bucket, folder: Path) -> OpenVinoArtifact:
        if self.layout == "blob":
            artifact = self.compile(source, spec, bucket)
            (folder / "model.blob").write_bytes(artifact.compiled.export_model().getvalue())
            return artifact
        xml = self._free_ir(source)
        shutil.copyfile(xml, folder / "model.xml")
        try:
            os.link(xml.with_suffix(".bin"), folder / "model.bin")  # the same bytes for every bucket
        except OSError:
            shutil.copyfile(xml.with_suffix(".bin"), folder / "model.bin")
        return self.load(folder, spec, bucket)

    def load(self, folder: Path, spec: ModelSpec, bucket: Bucket) -> OpenVinoArtifact:
        if (folder / "model.xml").exists():
            try:
                static = _reshaped(self._read_ir(folder), spec, bucket)
            except BackendError:
                raise
            except Exception as err:
                raise BackendError(f"openvino could not read the cached IR of bucket {bucket!r}: {err}") from err
            return self._compile(static, spec, bucket)
        self._ensure_core()
        try:
            blob = (folder / "model.blob").read_bytes()
            compiled = self._core.import_model(blob, self.device, self._config())
        except Exception as err:
            raise BackendError(f"openvino could not import the cached blob of bucket {bucket!r}: {err}") from err
        return OpenVinoArtifact(bucket, compiled, spec.output_names)

    def shared_files(self, folder: Path) -> list[str]:
        """``model.bin`` of the shared-ir layout: read (memory-mapped) once per process."""
        return ["model.bin"] if (folder / "model.bin").exists() else []

    def _ensure_core(self) -> None:
        import openvino as ov

        with self._lock:
            if self._core is None:
                self._core = ov.Core()

    def _read_ir(self, folder: Path) -> Any:
        """The IR in ``folder``, read once per weights file (per inode: hard links share it)."""
        self._ensure_core()
        st = (folder / "model.bin").stat()
        with self._lock:
            if (st.st_dev, st.st_ino) not in self._irs:
                self._irs[(st.st_dev, st.st_ino)] = self._core.read_model(str(folder / "model.xml"))
            return self._irs[(st.st_dev, st.st_ino)]

    def _free_ir(self, source: Any) -> Path:
        """The export converted once to a shape-free IR (weights in float32, as exported)."""
        import openvino as ov

        self._ensure_core()
        with self._lock:
            if str(source) not in self._free_irs:
                if self._scratch is None:
                    self._scratch = tempfile.TemporaryDirectory(prefix="bucketwise-ov-")
                folder = Path(tempfile.mkdtemp(dir=self._scratch.name))
                ov.save_model(self._core.read_model(str(source)), str(folder / "model.xml"), compress_to_fp16=False)
                self._free_irs[str(source)] = folder / "model.xml"
            return self._free_irs[str(source)]

    def close(self) -> None:
        with self._lock:
            self._model = None
            self._irs.clear()
            self._free_irs.clear()
            if self._scratch is not None:
                self._scratch.cleanup()
                self._scratch = None


def _reshaped(model: Any, spec: ModelSpec, bucket: Bucket) -> Any:
    """A copy of ``model`` (sharing its weights) with the inputs fixed to ``bucket``'s shape."""
    import openvino as ov

    static = model.clone()
    shapes = {s.name: ov.PartialShape(list(s.padded_shape(bucket))) for s in spec.inputs}
    try:
        static.reshape(shapes)
    except Exception as err:
        raise BackendError(f"openvino could not reshape to bucket {bucket!r}: {err}") from err
    return static
