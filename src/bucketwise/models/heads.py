"""Text heads over the shared front end: classification, ranking, token classification and
extractive question answering.

Each head loads a local Hugging Face folder by its ``architectures``
(:mod:`bucketwise.models.tasks`), says which outputs it reads, and post-processes them. What
the seed calls "remove predictions in the padded region" is done twice: the runner crops
token outputs to each input's real tokens, and the heads mask what is not the input's own
text (special tokens; for QA the question too), so no label or answer is ever produced
there. Outputs follow the Hugging Face pipelines' formats:

- text-classification: ``[{"label", "score"}]`` per input, best first;
- text-ranking: ``[{"index", "score"}]`` per query, best first;
- token-classification: ``[{"entity", "score", "index", "word", "start", "end"}]``, or
  ``entity_group`` instead of ``entity`` (and no ``index``) when aggregated;
- question-answering: ``{"answer", "score", "start", "end"}``.

Inputs longer than the largest bucket are split into overlapping windows of the largest
bucket's length (ranking, token classification, QA) and merged, so nothing is cut unseen.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from ..data import text_of
from ..errors import ConfigError, InputError
from ..spec import OutputSpec
from .encoders import lazy_text_head
from .frontend import Encoded, TextModel
from .tasks import FolderTask, register_head

__all__ = [
    "AGGREGATIONS",
    "TextClassifier",
    "TextRanker",
    "TokenClassifier",
    "QuestionAnswerer",
    "softmax",
    "scores_from_logits",
]

AGGREGATIONS = ("none", "simple", "first", "average", "max")
FUNCTIONS = ("softmax", "sigmoid", "none")


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def scores_from_logits(logits: np.ndarray, function: str) -> np.ndarray:
    """``softmax``, ``sigmoid`` or ``none`` (raw logits) over the last axis."""
    if function == "softmax":
        return softmax(logits)
    if function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
    if function == "none":
        return np.asarray(logits, dtype=np.float64)
    raise ConfigError(f"function_to_apply={function!r}; use one of {', '.join(FUNCTIONS)}")


def _texts(texts: Any, what: str = "texts") -> None:
    if isinstance(texts, (str, tuple)):
        raise InputError(f"{what} must be a list, got a single {type(texts).__name__}; wrap it: [{what[:-1]}]")
    if len(texts) == 0:
        raise InputError(f"{what} is empty; pass at least one")


class _Head(TextModel):
    """A head over a folder with a task head: loading, labels, records."""

    output_specs: ClassVar[tuple[OutputSpec, ...]] = ()
    options: ClassVar[tuple[str, ...]] = ()  # the keyword options predict takes (the CLI checks its flags by them)

    def __init__(self, model: Any, tokenizer: Any, **kwargs: Any) -> None:
        super().__init__(model, tokenizer, **kwargs)
        head: FolderTask = model.spec.meta["head"]
        self.folder = head
        self.labels = head.labels
        self._lock = getattr(tokenizer, "lock", None) or threading.Lock()

    @classmethod
    def _load(cls, backend: str, path: str | None) -> tuple[Any, Any, Any]:
        if backend == "jax":
            raise ConfigError(f"the jax backend runs sentence embeddings only; run {cls.task} on onnxruntime, openvino, "
                              "torchscript, inductor or eager")
        if path is None:
            raise ConfigError(f"task {cls.task} needs a model folder with its head (--model DIR); the bundled "
                              "all-MiniLM-L6-v2 is a sentence encoder")
        return lazy_text_head(path, cls.task, cls.output_specs)

    # -- records (the command line's JSONL) and predictions --------------------------------

    @classmethod
    def parse_record(cls, record: Any, where: str) -> Any:
        """One input of this head from a JSON value (a line of ``--input``)."""
        raise NotImplementedError

    predict: Callable[..., list[Any]]  # each head's, with its own keyword options

    # -- windows ----------------------------------------------------------------------------

    def windows(self, first: str, second: str | None = None, *, stride: int, where: str) -> list[Any]:
        """``first`` (and ``second``) as ``tokenizers`` encodings of at most :attr:`window`
        tokens each: one if it fits, else overlapping windows ``stride`` tokens apart at
        their edges (for a pair, the second text is windowed and the first repeated)."""
        raw = getattr(self.tokenizer, "backend_tokenizer", None)
        if raw is None:
            raise ConfigError(f"{self.task} needs a fast tokenizer (a tokenizer.json in the model folder) for its "
                              "character offsets and windows; save the tokenizer with transformers' fast tokenizer")
        with self._lock:
            raw.no_padding()
            raw.enable_truncation(self.window, stride=stride, strategy="only_second" if second is not None else "longest_first",
                                  direction="right")
            try:
                enc = raw.encode(first, second) if second is not None else raw.encode(first)
            except Exception as err:  # noqa: BLE001 - the tokenizer's own words, with the input named
                raise InputError(f"{where}: cannot fit it into windows of {self.window} tokens ({err}); "
                                 "shorten the first text (the query or question)") from None
            finally:
                raw.no_truncation()
        return [enc, *enc.overflowing]

    def _stride(self, stride: int | None, room: int, what: str) -> int:
        """The overlap of windows: ``stride`` or a quarter of the ``room`` a window has."""
        if stride is None:
            return max(0, min(128, room // 4))
        if stride < 0 or stride >= room:
            raise InputError(f"{what}={stride} must be at least 0 and below the {room} tokens a window holds "
                             f"(the largest bucket, {self.window} tokens, less the rest of the input)")
        return stride

    def _content_room(self, first: str | None = None) -> int:
        """Tokens of text one window holds: the window less the special tokens and ``first``."""
        raw = self.tokenizer.backend_tokenizer
        with self._lock:
            specials = raw.num_special_tokens_to_add(first is not None)
            used = len(raw.encode(first, add_special_tokens=False).ids) if first is not None else 0
        return self.window - specials - used

    def run_encodings(self, encodings: Sequence[Any], *, progress: bool = False) -> list[dict[str, Any]]:
        """The head's outputs for ``tokenizers`` encodings, in order (see :meth:`run_tokenized`)."""
        encoded: list[Encoded] = [(list(e.ids), list(e.type_ids)) for e in encodings]
        return self.run_tokenized(encoded, progress=progress, desc=self.task)


