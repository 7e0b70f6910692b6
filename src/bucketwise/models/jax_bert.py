"""A BERT sentence encoder in plain JAX, loaded from a sentence-transformers folder.

The default folder is the bundled all-MiniLM-L6-v2: the same weights the torch models
run, read from ``model.safetensors`` with NumPy (no torch, no Flax). The forward pass
follows Hugging Face's ``BertModel`` (post-layer-norm, exact GELU, absolute positions),
then the folder's pooling (mean or CLS) and ``Normalize``, so its sentence embeddings
match sentence-transformers' (the tests hold them to 1e-4).

    model, tokenizer, spec = bert_encoder()       # JaxModel, tokenizer, ModelSpec
    bm = BucketedModel(model, spec, plan, backend="jax")

Packed (issue #30, ``SentenceEmbedder.default(pack=S, backend="jax")``),
:func:`packed_bert_encoder` runs the same weights over packed rows
(:mod:`bucketwise.models.packing`): ``segment_ids`` build a block-diagonal additive mask
inside the graph, ``position_ids`` restart per segment, and the folder's pooling and
``Normalize`` run per segment, so a bucket returns ``(rows, S, dim)``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..errors import ConfigError, PackingUnsupportedError
from ..spec import ModelSpec
from .encoders import encoder_info, encoder_spec, load_default_tokenizer, model_dir, require_encoder

__all__ = ["bert_encoder", "bert_params", "bert_forward", "bert_packed_forward", "packed_bert_encoder"]


def bert_params(folder: str | Path) -> dict[str, Any]:
    """The weights of a BERT folder as a pytree of NumPy arrays, linear weights stored
    (in, out) so the forward pass multiplies without transposing."""
    st = require("safetensors.numpy", "jax", purpose="reading model.safetensors")
    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        raise ConfigError(f"BERT folder {str(folder)!r} has no model.safetensors; save the model with "
                          "safe_serialization=True (the default of save_pretrained)")
    w = st.load_file(str(path))
    w = {k.removeprefix("bert."): v for k, v in w.items()}

    def linear(prefix: str) -> dict[str, np.ndarray]:
        return {"w": np.ascontiguousarray(w[f"{prefix}.weight"].T), "b": w[f"{prefix}.bias"]}

    def norm(prefix: str) -> dict[str, np.ndarray]:
        return {"g": w[f"{prefix}.weight"], "b": w[f"{prefix}.bias"]}

    layers = []
    i = 0
    while f"encoder.layer.{i}.attention.self.query.weight" in w:
        p = f"encoder.layer.{i}"
        layers.append({
            "q": linear(f"{p}.attention.self.query"), "k": linear(f"{p}.attention.self.key"),
            "v": linear(f"{p}.attention.self.value"), "o": linear(f"{p}.attention.output.dense"),
            "ln1": norm(f"{p}.attention.output.LayerNorm"),
            "up": linear(f"{p}.intermediate.dense"), "down": linear(f"{p}.output.dense"),
            "ln2": norm(f"{p}.output.LayerNorm"),
        })
        i += 1
    return {
        "word": w["embeddings.word_embeddings.weight"], "position": w["embeddings.position_embeddings.weight"],
        "type": w["embeddings.token_type_embeddings.weight"], "ln": norm("embeddings.LayerNorm"),
        "layers": layers,
    }


def _encode(params: Any, input_ids: Any, position_ids: Any, token_type_ids: Any, bias: Any, *,
            heads: int, eps: float) -> Any:
    """BERT's embeddings and layers: token states ``(batch, seq, hidden)``. ``position_ids``
    is ``None`` for 0..seq-1 in every row; ``bias`` is added to the attention scores
    (broadcast to ``(batch, heads, seq, seq)``)."""
    import jax
    import jax.numpy as jnp

    def layer_norm(x: Any, p: Any) -> Any:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / jnp.sqrt(var + eps) * p["g"] + p["b"]

    def dense(x: Any, p: Any) -> Any:
        return x @ p["w"] + p["b"]

    batch, seq = input_ids.shape
    types = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
    positions = params["position"][:seq][None] if position_ids is None else params["position"][position_ids]
    x = params["word"][input_ids] + positions + params["type"][types]
    x = layer_norm(x, params["ln"])
    width = x.shape[-1] // heads

    def split(t: Any) -> Any:
        return t.reshape(batch, seq, heads, width).transpose(0, 2, 1, 3)

    for p in params["layers"]:
        q, k, v = split(dense(x, p["q"])), split(dense(x, p["k"])), split(dense(x, p["v"]))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(width) + bias
        ctx = (jax.nn.softmax(scores, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(batch, seq, -1)
        x = layer_norm(dense(ctx, p["o"]) + x, p["ln1"])
        x = layer_norm(dense(jax.nn.gelu(dense(x, p["up"]), approximate=False), p["down"]) + x, p["ln2"])
    return x


def _normalized(emb: Any) -> Any:
    import jax.numpy as jnp

    return emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)


def bert_forward(params: Any, input_ids: Any, attention_mask: Any, token_type_ids: Any = None, *,
                 heads: int, eps: float, pooling: str = "mean", normalize: bool = True) -> dict[str, Any]:
    """BERT's encoder, then pooling: ``{"last_hidden_state", "sentence_embedding"}``."""
    import jax.numpy as jnp

    dtype = params["word"].dtype
    mask = attention_mask.astype(dtype)
    bias = (1.0 - mask)[:, None, None, :] * jnp.finfo(dtype).min
    x = _encode(params, input_ids, None, token_type_ids, bias, heads=heads, eps=eps)
    if pooling == "cls":
        emb = x[:, 0]
    else:
        emb = (x * mask[..., None]).sum(1) / jnp.maximum(mask.sum(1, keepdims=True), 1e-9)
    if normalize:
        emb = _normalized(emb)
    return {"last_hidden_state": x, "sentence_embedding": emb}


