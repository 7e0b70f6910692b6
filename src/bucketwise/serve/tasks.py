"""Routes for the text tasks beyond embeddings, in the shapes their clients already speak.

- ``POST /predict`` (TEI): a text, a pair, or a batch of them, through a
  text-classification model; ``[{"label", "score"}]`` per input, every label, best first.
- ``POST /rerank`` (TEI): ``{query, texts, raw_scores, return_text}`` through a
  text-ranking model; ``[{"index", "score", "text"?}]``, best first.
- ``POST /classify`` (infinity): ``{input: [texts], model, raw_scores}``;
  ``{"object": "classify", "data": [[{"label", "score"}], ...], ...}``.
- ``POST /v2/rerank`` (Cohere v2, which Jina and infinity copy): ``{model, query,
  documents, top_n, return_documents, max_tokens_per_doc}``; ``{"id", "results": [{"index",
  "relevance_score", "document"?}], "meta"}``.
- ``POST /token-classification`` and ``POST /question-answering``: Hugging Face's
  inference payloads, ``{"inputs": ..., "parameters": {...}}``, answered as the
  transformers pipelines answer.

Each request picks its model by the body's ``model`` (or, with one model of the task,
that one). The head's own code runs in a worker thread (tokenizing, windows,
post-processing), and each of its model runs goes through the server's batcher of that
model, so rows of concurrent requests share bucketed batches, as embeddings do.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, cast

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.config import JsonDict

from ..errors import BucketOverflowError, ConfigError, InputError, QueueFullError
from ..models.frontend import run_through
from ..models.heads import QuestionAnswerer, TextClassifier, TextRanker, TokenClassifier
from ._common import NON_BLANK, TEXT_OR_TEXTS_SCHEMA, TEXT_SCHEMA, Reject, first_error, no_blank, pick_model
from .openai import load_json

if TYPE_CHECKING:
    from starlette.requests import Request

    from ..models.frontend import TextModel
    from .app import Service

__all__ = ["TaskRoutes", "ROUTE_TASKS"]

H = TypeVar("H", bound="TextModel")

# The task each route serves.
ROUTE_TASKS = {
    "/predict": "text-classification",
    "/classify": "text-classification",
    "/rerank": "text-ranking",
    "/v2/rerank": "text-ranking",
    "/token-classification": "token-classification",
    "/question-answering": "question-answering",
}

def _whole_number(value: Any) -> Any:
    # JSON Schema's integer is any whole number (5.0 too); a string or a boolean is not one.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a whole number")
    return value


Count = Annotated[int, Field(ge=1, le=2**31 - 1), BeforeValidator(_whole_number)]  # a whole number, at least 1
Overlap = Annotated[int, Field(ge=0, le=2**31 - 1), BeforeValidator(_whole_number)]  # a whole number, at least 0

_TEXT: JsonDict = {"minLength": 1, "pattern": NON_BLANK}  # a string field with a non-space character
_TEXTS: JsonDict = {"items": TEXT_SCHEMA}
_PREDICT_INPUTS: JsonDict = {"anyOf": [*TEXT_OR_TEXTS_SCHEMA["anyOf"], {
    "type": "array", "minItems": 1, "items": {"type": "array", "minItems": 1, "maxItems": 2, "items": TEXT_SCHEMA}}]}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="a served model's name (GET /v1/models); optional with one model of the task")


class PredictRequest(_Body):
    """TEI's /predict."""

    inputs: str | list[str] | list[list[str]] = Field(
        description='a text, a pair ["text", "text_pair"], or a batch: ["a", "b", "c"] or [["a", "b"], ["c", "d"]]',
        json_schema_extra=_PREDICT_INPUTS)
    raw_scores: bool = Field(False, strict=True, description="the logits instead of the model's score function")
    truncate: bool | None = Field(None, strict=True, description="accepted for TEI clients; the server's --overflow decides")
    truncation_direction: Literal["Left", "Right", "left", "right"] | None = Field(
        None, description="accepted for TEI clients; the server's truncation decides")


