"""The ``openvino`` backend: one ONNX export, reshaped statically and compiled per bucket.

Compiled models built from one ``ov.Model`` share its constant weights, so extra buckets
cost compiled code and activations, not another copy of the weights.

For the artifact cache, ``compile_to`` writes the compiled model's blob
(``CompiledModel.export_model``) and ``load`` imports it (``Core.import_model``): no ONNX,
no reshape, no compile.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import BackendError
from ..shapes import Bucket
from ..spec import ModelSpec
from ._onnx import model_identity, new_workdir, to_onnx


@dataclass
class OpenVinoArtifact:
    bucket: Bucket
    compiled: Any
    output_names: tuple[str, ...]
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

    @property
    def nbytes(self) -> int | None:
        return None  # weights are shared across buckets; no per-bucket figure is exposed


class OpenVinoBackend:
    """OpenVINO on CPU (or another device).

    Args:
        device: OpenVINO device name.
        hint: performance hint, ``"LATENCY"`` or ``"THROUGHPUT"``.
        opset: ONNX opset of the export.
    """

    name: ClassVar[str] = "openvino"
    parallel_compile: ClassVar[bool] = True  # compile_model releases the GIL
    exports_onnx: ClassVar[bool] = True

    def __init__(self, *, device: str = "CPU", hint: str = "LATENCY", opset: int = 17) -> None:
        if hint not in ("LATENCY", "THROUGHPUT"):
            raise BackendError(f"openvino: hint must be 'LATENCY' or 'THROUGHPUT', got {hint!r}")
        self.device = device
        self.hint = hint
        self.opset = opset
        self._workdir = new_workdir("openvino")
        self._model: Any = None
        self._model_id: Any = None
        self._core: Any = None
        self._lock = threading.Lock()

    def _static_model(self, model: Any, spec: ModelSpec, bucket: Bucket) -> Any:
        import openvino as ov

        with self._lock:  # one export and one read_model, shared by every bucket
            if self._core is None:
                self._core = ov.Core()
            if self._model is None or self._model_id != model_identity(model):
                path: Path = to_onnx(model, spec, bucket, Path(self._workdir.name), opset=self.opset)
                self._model = self._core.read_model(str(path))
                self._model_id = model_identity(model)
            static = self._model.clone()
            shapes = {s.name: ov.PartialShape(list(s.padded_shape(bucket))) for s in spec.inputs}
            try:
                static.reshape(shapes)
            except Exception as err:
                raise BackendError(f"openvino could not reshape to bucket {bucket!r}: {err}") from err
            return static

    def compile(self, model: Any, spec: ModelSpec, bucket: Bucket) -> OpenVinoArtifact:
        static = self._static_model(model, spec, bucket)
        try:
            compiled = self._core.compile_model(static, self.device, self._config())
        except Exception as err:
            raise BackendError(f"openvino could not compile bucket {bucket!r}: {err}") from err
        return OpenVinoArtifact(bucket, compiled, spec.output_names)

    def _config(self) -> dict[str, str]:
        return {"PERFORMANCE_HINT": self.hint}

    # -- artifact cache ---------------------------------------------------------------------

    def cache_key(self) -> dict[str, Any]:
        import openvino as ov

        return {"name": self.name, "version": ov.get_version(),
                "options": {"device": self.device, "hint": self.hint, "opset": self.opset}}

    def compile_to(self, model: Any, spec: ModelSpec, bucket: Bucket, folder: Path) -> OpenVinoArtifact:
        artifact = self.compile(model, spec, bucket)
        (folder / "model.blob").write_bytes(artifact.compiled.export_model().getvalue())
        return artifact

    def load(self, folder: Path, spec: ModelSpec, bucket: Bucket) -> OpenVinoArtifact:
        import openvino as ov

        with self._lock:
            if self._core is None:
                self._core = ov.Core()
        try:
            blob = (folder / "model.blob").read_bytes()
            compiled = self._core.import_model(blob, self.device, self._config())
        except Exception as err:
            raise BackendError(f"openvino could not import the cached blob of bucket {bucket!r}: {err}") from err
        return OpenVinoArtifact(bucket, compiled, spec.output_names)

    def close(self) -> None:
        self._workdir.cleanup()
