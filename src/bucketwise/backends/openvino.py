"""The ``openvino`` backend: one ONNX export, reshaped statically and compiled per bucket.

Compiled models built from one ``ov.Model`` share its constant weights, so extra buckets
cost compiled code and activations, not another copy of the weights.

For the artifact cache, ``compile_to`` writes the compiled model's blob
(``CompiledModel.export_model``) and ``load`` imports it (``Core.import_model``): no ONNX,
no reshape, no compile.

Inference runs in float32 (``INFERENCE_PRECISION_HINT``) by default: on CPUs with bf16
units OpenVINO otherwise computes in bf16, whose outputs drift from the model's by about
1e-2, beyond any parity tolerance. ``precision="bf16"`` opts in where that is acceptable.
"""

from __future__ import annotations

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
    """

    name: ClassVar[str] = "openvino"
    export_format: ClassVar[str | None] = "onnx"
    parallel_compile: ClassVar[bool] = True  # compile_model releases the GIL

    def __init__(self, *, device: str = "CPU", hint: str = "LATENCY", precision: str = "f32", opset: int = 17) -> None:
        if hint not in ("LATENCY", "THROUGHPUT"):
            raise ConfigError(f"openvino: hint must be 'LATENCY' or 'THROUGHPUT', got {hint!r}")
        if precision not in ("f32", "bf16", "f16"):
            raise ConfigError(f"openvino: precision must be 'f32', 'bf16' or 'f16', got {precision!r}")
        self.device = device
        self.hint = hint
        self.precision = precision
        self.opset = opset
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
            static = self._model.clone()
            shapes = {s.name: ov.PartialShape(list(s.padded_shape(bucket))) for s in spec.inputs}
            try:
                static.reshape(shapes)
            except Exception as err:
                raise BackendError(f"openvino could not reshape to bucket {bucket!r}: {err}") from err
            return static

    def compile(self, source: Any, spec: ModelSpec, bucket: Bucket) -> OpenVinoArtifact:
        static = self._static_model(source, spec, bucket)
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

        return {"name": self.name, "version": ov.get_version(),
                "options": {"device": self.device, "hint": self.hint, "precision": self.precision,
                            "opset": self.opset}}

    def compile_to(self, source: Any, spec: ModelSpec, bucket: Bucket, folder: Path) -> OpenVinoArtifact:
        artifact = self.compile(source, spec, bucket)
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
        with self._lock:
            self._model = None
