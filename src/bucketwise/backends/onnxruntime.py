"""The ``onnxruntime`` backend: one ONNX export, one session per bucket with its dims fixed.

Each session fixes the graph's free dimensions to the bucket's sizes
(``add_free_dimension_override_by_name``), so ORT plans memory and folds shapes for
exactly that shape, as a static compiler would.

For the artifact cache, ``compile_to`` also writes the session's optimised graph (weights
in ``weights.bin`` beside it, so models over 2 GB work); ``load`` opens that graph with
graph optimisations off, the offline-optimisation workflow ONNX Runtime documents.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from ..errors import BackendError
from ..shapes import Bucket
from ..spec import ModelSpec
from ._onnx import export_key, to_onnx


@dataclass
class OrtArtifact:
    bucket: Bucket
    session: Any
    output_names: tuple[str, ...]
    array_kind: Literal["numpy"] = "numpy"

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        values = self.session.run(list(self.output_names), dict(inputs))
        return dict(zip(self.output_names, values))


class OnnxRuntimeBackend:
    """ONNX Runtime on CPU (or another execution provider).

    Args:
        providers: ORT execution providers, in priority order.
        intra_op_threads: threads per session; 0 lets ORT choose.
        opset: ONNX opset of the export.
    """

    name: ClassVar[str] = "onnxruntime"
    export_format: ClassVar[str | None] = "onnx"
    parallel_compile: ClassVar[bool] = True  # session creation releases the GIL

    def __init__(
        self,
        *,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        intra_op_threads: int = 0,
        opset: int = 17,
    ) -> None:
        self.providers = tuple(providers)
        self.intra_op_threads = intra_op_threads
        self.opset = opset

    def export_key(self) -> dict[str, Any]:
        return export_key(self.opset)

    def export(self, model: Any, spec: ModelSpec, example: Bucket, folder: Path) -> Path:
        return to_onnx(model, spec, example, folder, opset=self.opset)

    def _options(self, bucket: Bucket | None, *, optimize: bool = True) -> Any:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        # Sessions used in turn (one per bucket) fight over spinning threads: ~2x slower.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.intra_op_threads:
            so.intra_op_num_threads = self.intra_op_threads
        for dim, size in bucket.sizes if bucket is not None else ():
            so.add_free_dimension_override_by_name(dim, size)
        return so

    def _open(self, path: Path, so: Any, bucket: Bucket | None) -> Any:
        import onnxruntime as ort

        try:
            return ort.InferenceSession(str(path), so, providers=list(self.providers))
        except Exception as err:
            raise BackendError(f"onnxruntime could not build bucket {bucket!r}: {err}") from err

    def session(self, source: Path | str, bucket: Bucket | None = None) -> Any:
        """An ORT session over an exported graph (see :meth:`export`), with the bucket's
        dims fixed, or free (any shape) for ``None``: the exact-shape path that
        benchmarks compare with."""
        return self._open(Path(source), self._options(bucket), bucket)

    def compile(self, source: Any, spec: ModelSpec, bucket: Bucket) -> OrtArtifact:
        return OrtArtifact(bucket, self.session(_onnx_path(source), bucket), spec.output_names)

    # -- artifact cache ---------------------------------------------------------------------

    def cache_key(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {"name": self.name, "version": ort.__version__,
                "options": {"providers": list(self.providers), "opset": self.opset}}

    def compile_to(self, source: Any, spec: ModelSpec, bucket: Bucket, folder: Path) -> OrtArtifact:
        so = self._options(bucket)
        so.optimized_model_filepath = str(folder / "model.onnx")
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "weights.bin")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        so.log_severity_level = 3  # ORT warns that the saved graph is machine-specific: the key says so
        return OrtArtifact(bucket, self._open(_onnx_path(source), so, bucket), spec.output_names)

    def load(self, folder: Path, spec: ModelSpec, bucket: Bucket) -> OrtArtifact:
        session = self._open(folder / "model.onnx", self._options(bucket, optimize=False), bucket)
        return OrtArtifact(bucket, session, spec.output_names)

    def close(self) -> None:
        pass


def _onnx_path(source: Any) -> Path:
    if not isinstance(source, (str, Path)) or not str(source).endswith(".onnx"):
        raise BackendError(
            f"compile takes the exported .onnx file, got {type(source).__name__}; call export() "
            "first (BucketedModel does this for you)"
        )
    return Path(source)
