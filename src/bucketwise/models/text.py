"""Texts in, sentence embeddings out: the sentence embedder (the feature-extraction head), and the
default buckets of every text head.

Loading a model folder (its spec, pooling and tokenizer) is ``bucketwise.models.encoders``;
its names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from ..plans import Plan
from ..shapes import BATCH, Bucket
from ..spec import ModelSpec
from .encoders import (
    DEFAULT_MODEL_NAME,
    encoder_spec,
    lazy_default_encoder,
    load_default_encoder,
    load_default_tokenizer,
    mean_pooled_encoder,
)
from .frontend import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_SEQ_SIZES,
    FINE_BATCH_SIZES,
    FINE_SEQ_SIZES,
    Encoded,
    Text,
    TextModel,
    default_text_plan,
    length_free,
)
from .tasks import register_head

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_SEQ_SIZES",
    "FINE_BATCH_SIZES",
    "FINE_SEQ_SIZES",
    "DEFAULT_MODEL_NAME",
    "default_text_plan",
    "length_free",
    "encoder_spec",
    "load_default_encoder",
    "load_default_tokenizer",
    "lazy_default_encoder",
    "mean_pooled_encoder",
    "SentenceEmbedder",
    "TextModel",
]


def text_encoder(backend: str, path: str | None = None) -> tuple[Any, Any, ModelSpec]:
    """The encoder in ``path`` (default all-MiniLM-L6-v2) as ``backend`` takes it, with its
    tokenizer and spec: a lazily loaded torch module, or on ``jax`` the same BERT weights
    as a JAX function (:func:`~bucketwise.models.jax_bert.bert_encoder`)."""
    if backend == "jax":
        from .jax_bert import bert_encoder

        return bert_encoder(path)
    return lazy_default_encoder(path)


def text_plan(plan: Any = None, *, batch_sizes: Sequence[int] = (), seq_sizes: Sequence[int] = (),
              backend: Any = None) -> Plan:
    """The buckets a command or a config names: ``plan`` (a :class:`Plan` or a plan file),
    else batch and length sizes over the backend's default grid (either may be left empty),
    else the backend's default plan. Callers check that ``plan`` and sizes are not both given.

    A plan of lengths alone (``bucketwise plan`` on a shapes or traffic file writes one)
    gets the backend's default batch sizes for each length."""
    default = default_text_plan(backend=backend)
    if plan:
        plan = plan if isinstance(plan, Plan) else Plan.load(plan)
        if plan.dims == ("seq",):
            plan = Plan(tuple(Bucket({BATCH: b, "seq": s}) for s in plan.sizes("seq") for b in default.sizes(BATCH)),
                        plan.cost_model, plan.meta)
        return plan
    if batch_sizes or seq_sizes:
        return Plan.grid(batch=list(batch_sizes) or default.sizes("batch"), seq=list(seq_sizes) or default.sizes("seq"))
    return default


class SentenceEmbedder(TextModel):
    """Texts in, sentence embeddings out, through a bucketed encoder: the
    ``feature-extraction`` head of the text front end (:class:`TextModel`).

    Texts are tokenized without padding, sorted by length and cut into batches by the
    router, so each batch pads only to its own bucket; results come back in the input
    order. A text longer than the model takes (``max_length``: sentence-transformers'
    ``max_seq_length``) is truncated to it, as sentence-transformers does, and counted in
    ``stats.overflow["truncate"]``.
    """

    task = "feature-extraction"
    outputs = ("sentence_embedding",)

    @classmethod
    def _load(cls, backend: str, path: str | None) -> tuple[Any, Any, ModelSpec]:
        return text_encoder(backend, path)

    def describe_outputs(self) -> str:
        return "sentence embeddings"

    def embed(self, texts: Sequence[Text], *, progress: bool = False) -> np.ndarray:
        """Embeddings of ``texts`` as a float32 array (len(texts), hidden), input order."""
        if isinstance(texts, str):
            raise InputError("texts must be a list of strings, got a single string; wrap it: [text]")
        if len(texts) == 0:
            raise InputError("texts is empty; pass at least one text")
        return self.embed_tokenized(self.tokenize(texts), progress=progress)

    def embed_tokenized(self, encoded: Sequence[Encoded], *, progress: bool = False) -> np.ndarray:
        """Like :meth:`embed`, for texts already tokenized by :meth:`tokenize` (see
        :meth:`TextModel.run_groups` for how they are batched)."""
        result: np.ndarray | None = None
        for idx, outs in self.run_groups(encoded, progress=progress, desc="embed"):
            if result is None:
                result = np.empty((len(encoded), outs[0]["sentence_embedding"].shape[-1]), dtype=np.float32)
            result[idx] = np.stack([o["sentence_embedding"] for o in outs])
        return result  # type: ignore[return-value]  # encoded is non-empty, so it was set


register_head("feature-extraction", SentenceEmbedder)
