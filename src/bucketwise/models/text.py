"""Texts in, sentence embeddings out: the default buckets and the sentence embedder.

Loading a model folder (its spec, pooling and tokenizer) is ``bucketwise.models.encoders``;
its names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..backends.base import get_backend
from ..errors import BucketOverflowError, InputError, ParityError
from ..plans import Plan
from ..router import OverflowPolicy
from ..runtime.model import BucketedModel
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

__all__ = [
    "DEFAULT_MODEL_NAME",
    "default_text_plan",
    "length_free",
    "encoder_spec",
    "load_default_encoder",
    "load_default_tokenizer",
    "lazy_default_encoder",
    "mean_pooled_encoder",
    "SentenceEmbedder",
]

DEFAULT_BATCH_SIZES = (1, 8)
DEFAULT_SEQ_SIZES = (16, 32, 64, 128, 256)
# Where buckets of one batch size share a session whose length is free (ONNX Runtime's
# default), more lengths cost no memory: a ladder whose steps grow with the length (4
# tokens up to 32, then 8, 16 and 32), and the batch sizes a server and a bulk job use.
FINE_BATCH_SIZES = (1, 2, 4, 8, 16, 32)
FINE_SEQ_SIZES = (8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256)

Text = str | tuple[str, str]


def text_encoder(backend: str, path: str | None = None) -> tuple[Any, Any, ModelSpec]:
    """The encoder in ``path`` (default all-MiniLM-L6-v2) as ``backend`` takes it, with its
    tokenizer and spec: a lazily loaded torch module, or on ``jax`` the same BERT weights
    as a JAX function (:func:`~bucketwise.models.jax_bert.bert_encoder`)."""
    if backend == "jax":
        from .jax_bert import bert_encoder

        return bert_encoder(path)
    return lazy_default_encoder(path)


def default_text_plan(max_length: int | None = None, backend: Any = None) -> Plan:
    """The default buckets for text on ``backend`` (a name or an instance).

    Where the backend's buckets of one batch size share one session with the length free
    (``onnxruntime``, unless built with ``free_dims=()``), a bucket costs no more memory,
    so the plan is fine: batch {1, 2, 4, 8, 16, 32} x seq in steps of 4 tokens up to 32,
    then 8, 16 and 32 up to 256. Elsewhere each bucket holds its own compiled copy, and the
    plan is batch {1, 8} x seq {16, 32, 64, 128, 256}.

    256 is the sequence length all-MiniLM-L6-v2 was trained at. With a model's
    ``max_length`` below 256, the sizes stop there, and the top bucket is exactly
    ``max_length`` (the longest input the model takes).
    """
    fine = length_free(backend)
    batches, seqs = (FINE_BATCH_SIZES, list(FINE_SEQ_SIZES)) if fine else (DEFAULT_BATCH_SIZES, list(DEFAULT_SEQ_SIZES))
    if max_length is not None and max_length < seqs[-1]:
        seqs = [s for s in seqs if s < max_length] + [max_length]
    return Plan.grid(batch=batches, seq=seqs)


def text_plan(plan: Any = None, *, batch_sizes: Sequence[int] = (), seq_sizes: Sequence[int] = (),
              backend: Any = None) -> Plan:
    """The buckets a command or a config names: ``plan`` (a :class:`Plan` or a plan file),
    else batch and length sizes over the backend's default grid (either may be left empty),
    else the backend's default plan. Callers check that ``plan`` and sizes are not both given."""
    if plan:
        return plan if isinstance(plan, Plan) else Plan.load(plan)
    default = default_text_plan(backend=backend)
    if batch_sizes or seq_sizes:
        return Plan.grid(batch=list(batch_sizes) or default.sizes("batch"), seq=list(seq_sizes) or default.sizes("seq"))
    return default


def length_free(backend: Any) -> bool:
    """True when ``backend`` (a name, with its default options, or an instance) shares one
    artifact between buckets that differ only in length."""
    if isinstance(backend, str):
        return backend == "onnxruntime"
    return "seq" in tuple(getattr(backend, "free_dims", ()))


