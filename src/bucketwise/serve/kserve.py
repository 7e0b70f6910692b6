"""The Open Inference Protocol (KServe v2), REST, for any bucketed model.

Triton, KServe, MLServer and TorchServe speak it, and so do their clients
(``tritonclient.http``). Routes: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``,
``/v2/models/{name}``, ``/v2/models/{name}/ready`` and ``POST /v2/models/{name}/infer``
(each also under ``/versions/1``). Tensors come as JSON (``data``: flat or nested, row-major)
or in the binary tensor extension (``Inference-Header-Content-Length``; little-endian
bytes after the JSON header), and outputs go back either way, as the request asks.

The first axis of every tensor is the batch. Each row of a request is queued on its own,
so rows from concurrent requests share bucketed batches; a request's tensors give each
row's real shape (send unpadded tensors: padding you add yourself is computed as data).
Errors take the protocol's shape: ``{"error": "<message>"}``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import _arrays
from .._version import __version__
from ..errors import BucketOverflowError, InputError, QueueFullError
from ..shapes import BATCH
from ._common import Reject, check_finite, first_error, orjson_module
from .openai import load_json

if TYPE_CHECKING:
    from starlette.requests import Request

    from .app import ServeConfig, Service

__all__ = ["DATATYPES", "InferenceRequest", "KServeV2", "datatype_of"]

# The protocol's tensor datatypes and their NumPy dtypes (BYTES and BF16 are not served).
DATATYPES = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
}
_BY_DTYPE = {v: k for k, v in DATATYPES.items()}
VERSION = "1"


def datatype_of(dtype: Any) -> str:
    name = np.dtype(dtype).name
    if name not in _BY_DTYPE:
        raise InputError(f"dtype {name} has no Open Inference Protocol datatype; allowed: {sorted(_BY_DTYPE)}")
    return _BY_DTYPE[name]


class TensorInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(json_schema_extra={"minLength": 1})
    shape: list[int] = Field(description="row-major; the first axis is the batch", json_schema_extra={
        "items": {"type": "integer", "minimum": 0}})
    datatype: str = Field(description="one of " + ", ".join(DATATYPES), json_schema_extra={"enum": list(DATATYPES)})
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size: bytes of this tensor after the header")
    data: list[Any] | None = Field(None, description="the elements, flat or nested; absent with binary_data_size")


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: dict[str, Any] | None = Field(None, description="binary_data: true sends this output as bytes")


class InferenceRequest(BaseModel):
    """The JSON (header) of ``POST /v2/models/{name}/infer``."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="binary_data_output: true sends every output as bytes")
    inputs: list[TensorInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class TensorOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[TensorOutput]


class V2Error(BaseModel):
    error: str


def output_metadata(model: Any) -> list[dict[str, Any]]:
    """Each output's datatype and shape (-1 where it varies), from one run of the smallest
    built bucket on its example inputs, straight on its artifact (not counted in stats)."""
    bucket = min(model.builder.built, key=lambda b: b.volume)
    artifact = model.artifact(bucket)
    example = {k: _arrays.convert(v, artifact.array_kind) for k, v in model.spec.example_inputs(bucket).items()}
    raw = artifact.run(example)
    out = []
    for o in model.spec.outputs:
        value = raw[o.name]
        arr = np.asarray(_arrays.convert(value, "numpy")) if _arrays.kind_of(value) in ("numpy", "torch") else None
        if arr is None or o.hook is not None or not o.shape:
            shape = [-1] * (arr.ndim if arr is not None else 1)
        else:
            shape = [-1 if d is not None else int(arr.shape[i]) for i, d in enumerate(o.shape)]
        out.append({"name": o.name, "datatype": datatype_of(arr.dtype) if arr is not None else "FP32", "shape": shape})
    return out


class KServeV2:
    """The v2 routes over named bucketed models, each with its batcher."""

    def __init__(self, config: ServeConfig, service: Service) -> None:
        self.config, self.service = config, service
        self._outputs: dict[str, list[dict[str, Any]]] = {}

    # -- health and metadata ----------------------------------------------------------------

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "bucketwise", "version": __version__, "extensions": ["binary_tensor_data"]}

    def ready(self) -> bool:
        return self.service.ready()

    def model(self, name: str, version: str | None = None) -> Any:
        """The model that answers ``name`` now (a re-plan swaps it), read from its record."""
        rec = self.service.served.get(name)
        if rec is None:
            raise Reject(404, f"model {name!r} is not served here; served: {', '.join(sorted(self.service.served))}",
                         reason="unknown_model")
        if version not in (None, VERSION):
            raise Reject(404, f"model {name!r} has no version {version!r}; the one version is {VERSION!r}",
                         reason="unknown_model")
        return rec.model

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        model = self.model(name, version)
        if name not in self._outputs:
            self._outputs[name] = output_metadata(model)
        inputs = [{"name": s.name, "datatype": datatype_of(s.dtype),
                   "shape": [e if isinstance(e, int) else -1 for e in s.shape]} for s in model.spec.inputs]
        return {"name": name, "versions": [VERSION], "platform": f"bucketwise_{model.backend.name}",
                "inputs": inputs, "outputs": self._outputs[name]}

    def model_ready(self, name: str, version: str | None = None) -> bool:
        model = self.model(name, version)
        return self.service.has_batcher(name) and model.can_serve

    # -- inference -------------------------------------------------------------------------

    async def infer(self, name: str, request: Request, version: str | None = None) -> tuple[bytes, dict[str, str]]:
        """The response body and its headers (JSON, or JSON and binary outputs)."""
        model = self.model(name, version)
        if model.packer is not None:
            raise Reject(400, f"model {name!r} is served packed (serve --pack): it takes texts, at /v1/embeddings or "
                         "its task's route, not tensors; for KServe v2 tensors, serve it without --pack")
        # No Content-Type is what non-browser clients send (tritonclient), and also what a
        # browser sends cross-site, without asking, for a bare Blob: accepted only without an
        # Origin, or with the binary extension's header, which no such request can carry.
        cross_site = "origin" in request.headers and "inference-header-content-length" not in request.headers
        self.service.check_content_type(request, ("application/json", "application/octet-stream")
                                        + (() if cross_site else ("",)))
        if request.headers.get("content-encoding", "identity").lower() != "identity":
            raise Reject(415, f"Content-Encoding {request.headers['content-encoding']!r} is not supported; "
                         "send the body uncompressed")
        body = await self.service.read_body(request, self.config.max_infer_bytes)
        header, binary = _split(body, request.headers.get("inference-header-content-length"))
        try:
            req = InferenceRequest.model_validate(load_json(header))
        except ValidationError as err:
            where, first = first_error(err)
            raise Reject(400, f"request {where}: {first['msg']}") from None
        arrays = _decode_inputs(req, binary, model.spec)
        try:
            arrays, shape = model.spec.validate(arrays)
        except InputError as err:
            raise Reject(400, str(err)) from None
        rows_n = shape.get(BATCH, 0)
        if rows_n < 1:
            raise Reject(400, "the batch (first) axis of the inputs is 0; send at least one row")
        if rows_n > self.config.max_rows:
            raise Reject(413, f"the request holds {rows_n} rows; the limit is {self.config.max_rows} per request")
        if rows_n > 1 and any(o.hook is not None for o in model.spec.outputs):
            raise Reject(400, f"model {name!r} returns a variable number of results per row; send one row per request")
        try:
            model.router.resolve({**shape, BATCH: 1})  # refuse what no bucket holds, before queueing
        except BucketOverflowError as err:
            raise Reject(400, str(err), reason="too_long") from None
        rows = [{k: v[i] for k, v in arrays.items()} for i in range(rows_n)]
        try:
            outs = await self.service.batcher(name).submit_many(rows, validated=True)
        except QueueFullError as err:
            raise self.service.busy(err) from None
        return _encode_outputs(req, name, model.spec, outs)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise Reject(400, f"Inference-Header-Content-Length {header_length!r} must be a byte count of at most the "
                     f"body's {len(body)} bytes")
    n = int(header_length)
    return body[:n], body[n:]


