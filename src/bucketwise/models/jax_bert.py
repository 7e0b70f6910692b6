"""A BERT sentence encoder in plain JAX, loaded from a sentence-transformers folder.

The default folder is the bundled all-MiniLM-L6-v2: the same weights the torch models
run, read from ``model.safetensors`` with NumPy (no torch, no Flax). The forward pass
follows Hugging Face's ``BertModel`` (post-layer-norm, exact GELU, absolute positions),
then the folder's pooling (mean or CLS) and ``Normalize``, so its sentence embeddings
match sentence-transformers' (the tests hold them to 1e-4).

    model, tokenizer, spec = bert_encoder()       # JaxModel, tokenizer, ModelSpec
    bm = BucketedModel(model, spec, plan, backend="jax")
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..errors import ConfigError
from ..spec import ModelSpec
from .encoders import encoder_info, encoder_spec, load_default_tokenizer, model_dir, require_encoder

__all__ = ["bert_encoder", "bert_params", "bert_forward"]


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


def bert_forward(params: Any, input_ids: Any, attention_mask: Any, token_type_ids: Any = None, *,
                 heads: int, eps: float, pooling: str = "mean", normalize: bool = True) -> dict[str, Any]:
    """BERT's encoder, then pooling: ``{"last_hidden_state", "sentence_embedding"}``."""
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
    x = params["word"][input_ids] + params["position"][:seq][None] + params["type"][types]
    x = layer_norm(x, params["ln"])
    mask = attention_mask.astype(x.dtype)
    bias = (1.0 - mask)[:, None, None, :] * jnp.finfo(x.dtype).min
    width = x.shape[-1] // heads

    def split(t: Any) -> Any:
        return t.reshape(batch, seq, heads, width).transpose(0, 2, 1, 3)

    for p in params["layers"]:
        q, k, v = split(dense(x, p["q"])), split(dense(x, p["k"])), split(dense(x, p["v"]))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(width) + bias
        ctx = (jax.nn.softmax(scores, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(batch, seq, -1)
        x = layer_norm(dense(ctx, p["o"]) + x, p["ln1"])
        x = layer_norm(dense(jax.nn.gelu(dense(x, p["up"]), approximate=False), p["down"]) + x, p["ln2"])
    if pooling == "cls":
        emb = x[:, 0]
    else:
        emb = (x * mask[..., None]).sum(1) / jnp.maximum(mask.sum(1, keepdims=True), 1e-9)
    if normalize:
        emb = emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
    return {"last_hidden_state": x, "sentence_embedding": emb}


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

    folder = Path(model_dir(path))
    if path is not None:
        require_encoder(path)
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "bert" or config.get("position_embedding_type", "absolute") != "absolute" \
            or config.get("hidden_act") != "gelu":
        raise ConfigError(
            f"the JAX encoder runs BERT models (absolute positions, gelu); {str(folder)!r} is "
            f"{config.get('model_type')!r} with {config.get('hidden_act')!r}. Use a torch backend for it"
        )
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
