"""The ``onnxruntime`` backend: one ONNX export, sessions with the bucket's dims fixed.

Each session fixes the graph's free dimensions to the bucket's sizes
(``add_free_dimension_override_by_name``), so ORT plans memory and folds shapes for
exactly that shape, as a static compiler would; except the dims in ``free_dims`` (by
default the sequence length, see below), which stay free.

Weights once. Each bucket's optimised graph is written to a folder (the cache entry, or a
private temporary one) with its weights split in two: ``weights.bin``, the tensors that do
not depend on the bucket, laid out exactly as in the model's one shape-free optimised graph
(so the file is byte-identical for every bucket: the cache stores it once and hard-links
it), and ``extra.bin``, the few constants folded for this bucket's shape. ``load`` opens the
graph with graph optimisations off (the offline-optimisation workflow ONNX Runtime
documents) and, with ``share_weights``, hands every session the same memory-mapped
tensors through ``SessionOptions.add_initializer``, so the weights are resident once.

Free dims. With ``free_dims=("seq",)`` (the default), sessions leave the length free:
buckets that differ only in length get the same optimised graph (optimised once), and
``load`` gives them one session (keyed by the graph's bytes). On a 2-core CPU, MiniLM ran
0.84-1.04x the time of fixed-length sessions at each of 21 buckets, and held 451 MiB
against 1,554 MiB (3 sessions instead of 21). So a fine ladder of lengths (little padding)
costs one session per batch size, not one per bucket. Bucketing still decides the padding
and the batches; ``free_dims=()`` gives every bucket its own fully static session, which
is what a static compiler sees.

What is left per session is MLAS's prepacked copy of the weights (about half the weights
for MiniLM) and the activations. ``prepack=False`` (or a set of buckets to prepack) drops
the copy where it is not worth it: measured on a 2-core CPU, unpacked buckets cost 4-18%
more per run at batch 8 and 10-85% at batch 1 (``benchmarks/bench_weights.py``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Collection, Mapping
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

    @property
    def warm_key(self) -> int:
        """Artifacts over one session warm up together (the builder warms the first)."""
        return id(self.session)

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        values = self.session.run(list(self.output_names), dict(inputs))
        return dict(zip(self.output_names, values))


class OnnxRuntimeBackend:
    """ONNX Runtime on CPU (or another execution provider).

    Args:
        providers: ORT execution providers, in priority order.
        intra_op_threads: threads per session; 0 lets ORT choose.
        opset: ONNX opset of the export.
        share_weights: every session maps the same weights (resident once).
        prepack: prepack the weights (MLAS) in every session, none, or these buckets'.
        free_dims: dims the sessions leave free; buckets that differ only in them share
            one session (see the module docstring). Default ``("seq",)``; ``()`` fixes
            every dim, one session per bucket, as a static compiler sees it.
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
        share_weights: bool = True,
        prepack: bool | Collection[Bucket] = True,
        free_dims: Collection[str] = ("seq",),
    ) -> None:
        if isinstance(free_dims, str) or not all(isinstance(d, str) and d != "batch" for d in free_dims):
            raise BackendError(f"free_dims must be a collection of dim names other than 'batch' (e.g. ['seq']), "
                               f"got {free_dims!r}")
        self.free_dims = tuple(sorted(free_dims))
        self.providers = tuple(providers)
        self.intra_op_threads = intra_op_threads
        self.opset = opset
        self.share_weights = share_weights
        if not isinstance(prepack, bool):
            prepack = frozenset(prepack)
            if not all(isinstance(b, Bucket) for b in prepack):
                raise BackendError(f"prepack must be True, False or a collection of Buckets, got {prepack!r}")
        self.prepack = prepack
        self._lock = threading.Lock()
        self._free_graphs: dict[tuple[str, int], tuple[Path, dict[str, tuple[int, int]]]] = {}
        self._mapped: dict[tuple[int, int], tuple[Any, dict[tuple[int, int, str], Any]]] = {}
        self._scratch: Path | None = None
        self._graphs: dict[tuple[str, int, tuple[tuple[str, int], ...]], Path] = {}  # optimised once per fixed dims
        self._sessions: dict[tuple[str, bool], Any] = {}  # (graph digest, prepacked) -> session
        self._session_locks: dict[Any, threading.Lock] = {}  # per graph being optimised, per session being opened

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
            if dim not in self.free_dims:
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
        """Without the cache: the bucket's graph goes to a private temporary folder (its
        weights file a hard link to the shared one), then loads as from the cache."""
        if not self.share_weights:
            return OrtArtifact(bucket, self.session(_onnx_path(source), bucket), spec.output_names)
        folder = Path(tempfile.mkdtemp(prefix=f"{bucket.label().replace(',', '-').replace('=', '')}-",
                                       dir=self._scratch_dir()))
        return self.compile_to(source, spec, bucket, folder)

    # -- artifact cache ---------------------------------------------------------------------

    def cache_key(self) -> dict[str, Any]:
        import onnxruntime as ort

        # prepack and share_weights change how an entry is opened, not what it holds.
        options: dict[str, Any] = {"providers": list(self.providers), "opset": self.opset, "layout": "split-weights"}
        if self.free_dims:
            options["free_dims"] = list(self.free_dims)
        return {"name": self.name, "version": ort.__version__, "options": options}

    def compile_to(self, source: Any, spec: ModelSpec, bucket: Bucket, folder: Path) -> OrtArtifact:
        source = _onnx_path(source)
        weights, shared = self._free_graph(source)
        # Buckets that differ only in free dims have the same graph: optimise it once.
        fixed = tuple((d, n) for d, n in bucket.sizes if d not in self.free_dims)
        key = (str(source), source.stat().st_mtime_ns, fixed)
        with self._lock:
            lock = self._session_locks.setdefault(("graph", key), threading.Lock())
        with lock:
            if key not in self._graphs:
                scratch = Path(tempfile.mkdtemp(prefix="graph-", dir=self._scratch_dir()))
                optimised = scratch / ".optimised"
                optimised.mkdir()
                _optimise(self, source, bucket, optimised)
                _split_weights(optimised / "model.onnx", optimised / "weights.bin", shared, scratch)
                shutil.rmtree(optimised)
                self._graphs[key] = scratch
        for name in ("model.onnx", "extra.bin"):
            shutil.copyfile(self._graphs[key] / name, folder / name)
        try:
            os.link(weights, folder / "weights.bin")  # one inode for every bucket: mapped once
        except OSError:
            shutil.copyfile(weights, folder / "weights.bin")
        return self.load(folder, spec, bucket)

    def load(self, folder: Path, spec: ModelSpec, bucket: Bucket) -> OrtArtifact:
        prepacked = self.prepack is True or (not isinstance(self.prepack, bool) and bucket in self.prepack)
        if not self.free_dims:
            return OrtArtifact(bucket, self._new_session(folder, bucket, prepacked), spec.output_names)
        # Buckets that differ only in free dims have byte-identical graphs: one session.
        digest = hashlib.sha256((folder / "model.onnx").read_bytes() + (folder / "extra.bin").read_bytes()).hexdigest()
        key = (digest, prepacked)
        with self._lock:
            lock = self._session_locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._sessions:
                self._sessions[key] = self._new_session(folder, bucket, prepacked)
            return OrtArtifact(bucket, self._sessions[key], spec.output_names)

    def _new_session(self, folder: Path, bucket: Bucket, prepacked: bool) -> Any:
        so = self._options(bucket, optimize=False)
        if self.share_weights:
            for name, value in self._shared_tensors(folder).items():
                so.add_initializer(name, value)
        if not prepacked:
            so.add_session_config_entry("session.disable_prepacking", "1")
        return self._open(folder / "model.onnx", so, bucket)

    def shared_files(self, folder: Path) -> list[str]:
        """With ``share_weights``, ``weights.bin``: one memory map per process, whatever
        the number of buckets (see :class:`~bucketwise.backends.base.CacheableBackend`)."""
        return ["weights.bin"] if self.share_weights and (folder / "weights.bin").exists() else []

    def close(self) -> None:
        with self._lock:
            self._sessions.clear()
            self._graphs.clear()
            self._mapped.clear()
            self._free_graphs.clear()
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
                self._scratch = None

    # -- weights once --------------------------------------------------------------------

    def _scratch_dir(self) -> Path:
        with self._lock:
            return self._scratch_dir_locked()

    def _free_graph(self, source: Path) -> tuple[Path, dict[str, tuple[int, int]]]:
        """The model's shape-free optimised graph (once per export): its weights file, and
        each weight's (offset, length) in it by the SHA-256 of its bytes."""
        key = (str(source), source.stat().st_mtime_ns)
        with self._lock:
            if key not in self._free_graphs:
                folder = Path(tempfile.mkdtemp(prefix="free-", dir=self._scratch_dir_locked()))
                _optimise(self, source, None, folder)
                self._free_graphs[key] = (folder / "weights.bin", _external_index(folder / "model.onnx",
                                                                                  folder / "weights.bin"))
            return self._free_graphs[key]

    def _scratch_dir_locked(self) -> Path:
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="bucketwise-ort-"))
            weakref.finalize(self, shutil.rmtree, str(self._scratch), True)  # also without close()
        return self._scratch

    def _shared_tensors(self, folder: Path) -> dict[str, Any]:
        """The graph's initializers that live in ``weights.bin``, as OrtValues over one
        read-only memory map per file (per inode: hard links share it)."""
        import numpy as np
        import onnx
        import onnxruntime as ort

        path = folder / "weights.bin"
        st = path.stat()
        with self._lock:
            if (st.st_dev, st.st_ino) not in self._mapped:
                self._mapped[(st.st_dev, st.st_ino)] = (np.memmap(path, dtype=np.uint8, mode="r"), {})
            mapped, values = self._mapped[(st.st_dev, st.st_ino)]
            graph = onnx.load(str(folder / "model.onnx"), load_external_data=False)
            out = {}
            for init, location, offset, length in _external(graph):
                if location != "weights.bin":
                    continue
                dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
                vkey = (offset, length, f"{np.dtype(dtype).str}{list(init.dims)}")
                if vkey not in values:
                    view = mapped[offset:offset + length].view(dtype).reshape(list(init.dims))
                    values[vkey] = ort.OrtValue.ortvalue_from_numpy(view)
                out[init.name] = values[vkey]
            return out


