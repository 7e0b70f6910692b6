"""The text front end every text head shares: tokenize, sort by length, route, restore order.

A head (sentence embeddings, classification, ranking, token classification, question
answering) is a :class:`TextModel` subclass that says which outputs it needs and how to
post-process them. Everything between texts and per-text outputs is here, once:

- tokenization of single texts and pairs, with truncation ``longest_first``,
  ``only_first`` or ``only_second``, on the ``right`` or ``left``;
- a text longer than the model takes is cut to its ``max_length`` (as sentence-transformers
  and transformers' pipelines cut it); one longer than the largest bucket is left to the
  router's overflow policy, or split into windows by heads that window;
- texts sorted by length and cut into runs by the one router, each run padding only to its
  own bucket; outputs come back in input order, cropped to each text's real tokens;
- the parity probe: whenever buckets were compiled, a few texts run bucketed and through
  the model at their exact length, and :class:`~bucketwise.errors.ParityError` refuses a
  model whose outputs differ.

A server runs a head's own code in a worker thread inside :func:`run_through`: every model
run of that thread then goes through the server's batcher instead of running here, so
rows of concurrent requests share bucketed batches.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np

from ..backends.base import get_backend
from ..errors import BucketOverflowError, ConfigError, InputError, ParityError
from ..plans import Plan
from ..router import OverflowPolicy, Run
from ..runtime.model import BucketedModel
from ..shapes import BATCH, Bucket

__all__ = ["TextModel", "Encoded", "TRUNCATIONS", "SIDES", "PACKED_SEGMENTS", "compile_in_child", "default_text_plan",
           "length_free", "packed_text_plan", "run_through"]

Text = str | tuple[str, str]
Encoded = tuple[list[int], list[int]]  # (input_ids, token_type_ids) of one text, unpadded
TRUNCATIONS = ("longest_first", "only_first", "only_second")
# A text of more characters than this per token the model takes is cut before tokenizing
# (at white space): natural text has 3-6 characters a token, so the prefix decides.
CHARS_PER_TOKEN = 16

_ROUTE = threading.local()  # this thread's way to run rows, inside run_through


@contextmanager
def run_through(submit: Callable[[list[dict[str, np.ndarray]]], list[dict[str, Any]]]) -> Iterator[None]:
    """Within this block, this thread's heads run their rows (one dict of unbatched inputs
    per text) with ``submit``, which returns each row's outputs, cropped, in order: what
    a server's batcher does. Heads' own code (tokenizing, windows, post-processing) is
    unchanged."""
    _ROUTE.submit = submit
    try:
        yield
    finally:
        del _ROUTE.submit
SIDES = ("right", "left")

DEFAULT_BATCH_SIZES = (1, 8)
DEFAULT_SEQ_SIZES = (16, 32, 64, 128, 256)
# Where buckets of one batch size share a session whose length is free (ONNX Runtime's
# default), more lengths cost no memory: a ladder whose steps grow with the length (4
# tokens up to 32, then 8, 16 and 32), and the batch sizes a server and a bulk job use.
FINE_BATCH_SIZES = (1, 2, 4, 8, 16, 32)
FINE_SEQ_SIZES = (8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256)


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


PACKED_SEGMENTS = 16  # texts per packed row, by default (bucketwise embed --pack)


def packed_text_plan(max_length: int | None = None) -> Plan:
    """The default buckets of a packed text model: 16 and 4 rows of 128 positions, where
    short and medium texts are packed (4 rows for a small input's last run), and one row
    of the model's longest input up to 256, for the long ones: three compiled shapes (two
    where the model takes at most 128 tokens)."""
    top = min(256, max_length or 256)
    short = min(128, top)
    buckets = {Bucket({BATCH: 16, "seq": short}), Bucket({BATCH: 4, "seq": short}), Bucket({BATCH: 1 if top > short else 4,
                                                                                          "seq": top})}
    return Plan(tuple(sorted(buckets, key=lambda b: (b["seq"], b[BATCH]))))


def length_free(backend: Any) -> bool:
    """True when ``backend`` (a name, with its default options, or an instance) shares one
    artifact between buckets that differ only in length."""
    if isinstance(backend, str):
        return backend == "onnxruntime"
    return "seq" in tuple(getattr(backend, "free_dims", ()))


class TextModel:
    """Texts in, per-text outputs out, through a bucketed model: the front end of every head.

    Subclasses set ``task`` (a Hugging Face task name), ``outputs`` (the model outputs the
    head reads, which the parity probe compares) and ``_load`` (the folder as a module, its
    tokenizer and spec), and post-process what :meth:`run_tokenized` returns.

    ``truncation`` is how a pair is cut when it must be (``longest_first``, the default,
    trims the longer text token by token; ``only_first``/``only_second`` trim one text);
    ``truncation_side`` is which end is cut (``right`` keeps the start).
    """

    task: ClassVar[str] = ""
    outputs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: BucketedModel, tokenizer: Any, *, max_length: int | None = None,
                 truncation: str = "longest_first", truncation_side: str = "right") -> None:
        if truncation not in TRUNCATIONS:
            raise ConfigError(f"truncation={truncation!r}; use one of {', '.join(TRUNCATIONS)}")
        if truncation_side not in SIDES:
            raise ConfigError(f"truncation_side={truncation_side!r}; use 'right' (keep the start) or 'left' (keep the end)")
        self.model = model
        self.tokenizer = tokenizer
        self.packing: Any = None  # a PackedModel when texts are packed into rows (default(pack=S))
        self._placed: tuple[Any, list[Run]] | None = None  # the last placement (bulk jobs ask twice)
        self.packed_folder: str | None = None  # its folder, which the parity probe loads unpacked
        self.truncation = truncation
        self.truncation_side = truncation_side
        if hasattr(tokenizer, "truncation_side"):
            tokenizer.truncation_side = truncation_side
        info = model.spec.meta.get("encoder")
        self.max_length = max_length if max_length is not None else (info.max_length if info is not None else None)
        self._check_plan(info)

    def _check_plan(self, info: Any) -> None:
        """Refuse a plan with a bucket longer than the model takes: every text is cut to
        ``max_length`` tokens, so such a bucket never runs, and past the position
        embeddings it cannot run at all (a shapes file of 10^12 tokens asked for 10^12)."""
        plan = self.model.plan
        if self.max_length is None or "seq" not in plan.dims:
            return
        top = plan.max_size("seq")
        if top > self.max_length:
            name = info.name if info is not None else "the model"
            raise ConfigError(
                f"the plan has a bucket of seq {top}, but {name} takes at most {self.max_length} tokens "
                f"(longer texts are cut to {self.max_length}), so that bucket would never run. Give a plan "
                f"whose buckets stop at seq {self.max_length}: bucketwise plan --model DIR caps them there"
            )

    # -- loading --------------------------------------------------------------------------

    @classmethod
    def _load(cls, backend: str, path: str | None) -> tuple[Any, Any, Any]:
        """(module or LazyModel, tokenizer, spec) of the folder ``path`` for ``backend``."""
        raise NotImplementedError

    @classmethod
    def _load_packed(cls, backend: str, path: str | None, max_segments: int) -> tuple[Any, Any, Any, Any]:
        """(LazyModel, tokenizer, spec, :class:`~bucketwise.models.packing.PackedModel`) of
        the folder ``path`` packed ``max_segments`` texts to a row, or a
        :class:`ConfigError` where this head or ``backend`` does not pack."""
        from .encoders import model_dir
        from .packing import lazy_packed_module

        if backend == "jax":  # its own BERT in JAX, over packed rows
            from .jax_bert import packed_bert_encoder

            module, packed = packed_bert_encoder(path, cls.task, max_segments=max_segments)
        else:
            module, packed = lazy_packed_module(model_dir(path), cls.task, max_segments=max_segments)
        # Per-text outputs come from each text's segment, per-token ones cropped to its slot.
        missing = [n for n in cls.outputs if n not in packed.segment_outputs + packed.token_outputs]
        if missing:
            raise ConfigError(f"pack: a {cls.task} head reads {', '.join(missing)}, which the packed model does not "
                              "give; run it unpacked (no pack)")
        # The head reads its folder's description (labels, longest input) and tokenizer as
        # unpacked; nothing of it loads weights (but on jax, whose encoder holds its params).
        _, tokenizer, unpacked = cls._load(backend, path)
        spec = type(packed.spec)(packed.spec.inputs, packed.spec.outputs, {**unpacked.meta, **packed.spec.meta})
        return module, tokenizer, spec, packed

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
        truncation: str = "longest_first",
        truncation_side: str = "right",
        build_in_child: bool = False,
        pack: int | None = None,
    ) -> Any:
        """The model folder ``model`` (default all-MiniLM-L6-v2) on ``backend`` with
        ``plan`` (default buckets, up to the model's longest input), compiled.

        With ``build_in_child`` and a ``cache``, buckets the cache lacks are compiled by a
        child process (``bucketwise compile``) and then loaded from the cache here, so this
        process never loads the framework model or its exporter: a server's cold start
        then holds what a warm start holds. Backends without an artifact cache (eager,
        inductor) build here, as without it.

        With a ``cache`` (an :class:`~bucketwise.runtime.cache.ArtifactCache` or folder),
        cached buckets are loaded instead of compiled, and the weights are loaded into
        torch only if some bucket is missing. ``lazy``, ``workers`` and ``memory_budget``
        go to :meth:`BucketedModel.compile`. With ``verify`` (default), whenever buckets
        were compiled, a few probe texts are run bucketed and unpadded through the model
        itself, and :class:`ParityError` refuses a model whose outputs do not match.

        With ``build=False`` nothing is built yet: tokenize first, then call
        :meth:`prepare` with ``only=head.buckets_for(encoded)`` to build just the
        buckets a known set of texts uses (what ``bucketwise embed`` does).
        ``warmup_runs`` (default 1) runs each artifact that many times on example inputs
        once built; a batch job that runs every bucket it builds right away can use 0.

        ``pack=S`` packs up to ``S`` texts into each row of a bucket (see
        :mod:`bucketwise.models.packing` and :meth:`run_groups`): each bucket is rows ×
        row length, and the default plan is :func:`packed_text_plan`. Every head packs:
        per-text outputs (embeddings, classification, reranking) come from each text's
        segment, per-token ones (token classification, QA) cropped to its slot; the parity
        probe compares every packed output with its text run alone.
        """
        runtime = get_backend(backend, **dict(backend_options or {}))
        packing = None
        if pack is not None:
            module, tokenizer, spec, packing = cls._load_packed(runtime.name, model, pack)
            longest = min(packing.max_length, spec.meta["encoder"].max_length)
            if plan is None:
                plan = packed_text_plan(longest)
        else:
            module, tokenizer, spec = cls._load(runtime.name, model)
            longest = spec.meta["encoder"].max_length
        if plan is None or (plan == default_text_plan(backend=runtime) and plan.max_size("seq") > longest):
            plan = default_text_plan(longest, runtime)  # the default buckets stop at the model's longest input
        bucketed = BucketedModel(
            module,
            spec,
            plan,
            backend=runtime,
            overflow=overflow,
            cache=cache,
            warmup_runs=warmup_runs,
        )
        head = cls(bucketed, tokenizer, truncation=truncation, truncation_side=truncation_side,
                   max_length=longest if packing is not None else None)
        if packing is not None:
            from .encoders import model_dir

            head.packing, head.packed_folder = packing, model_dir(model)
            bucketed.packer = packing  # the batcher packs sequences through it
        if build and build_in_child and packing is None:  # the child compiles unpacked buckets
            _build_in_child(head, model, backend_options, workers, progress)
        if build:
            head.prepare(progress=progress, lazy=lazy, workers=workers, memory_budget=memory_budget, verify=verify)
        return head

    def prepare(
        self,
        *,
        progress: bool = True,
        lazy: bool = False,
        workers: int | None = None,
        memory_budget: float | None = None,
        verify: bool = True,
        only: Collection[Bucket] | None = None,
    ) -> Any:
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
        """Run ``texts`` (default: probes of several lengths, and a pair) bucketed and
        through the model itself at their exact length; raise :class:`ParityError` when an
        output the head reads (``outputs``) differs by more than ``atol``. Returns the
        largest difference."""
        limit = self.router.limits["seq"]
        if not texts:
            texts = [" ".join(["word"] * n) for n in (1, 5, max(1, limit // 2 - 2), max(1, limit - 2))]
            texts.append(("a word", "and its pair"))  # type: ignore[arg-type]
        encoded = self.tokenize(texts)
        if self.packing is not None:
            return self._verify_packed(encoded, atol)
        got = self.run_tokenized(encoded)
        worst = 0.0
        for row, outs in zip(self.rows(encoded), got):
            ref = self.model.reference({k: v[None] for k, v in row.items()})
            for name in self.outputs:
                want = np.asarray(ref[name][0], dtype=np.float32)
                worst = max(worst, float(np.max(np.abs(want - np.asarray(outs[name], dtype=np.float32)))))
        if worst > atol:
            raise ParityError(
                f"{self.model.model_name} on {self.model.backend.name}: bucketed {self.describe_outputs()} differ "
                f"from the model's own by up to {worst:.3g} (tolerance {atol:g}); refusing to serve them. "
                "Try another backend (e.g. torchscript), or report the model"
            )
        return worst

    def _verify_packed(self, encoded: Sequence[Encoded], atol: float) -> float:
        """The parity probe of a packed model: ``encoded`` packed into rows of the largest
        bucket's length and run there, each output compared with its text run alone
        through the unpacked model (:func:`~bucketwise.models.packing.check_packed_parity`)."""
        from .packing import check_packed_parity, packed_module

        full = packed_module(self.packed_folder, self.task, max_segments=self.packing.max_segments)
        ids = [list(i) for i, _ in encoded]
        types = [list(t) for _, t in encoded] if self.packing.takes_token_types else None
        try:
            report = check_packed_parity(full, ids, token_type_ids=types, row_length=int(self.router.limits["seq"]),
                                         run=self.model.run, atol=atol)
        except ParityError as err:
            raise ParityError(f"{self.model.model_name} on {self.model.backend.name}, packed "
                              f"{self.packing.max_segments} to a row: {err}; refusing to serve it packed. "
                              "Run it unpacked (no pack), or try another backend") from None
        return max(report.max_abs.values(), default=0.0)

    def describe_outputs(self) -> str:
        return " and ".join(self.outputs)

    @property
    def router(self) -> Any:
        return self.model.router

    # -- tokenizing -----------------------------------------------------------------------

    def tokenize(self, texts: Sequence[Text]) -> list[Encoded]:
        """(input_ids, token_type_ids) per text, unpadded. Pairs are (first, second).

        A text longer than the largest bucket is left to the router: under
        ``overflow="truncate"`` it is cut by the tokenizer to the length the router gives
        (which keeps the closing special token and trims pairs as ``truncation`` says),
        and each truncation is counted in the model's ``stats.overflow``; under ``"error"``
        the call that runs it raises (see :meth:`admit` to refuse it up front).
        """
        out = []
        truncated = 0
        for i, text in enumerate(texts):
            args = self.text_args(text, f"texts[{i}]")
            enc, cut = self._encode(args, i)
            truncated += cut
            types = enc.get("token_type_ids") or [0] * len(enc["input_ids"])
            out.append((enc["input_ids"], types))
        if truncated:
            self.model.count_overflow("truncate", truncated)
        return out

    @staticmethod
    def text_args(text: Any, where: str) -> tuple[str, ...]:
        """``text`` as the tokenizer's arguments: (text,) or (first, second)."""
        if isinstance(text, tuple) and len(text) == 2 and all(isinstance(t, str) for t in text):
            return text
        if isinstance(text, str):
            return (text,)
        raise InputError(f"{where} is a {type(text).__name__}; each text must be a string or a "
                         "(first, second) pair of strings")

    def _encode(self, args: tuple[str, ...], index: int = 0) -> tuple[Any, bool]:
        """Tokenize one text; cut it to the model's ``max_length`` (as sentence-transformers
        does) and then to what the router's truncate policy allows. Returns it and whether
        it was cut."""
        whole = args
        args = self._bounded(args)
        enc = self.tokenizer(*args, verbose=False)  # over-long texts are cut below, not warned about
        if args != whole and (self.max_length is None or len(enc["input_ids"]) <= self.max_length):
            args = whole  # the prefix did not decide: the text, whole
            enc = self.tokenizer(*args, verbose=False)
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
        strategy = self.truncation if len(args) == 2 else "longest_first"
        try:
            return self.tokenizer(*args, truncation=strategy, max_length=limit), True
        except Exception as err:  # noqa: BLE001 - the tokenizer's own error: say which text and why
            raise InputError(
                f"texts[{index}] cannot be cut to {limit} tokens with truncation={strategy!r} ({err}); "
                "use truncation='longest_first', or shorten the text") from None

    def _bounded(self, args: tuple[str, ...]) -> tuple[str, ...]:
        """Each text longer than ``max_length * CHARS_PER_TOKEN`` characters, cut at the last
        white space before that bound, as TEI cuts before tokenizing: a 1 MB text is not
        tokenized whole (it held the GIL, and so a server's event loop, for 1.5 s). The cut
        is at a word boundary, so the prefix's tokens are the text's first tokens; the caller
        uses it only when it holds more tokens than the model takes, where the tokens kept
        are the same as the whole text's."""
        if self.max_length is None:
            return args
        bound = self.max_length * CHARS_PER_TOKEN
        out = []
        for text in args:
            if len(text) > bound:
                cut = max(text.rfind(space, bound // 2, bound) for space in " \n\t")
                text = text[:cut] if cut > 0 else text  # no white space to cut at: whole
            out.append(text)
        return tuple(out)

    def admit(self, encoded: Sequence[Encoded]) -> None:
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

    def rows(self, encoded: Sequence[Encoded]) -> list[dict[str, np.ndarray]]:
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

    # -- running --------------------------------------------------------------------------

    def run_tokenized(self, encoded: Sequence[Encoded], *, progress: bool = False,
                      desc: str = "run") -> list[dict[str, Any]]:
        """The outputs the head reads, per text, in input order; token outputs cropped to
        each text's own length."""
        submit = getattr(_ROUTE, "submit", None)
        if submit is not None:  # in a server: through its batcher (see run_through)
            if len(encoded) == 0:
                raise InputError("texts is empty; pass at least one text")
            self.admit(encoded)
            return [{name: out[name] for name in self.outputs} for out in submit(self.rows(encoded))]
        results: list[dict[str, Any]] = [{} for _ in encoded]
        for idx, outs in self.run_groups(encoded, progress=progress, desc=desc):
            for i, out in zip(idx, outs):
                results[i] = {name: out[name] for name in self.outputs}
        return results

    def run_groups(self, encoded: Sequence[Encoded], *, progress: bool = False,
                   desc: str = "run") -> Iterator[tuple[list[int], list[dict[str, Any]]]]:
        """Run tokenized texts and yield (indices, outputs) run by run.

        Texts are sorted by length and grouped by the length edge they fit (every text of
        a group is covered by the same buckets); the router cuts each group into runs
        (:meth:`Router.take`), so a batch pads only to its own bucket. Longer texts run
        one by one under the overflow policy.
        """
        from tqdm.auto import tqdm

        if len(encoded) == 0:
            raise InputError("texts is empty; pass at least one text")
        bar = tqdm(total=len(encoded), desc=desc, unit="text") if progress else None
        if self.packing is not None:
            try:
                for idx, outs in self._run_packed(encoded):
                    yield idx, outs
                    if bar is not None:
                        bar.update(len(idx))
            finally:
                if bar is not None:
                    bar.close()
            return
        rows = self.rows(encoded)
        lengths = [len(ids) for ids, _ in encoded]
        try:
            for run in self._place(lengths):
                part = run.items
                if run.bucket is None:  # longer than every bucket: the overflow policy, one by one
                    out = self.model.run({k: v[None] for k, v in rows[part[0]].items()})
                    yield part, [{k: v[0] for k, v in out.items()}]
                else:
                    yield part, self.model.run_rows([rows[i] for i in part], [{"seq": lengths[i]} for i in part],
                                                    run.bucket)
                if bar is not None:
                    bar.update(len(part))
        finally:
            if bar is not None:
                bar.close()

    def buckets_for(self, encoded: Sequence[Encoded]) -> set[Bucket]:
        """The buckets :meth:`run_tokenized` runs ``encoded`` in (for ``prepare(only=)``)."""
        return {run.bucket for run in self._place([len(ids) for ids, _ in encoded]) if run.bucket is not None}

    def _place(self, lengths: Sequence[int]) -> list[Run]:
        """The runs for texts of ``lengths``, as the router places them
        (:meth:`~bucketwise.router.Router.place`): packed when the model packs."""
        router, segments = self.router, self.packing.max_segments if self.packing else 1
        key = (router, tuple(lengths), segments)
        placed = self._placed  # one read: heads run in several threads in a server
        if placed is None or placed[0] != key:  # buckets_for, then the run: the same texts placed once
            placed = (key, router.place(lengths, max_segments=segments))
            self._placed = placed
        return placed[1]

    def _run_packed(self, encoded: Sequence[Encoded]) -> Iterator[tuple[list[int], list[dict[str, Any]]]]:
        """Run ``encoded`` packed; yield (text indices, outputs) per run."""
        rows = self.rows(encoded)
        for run in self._place([len(ids) for ids, _ in encoded]):
            packed, sizes = self.packing.write(run, rows)
            assert run.bucket is not None  # packed runs always have one (Router.place)
            yield run.items, self.packing.read(run, self.model.run_rows(packed, sizes, run.bucket))

    @property
    def window(self) -> int:
        """The longest input one run takes: the largest bucket's length, or the model's
        ``max_length`` if shorter. Heads that window split longer inputs into this."""
        top = int(self.router.limits["seq"])
        return min(top, self.max_length) if self.max_length is not None else top


def _build_in_child(head: TextModel, model: str | None, backend_options: Mapping[str, Any] | None,
                    workers: int | None, progress: bool) -> None:
    """Compile the buckets of ``head`` that its cache lacks with ``bucketwise compile`` in a
    child process (see :meth:`TextModel.default`); nothing when every bucket is cached, the
    model is already loaded here, or the backend has no artifact cache."""
    builder = head.model.builder
    if not builder.cacheable or builder.model_loaded:
        return  # not cached (eager, inductor), or the model is already here
    if not builder.uncached():
        return
    assert builder.cache is not None
    compile_in_child(head.task, builder.backend.name, head.model.plan, builder.cache.root, model=model,
                     backend_options=backend_options, workers=workers, progress=progress)


def compile_in_child(task: str, backend: str, plan: Plan, cache_root: Any, *, model: str | None = None,
                     backend_options: Mapping[str, Any] | None = None, workers: int | None = None,
                     progress: bool = True) -> bool:
    """Compile ``plan``'s buckets of the folder ``model`` (default all-MiniLM-L6-v2) for
    ``task`` into the cache at ``cache_root`` with ``bucketwise compile`` in a child
    process, which loads the framework model and its exporter so this process need not.
    Returns False, building nothing, when a backend option cannot be written on a command
    line; raises :class:`ConfigError` with the child's error when it fails."""
    import json
    import subprocess
    import sys
    import tempfile

    try:
        options = [f"{k}={json.dumps(v)}" for k, v in (backend_options or {}).items()]
    except TypeError:
        return False  # an option the command line cannot carry: the caller builds here
    with tempfile.TemporaryDirectory() as tmp:
        plan_file = f"{tmp}/plan.json"
        plan.save(plan_file)
        cmd = [sys.executable, "-m", "bucketwise.cli", "compile", "--task", task, "--backend", backend,
               "--plan", plan_file, "--cache-dir", str(cache_root), *([] if progress else ["--no-progress"]),
               *(["--model", model] if model else []), *(a for o in options for a in ("--backend-option", o)),
               *(["--workers", str(workers)] if workers else [])]
        # Its progress bars go to this process's stderr; its report is not needed here.
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=None if progress else subprocess.PIPE, text=True)
    if done.returncode != 0:
        said = (done.stderr or "").strip()[-2000:] or "its error is above"
        raise ConfigError(f"building the buckets in a child process failed ({' '.join(cmd[2:])}): {said}")
    return True
