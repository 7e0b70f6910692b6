"""Packed text buckets: several short sequences share one row of a bucket (issue #30).

Three layers, each usable alone:

- :func:`pack` is pure (it lives in :mod:`bucketwise.packer`, which the planner can
  import, and is re-exported here): it places sequence lengths into rows of ``row_length`` positions
  with at most ``max_segments`` sequences each, first-fit decreasing. A row is a tuple of
  :class:`Slot` (sequence index, offset in the row, length). Sequences longer than a row
  are not placed; :attr:`Packing.unpacked` names them (they keep unpacked buckets).
- :func:`pack_inputs` writes tokenized sequences into a layout's row arrays:
  ``input_ids``, ``segment_ids`` (1..S in each row, 0 on padding), ``position_ids``
  restarting in each segment by the architecture's :class:`PositionRule`, and
  ``token_type_ids`` where the model takes them.
- :func:`packed_module` wraps a text model (a local folder, a ``SentenceTransformer`` or a
  transformers model) as a torch module over those arrays. The block-diagonal attention
  mask is built inside the graph from ``segment_ids``, and pooling (mean, CLS, max, last
  token ..., then the sentence-transformers modules after it) runs per segment inside the
  graph, so an embedding bucket returns ``(rows, S, dim)`` and no token states leave it.
  Token outputs (token states, token classification, QA) come back per position, for the
  caller to crop per segment (:func:`unpack_outputs`). :func:`check_packed_parity`
  compares every packed output with its sequence run alone.

Which architectures pack, and how (checked against transformers 5.24's sources):

- BERT and ELECTRA take ``position_ids`` (0-based) and a 4-D additive
  ``(batch, 1, L, L)`` mask, which transformers' mask helpers return as is (a 3-D
  ``(batch, L, L)`` mask is refused there).
- RoBERTa and XLM-RoBERTa count positions from ``padding_idx + 1`` over non-padding tokens
  (``create_position_ids_from_input_ids``); the rule below reproduces it per segment.
- MPNet counts positions the same way but from its embeddings' own ``padding_idx`` (1,
  whatever the pad token is). Its relative attention bias is computed from each row's
  offsets (``arange``), not from ``position_ids``, and depends only on the distance
  between two tokens, which within a segment equals the distance in the sequence alone.
- DistilBERT's model takes ``position_ids`` in transformers 5.24 (``DistilBertModel.forward``
  hands them to its embeddings), so it needs no wrapper around its embeddings.

transformers 4.x builds masks differently (its BERT refuses a 4-D mask), so packing asks
for transformers 5 and refuses older releases.

Any other ``model_type`` raises :class:`~bucketwise.errors.PackingUnsupportedError`: run
it unpacked. A new family plugs in as one entry of ``_FAMILIES`` (its position rule and
how its sequence-classification head pools), plus a parity test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._optional import require
from ..errors import ConfigError, InputError, MissingDependencyError, PackingUnsupportedError, ParityError
from ..packer import Packing, Slot, next_fit_rows, pack
from ..router import Run
from ..spec import InputSpec, ModelSpec, OutputSpec

__all__ = [
    "PACKED_TASKS",
    "SUPPORTED",
    "Slot",
    "Packing",
    "PositionRule",
    "PackedModel",
    "PackedParity",
    "pack",
    "next_fit_rows",
    "pack_inputs",
    "packed_module",
    "packed_spec",
    "lazy_packed_module",
    "unpack_outputs",
    "check_packed_parity",
]


# ---------------------------------------------------------------------------------------
# Packed row arrays


@dataclass(frozen=True)
class PositionRule:
    """How an architecture numbers positions, applied to each segment on its own.

    ``padding_idx=None``: ``0 .. n-1`` (BERT, ELECTRA, DistilBERT). Otherwise the model counts
    non-padding tokens from ``padding_idx + 1`` and gives padding tokens ``padding_idx``, as
    transformers' ``create_position_ids_from_input_ids`` does (RoBERTa, XLM-RoBERTa: the pad
    token id; MPNet: its embeddings' ``padding_idx``, 1). ``pad_position`` fills the
    positions of padding in a row.
    """

    padding_idx: int | None = None

    @property
    def pad_position(self) -> int:
        return 0 if self.padding_idx is None else self.padding_idx

    def positions(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Position ids of one sequence run alone (int64, same length)."""
        arr = np.asarray(ids, dtype=np.int64)
        if self.padding_idx is None:
            return np.arange(arr.shape[0], dtype=np.int64)
        real = (arr != self.padding_idx).astype(np.int64)
        return np.cumsum(real) * real + self.padding_idx

    def longest(self, max_position_embeddings: int) -> int:
        """The longest sequence whose positions the embeddings hold."""
        return max_position_embeddings - (0 if self.padding_idx is None else self.padding_idx + 1)


def _layout_rows(layout: Packing | Sequence[Sequence[Slot]]) -> tuple[tuple[Slot, ...], ...]:
    rows = layout.rows if isinstance(layout, Packing) else layout
    return tuple(tuple(Slot(*s) for s in row) for row in rows)