class RerankRequest(_Body):
    """TEI's /rerank."""

    query: str = Field(json_schema_extra=_TEXT)
    texts: list[str] = Field(min_length=1, json_schema_extra=_TEXTS)
    raw_scores: bool = Field(False, strict=True)
    return_text: bool = Field(False, strict=True)
    truncate: bool | None = Field(None, strict=True, description="accepted for TEI clients; the server's --overflow decides")
    truncation_direction: Literal["Left", "Right", "left", "right"] | None = None


class ClassifyRequest(_Body):
    """infinity's /classify."""

    input: list[str] = Field(min_length=1, json_schema_extra=_TEXTS)
    raw_scores: bool = Field(False, strict=True)


class CohereRerankRequest(_Body):
    """Cohere's POST /v2/rerank."""

    query: str = Field(json_schema_extra=_TEXT)
    documents: list[str] = Field(min_length=1, json_schema_extra=_TEXTS)
    top_n: Count | None = Field(None, description="the best top_n documents (default: all)")
    return_documents: bool = Field(False, strict=True, description="each result also carries {'document': {'text': ...}}")
    max_tokens_per_doc: Count | None = Field(None, description="each document is cut to its first this many tokens")
    priority: Annotated[int, Field(ge=-2**31, le=2**31 - 1), BeforeValidator(_whole_number)] | None = Field(None, description="accepted for Cohere clients; requests are served in order")


class TokenParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    aggregation_strategy: Literal["none", "simple", "first", "average", "max"] = "none"
    ignore_labels: list[str] | None = None
    stride: Overlap | None = None


class TokenRequest(_Body):
    """Hugging Face's token-classification payload."""

    inputs: str | list[str] = Field(json_schema_extra=TEXT_OR_TEXTS_SCHEMA)
    parameters: TokenParameters = TokenParameters.model_validate({})


class QAInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(json_schema_extra=_TEXT)
    context: str = Field(json_schema_extra=_TEXT)


class QAParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top_k: Count = 1
    max_answer_len: Count = 15
    doc_stride: Overlap | None = None


class QARequest(_Body):
    """Hugging Face's question-answering payload."""

    inputs: QAInput | Annotated[list[QAInput], Field(min_length=1)]
    parameters: QAParameters = QAParameters.model_validate({})


class TEIError(BaseModel):
    """TEI's error body."""

    error: str
    error_type: str


class CohereError(BaseModel):
    """Cohere's error body."""

    message: str


# The error body of each route, where it is not OpenAI's.
ERRORS: dict[str, type[BaseModel]] = {"/predict": TEIError, "/rerank": TEIError, "/v2/rerank": CohereError}

BODIES: dict[str, type[BaseModel]] = {
    "/predict": PredictRequest, "/classify": ClassifyRequest, "/rerank": RerankRequest,
    "/v2/rerank": CohereRerankRequest, "/token-classification": TokenRequest, "/question-answering": QARequest,
}