def _decode_inputs(req: InferenceRequest, binary: bytes, spec: Any) -> dict[str, np.ndarray]:
    """The request's tensors as arrays: the spec's inputs, each exactly once."""
    names = [t.name for t in req.inputs]
    expected = set(spec.input_names)
    if len(set(names)) != len(names) or set(names) != expected:
        raise Reject(400, f"inputs {names} do not match the model's inputs {list(spec.input_names)}: send each once")
    arrays, offset = {}, 0
    for t in req.inputs:
        where = f"input {t.name!r}"
        if t.datatype not in DATATYPES:
            raise Reject(400, f"{where}: datatype {t.datatype!r} is not served; allowed: {', '.join(DATATYPES)}")
        if any(s < 0 for s in t.shape):
            raise Reject(400, f"{where}: shape {t.shape} has a negative size")
        dtype = np.dtype(DATATYPES[t.datatype]).newbyteorder("<")
        count = math.prod(t.shape)
        size = (t.parameters or {}).get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size != count * dtype.itemsize:
                raise Reject(400, f"{where}: binary_data_size {size!r} must be {count * dtype.itemsize} bytes "
                             f"({count} elements of {t.datatype})")
            if offset + size > len(binary):
                raise Reject(400, f"{where}: the body ends {offset + size - len(binary)} bytes before its binary data")
            arr = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).astype(dtype.newbyteorder("="))
            offset += size
        elif t.data is None:
            raise Reject(400, f"{where}: send its elements in \"data\", or as bytes with binary_data_size")
        else:
            try:
                raw = np.asarray(t.data)
                shown = _first_non_number(t.data) if raw.dtype.kind not in "biuf" else None
                if shown is not None:  # numpy would parse "7592" as 7592, and run it
                    raise Reject(400, f"{where}: {t.datatype} data holds {shown!r}, which is not a number; send "
                                 "numbers (JSON numbers, or true/false for BOOL), in a flat or nested list of the shape")
                if dtype.kind in "biu":  # a fraction would be cut to an integer and run: refuse it
                    fraction = raw != np.trunc(raw) if raw.dtype.kind == "f" else None
                    if fraction is not None and fraction.any():
                        value = raw[fraction].flat[0]
                        raise Reject(400, f"{where}: {t.datatype} data holds {float(value)!r}, which is not a whole "
                                     "number; send integers")
                arr = np.asarray(t.data, dtype=dtype.newbyteorder("="))
            except (ValueError, TypeError, OverflowError) as err:
                raise Reject(400, f"{where}: data is not a {t.datatype} array of shape {t.shape}: {str(err)[:120]}") from None
            if arr.size != count:
                raise Reject(400, f"{where}: data holds {arr.size} elements; shape {t.shape} needs {count}")
        arrays[t.name] = arr.reshape(t.shape)
    if offset != len(binary):
        raise Reject(400, f"{len(binary) - offset} bytes of binary data follow the inputs that no input claims")
    mask = arrays.get("attention_mask")
    if mask is not None and mask.ndim >= 2 and len(mask):
        empty = np.flatnonzero(~np.asarray(mask).reshape(len(mask), -1).any(axis=1))
        if empty.size:  # the model would average over no token: a zero or NaN vector, sent with a 200
            raise Reject(400, f"input 'attention_mask': rows {empty[:10].tolist()} attend to no token; each row needs "
                         "at least one 1")
    return arrays