def pack_inputs(
    input_ids: Sequence[Sequence[int]],
    layout: Packing | Sequence[Sequence[Slot]],
    *,
    row_length: int,
    pad_id: int,
    positions: PositionRule,
    token_type_ids: Sequence[Sequence[int]] | None = None,
    rows: int | None = None,
    max_segments: int | None = None,
) -> dict[str, np.ndarray]:
    """The packed arrays of one run: each slot of ``layout`` row ``r`` gets sequence
    ``input_ids[slot.sequence]`` at ``slot.offset``; its segment id is its rank in the row
    (1..S); its positions restart by ``positions``. Padding has ``pad_id``, segment 0, the
    rule's pad position and token type 0.

    Returns int64 arrays of shape ``(rows, row_length)`` (``rows`` defaults to the
    layout's; more rows are empty padding rows): ``input_ids``, ``segment_ids``,
    ``position_ids``, and ``token_type_ids`` when given. Raises :class:`InputError` for a
    slot that does not match its sequence or the row.
    """
    slots = _layout_rows(layout)
    n_rows = len(slots) if rows is None else rows
    if n_rows < len(slots):
        raise InputError(f"packing: the layout has {len(slots)} rows but the run has {n_rows}; "
                         "split the layout into runs of at most that many rows")
    ids = np.full((n_rows, row_length), pad_id, dtype=np.int64)
    seg = np.zeros((n_rows, row_length), dtype=np.int64)
    pos = np.full((n_rows, row_length), positions.pad_position, dtype=np.int64)
    types = None if token_type_ids is None else np.zeros((n_rows, row_length), dtype=np.int64)
    for r, row in enumerate(slots):
        if max_segments is not None and len(row) > max_segments:
            raise InputError(f"packing: row {r} holds {len(row)} segments; the model packs at most {max_segments}")
        end = 0
        for k, (index, offset, length) in enumerate(row):
            seq = np.asarray(input_ids[index], dtype=np.int64)
            if seq.ndim != 1 or seq.shape[0] != length:
                raise InputError(f"packing: slot {k} of row {r} says sequence {index} has {length} tokens; "
                                 f"it has {seq.shape[0] if seq.ndim == 1 else seq.shape}")
            if offset < end or offset + length > row_length:
                raise InputError(f"packing: slot {k} of row {r} (offset {offset}, length {length}) overlaps "
                                 f"the previous slot or runs past the row's {row_length} positions")
            end = offset + length
            window = slice(offset, end)
            ids[r, window] = seq
            seg[r, window] = k + 1
            pos[r, window] = positions.positions(seq)
            if types is not None and token_type_ids is not None:
                tt = np.asarray(token_type_ids[index], dtype=np.int64)
                if tt.shape != seq.shape:
                    raise InputError(f"packing: sequence {index} has {length} input ids but "
                                     f"{tt.shape[0]} token type ids")
                types[r, window] = tt
    out = {"input_ids": ids, "segment_ids": seg, "position_ids": pos}
    if types is not None:
        out["token_type_ids"] = types
    return out


# ---------------------------------------------------------------------------------------
# Architectures


@dataclass(frozen=True)
class _Family:
    """How one architecture family packs: its position numbering (``"zero"``-based, from the
    config's ``"pad_token_id"``, or from a fixed padding index), whether it takes token type ids, and how its sequence-classification
    head reads a segment's first token (``"bert"``: the pooler, dropout and classifier;
    ``"distilbert"``: pre_classifier, ReLU, dropout, classifier; ``"classifier"``: the
    model's ``classifier`` module, which takes ``features[:, 0]`` itself)."""

    positions: str | int
    token_types: bool
    sequence_head: str


_FAMILIES: dict[str, _Family] = {
    "bert": _Family("zero", True, "bert"),
    "electra": _Family("zero", True, "classifier"),
    "distilbert": _Family("zero", False, "distilbert"),
    "roberta": _Family("pad_token_id", False, "classifier"),
    "xlm-roberta": _Family("pad_token_id", False, "classifier"),
    "mpnet": _Family(1, False, "classifier"),  # MPNetEmbeddings sets padding_idx = 1, whatever the pad token

}
SUPPORTED = tuple(_FAMILIES)
"""The ``model_type`` values that pack."""

PACKED_TASKS = ("feature-extraction", "token-embeddings", "text-classification", "text-ranking",
                "token-classification", "question-answering")
"""What a packed module returns: ``feature-extraction`` a pooled embedding per segment
``(rows, S, dim)``; ``token-embeddings`` the token states ``(rows, L, hidden)``;
``text-classification`` and ``text-ranking`` a head's logits per segment
``(rows, S, labels)``; ``token-classification`` logits ``(rows, L, labels)`` and
``question-answering`` ``start_logits`` and ``end_logits`` ``(rows, L)``, per position."""

_POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_OUTPUTS = {
    "feature-extraction": (("sentence_embedding", "segment"),),
    "token-embeddings": (("last_hidden_state", "token"),),
    "text-classification": (("logits", "segment"),),
    "text-ranking": (("logits", "segment"),),
    "token-classification": (("logits", "token"),),
    "question-answering": (("start_logits", "token"), ("end_logits", "token")),
}
_ATTENTION = ("eager", "sdpa")
_ENCODER_TASKS = ("feature-extraction", "token-embeddings")
PACKED_WRAPPER_VERSION = 1  # bump when the packed graph changes: it is part of the cache key


def _refuse(what: str, why: str) -> PackingUnsupportedError:
    return PackingUnsupportedError(
        f"{what} cannot run packed: {why}. Packing supports the architectures {', '.join(SUPPORTED)} "
        f"with the tasks {', '.join(PACKED_TASKS)}; run this model unpacked (leave packing off)")


def _family(config: Any, what: str) -> tuple[str, _Family]:
    model_type = getattr(config, "model_type", None)
    if model_type not in _FAMILIES:
        raise _refuse(what, f"its architecture {model_type!r} has no packed wrapper")
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        raise _refuse(what, "it is configured as a decoder (causal or cross attention)")
    attn = getattr(config, "_attn_implementation", None) or "eager"
    if attn not in _ATTENTION:
        raise _refuse(what, f"its attention implementation {attn!r} ignores a 4-D mask; load it with "
                            f"attn_implementation='eager' (or 'sdpa')")
    return str(model_type), _FAMILIES[str(model_type)]