class TextClassifier(_Head):
    """Texts or pairs in, labels and scores out (``*ForSequenceClassification``): the seed's
    paraphrase classifier, NLI models, sentiment.

    Scores are the softmax of the logits over several labels, the sigmoid with one label
    (or a multi-label problem), as the folder says (:attr:`FolderTask.function`), or the
    raw logits with ``raw_scores``. A pair longer than the largest bucket follows the
    overflow policy (``truncate`` cuts it as ``truncation`` says)."""

    task = "text-classification"
    outputs = ("logits",)
    output_specs = (OutputSpec("logits", ("batch", None)),)
    options = ("top_k", "raw_scores", "function_to_apply")

    def logits(self, texts: Sequence[str | tuple[str, str]], *, progress: bool = False) -> np.ndarray:
        """The logits, (len(texts), labels), input order."""
        _texts(texts)
        outs = self.run_tokenized(self.tokenize(texts), progress=progress, desc=self.task)
        return np.stack([np.asarray(o["logits"], dtype=np.float32) for o in outs])

    def predict(self, inputs: Sequence[Any], *, top_k: int | None = 1, raw_scores: bool = False,
                function_to_apply: str | None = None, progress: bool = False) -> list[list[dict[str, Any]]]:
        """Per text, ``top_k`` (``None``: all) ``{"label", "score"}``, best first."""
        if top_k is not None and top_k < 1:
            raise InputError(f"top_k={top_k} must be at least 1 (or None for every label)")
        function = "none" if raw_scores else (function_to_apply or self.folder.function)
        scores = scores_from_logits(self.logits(inputs, progress=progress), function)
        out = []
        for row in scores:
            order = np.argsort(-row, kind="stable")[:top_k]
            out.append([{"label": self.labels[j], "score": float(row[j])} for j in order])
        return out

    @classmethod
    def parse_record(cls, record: Any, where: str) -> Any:
        text = text_of(record)
        if text is not None:
            return text
        raise InputError(f"{where} is not a text for {cls.task}: give a string, [text, text_pair] or "
                         '{"text": ..., "text_pair": ...}')


