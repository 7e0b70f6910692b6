"""One ONNX export per model, shared by the ONNX Runtime and OpenVINO backends.

The exported graph keeps each spec dim as a named free dimension (``batch``, ``seq``,
...), which the runtimes then fix per bucket. A path to an existing ``.onnx`` file is
accepted instead of a torch module; its inputs' varying axes are renamed to the spec's
dims so the same per-bucket fixing applies.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

from ..errors import BackendError
from ..shapes import Bucket
from ..spec import ModelSpec


def export_bucket(spec: ModelSpec, bucket: Bucket) -> Bucket:
    """The shape to export at: the bucket, with batch 1 raised to 2.

    The tracing exporter can bake a size of 1 into the graph (squeeze, broadcasts), which
    would break other batch buckets; 2 keeps the batch axis general.
    """
    sizes = bucket.as_dict()
    if sizes.get("batch") == 1:
        sizes["batch"] = 2
    return Bucket(sizes)


def to_onnx(model: Any, spec: ModelSpec, bucket: Bucket, workdir: Path, *, opset: int = 17) -> Path:
    """Export ``model`` (or take the ``.onnx`` path it is) with the spec's dims named."""
    onnx = __import__("onnx")
    out = workdir / "model.onnx"
    if isinstance(model, (str, Path)):
        src = Path(model)
        if src.suffix != ".onnx" or not src.is_file():
            raise BackendError(
                f"model {str(model)!r} is not an .onnx file; pass a torch.nn.Module or a path "
                "to an exported .onnx model"
            )
        proto = onnx.load(str(src), load_external_data=False)
        if not _name_dims(proto, spec):
            return src  # its dims already carry the spec's names (e.g. a cached export): use as is
        proto = onnx.load(str(src))
    else:
        import torch

        from ._torch import positional

        wrapper = positional(model, spec)
        example = spec.example_inputs(export_bucket(spec, bucket))
        args = tuple(torch.from_numpy(example[n]) for n in spec.input_names)
        dynamic_axes: dict[str, dict[int, str]] = {}
        for s in spec.inputs:
            dynamic_axes[s.name] = dict(s.dims)
        for o in spec.outputs:
            if o.dims:
                dynamic_axes[o.name] = dict(o.dims)
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    wrapper,
                    args,
                    str(out),
                    input_names=list(spec.input_names),
                    output_names=list(spec.output_names),
                    dynamic_axes=dynamic_axes,
                    opset_version=opset,
                    do_constant_folding=True,
                    dynamo=False,
                )
            except Exception as err:  # the exporter raises many types
                raise BackendError(f"ONNX export failed: {err}") from err
        proto = onnx.load(str(out))
    _name_dims(proto, spec)
    onnx.save(proto, str(out))
    return out


def _name_dims(proto: Any, spec: ModelSpec) -> bool:
    """Name each spec dim's axis in the graph inputs; True when anything changed."""
    changed = False
    by_name = {i.name: i for i in proto.graph.input}
    missing = [n for n in spec.input_names if n not in by_name]
    if missing:
        raise BackendError(
            f"ONNX model has inputs {list(by_name)} but the spec names {list(spec.input_names)}; "
            f"missing {missing}. Make the spec's input names match the model"
        )
    for s in spec.inputs:
        dims = by_name[s.name].type.tensor_type.shape.dim
        if len(dims) != s.rank:
            raise BackendError(
                f"ONNX input {s.name!r} has rank {len(dims)} but the spec says {s.rank} ({s.shape})"
            )
        for axis, dim in s.dims.items():
            if dims[axis].dim_param != dim:
                changed = True
            dims[axis].ClearField("dim_value")
            dims[axis].dim_param = dim
    return changed


def model_identity(model: Any) -> Any:
    """What tells one model from another for reusing an export: the path of an ``.onnx``
    file, else the object's identity."""
    return str(model) if isinstance(model, (str, Path)) else id(model)


def new_workdir(prefix: str) -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=f"bucketwise-{prefix}-")