# ---------------------------------------------------------------------------------------
# The packed model


@dataclass(frozen=True, eq=False)
class PackedModel:
    """A packed module with what it takes to feed it and check it (``module`` and
    ``reference`` are ``None`` from :func:`packed_spec`, which reads no weights).

    ``module(input_ids, segment_ids, position_ids[, token_type_ids])`` (int64, each
    ``(rows, L)``) returns the outputs of ``spec`` in order. ``segment_outputs`` have one
    entry per segment, ``(rows, max_segments, ...)``, segment ``k`` (1-based) at index
    ``k - 1``; ``token_outputs`` one per position, ``(rows, L, ...)``, to be cropped per
    slot. ``reference(input_ids, attention_mask[, token_type_ids])`` runs the same weights
    unpacked, returning the same outputs for ordinary ``(batch, n)`` inputs (per sequence,
    or per token over ``n``), the yardstick of :func:`check_packed_parity`.
    ``tokenizer`` is the folder's (``None`` when a module was given without one).
    """

    module: Any
    reference: Any
    spec: ModelSpec
    task: str
    architecture: str
    max_segments: int
    positions: PositionRule
    pad_id: int
    segment_outputs: tuple[str, ...]
    token_outputs: tuple[str, ...]
    takes_token_types: bool
    max_length: int
    tokenizer: Any = None

    def inputs(self, input_ids: Sequence[Sequence[int]], layout: Packing | Sequence[Sequence[Slot]], *,
               row_length: int, token_type_ids: Sequence[Sequence[int]] | None = None,
               rows: int | None = None) -> dict[str, np.ndarray]:
        """:func:`pack_inputs` with this model's pad id, position rule and segment cap;
        token type ids are zeros where the model takes them and none are given."""
        if self.takes_token_types and token_type_ids is None:
            token_type_ids = [[0] * len(ids) for ids in input_ids]
        return pack_inputs(input_ids, layout, row_length=row_length, pad_id=self.pad_id, positions=self.positions,
                           token_type_ids=token_type_ids if self.takes_token_types else None, rows=rows,
                           max_segments=self.max_segments)

    def size(self, item: Mapping[str, Any]) -> dict[str, int]:
        """One sequence's length (:class:`~bucketwise.runtime.model.RowPacker`)."""
        return {"seq": int(np.shape(item["input_ids"])[0])}

    def write(self, run: Run, items: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, int]]]:
        """A run's packed rows, each as long as it is filled, from each sequence's own
        ``input_ids`` (and ``token_type_ids``) (:class:`~bucketwise.runtime.model.RowPacker`)."""
        ids = _Column(items, "input_ids")
        types = _Column(items, "token_type_ids") if self.takes_token_types else None
        rows = [{name: a[0] for name, a in self.inputs(ids, [row], row_length=n, token_type_ids=types).items()}
                for row, n in zip(run.rows, run.filled)]
        return rows, [{"seq": n} for n in run.filled]

    def read(self, run: Run, outputs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Each slot's outputs in :attr:`~bucketwise.router.Run.items` order: a segment
        output's entry for its segment, a token output cropped to its slot."""
        return [self.slot_outputs(out, k, slot) for row, out in zip(run.rows, outputs) for k, slot in enumerate(row)]

    def slot_outputs(self, row: Mapping[str, Any], k: int, slot: Slot) -> dict[str, Any]:
        """The outputs of the ``k``-th slot of a row from the row's outputs: a segment
        output's entry ``k``, a token output cropped to the slot."""
        one = {name: row[name][k] for name in self.segment_outputs}
        for name in self.token_outputs:
            one[name] = row[name][slot.offset:slot.offset + slot.length]
        return one

    def tokenize(self, texts: Sequence[str | tuple[str, str]]) -> tuple[list[list[int]], list[list[int]] | None]:
        """Token ids (and token type ids where the model takes them) of each text or
        (text, pair), with the tokenizer's special tokens, cut at ``max_length``."""
        if self.tokenizer is None:
            raise ConfigError("this packed model has no tokenizer (a module was given); pass token id lists")
        ids: list[list[int]] = []
        types: list[list[int]] = []
        for text in texts:
            pair = tuple(text) if isinstance(text, (tuple, list)) else (text,)
            enc = self.tokenizer(*pair, truncation=True, max_length=self.max_length)
            ids.append(list(enc["input_ids"]))
            types.append(list(enc.get("token_type_ids") or [0] * len(enc["input_ids"])))
        return ids, (types if self.takes_token_types else None)


class _Column(Sequence[Any]):
    """One input of every item, by item index, without copying the list."""

    def __init__(self, items: Sequence[Mapping[str, Any]], name: str) -> None:
        self.items, self.name = items, name

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: Any) -> Any:
        return self.items[i][self.name]


def packed_module(model: Any, task: str | None = None, *, max_segments: int) -> PackedModel:
    """Wrap ``model`` to run packed rows with at most ``max_segments`` sequences each.

    ``model`` is a local folder (a sentence-transformers folder, or a transformers folder
    whose ``architectures`` name the task, as :mod:`bucketwise.models.tasks` reads it), a
    ``SentenceTransformer``, or a transformers model (``*Model``, ``*ForSequenceClassification``,
    ``*ForTokenClassification``, ``*ForQuestionAnswering``). ``task`` is one of
    :data:`PACKED_TASKS`; by default the model's own (a plain ``*Model`` is mean-pooled and
    L2-normalised, as :func:`~bucketwise.models.encoders.mean_pooled_encoder` does).

    Raises :class:`~bucketwise.errors.PackingUnsupportedError` for an architecture, pooling
    or sentence-transformers module that does not pack, and :class:`ConfigError` for a
    task the model cannot do.
    """
    _check_options(task, max_segments)
    torch = require("torch", "text", purpose="packed text models")
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        return _from_folder(str(model), task, max_segments)
    st = _sentence_transformers_class()
    if st is not None and isinstance(model, st):
        return _from_sentence_transformer(model, task, max_segments, tokenizer=getattr(model, "tokenizer", None))
    if isinstance(model, torch.nn.Module) and hasattr(model, "config"):
        return _from_transformers(model, task, max_segments, tokenizer=None)
    raise ConfigError(f"packing: cannot pack a {type(model).__name__}; give a model folder, a SentenceTransformer "
                      "or a transformers model")