class TextRanker(_Head):
    """A query and documents in, one relevance score per document out (one-label
    cross-encoders: ``*ForSequenceClassification`` with one label, sentence-transformers
    ``CrossEncoder`` folders).

    Scores are the sigmoid of the logit (a CrossEncoder's default), or what the folder's
    CrossEncoder activation says, or raw with ``raw_scores``. A document longer than the
    largest bucket is cut into overlapping chunks, each with the query, and scored by its
    best chunk (Cohere's rule); under ``overflow="truncate"`` it is cut to its first chunk
    instead, and counted."""

    task = "text-ranking"
    outputs = ("logits",)
    output_specs = (OutputSpec("logits", ("batch", None)),)
    options = ("top_n", "raw_scores", "stride")

    def scores(self, query: str, documents: Sequence[str], *, raw_scores: bool = False, stride: int | None = None,
               progress: bool = False) -> np.ndarray:
        """One score per document, input order."""
        return self.score_many([(query, documents)], raw_scores=raw_scores, stride=stride, progress=progress)[0]

    def score_many(self, queries: Sequence[tuple[str, Sequence[str]]], *, raw_scores: bool = False,
                   stride: int | None = None, progress: bool = False) -> list[np.ndarray]:
        """Scores for several (query, documents), all windows run together."""
        encodings, owner = [], []
        truncate = self.router.overflow == "truncate"
        cut = 0
        for q, (query, documents) in enumerate(queries):
            where = f"query {q}" if len(queries) > 1 else "the query"
            if not isinstance(query, str) or not query.strip():
                raise InputError(f"{where} is empty or not a string; a ranking needs a query text")
            if isinstance(documents, str) or len(documents) == 0:
                raise InputError(f"{where} has no documents; give a list of at least one document to rank")
            step = self._stride(stride, self._content_room(query), "stride")
            for d, doc in enumerate(documents):
                if not isinstance(doc, str):
                    raise InputError(f"{where}: documents[{d}] is a {type(doc).__name__}; documents are strings")
                wins = self.windows(query, doc, stride=step, where=f"{where}, document {d}")
                if truncate and len(wins) > 1:
                    wins, cut = wins[:1], cut + 1
                encodings += wins
                owner += [(q, d)] * len(wins)
        if cut:
            self.model.count_overflow("truncate", cut)
        logits = [float(np.asarray(o["logits"]).reshape(-1)[0]) for o in self.run_encodings(encodings, progress=progress)]
        best = [np.full(len(docs), -np.inf) for _, docs in queries]
        for (q, d), value in zip(owner, logits):
            best[q][d] = max(best[q][d], value)  # the document's best chunk
        function = "none" if raw_scores else self.folder.function
        return [scores_from_logits(b, "sigmoid" if function == "softmax" else function) for b in best]

    def rerank(self, query: str, documents: Sequence[str], *, top_n: int | None = None, raw_scores: bool = False,
               stride: int | None = None, progress: bool = False) -> list[dict[str, Any]]:
        """``[{"index", "score"}]``, best first, the ``top_n`` best (default all)."""
        return self.predict([(query, documents)], top_n=top_n, raw_scores=raw_scores, stride=stride, progress=progress)[0]

    def predict(self, inputs: Sequence[Any], *, top_n: int | None = None, raw_scores: bool = False,
                stride: int | None = None, progress: bool = False) -> list[list[dict[str, Any]]]:
        """For each (query, documents), its documents ranked: ``[{"index", "score"}]``."""
        if top_n is not None and top_n < 1:
            raise InputError(f"top_n={top_n} must be at least 1 (or None for every document)")
        _texts(inputs, "inputs")
        out = []
        for scores in self.score_many(inputs, raw_scores=raw_scores, stride=stride, progress=progress):
            order = np.argsort(-scores, kind="stable")[:top_n]
            out.append([{"index": int(i), "score": float(scores[i])} for i in order])
        return out

    @classmethod
    def parse_record(cls, record: Any, where: str) -> Any:
        if isinstance(record, Mapping) and "query" in record:
            docs = record.get("documents")
            if not isinstance(docs, list) or not docs:
                raise InputError(f'{where} has no documents; give {{"query": ..., "documents": [at least one text]}}')
            return (record["query"], docs)
        raise InputError(f'{where} is not a ranking input: give {{"query": ..., "documents": [...]}}')