def _onnx_path(source: Any) -> Path:
    if not isinstance(source, (str, Path)) or not str(source).endswith(".onnx"):
        raise BackendError(
            f"compile takes the exported .onnx file, got {type(source).__name__}; call export() "
            "first (BucketedModel does this for you)"
        )
    return Path(source)


def _optimise(backend: OnnxRuntimeBackend, source: Path, bucket: Bucket | None, folder: Path) -> None:
    """Write ORT's optimised graph of ``source`` for ``bucket`` (None: shape-free) to
    ``folder/model.onnx``, every initializer of 1 KiB or more in ``folder/weights.bin``."""
    so = backend._options(bucket)
    so.optimized_model_filepath = str(folder / "model.onnx")
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "weights.bin")
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    so.log_severity_level = 3  # ORT warns that the saved graph is machine-specific: the key says so
    backend._open(source, so, bucket)


def _external(graph: Any) -> list[tuple[Any, str | None, int, int]]:
    """Each initializer whose data lives outside the graph: (initializer, file, offset, length)."""
    import onnx

    out = []
    for init in graph.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in init.external_data}
            out.append((init, info.get("location"), int(info.get("offset", 0)), int(info["length"])))
    return out


def _external_index(graph_path: Path, weights: Path) -> dict[str, tuple[int, int]]:
    import onnx

    graph = onnx.load(str(graph_path), load_external_data=False)
    blob = weights.read_bytes()
    index: dict[str, tuple[int, int]] = {}
    for _, _, offset, length in _external(graph):
        index.setdefault(hashlib.sha256(blob[offset:offset + length]).hexdigest(), (offset, length))
    return index


def _split_weights(graph_path: Path, weights: Path, shared: Mapping[str, tuple[int, int]], folder: Path) -> None:
    """Rewrite a bucket's optimised graph into ``folder``: tensors found in the shape-free
    graph's weights point into its file (``weights.bin``, by then the same bytes), the
    rest go to ``extra.bin``."""
    import onnx

    graph = onnx.load(str(graph_path), load_external_data=False)
    blob = weights.read_bytes()
    extra = bytearray()
    for init, _, offset, length in _external(graph):
        data = blob[offset:offset + length]
        found = shared.get(hashlib.sha256(data).hexdigest())
        if found is not None:
            location, (offset, length) = "weights.bin", found
        else:
            extra.extend(b"\0" * (-len(extra) % 64))  # aligned, as ORT writes its own
            location, offset, length = "extra.bin", len(extra), len(data)
            extra.extend(data)
        del init.external_data[:]
        for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
            entry = init.external_data.add()
            entry.key, entry.value = k, v
    (folder / "extra.bin").write_bytes(bytes(extra))
    onnx.save(graph, str(folder / "model.onnx"))