def packed_spec(path: str, task: str | None = None, *, max_segments: int) -> PackedModel:
    """What :func:`packed_module` returns for the folder ``path``, read from its
    configuration and tokenizer only: no weights, no torch (``module`` and ``reference``
    are ``None``). A warm start builds its buckets' inputs from this."""
    import json
    from pathlib import Path

    from .encoders import load_default_tokenizer, model_dir

    _check_options(task, max_segments)
    folder = model_dir(path)
    config = _Config(json.loads((Path(folder) / "config.json").read_text()))
    max_length = None
    if (Path(folder) / "modules.json").is_file():
        task = task or "feature-extraction"
        if task not in _ENCODER_TASKS:
            raise ConfigError(f"packing: a sentence-transformers model embeds; it cannot run task {task!r}")
        st_config = Path(folder) / "sentence_bert_config.json"
        if st_config.is_file():
            max_length = json.loads(st_config.read_text()).get("max_seq_length")
    else:
        task, _ = _folder_task(folder, task)
    architecture, family = _family(config, f"model {folder!r}")
    return _describe(None, None, config, task, architecture, family, _position_rule(config, family), max_segments,
                     load_default_tokenizer(folder), max_length=max_length)


def lazy_packed_module(path: str, task: str | None = None, *, max_segments: int) -> tuple[Any, PackedModel]:
    """The packed module of the folder ``path`` as a
    :class:`~bucketwise.runtime.cache.LazyModel` (loaded only if a bucket must be
    compiled; identified by the folder's files and the wrapper), with its
    :func:`packed_spec`."""
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    from ..runtime.cache import LazyModel, fingerprint_files
    from .encoders import model_dir

    described = packed_spec(path, task, max_segments=max_segments)
    folder = model_dir(path)

    def load() -> Any:
        return packed_module(folder, described.task, max_segments=max_segments).module

    try:
        wrapper: dict[str, Any] = {"wrapper": "packed", "version": PACKED_WRAPPER_VERSION, "task": described.task,
                                   "max_segments": max_segments, "attn": "eager",
                                   "transformers": version("transformers"), "inputs": list(described.spec.input_names)}
        if (Path(folder) / "modules.json").is_file():
            wrapper["sentence_transformers"] = version("sentence-transformers")
    except PackageNotFoundError as err:
        raise MissingDependencyError(f"{err.name} is not installed for packed text models: "
                                     "pip install 'bucketwise[text]'") from None
    return LazyModel(load, fingerprint_files(folder, extra=wrapper), Path(folder).name), described


class _Config(dict):  # type: ignore[type-arg]
    """A config.json read as attributes, ``None`` where a key is missing."""

    def __getattr__(self, name: str) -> Any:
        return self.get(name)


def _check_options(task: str | None, max_segments: int) -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        major = int(version("transformers").split(".")[0])
    except (PackageNotFoundError, ValueError):
        major = None
    if major is not None and major < 5:
        raise PackingUnsupportedError(
            f"packing needs transformers 5 or later (installed: {version('transformers')}): older releases build "
            "attention masks differently. Upgrade transformers, or run unpacked (leave packing off)")
    if isinstance(max_segments, bool) or not isinstance(max_segments, int) or max_segments < 1:
        raise ConfigError(f"packing: max_segments must be a positive integer, got {max_segments!r}")
    if task is not None and task not in PACKED_TASKS:
        raise ConfigError(f"packing: task {task!r} is not one that packs; choose one of {', '.join(PACKED_TASKS)}")


def _folder_task(folder: str, task: str | None) -> tuple[str, str]:
    """The task a plain transformers folder runs (``task``, checked, or its own) and the
    Auto class that loads it."""
    from .tasks import folder_task

    found = folder_task(folder)
    found.check("feature-extraction" if task == "token-embeddings" else task)
    return task or found.task, found.auto_class or "AutoModel"


def _sentence_transformers_class() -> Any:
    from .._optional import is_importable

    if not is_importable("sentence_transformers"):
        return None
    import sentence_transformers

    return sentence_transformers.SentenceTransformer


def _quiet_load(load: Callable[[], Any]) -> Any:
    import contextlib
    import io
    import warnings

    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load()