class TokenClassifier(_Head):
    """Single texts in, labelled tokens or entities out (``*ForTokenClassification``: NER,
    part-of-speech).

    Post-processing is transformers' token-classification pipeline's: softmax per token,
    special tokens skipped, aggregation ``none``, ``simple``, ``first``, ``average`` or
    ``max``, labels in ``ignore_labels`` (default ``O``) dropped; character offsets come
    from the fast tokenizer. Logits are cropped to each text's real tokens, so a pad
    position never yields an entity. A text longer than the largest bucket runs in
    windows overlapping by ``stride`` tokens; each token takes its logits from the window
    in which it has the most context on both sides, and the merged tokens are aggregated
    once, as if the text had run whole."""

    task = "token-classification"
    outputs = ("logits",)
    output_specs = (OutputSpec("logits", ("batch", "seq", None)),)
    options = ("aggregation_strategy", "ignore_labels", "stride")

    def token_logits(self, texts: Sequence[str], *, stride: int | None = None,
                     progress: bool = False) -> list[tuple[Any, np.ndarray]]:
        """Per text, its whole encoding (no truncation) and the logits of every token,
        (tokens, labels), merged from its windows; special tokens' rows are NaN."""
        _texts(texts)
        overlap = self._stride(stride, self._content_room(), "stride")
        raw = self.tokenizer.backend_tokenizer
        wins, owner, wholes = [], [], []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                kind = "pair" if isinstance(text, (tuple, list)) else type(text).__name__
                raise InputError(f"texts[{i}] is a {kind}; token-classification labels the tokens of single texts: "
                                 "send each text on its own")
            found = self.windows(text, stride=overlap, where=f"texts[{i}]")
            wins += found
            owner += [i] * len(found)
            if len(found) == 1:
                wholes.append(found[0])  # it fits: its one window is the whole encoding
            else:
                with self._lock:
                    wholes.append(raw.encode(text))
        outs = self.run_encodings(wins, progress=progress)
        merged = []
        k = 0
        for i, whole in enumerate(wholes):
            content = [p for p, s in enumerate(whole.special_tokens_mask) if not s]
            logits = np.full((len(whole.ids), len(self.labels)), np.nan, dtype=np.float32)
            best = np.full(len(content), -1)
            start = 0
            while k < len(wins) and owner[k] == i:
                win, out = wins[k], np.asarray(outs[k]["logits"], dtype=np.float32)
                local = [p for p, s in enumerate(win.special_tokens_mask) if not s]
                for j, p in enumerate(local):
                    g = start + j
                    if g >= len(content) or win.ids[p] != whole.ids[content[g]]:
                        raise InputError(f"texts[{i}]: its windows do not line up with its tokens; report the tokenizer")
                    context = min(j, len(local) - 1 - j)
                    if context > best[g]:  # the window where the token sees most on both sides
                        best[g] = context
                        logits[content[g]] = out[p]
                start += len(local) - overlap  # the next window repeats this one's last tokens
                k += 1
            merged.append((whole, logits))
        return merged

    def predict(self, inputs: Sequence[Any], *, aggregation_strategy: str = "none",
                ignore_labels: Sequence[str] = ("O",), stride: int | None = None,
                progress: bool = False) -> list[list[dict[str, Any]]]:
        """Per text, its entities (see the class docstring for the format)."""
        if aggregation_strategy not in AGGREGATIONS:
            raise InputError(f"aggregation_strategy={aggregation_strategy!r}; use one of {', '.join(AGGREGATIONS)}")
        raw = self.tokenizer.backend_tokenizer
        out = []
        for text, (enc, logits) in zip(inputs, self.token_logits(inputs, stride=stride, progress=progress)):
            entities = token_entities(text, enc, logits, self.labels, raw, aggregation_strategy)
            out.append([e for e in entities if e.get("entity", e.get("entity_group")) not in ignore_labels])
        return out

    @classmethod
    def parse_record(cls, record: Any, where: str) -> Any:
        if isinstance(record, str):
            return record
        if isinstance(record, Mapping) and isinstance(record.get("text"), str):
            if record.get("text_pair") is not None:
                raise InputError(f"{where} is a pair; token-classification labels the tokens of single texts: "
                                 "send each text on its own")
            return record["text"]
        raise InputError(f'{where} is not a text for {cls.task}: give a string or {{"text": ...}}')