def bert_packed_forward(params: Any, input_ids: Any, segment_ids: Any, position_ids: Any, token_type_ids: Any = None,
                        *, heads: int, eps: float, max_segments: int, pooling: str = "mean",
                        normalize: bool = True) -> dict[str, Any]:
    """BERT over packed rows (:func:`~bucketwise.models.packing.pack_inputs`), pooled per
    segment: ``{"sentence_embedding": (rows, max_segments, hidden)}``, segment ``k`` at
    index ``k - 1`` (zeros for a segment the row does not hold).

    Each position attends to its own segment only (an additive block-diagonal mask built
    here from ``segment_ids``); padding (segment 0) attends to padding, so no row of
    scores is wholly masked, and its states are never pooled."""
    import jax.numpy as jnp

    dtype = params["word"].dtype
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    bias = jnp.where(same, 0.0, jnp.finfo(dtype).min).astype(dtype)[:, None]  # (rows, 1, L, L)
    x = _encode(params, input_ids, position_ids, token_type_ids, bias, heads=heads, eps=eps)
    ids = jnp.arange(1, max_segments + 1, dtype=segment_ids.dtype)
    member = (segment_ids[:, None, :] == ids[None, :, None]).astype(dtype)  # (rows, S, L)
    if pooling == "cls":  # each segment's first position
        first = member * (jnp.cumsum(member, axis=-1) == 1).astype(dtype)
        emb = first @ x
    else:
        emb = (member @ x) / jnp.maximum(member.sum(-1, keepdims=True), 1e-9)
    if normalize:
        emb = _normalized(emb)
    return {"sentence_embedding": emb}


_MODES = {"cls": "cls_token", "mean": "mean_tokens"}  # sentence-transformers 6's mode names -> its older config keys


