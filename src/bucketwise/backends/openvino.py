"""The ``openvino`` backend: one ONNX export, reshaped statically and compiled per bucket.

Compiled models built from one ``ov.Model`` share its constant weights, so extra buckets
cost compiled code and activations, not another copy of the weights.
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
from ._onnx import new_workdir, to_onnx


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

    def __init__(self, *, device: str = "CPU", hint: str = "LATENCY", opset: int = 17) -> None:
        if hint not in ("LATENCY", "THROUGHPUT"):
            raise BackendError(f"openvino: hint must be 'LATENCY' or 'THROUGHPUT', got {hint!r}")
        self.device = device
        self.hint = hint
        self.opset = opset
        self._workdir = new_workdir("openvino")
        self._model: Any = None
        self._model_id: int | None = None
        self._core: Any = None

    def compile(self, model: Any, spec: ModelSpec, bucket: Bucket) -> OpenVinoArtifact:
        import openvino as ov

        if self._core is None:
            self._core = ov.Core()
        if self._model is None or self._model_id != id(model):
            path: Path = to_onnx(model, spec, bucket, Path(self._workdir.name), opset=self.opset)
            self._model = self._core.read_model(str(path))
            self._model_id = id(model)
        static = self._model.clone()
        shapes = {s.name: ov.PartialShape(list(s.padded_shape(bucket))) for s in spec.inputs}
        try:
            static.reshape(shapes)
            compiled = self._core.compile_model(static, self.device, {"PERFORMANCE_HINT": self.hint})
        except Exception as err:
            raise BackendError(f"openvino could not compile bucket {bucket!r}: {err}") from err
        return OpenVinoArtifact(bucket, compiled, spec.output_names)

    def close(self) -> None:
        self._workdir.cleanup()