def token_entities(text: str, enc: Any, logits: np.ndarray, labels: Sequence[str], raw: Any,
                   aggregation: str) -> list[dict[str, Any]]:
    """transformers' token-classification post-processing over one text's tokens:
    ``gather_pre_entities``, then ``aggregate`` (and ``group_entities`` unless ``none``)."""
    scores = softmax(logits).astype(np.float32)
    word_aware = bool(getattr(raw.model, "continuing_subword_prefix", None))
    unk = getattr(raw.model, "unk_token", None)
    unk_id = raw.token_to_id(unk) if isinstance(unk, str) else None
    pre = []
    for idx, special in enumerate(enc.special_tokens_mask):
        if special:
            continue
        word = raw.id_to_token(enc.ids[idx])
        start, end = enc.offsets[idx]
        ref = text[start:end]
        if word_aware:
            is_subword = len(word) != len(ref)
        else:
            is_subword = start > 0 and " " not in text[start - 1:start + 1]
        if enc.ids[idx] == unk_id:
            word, is_subword = ref, False
        pre.append({"word": word, "scores": scores[idx], "start": start, "end": end, "index": idx, "is_subword": is_subword})

    def to_string(tokens: list[str]) -> str:
        return raw.decoder.decode(tokens) if raw.decoder is not None else " ".join(tokens)

    if aggregation in ("none", "simple"):
        entities = [{"entity": labels[int(p["scores"].argmax())], "score": float(p["scores"].max()), "index": p["index"],
                     "word": p["word"], "start": p["start"], "end": p["end"]} for p in pre]
    else:
        entities = []
        group: list[dict[str, Any]] = []
        for p in pre:
            if group and not p["is_subword"]:
                entities.append(_word(group, aggregation, labels, to_string))
                group = []
            group.append(p)
        if group:
            entities.append(_word(group, aggregation, labels, to_string))
    if aggregation == "none":
        return entities
    return _group(entities, to_string)


def _word(group: list[dict[str, Any]], aggregation: str, labels: Sequence[str], to_string: Any) -> dict[str, Any]:
    if aggregation == "first":
        scores = group[0]["scores"]
    elif aggregation == "max":
        scores = max(group, key=lambda p: p["scores"].max())["scores"]
    else:  # average
        scores = np.nanmean(np.stack([p["scores"] for p in group]), axis=0)
    idx = int(scores.argmax())
    return {"entity": labels[idx], "score": float(scores[idx]), "word": to_string([p["word"] for p in group]),
            "start": group[0]["start"], "end": group[-1]["end"]}


def _tag(name: str) -> tuple[str, str]:
    if name.startswith("B-"):
        return "B", name[2:]
    if name.startswith("I-"):
        return "I", name[2:]
    return "I", name


def _group(entities: list[dict[str, Any]], to_string: Any) -> list[dict[str, Any]]:
    """Adjacent entities of one tag joined (a ``B-`` starts a new one), as transformers'."""
    groups: list[list[dict[str, Any]]] = []
    for entity in entities:
        bi, tag = _tag(entity["entity"])
        if groups and tag == _tag(groups[-1][-1]["entity"])[1] and bi != "B":
            groups[-1].append(entity)
        else:
            groups.append([entity])
    return [{"entity_group": g[0]["entity"].split("-", 1)[-1], "score": float(np.nanmean([e["score"] for e in g])),
             "word": to_string([e["word"] for e in g]), "start": g[0]["start"], "end": g[-1]["end"]} for g in groups]