def _first_non_number(data: Any) -> Any:
    """The first element of nested lists that is not a JSON number or boolean."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif not isinstance(item, (bool, int, float)):
            return item
    return None


def _encode_outputs(req: InferenceRequest, name: str, spec: Any, outs: list[dict[str, Any]]) -> tuple[bytes, dict[str, str]]:
    all_binary = bool((req.parameters or {}).get("binary_data_output", False))
    if req.outputs is None:
        chosen: list[tuple[str, bool]] = [(n, all_binary) for n in spec.output_names]
    else:
        unknown = [o.name for o in req.outputs if o.name not in spec.output_names]
        if unknown:
            raise Reject(400, f"outputs {unknown} are not outputs of {name!r}; it has {list(spec.output_names)}")
        chosen = [(o.name, bool((o.parameters or {}).get("binary_data", all_binary))) for o in req.outputs]
    tensors, blobs = [], []
    for out_name, binary in chosen:
        arr = np.stack([np.asarray(_arrays.convert(o[out_name], "numpy")) for o in outs])
        check_finite(arr, f"output {out_name!r}, rows")
        tensor: dict[str, Any] = {"name": out_name, "shape": list(arr.shape), "datatype": datatype_of(arr.dtype)}
        if binary:
            blob = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = np.ascontiguousarray(arr.reshape(-1))  # written by orjson below
        tensors.append(tensor)
    response: dict[str, Any] = {"model_name": name, "model_version": VERSION, "outputs": tensors}
    if req.id is not None:
        response["id"] = req.id
    # orjson writes each float32 in its shortest round-trip form (at most 9 digits, not the
    # 17 of float64's), about 28x faster than json over a list (benchmarks/bench_json.py).
    orjson = orjson_module()
    head: bytes = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream",
                                     "inference-header-content-length": str(len(head))}

