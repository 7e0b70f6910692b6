"""One ONNX export per model, shared by the ONNX Runtime and OpenVINO backends.

The exported graph keeps each spec dim as a named free dimension (``batch``, ``seq``,
...), which the runtimes then fix per bucket. A path to an existing ``.onnx`` file is
accepted instead of a torch module; its inputs' varying axes are renamed to the spec's
dims so the same per-bucket fixing applies.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any

from .._optional import require
from ..errors import BackendError
from ..shapes import Bucket
from ..spec import ModelSpec

_EXPORT_LOCK = threading.Lock()


def export_key(opset: int) -> dict[str, Any]:
    """What identifies an ONNX export: the exporter's versions and the opset. Shared by
    every ONNX backend, so they share one cached export."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = None
    return {"format": "onnx", "opset": opset, "torch": torch_version, "exporter": 1}


def to_onnx(model: Any, spec: ModelSpec, example: Bucket, workdir: Path, *, opset: int = 17) -> Path:
    """Export ``model`` (or take the ``.onnx`` path it is) with the spec's dims named.

    The graph is traced at ``example`` and keeps every spec dim free. The builder picks the
    example from the plan with at least 2 rows, since a tracer can bake a batch of 1 into
    the graph (squeeze, broadcasts).
    """
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
        torch = require("torch", "onnx", purpose="exporting a torch model to ONNX")

        from ._torch import positional

        wrapper = positional(model, spec)
        inputs = spec.example_inputs(example)
        args = tuple(torch.from_numpy(inputs[n]) for n in spec.input_names)
        dynamic_axes: dict[str, dict[int, str]] = {}
        for s in spec.inputs:
            dynamic_axes[s.name] = dict(s.dims)
        for o in spec.outputs:
            if o.dims:
                dynamic_axes[o.name] = dict(o.dims)
        # One export at a time per process: torch's exporter keeps global state, and a
        # re-plan building in its thread may export while another model compiles.
        with _EXPORT_LOCK, warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
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