def _pooling(folder: Path) -> tuple[str, bool]:
    """(pooling, normalize) from the folder's sentence-transformers modules; mean and
    normalised for a plain folder (as the torch path does)."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return "mean", True
    modules = json.loads(modules_file.read_text())
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    unknown = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]
    if unknown:
        raise ConfigError(f"the JAX BERT encoder runs Transformer, Pooling and Normalize modules; "
                          f"{str(folder)!r} also has {unknown}. Use a torch backend for this model")
    pooling = "mean"
    for m in modules:
        if m["type"].endswith("Pooling"):
            cfg = json.loads((folder / m["path"] / "config.json").read_text())
            modes = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
            if "pooling_mode" in cfg:  # sentence-transformers 6 names the modes: "cls" or ["mean", ...]
                named = cfg["pooling_mode"]
                modes = [f"pooling_mode_{_MODES.get(mode, mode)}" for mode in ([named] if isinstance(named, str) else named)]
            if modes == ["pooling_mode_cls_token"]:
                pooling = "cls"
            elif modes != ["pooling_mode_mean_tokens"]:
                raise ConfigError(f"the JAX BERT encoder pools by mean or CLS; {str(folder)!r} asks for {modes}. "
                                  "Use a torch backend for this model")
    return pooling, "Normalize" in kinds


def bert_encoder(path: str | None = None) -> tuple[Any, Any, ModelSpec]:
    """A BERT sentence encoder from ``path`` (default: the bundled all-MiniLM-L6-v2) as a
    :class:`~bucketwise.backends.jax.JaxModel`, with its tokenizer and spec (the same
    spec as the torch encoder's)."""
    from ..backends.jax import JaxModel
    from ..runtime.fingerprint import fingerprint_files

    folder, config = _bert_folder(path, lambda folder, kind, act: ConfigError(
        f"the JAX encoder runs BERT models (absolute positions, gelu); {folder!r} is {kind!r} with {act!r}. "
        "Use a torch backend for it"))
    tokenizer = load_default_tokenizer(path)
    info = encoder_info(path, tokenizer)
    spec = encoder_spec(tokenizer, vocab_size=info.vocab_size, type_vocab_size=info.type_vocab_size,
                        input_names=info.input_names)
    spec = ModelSpec(spec.inputs, spec.outputs, {**spec.meta, "encoder": info})
    pooling, normalize = _pooling(folder)
    fn = functools.partial(bert_forward, heads=int(config["num_attention_heads"]),
                           eps=float(config.get("layer_norm_eps", 1e-12)), pooling=pooling, normalize=normalize)
    fingerprint = fingerprint_files(folder, extra={"jax-bert": 1, "pooling": pooling, "normalize": normalize})
    return JaxModel(fn, bert_params(folder), name=f"{info.name} (jax)", fingerprint=fingerprint), tokenizer, spec


def _bert_folder(path: str | None, refuse: Callable[[str, Any, Any], Exception]) -> tuple[Path, dict[str, Any]]:
    """The encoder folder of ``path`` (default: the bundled model) and its config.json;
    raises ``refuse(folder, model_type, hidden_act)`` where the JAX BERT does not run it."""
    folder = Path(model_dir(path))
    if path is not None:
        require_encoder(path)
    config = _bert_config(folder)
    if config is None:
        raw = json.loads((folder / "config.json").read_text())
        raise refuse(str(folder), raw.get("model_type"), raw.get("hidden_act"))
    return folder, config


def _bert_config(folder: Path) -> dict[str, Any] | None:
    """The folder's config.json if the JAX BERT runs it (BERT, absolute positions, exact
    GELU), else ``None``."""
    config: dict[str, Any] = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "bert" or config.get("position_embedding_type", "absolute") != "absolute" \
            or config.get("hidden_act") != "gelu":
        return None
    return config


def packed_bert_encoder(path: str | None = None, task: str = "feature-extraction", *,
                        max_segments: int) -> tuple[Any, Any]:
    """The BERT sentence encoder in ``path`` (default: the bundled all-MiniLM-L6-v2) over
    packed rows of at most ``max_segments`` texts (:func:`bert_packed_forward`), as a
    :class:`~bucketwise.backends.jax.JaxModel`, with its
    :class:`~bucketwise.models.packing.PackedModel` description (:func:`~bucketwise.models.packing.packed_spec`:
    inputs, position rule, segment outputs; no torch module).

    Raises :class:`~bucketwise.errors.PackingUnsupportedError` for an architecture the JAX
    BERT does not implement, and :class:`ConfigError` for a task other than embeddings."""
    from ..backends.jax import JaxModel
    from ..runtime.fingerprint import fingerprint_files
    from .packing import PACKED_WRAPPER_VERSION, packed_spec

    if task != "feature-extraction":
        raise ConfigError(f"the jax backend runs sentence embeddings only; run {task} on onnxruntime, openvino, "
                          "torchscript, inductor or eager")
    folder, config = _bert_folder(path, lambda folder, kind, act: PackingUnsupportedError(
        f"model {folder!r} cannot run packed on the jax backend: its JAX encoder implements BERT (absolute "
        f"positions, gelu), and this model is {kind!r} with {act!r}. Pack it on onnxruntime or openvino, or run it "
        "unpacked (leave packing off)"))
    described = packed_spec(str(folder), task, max_segments=max_segments)
    pooling, normalize = _pooling(folder)
    fn = functools.partial(bert_packed_forward, heads=int(config["num_attention_heads"]),
                           eps=float(config.get("layer_norm_eps", 1e-12)), max_segments=max_segments, pooling=pooling,
                           normalize=normalize)
    fingerprint = fingerprint_files(folder, extra={"jax-bert-packed": PACKED_WRAPPER_VERSION, "pooling": pooling,
                                                   "normalize": normalize, "max_segments": max_segments,
                                                   "inputs": list(described.spec.input_names)})
    name = f"{folder.name} packed {max_segments} (jax)"
    return JaxModel(fn, bert_params(folder), name=name, fingerprint=fingerprint), described