def _from_folder(folder: str, task: str | None, max_segments: int) -> PackedModel:
    from pathlib import Path

    from .encoders import model_dir

    folder = model_dir(folder)
    if (Path(folder) / "modules.json").is_file():
        st = require("sentence_transformers", "text", purpose="sentence-transformers model folders")
        model = _quiet_load(lambda: st.SentenceTransformer(folder, device="cpu",
                                                           model_kwargs={"attn_implementation": "eager"}))
        return _from_sentence_transformer(model.eval(), task, max_segments, tokenizer=model.tokenizer)
    task, auto_class = _folder_task(folder, task)
    transformers = require("transformers", "text")
    model = _quiet_load(lambda: getattr(transformers, auto_class).from_pretrained(folder, attn_implementation="eager"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return _from_transformers(model.eval(), task, max_segments, tokenizer=tokenizer)


def _model_task(model: Any) -> str:
    name = type(model).__name__
    for suffix, task in (("ForSequenceClassification", "text-classification"),
                         ("ForTokenClassification", "token-classification"),
                         ("ForQuestionAnswering", "question-answering")):
        if name.endswith(suffix):
            return task
    if model is getattr(model, "base_model", None):
        return "feature-extraction"
    raise _refuse(f"model {name}", "its head is not one that packs")


def _from_transformers(model: Any, task: str | None, max_segments: int, *, tokenizer: Any) -> PackedModel:
    name = type(model).__name__
    own = _model_task(model)
    architecture, family = _family(model.config, f"model {name}")
    task = task or own
    fits = (task in _ENCODER_TASKS) if own == "feature-extraction" else (
        task == own or (own == "text-classification" and task == "text-ranking"))
    if not fits:
        raise ConfigError(f"packing: model {name} does {own}; it cannot run task {task!r}")
    torch = require("torch", "text")
    rule = _position_rule(model.config, family, model.base_model)
    wrappers = _wrappers(torch)
    base = model.base_model
    if task == "feature-extraction":
        module = wrappers.Embedder(base, wrappers.SegmentPooling(("mean",), max_segments), [wrappers.Normalize()],
                                   family.token_types)
        reference = wrappers.MeanReference(base, family.token_types)
    elif task == "token-embeddings":
        module = wrappers.Tokens(base, family.token_types)
        reference = wrappers.HeadReference(base, ("last_hidden_state",), family.token_types)
    elif task in ("text-classification", "text-ranking"):
        module = wrappers.SequenceClassifier(model, family.sequence_head, max_segments, family.token_types)
        reference = wrappers.HeadReference(model, ("logits",), family.token_types)
    else:
        names = tuple(n for n, _ in _OUTPUTS[task])
        module = wrappers.Head(model, names, family.token_types)
        reference = wrappers.HeadReference(model, names, family.token_types)
    return _describe(module.eval(), reference.eval(), model.config, task, architecture, family, rule, max_segments,
                     tokenizer)


def _from_sentence_transformer(model: Any, task: str | None, max_segments: int, *, tokenizer: Any) -> PackedModel:
    task = task or "feature-extraction"
    if task not in _ENCODER_TASKS:
        raise ConfigError(f"packing: a sentence-transformers model embeds; it cannot run task {task!r}")
    torch = require("torch", "text")
    wrappers = _wrappers(torch)
    modules = list(model)
    first = modules[0] if modules else None
    hf = getattr(first, "auto_model", None)
    if hf is None:
        raise _refuse("this sentence-transformers model", f"its first module {type(first).__name__} is not a "
                                                          "transformers Transformer")
    architecture, family = _family(hf.config, f"sentence-transformers model ({type(hf).__name__})")
    base = hf.base_model
    rule = _position_rule(hf.config, family, base)
    if task == "token-embeddings":
        module = wrappers.Tokens(base, family.token_types)
        reference = wrappers.HeadReference(base, ("last_hidden_state",), family.token_types)
    else:
        if len(modules) < 2 or type(modules[1]).__name__ != "Pooling":
            raise _refuse("this sentence-transformers model", "its second module is not Pooling")
        pooling = modules[1]
        modes = pooling.pooling_mode
        modes = (modes,) if isinstance(modes, str) else tuple(modes)
        bad = [m for m in modes if m not in _POOLING_MODES]
        if bad:
            raise _refuse("this sentence-transformers model", f"its pooling {bad} has no packed form")
        after = modules[2:]
        for m in after:
            kind = type(m).__name__
            if kind not in ("Dense", "Normalize", "LayerNorm", "Dropout"):
                raise _refuse("this sentence-transformers model",
                              f"its module {kind} after pooling has no packed form (Dense, Normalize, LayerNorm "
                              "and Dropout pack)")
            for attr in ("module_input_name", "module_output_name"):
                if getattr(m, attr, "sentence_embedding") != "sentence_embedding":
                    raise _refuse("this sentence-transformers model",
                                  f"its {kind} module reads or writes {getattr(m, attr)!r}, not the sentence embedding")
        module = wrappers.Embedder(base, wrappers.SegmentPooling(modes, max_segments), after, family.token_types)
        reference = wrappers.SentenceReference(model, family.token_types)
    return _describe(module.eval(), reference.eval(), hf.config, task, architecture, family, rule, max_segments,
                     tokenizer, max_length=getattr(model, "max_seq_length", None))


def _position_rule(config: Any, family: _Family, base: Any = None) -> PositionRule:
    """The family's rule from its configuration; with the loaded ``base`` model, checked
    against its embeddings' ``padding_idx`` (so that a transformers release that counts
    differently is refused, not served wrong)."""
    if family.positions == "zero":
        rule = PositionRule()
    elif family.positions == "pad_token_id":
        if config.pad_token_id is None:
            raise _refuse(f"model {config.model_type}", "its config names no pad_token_id to count positions from")
        rule = PositionRule(int(config.pad_token_id))
    else:
        rule = PositionRule(int(family.positions))
    if base is not None and rule.padding_idx is not None:
        found = getattr(getattr(base, "embeddings", None), "padding_idx", None)
        if found != rule.padding_idx:
            raise _refuse(f"model {type(base).__name__}", f"its embeddings count positions from padding_idx {found!r}, "
                                                          f"where packing expects {rule.padding_idx}")
    return rule


def _describe(module: Any, reference: Any, config: Any, task: str, architecture: str, family: _Family,
              rule: PositionRule, max_segments: int, tokenizer: Any, *, max_length: int | None = None) -> PackedModel:
    pad_id = config.pad_token_id
    if pad_id is None and tokenizer is not None:
        pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ConfigError(f"packing: model {architecture} names no pad token id (config.pad_token_id); set it")
    vocab = int(config.vocab_size)
    max_pos = int(config.max_position_embeddings)
    ids = ("batch", "seq")
    inputs = [
        InputSpec("input_ids", ids, "int64", pad_value=int(pad_id), bounds=(0, vocab - 1), example=int(pad_id)),
        InputSpec("segment_ids", ids, "int64", pad_value=0, bounds=(0, max_segments), example=1),
        InputSpec("position_ids", ids, "int64", pad_value=rule.pad_position, bounds=(0, max_pos - 1),
                  example=rule.pad_position),
    ]
    if family.token_types:
        type_vocab = int(getattr(config, "type_vocab_size", 2) or 2)
        inputs.append(InputSpec("token_type_ids", ids, "int64", pad_value=0, bounds=(0, type_vocab - 1)))
    outputs = []
    for name, per in _OUTPUTS[task]:
        if per == "segment":
            outputs.append(OutputSpec(name, ("batch", None, None)))
        elif name in ("start_logits", "end_logits"):
            outputs.append(OutputSpec(name, ("batch", "seq")))
        else:
            outputs.append(OutputSpec(name, ("batch", "seq", None)))
    segment_outputs = tuple(n for n, per in _OUTPUTS[task] if per == "segment")
    token_outputs = tuple(n for n, per in _OUTPUTS[task] if per == "token")
    meta = {"family": "text-packed", "packing": {"architecture": architecture, "task": task,
                                                 "max_segments": max_segments,
                                                 "segment_outputs": list(segment_outputs),
                                                 "token_outputs": list(token_outputs),
                                                 "position_padding_idx": rule.padding_idx}}
    longest = rule.longest(max_pos)
    for limit in (max_length, getattr(tokenizer, "model_max_length", None)):
        if isinstance(limit, int) and 0 < limit < longest:
            longest = limit
    return PackedModel(module=module, reference=reference, spec=ModelSpec(tuple(inputs), tuple(outputs), meta),
                       task=task, architecture=architecture, max_segments=max_segments, positions=rule,
                       pad_id=int(pad_id), segment_outputs=segment_outputs, token_outputs=token_outputs,
                       takes_token_types=family.token_types, max_length=longest, tokenizer=tokenizer)


# ---------------------------------------------------------------------------------------
# The torch modules (built on first use: importing this module imports no torch)

_WRAPPERS: dict[str, Any] = {}


class _Namespace:
    def __init__(self, **items: Any) -> None:
        self.__dict__.update(items)

    def __getattr__(self, name: str) -> Any:  # for mypy: the classes are built at run time
        raise AttributeError(name)


def _wrappers(torch: Any) -> Any:  # noqa: C901 - one closure holding the module classes
    if "ns" in _WRAPPERS:
        return _WRAPPERS["ns"]
    nn = torch.nn

    def block_mask(segment_ids: Any, dtype: Any) -> Any:
        # Each position sees its own segment only. Padding (segment 0) sees padding: no
        # query row is fully masked (which gives NaN in some kernels), and padding's
        # outputs are never read.
        same = segment_ids[:, :, None] == segment_ids[:, None, :]
        return (~same).unsqueeze(1).to(dtype) * torch.finfo(dtype).min

    def encode(base: Any, takes_types: bool, input_ids: Any, segment_ids: Any, position_ids: Any,
               token_type_ids: Any) -> Any:
        kwargs = {"input_ids": input_ids, "attention_mask": block_mask(segment_ids, base.dtype),
                  "position_ids": position_ids}
        if takes_types and token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        return base(**kwargs)[0]

    def first_tokens(segment_ids: Any, ids: Any, dtype: Any) -> Any:
        member = (segment_ids[:, None, :] == ids).to(dtype)  # (rows, S, L)
        return member * (member.cumsum(-1) == 1).to(dtype)

    class SegmentPooling(nn.Module):  # type: ignore[name-defined,misc]
        """sentence-transformers' Pooling, per segment: (rows, L, H) -> (rows, S, H * modes)."""

        def __init__(self, modes: tuple[str, ...], max_segments: int) -> None:
            super().__init__()
            self.modes = modes
            self.max_segments = max_segments
            self.register_buffer("ids", torch.arange(1, max_segments + 1).view(1, max_segments, 1), persistent=False)

        def forward(self, hidden: Any, segment_ids: Any) -> Any:
            dtype = hidden.dtype
            member = segment_ids[:, None, :] == self.ids  # (rows, S, L)
            weight = member.to(dtype)
            count = weight.sum(-1, keepdim=True)  # (rows, S, 1)
            rank = weight.cumsum(-1) * weight  # 1..n inside each segment, 0 elsewhere
            out = []
            for mode in self.modes:
                if mode == "cls":
                    out.append(torch.matmul((rank == 1).to(dtype), hidden))
                elif mode == "lasttoken":
                    out.append(torch.matmul(((rank == count) & member).to(dtype), hidden))
                elif mode == "mean":
                    out.append(torch.matmul(weight, hidden) / count.clamp(min=1e-9))
                elif mode == "mean_sqrt_len_tokens":
                    out.append(torch.matmul(weight, hidden) / count.clamp(min=1e-9).sqrt())
                elif mode == "weightedmean":
                    out.append(torch.matmul(rank, hidden) / rank.sum(-1, keepdim=True).clamp(min=1e-9))
                else:  # max: one segment at a time, so no (rows, S, L, H) tensor is made
                    low = torch.finfo(dtype).min
                    per = []
                    for s in range(self.max_segments):
                        inside = member[:, s, :, None]
                        top = hidden.masked_fill(~inside, low).max(dim=1).values
                        per.append(top * (count[:, s] > 0).to(dtype))  # an empty segment gives zeros
                    out.append(torch.stack(per, dim=1))
            return out[0] if len(out) == 1 else torch.cat(out, dim=-1)

    class Normalize(nn.Module):  # type: ignore[name-defined,misc]
        def forward(self, features: dict[str, Any]) -> dict[str, Any]:
            features["sentence_embedding"] = nn.functional.normalize(features["sentence_embedding"], p=2.0, dim=-1)
            return features

    class Embedder(nn.Module):  # type: ignore[name-defined,misc]
        """Encoder, per-segment pooling, then the modules after pooling: (rows, S, dim)."""

        def __init__(self, base: Any, pooling: Any, after: Sequence[Any], takes_types: bool) -> None:
            super().__init__()
            self.base = base
            self.pooling = pooling
            self.after = nn.ModuleList(after)
            self.takes_types = takes_types

        def forward(self, input_ids: Any, segment_ids: Any, position_ids: Any, token_type_ids: Any = None) -> Any:
            hidden = encode(self.base, self.takes_types, input_ids, segment_ids, position_ids, token_type_ids)
            features = {"sentence_embedding": self.pooling(hidden, segment_ids)}
            for module in self.after:
                features = module(features)
            return features["sentence_embedding"]

    class Tokens(nn.Module):  # type: ignore[name-defined,misc]
        """The encoder's token states, (rows, L, hidden)."""

        def __init__(self, base: Any, takes_types: bool) -> None:
            super().__init__()
            self.base = base
            self.takes_types = takes_types

        def forward(self, input_ids: Any, segment_ids: Any, position_ids: Any, token_type_ids: Any = None) -> Any:
            return encode(self.base, self.takes_types, input_ids, segment_ids, position_ids, token_type_ids)

    class Head(nn.Module):  # type: ignore[name-defined,misc]
        """A per-token head (token classification, QA) over the whole row."""

        def __init__(self, model: Any, names: tuple[str, ...], takes_types: bool) -> None:
            super().__init__()
            self.model = model
            self.names = names
            self.takes_types = takes_types

        def forward(self, input_ids: Any, segment_ids: Any, position_ids: Any, token_type_ids: Any = None) -> Any:
            kwargs = {"input_ids": input_ids, "attention_mask": block_mask(segment_ids, self.model.dtype),
                      "position_ids": position_ids}
            if self.takes_types and token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            out = self.model(**kwargs)
            return tuple(out[n] for n in self.names)

    class SequenceClassifier(nn.Module):  # type: ignore[name-defined,misc]
        """A sequence-classification head on each segment's first token: (rows, S, labels).

        The head reads the first token of what it is given, as it reads token 0 of a
        sequence run alone (BERT's pooler, RoBERTa's and ELECTRA's classification heads,
        DistilBERT's pre-classifier), so each segment's first token goes in as a
        sequence of one."""

        def __init__(self, model: Any, kind: str, max_segments: int, takes_types: bool) -> None:
            super().__init__()
            self.model = model
            self.kind = kind
            self.max_segments = max_segments
            self.takes_types = takes_types
            self.register_buffer("ids", torch.arange(1, max_segments + 1).view(1, max_segments, 1), persistent=False)

        def forward(self, input_ids: Any, segment_ids: Any, position_ids: Any, token_type_ids: Any = None) -> Any:
            model = self.model
            hidden = encode(model.base_model, self.takes_types, input_ids, segment_ids, position_ids, token_type_ids)
            firsts = torch.matmul(first_tokens(segment_ids, self.ids, hidden.dtype), hidden)  # (rows, S, H)
            x = firsts.flatten(0, 1).unsqueeze(1)  # (rows * S, 1, H)
            if self.kind == "bert":
                logits = model.classifier(model.dropout(model.base_model.pooler(x)))
            elif self.kind == "distilbert":
                y = nn.functional.relu(model.pre_classifier(x[:, 0]))
                logits = model.classifier(model.dropout(y))
            else:
                logits = model.classifier(x)
            return logits.unflatten(0, (-1, self.max_segments))

    class SentenceReference(nn.Module):  # type: ignore[name-defined,misc]
        def __init__(self, st: Any, takes_types: bool) -> None:
            super().__init__()
            self.st = st
            self.takes_types = takes_types

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            features = {"input_ids": input_ids, "attention_mask": attention_mask}
            if self.takes_types and token_type_ids is not None:
                features["token_type_ids"] = token_type_ids
            return (self.st(features)["sentence_embedding"],)

    class MeanReference(nn.Module):  # type: ignore[name-defined,misc]
        def __init__(self, base: Any, takes_types: bool) -> None:
            super().__init__()
            self.base = base
            self.takes_types = takes_types

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            extra = {"token_type_ids": token_type_ids} if self.takes_types and token_type_ids is not None else {}
            hidden = self.base(input_ids=input_ids, attention_mask=attention_mask, **extra)[0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return (nn.functional.normalize(pooled, p=2.0, dim=1),)

    class HeadReference(nn.Module):  # type: ignore[name-defined,misc]
        def __init__(self, model: Any, names: tuple[str, ...], takes_types: bool) -> None:
            super().__init__()
            self.model = model
            self.names = names
            self.takes_types = takes_types

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            extra = {"token_type_ids": token_type_ids} if self.takes_types and token_type_ids is not None else {}
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
            return tuple(out[n] for n in self.names)

    ns = _Namespace(SegmentPooling=SegmentPooling, Normalize=Normalize, Embedder=Embedder, Tokens=Tokens, Head=Head,
                    SequenceClassifier=SequenceClassifier, SentenceReference=SentenceReference,
                    MeanReference=MeanReference, HeadReference=HeadReference)
    _WRAPPERS["ns"] = ns
    return ns


# ---------------------------------------------------------------------------------------
# Reading outputs back, and the parity probe


def unpack_outputs(packed: PackedModel, outputs: Mapping[str, Any] | Sequence[Any],
                   layout: Packing | Sequence[Sequence[Slot]], *, first_row: int = 0) -> dict[int, dict[str, np.ndarray]]:
    """Each placed sequence's outputs, by its index: a segment output's entry for its
    segment, a token output cropped to its slot. ``outputs`` are one run's (by name, or in
    the spec's order); the layout's row ``r`` ran as row ``first_row + r``."""
    named = outputs if isinstance(outputs, Mapping) else dict(zip(packed.spec.output_names, outputs))
    arrays = {n: _numpy(named[n]) for n in packed.spec.output_names}
    got: dict[int, dict[str, np.ndarray]] = {}
    for r, row in enumerate(_layout_rows(layout)):
        outs = {n: a[first_row + r] for n, a in arrays.items()}
        for k, slot in enumerate(row):
            got[slot.sequence] = packed.slot_outputs(outs, k, slot)
    return got


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


@dataclass
class PackedParity:
    """The worst difference of each output between packed rows and each sequence run alone."""

    atol: float
    max_abs: dict[str, float] = field(default_factory=dict)
    worst: dict[str, int] = field(default_factory=dict)
    sequences: int = 0
    rows: int = 0

    @property
    def ok(self) -> bool:
        return all(v <= self.atol for v in self.max_abs.values())

    def __str__(self) -> str:
        parts = [f"{n}: {v:.3e} (sequence {self.worst[n]})" for n, v in self.max_abs.items()]
        return (f"packed parity atol={self.atol:g}, {self.sequences} sequences in {self.rows} rows: "
                f"{'OK' if self.ok else 'FAILED'}; max |packed - alone| " + ", ".join(parts))


def check_packed_parity(
    packed: PackedModel,
    sequences: Sequence[Sequence[int]] | Sequence[str | tuple[str, str]],
    *,
    row_length: int,
    token_type_ids: Sequence[Sequence[int]] | None = None,
    run: Callable[[dict[str, np.ndarray]], Any] | None = None,
    reference: Callable[..., Any] | None = None,
    rows: int | None = None,
    atol: float = 1e-4,
) -> PackedParity:
    """Pack ``sequences`` (token id lists, or texts and text pairs for the model's
    tokenizer), run them packed and each alone, and compare every output.

    ``run(inputs)`` runs one packed run's arrays (``rows`` rows of ``row_length``; all the
    layout's rows at once by default) and returns its outputs by name or in the spec's
    order; by default the packed module in eager torch (give a
    :class:`~bucketwise.BucketedModel`'s ``run`` to check a compiled bucket).
    ``reference(input_ids, attention_mask[, token_type_ids])`` runs one sequence alone
    (torch tensors of shape ``(1, n)``); by default :attr:`PackedModel.reference`.

    Returns the report; raises :class:`~bucketwise.errors.ParityError` naming the worst
    output and sequence when any differs by more than ``atol``.
    """
    torch = require("torch", "text")
    if sequences and isinstance(sequences[0], (str, tuple)):
        ids, types = packed.tokenize(sequences)  # type: ignore[arg-type]
    else:
        ids = [list(map(int, s)) for s in sequences]  # type: ignore[arg-type]
        types = [list(map(int, t)) for t in token_type_ids] if token_type_ids is not None else None
    if packed.takes_token_types and types is None:
        types = [[0] * len(s) for s in ids]
    layout = pack([len(s) for s in ids], row_length, packed.max_segments)
    if layout.unpacked:
        raise InputError(f"packed parity: sequences {list(layout.unpacked)} are longer than a row of {row_length}; "
                         "give shorter sequences or a longer row")
    per_run = rows or max(1, len(layout.rows))
    if run is None:
        def run(inputs: dict[str, np.ndarray]) -> Any:
            with torch.inference_mode():
                return packed.module(**{n: torch.from_numpy(v) for n, v in inputs.items()})
    reference = reference or packed.reference
    got: dict[int, dict[str, np.ndarray]] = {}
    for start in range(0, len(layout.rows), per_run):
        chunk = layout.rows[start:start + per_run]
        inputs = packed.inputs(ids, chunk, row_length=row_length, token_type_ids=types, rows=per_run)
        out = run(inputs)
        if not isinstance(out, (Mapping, tuple, list)):
            out = (out,)
        got.update(unpack_outputs(packed, out, chunk))
    report = PackedParity(atol, sequences=len(ids), rows=len(layout.rows))
    for i, seq in enumerate(ids):
        args = [torch.tensor([seq], dtype=torch.long), torch.ones((1, len(seq)), dtype=torch.long)]
        if packed.takes_token_types and types is not None:
            args.append(torch.tensor([types[i]], dtype=torch.long))
        with torch.inference_mode():
            want = reference(*args)
        if not isinstance(want, (tuple, list)):
            want = (want,)
        for name, value in zip(packed.spec.output_names, want):
            ref = _numpy(value)[0].astype(np.float64)
            mine = got[i][name].astype(np.float64)
            if mine.shape != ref.shape:
                raise ParityError(f"packed parity: output {name!r} of sequence {i} has shape {mine.shape} packed "
                                  f"but {ref.shape} alone")
            err = float(np.max(np.abs(mine - ref))) if ref.size else 0.0
            if err > report.max_abs.get(name, -1.0):
                report.max_abs[name] = err
                report.worst[name] = i
    if not report.ok:
        raise ParityError(f"{report}. This model packs wrongly: serve it unpacked")
    return report