class TaskRoutes:
    """The task routes over the heads a server serves (name -> head)."""

    def __init__(self, heads: dict[str, TextModel], service: Service, *, max_items: int, max_body_bytes: int,
                 workers: int = 64) -> None:
        self.heads, self.service = heads, service
        self.max_items, self.max_body_bytes = max_items, max_body_bytes
        # The heads' own code waits here for its batches: a thread per request in flight.
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bucketwise-task")

    def head(self, name: str, kind: type[H]) -> H:
        """The head ``name`` as the class its route calls: :meth:`pick` chose it by its task,
        and a head registered for a task answers that task's calls (``register_head``)."""
        return cast(H, self.heads[name])

    def tasks(self) -> set[str]:
        return {h.task for h in self.heads.values()}

    # -- picking a model ---------------------------------------------------------------------

    def pick(self, task: str, name: str | None, route: str) -> str:
        """The served name of the model that answers ``route``: the body's ``model``, or the
        one model of ``task`` (:func:`pick_model`)."""
        return pick_model(name, of_task=[n for n, h in self.heads.items() if h.task == task], served=self.service.names,
                          task=task, route=route)

    # -- running a head ----------------------------------------------------------------------

    async def run(self, name: str, fn: Callable[..., Any], *args: Any, tokens: list[int] | None = None,
                  **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` (a method of the head ``name``) in a worker thread, its
        model runs sent through the batcher of that model; its errors as 4xx. ``tokens``,
        when given, gets the token count of every row the head ran."""
        loop = asyncio.get_running_loop()
        service = self.service
        service.batcher(name)  # 503 while starting, before any work

        async def submit(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            # Taken right before submitting: a swap in between hands over the new batcher.
            return await service.batcher(name).submit_many(rows, validated=True)

        def through_batcher(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            if tokens is not None:
                tokens.extend(len(row["input_ids"]) for row in rows)
            return asyncio.run_coroutine_threadsafe(submit(rows), loop).result()

        def work() -> Any:
            with run_through(through_batcher):
                return fn(*args, **kwargs)

        try:
            return await loop.run_in_executor(self._pool, work)
        except QueueFullError as err:
            raise service.busy(err) from None
        except BucketOverflowError as err:
            raise Reject(400, str(err), reason="too_long") from None
        except (InputError, ConfigError) as err:
            raise Reject(400, str(err)) from None

    async def parse(self, request: Request, route: str) -> Any:
        self.service.check_content_type(request, ("application/json",))
        body = await self.service.read_body(request, self.max_body_bytes)
        payload = load_json(body)
        model = BODIES[route]
        try:
            return model.model_validate(payload)
        except ValidationError as err:
            where, first = first_error(err)
            raise Reject(400, f"{route}: {where}: {first['msg']} (got {first.get('input')!r:.80})") from None

    def _limit(self, n: int, what: str) -> None:
        if n > self.max_items:
            raise Reject(413, f"{what} holds {n} items; the limit is {self.max_items} per request (--max-texts)")

    # -- the routes ----------------------------------------------------------------------------

    async def predict(self, request: Request) -> Any:
        req: PredictRequest = await self.parse(request, "/predict")
        name = self.pick("text-classification", req.model, "/predict")
        inputs, single = _tei_inputs(req.inputs)
        self._limit(len(inputs), '"inputs"')
        head = self.head(name, TextClassifier)
        out = await self.run(name, head.predict, inputs, top_k=None, raw_scores=req.raw_scores)
        return out[0] if single else out

    async def classify(self, request: Request) -> Any:
        req: ClassifyRequest = await self.parse(request, "/classify")
        name = self.pick("text-classification", req.model, "/classify")
        self._limit(len(req.input), '"input"')
        no_blank(req.input, "input")
        head = self.head(name, TextClassifier)
        counted: list[int] = []  # the tokens of each text run: the usage, without tokenizing again
        out = await self.run(name, head.predict, list(req.input), top_k=None, raw_scores=req.raw_scores,
                             tokens=counted)
        tokens = sum(counted)
        return {"object": "classify", "data": out, "model": name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "id": f"bucketwise-{uuid.uuid4()}", "created": int(time.time())}

    def _ranking(self, route: str, model: str | None, query: str, documents: list[str], field: str) -> str:
        """The ranking model a request names, its query and documents checked."""
        name = self.pick("text-ranking", model, route)
        self._limit(len(documents), f'"{field}"')
        no_blank([query], "query")
        no_blank(documents, field)
        return name

    async def rerank(self, request: Request) -> Any:
        req: RerankRequest = await self.parse(request, "/rerank")
        name = self._ranking("/rerank", req.model, req.query, req.texts, "texts")
        head = self.head(name, TextRanker)
        ranked = await self.run(name, head.rerank, req.query, list(req.texts), raw_scores=req.raw_scores)
        return [{"index": r["index"], "score": r["score"], **({"text": req.texts[r["index"]]} if req.return_text else {})}
                for r in ranked]

    async def cohere_rerank(self, request: Request) -> Any:
        req: CohereRerankRequest = await self.parse(request, "/v2/rerank")
        name = self._ranking("/v2/rerank", req.model, req.query, req.documents, "documents")
        head = self.head(name, TextRanker)
        documents = list(req.documents)
        if req.max_tokens_per_doc is not None:
            documents = await self.run(name, _cut_documents, head, documents, req.max_tokens_per_doc)
        ranked = await self.run(name, head.rerank, req.query, documents, top_n=req.top_n)
        results = [{"index": r["index"], "relevance_score": r["score"],
                    **({"document": {"text": req.documents[r["index"]]}} if req.return_documents else {})}
                   for r in ranked]
        return {"id": str(uuid.uuid4()), "results": results,
                "meta": {"api_version": {"version": "2"}}}

    async def token_classification(self, request: Request) -> Any:
        req: TokenRequest = await self.parse(request, "/token-classification")
        name = self.pick("token-classification", req.model, "/token-classification")
        texts = [req.inputs] if isinstance(req.inputs, str) else list(req.inputs)
        self._limit(len(texts), '"inputs"')
        no_blank(texts, "inputs")
        p = req.parameters
        head = self.head(name, TokenClassifier)
        options: dict[str, Any] = {"ignore_labels": p.ignore_labels} if p.ignore_labels is not None else {}
        out = await self.run(name, head.predict, texts, aggregation_strategy=p.aggregation_strategy,
                             stride=p.stride, **options)
        return out[0] if isinstance(req.inputs, str) else out

    async def question_answering(self, request: Request) -> Any:
        req: QARequest = await self.parse(request, "/question-answering")
        name = self.pick("question-answering", req.model, "/question-answering")
        items = [req.inputs] if isinstance(req.inputs, QAInput) else list(req.inputs)
        if not items:
            raise Reject(400, '"inputs" is an empty list; send {"question": ..., "context": ...} or a list of them',
                         param="inputs")
        self._limit(len(items), '"inputs"')
        no_blank([i.question for i in items], "question")
        no_blank([i.context for i in items], "context")
        p = req.parameters
        head = self.head(name, QuestionAnswerer)
        out = await self.run(name, head.predict, [(i.question, i.context) for i in items], top_k=p.top_k,
                             max_answer_len=p.max_answer_len, doc_stride=p.doc_stride)
        return out[0] if isinstance(req.inputs, QAInput) else out


def _tei_inputs(inputs: Any) -> tuple[list[Any], bool]:
    """TEI's reading of /predict inputs: a string is one text; ["a", "b"] is one pair;
    ["a"] or ["a", "b", "c"] a batch of texts; [["a", "b"], ...] a batch of pairs (or of
    one-text lists). Returns (inputs, whether one input was sent)."""
    if isinstance(inputs, str):
        no_blank([inputs], "inputs")
        return [inputs], True
    if not inputs:
        raise Reject(400, '"inputs" is an empty list; send a text, a pair, or a list of them', param="inputs")
    if all(isinstance(x, str) for x in inputs):
        no_blank(inputs, "inputs")
        if len(inputs) == 2:
            return [(inputs[0], inputs[1])], True
        return list(inputs), False
    out: list[Any] = []
    for i, item in enumerate(inputs):
        if not isinstance(item, list) or len(item) not in (1, 2):
            raise Reject(400, f'"inputs"[{i}] must be a text or a pair ["text", "text_pair"], got {item!r:.80}',
                         param="inputs")
        no_blank(item, f"inputs[{i}]")
        out.append(item[0] if len(item) == 1 else (item[0], item[1]))
    return out, False


def _cut_documents(head: Any, documents: list[str], max_tokens: int) -> list[str]:
    """Each document cut to its first ``max_tokens`` tokens (Cohere's max_tokens_per_doc),
    at the end of the last token kept."""
    raw = head.tokenizer.backend_tokenizer
    out = []
    with head._lock:
        for doc in documents:
            enc = raw.encode(doc, add_special_tokens=False)
            out.append(doc if len(enc.ids) <= max_tokens else doc[: enc.offsets[max_tokens - 1][1]])
    return out