class SentenceEmbedder:
    """Texts in, sentence embeddings out, through a bucketed encoder.

    Texts are tokenized without padding, sorted by length and cut into batches by the
    router, so each batch pads only to its own bucket; results come back in the input
    order. A text longer than the model takes (``max_length``: sentence-transformers'
    ``max_seq_length``) is truncated to it, as sentence-transformers does, and counted in
    ``stats.overflow["truncate"]``.
    """

    def __init__(self, model: BucketedModel, tokenizer: Any, *, max_length: int | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        info = model.spec.meta.get("encoder")
        self.max_length = max_length if max_length is not None else (info.max_length if info is not None else None)

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
        verify: bool = True,
        build: bool = True,
        warmup_runs: int = 1,
    ) -> SentenceEmbedder:
        """An encoder (``model`` folder, default all-MiniLM-L6-v2) on ``backend`` with
        ``plan`` (default buckets, up to the model's longest input), compiled. On the
        ``jax`` backend the folder's BERT weights run as a JAX function
        (:func:`~bucketwise.models.jax_bert.bert_encoder`).

        With a ``cache`` (an :class:`~bucketwise.runtime.cache.ArtifactCache` or folder),
        cached buckets are loaded instead of compiled, and the weights are loaded into
        torch only if some bucket is missing. ``lazy``, ``workers`` and ``memory_budget``
        go to :meth:`BucketedModel.compile`. With ``verify`` (default), whenever buckets
        were compiled, a few probe texts are run bucketed and unpadded through the model
        itself, and :class:`ParityError` refuses an embedder whose outputs do not match.

        With ``build=False`` nothing is built yet: tokenize first, then call
        :meth:`prepare` with ``only=embedder.buckets_for(encoded)`` to build just the
        buckets a known set of texts uses (what ``bucketwise embed`` does).
        ``warmup_runs`` (default 1) runs each artifact that many times on example inputs
        once built; a batch job that runs every bucket it builds right away can use 0.
        """
        runtime = get_backend(backend, **dict(backend_options or {}))
        module, tokenizer, spec = text_encoder(runtime.name, model)
        bucketed = BucketedModel(
            module,
            spec,
            plan or default_text_plan(spec.meta["encoder"].max_length, runtime),
            backend=runtime,
            overflow=overflow,
            cache=cache,
            warmup_runs=warmup_runs,
        )
        embedder = cls(bucketed, tokenizer)
        if build:
            embedder.prepare(progress=progress, lazy=lazy, workers=workers, memory_budget=memory_budget, verify=verify)
        return embedder

    def prepare(
        self,
        *,
        progress: bool = True,
        lazy: bool = False,
        workers: int | None = None,
        memory_budget: float | None = None,
        verify: bool = True,
        only: Collection[Bucket] | None = None,
    ) -> SentenceEmbedder:
        """Build (or load) the buckets (``only`` those and the ones covering every shape;
        see :meth:`BucketedModel.compile`), then, when anything was compiled and
        ``verify``, check parity on probe texts. Returns self."""
        self.model.compile(progress=progress, lazy=lazy, workers=workers, memory_budget=memory_budget, only=only)
        if verify and self.model.builder.model_loaded:
            counted = dict(self.model.stats.overflow)  # truncations of texts tokenized already
            self.verify()
            self.model.reset_stats()  # the probes are not the caller's traffic
            self.model.stats.overflow.update(counted)
        return self

    def verify(self, texts: Sequence[Text] = (), *, atol: float = 1e-4) -> float:
        """Run ``texts`` (default: probes of several lengths) bucketed and through the model
        itself at their exact length; raise :class:`ParityError` when a sentence embedding
        differs by more than ``atol``. Returns the largest difference."""
        limit = self.router.limits["seq"]
        texts = list(texts) or [" ".join(["word"] * n) for n in (1, 5, max(1, limit // 2 - 2), max(1, limit - 2))]
        encoded = self.tokenize(texts)
        got = self.embed_tokenized(encoded)
        worst = 0.0
        for row, emb in zip(self.rows(encoded), got):
            ref = self.model.reference({k: v[None] for k, v in row.items()})["sentence_embedding"][0]
            worst = max(worst, float(np.max(np.abs(np.asarray(ref, dtype=np.float32) - emb))))
        if worst > atol:
            raise ParityError(
                f"{self.model.model_name} on {self.model.backend.name}: bucketed sentence embeddings differ "
                f"from the model's own by up to {worst:.3g} (tolerance {atol:g}); refusing to serve them. "
                "Try another backend (e.g. torchscript), or report the model"
            )
        return worst

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
            enc, cut = self._encode(args)
            truncated += cut
            types = enc.get("token_type_ids") or [0] * len(enc["input_ids"])
            out.append((enc["input_ids"], types))
        if truncated:
            self.model.count_overflow("truncate", truncated)
        return out

    def _encode(self, args: tuple[str, ...]) -> tuple[Any, bool]:
        """Tokenize one text; cut it to the model's ``max_length`` (as sentence-transformers
        does) and then to what the router's truncate policy allows. Returns it and whether
        it was cut."""
        enc = self.tokenizer(*args, verbose=False)  # over-long texts are cut below, not warned about
        limit = self.max_length if self.max_length is not None and len(enc["input_ids"]) > self.max_length else None
        shape = {BATCH: 1, "seq": min(len(enc["input_ids"]), limit or len(enc["input_ids"]))}
        if not self.router.fits(shape):
            try:
                decision = self.router.resolve(shape)
            except BucketOverflowError:
                decision = None  # "error": raised when it runs, or by admit()
            if decision is not None and decision.policy == "truncate":
                limit = decision.shape["seq"]
        if limit is None:
            return enc, False
        return self.tokenizer(*args, truncation=True, max_length=limit), True

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

    def rows(self, encoded: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[dict[str, np.ndarray]]:
        """Model inputs of each tokenized text, without the batch axis (one row each): the
        spec's inputs, so a model without ``token_type_ids`` gets none."""
        names = self.model.spec.input_names
        out = []
        for ids, types in encoded:
            row = {"input_ids": np.asarray(ids, dtype=np.int64), "attention_mask": np.ones(len(ids), dtype=np.int64)}
            if "token_type_ids" in names:
                row["token_type_ids"] = np.asarray(types, dtype=np.int64)
            out.append(row)
        return out

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
        bar = tqdm(total=len(encoded), desc="embed", unit="text") if progress else None
        rows = self.rows(encoded)
        lengths = [len(ids) for ids, _ in encoded]
        result: np.ndarray | None = None

        def put(idx: list[int], embeddings: list[np.ndarray]) -> None:
            nonlocal result
            if result is None:
                result = np.empty((len(encoded), embeddings[0].shape[-1]), dtype=np.float32)
            result[idx] = np.stack(embeddings)
            if bar is not None:
                bar.update(len(idx))

        for bucket, part in self._runs(lengths):
            if bucket is None:  # longer than every bucket: the overflow policy, one by one
                out = self.model.run({k: v[None] for k, v in rows[part[0]].items()})
                put(part, [out["sentence_embedding"][0]])
                continue
            outs = self.model.run_rows([rows[i] for i in part], [{"seq": lengths[i]} for i in part], bucket)
            put(part, [o["sentence_embedding"] for o in outs])
        if bar is not None:
            bar.close()
        return result  # type: ignore[return-value]  # encoded is non-empty, so it was set

    def buckets_for(self, encoded: Sequence[tuple[Sequence[int], Sequence[int]]]) -> set[Bucket]:
        """The buckets :meth:`embed_tokenized` runs ``encoded`` in (for ``prepare(only=)``)."""
        return {b for b, _ in self._runs([len(ids) for ids, _ in encoded]) if b is not None}

    def _runs(self, lengths: Sequence[int]) -> Iterator[tuple[Bucket | None, list[int]]]:
        """The runs that embed texts of ``lengths``: (bucket, indices), sorted by length and
        grouped by the length edge they fit (every text of a group is covered by the same
        buckets), each group cut by :meth:`Router.take`, except that a group's last run
        fills a smaller batch bucket exactly, if it holds at least half of the rows left,
        rather than pad over 1/8 of a larger one;
        ``(None, [i])`` for a text longer than every bucket (the overflow policy's, one by
        one)."""
        groups: dict[int | None, list[int]] = {}
        for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
            groups.setdefault(self.router.queue_edge("seq", lengths[i]), []).append(i)
        for edge, idx in groups.items():
            if edge is None:
                for i in idx:
                    yield None, [i]
                continue
            while idx:
                bucket, n = self.router.take(len(idx), seq=edge)
                if n == len(idx) and bucket[BATCH] - n > bucket[BATCH] // 8:
                    # The group's last, partial run would be over 1/8 pad rows, which cost
                    # as much as real ones: run a full smaller bucket now, the rest next,
                    # where it takes at least half the rows (not many small runs instead).
                    full = self._full_run(n, edge)
                    if full is not None and 2 * full[1] >= n:
                        bucket, n = full
                part, idx = idx[:n], idx[n:]
                yield bucket, part

    def _full_run(self, rows: int, edge: int) -> tuple[Bucket, int] | None:
        """The largest bucket at length ``edge`` that ``rows`` rows fill exactly, if any."""
        for size in reversed(self.router.queue_edges(BATCH)):
            if size <= rows:
                bucket = self.router.route({BATCH: size, "seq": edge})
                if bucket[BATCH] == size:
                    return bucket, size
        return None