class QuestionAnswerer(_Head):
    """A question and a context in, the best answer span of the context out
    (``*ForQuestionAnswering``, SQuAD-style extractive QA).

    Start and end logits are cropped to the real tokens, and a span may only start and end
    on tokens of the context: the question, special tokens and padding are masked. Scores
    are transformers' (softmax of start and of end logits per window, the product for a
    span), spans are at most ``max_answer_len`` tokens (default 15), and a context longer
    than the largest bucket runs in windows overlapping by ``doc_stride`` tokens; the best
    span over every window wins. Answers are ``{"answer", "score", "start", "end"}`` in
    character offsets of the context."""

    task = "question-answering"
    outputs = ("start_logits", "end_logits")
    output_specs = (OutputSpec("start_logits", ("batch", "seq")), OutputSpec("end_logits", ("batch", "seq")))
    options = ("top_k", "max_answer_len", "doc_stride")

    def answer(self, question: str, context: str, *, top_k: int = 1, max_answer_len: int = 15,
               doc_stride: int | None = None) -> Any:
        """The best answer (a dict), or the ``top_k`` best (a list) when ``top_k`` > 1."""
        return self.predict([(question, context)], top_k=top_k, max_answer_len=max_answer_len, doc_stride=doc_stride)[0]

    def predict(self, inputs: Sequence[Any], *, top_k: int = 1, max_answer_len: int = 15, doc_stride: int | None = None,
                progress: bool = False) -> list[Any]:
        """For each (question, context), its answer (``top_k`` > 1: a list of them)."""
        _texts(inputs, "inputs")
        if top_k < 1 or max_answer_len < 1:
            raise InputError(f"top_k={top_k} and max_answer_len={max_answer_len} must be at least 1")
        pairs = [self._pair(item, f"inputs[{i}]") for i, item in enumerate(inputs)]
        wins, owner = [], []
        for i, (question, context) in enumerate(pairs):
            found = self.context_windows(question, context, doc_stride=doc_stride, where=f"inputs[{i}]")
            wins += found
            owner += [i] * len(found)
        outs = self.run_encodings(wins, progress=progress)
        spans: list[dict[tuple[int, int], float]] = [{} for _ in inputs]
        cls_id = self.tokenizer.cls_token_id
        for win, out, i in zip(wins, outs, owner):
            allowed = np.array([s == 1 for s in win.sequence_ids])
            for score, s, e in best_spans(out["start_logits"], out["end_logits"], allowed, max_answer_len, top_k,
                                          normalise=np.array([t == cls_id for t in win.ids]) | allowed):
                key = (win.offsets[s][0], win.offsets[e][1])
                spans[i][key] = max(score, spans[i].get(key, 0.0))
        results = []
        for i, (_, context) in enumerate(pairs):
            ranked = sorted(spans[i].items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
            answers = [{"score": float(score), "start": int(a), "end": int(b), "answer": context[a:b]}
                       for (a, b), score in ranked]
            results.append(answers[0] if top_k == 1 else answers)
        return results

    def context_windows(self, question: str, context: str, *, doc_stride: int | None = None,
                        where: str = "the input") -> list[Any]:
        """The windows (``tokenizers`` encodings) ``question`` and ``context`` run in: one
        if they fit the largest bucket, else overlapping by ``doc_stride`` tokens of context
        (default: a quarter of the room a window has for the context, at most 128)."""
        step = self._stride(doc_stride, self._content_room(question), "doc_stride")
        return self.windows(question, context, stride=step, where=where)

    @staticmethod
    def _pair(item: Any, where: str) -> tuple[str, str]:
        if isinstance(item, Mapping):
            item = (item.get("question"), item.get("context"))
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise InputError(f"{where} is not a (question, context) pair")
        question, context = item
        if not isinstance(question, str) or not question.strip():
            raise InputError(f"{where} has no question; give a non-empty question string")
        if not isinstance(context, str) or not context.strip():
            raise InputError(f"{where} has a question but no context; question-answering finds the answer in a "
                             "context: give {\"question\": ..., \"context\": ...}")
        return question, context

    @classmethod
    def parse_record(cls, record: Any, where: str) -> Any:
        if isinstance(record, Mapping) and "question" in record:
            return cls._pair(record, where)
        raise InputError(f'{where} is not a QA input: give {{"question": ..., "context": ...}}')


def best_spans(start_logits: Any, end_logits: Any, allowed: np.ndarray, max_answer_len: int, top_k: int,
               *, normalise: np.ndarray | None = None) -> list[tuple[float, int, int]]:
    """The ``top_k`` spans (score, start, end) of one window with ``start <= end <
    start + max_answer_len``, both on ``allowed`` tokens. Scores are softmax(start)[s] *
    softmax(end)[e], normalised over ``normalise`` (default ``allowed``; transformers'
    pipeline also counts the CLS token, which it keeps for "no answer")."""
    start = np.asarray(start_logits, dtype=np.float64).reshape(-1)
    end = np.asarray(end_logits, dtype=np.float64).reshape(-1)
    if not allowed.any():
        return []
    over = allowed if normalise is None else normalise

    def probabilities(x: np.ndarray) -> np.ndarray:  # softmax over ``over``, zero off ``allowed``
        top = x[over].max()
        return np.where(allowed, np.exp(x - top) / np.exp(x[over] - top).sum(), 0.0)

    p_start, p_end = probabilities(start), probabilities(end)
    outer = np.triu(np.tril(np.outer(p_start, p_end), max_answer_len - 1))
    outer[~allowed, :] = 0.0
    outer[:, ~allowed] = 0.0
    flat = np.argsort(-outer, axis=None, kind="stable")[:top_k]
    s, e = np.unravel_index(flat, outer.shape)
    return [(float(outer[a, b]), int(a), int(b)) for a, b in zip(s, e) if outer[a, b] > 0.0]


register_head("text-classification", TextClassifier)
register_head("text-ranking", TextRanker)
register_head("token-classification", TokenClassifier)
register_head("question-answering", QuestionAnswerer)
