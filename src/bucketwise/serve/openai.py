"""OpenAI-compatible embeddings: ``POST /v1/embeddings`` and ``GET /v1/models``.

The request body is read by the server itself (a size limit enforced while streaming, a
deadline on slow clients, JSON that cannot crash the parser) and then validated by the
pydantic model :class:`EmbeddingsRequest`, which is also the OpenAPI schema of the route.
Errors take OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import BucketOverflowError, InputError, QueueFullError
from ._common import TEXT_OR_TEXTS_SCHEMA, Reject, check_finite, first_error, no_blank, orjson_module, pick_model

if TYPE_CHECKING:
    from starlette.requests import Request

    from ..models.text import SentenceEmbedder
    from .app import ServeConfig, Service

__all__ = ["EmbeddingsRequest", "EmbeddingsResponse", "ErrorResponse", "OpenAIEmbeddings", "encode_embedding",
           "json_response_class", "parse_texts"]


class EmbeddingsRequest(BaseModel):
    """The body of ``POST /v1/embeddings``, as OpenAI documents it (token arrays aside)."""

    model_config = ConfigDict(strict=True, extra="allow")

    # The schema says what parse_texts accepts (a text with a non-space character; a list of
    # 1 to max_texts of them; create_app sets maxItems), so clients and fuzzers see the rule.
    input: str | list[str] = Field(description="a text, or a list of texts (1 to max_texts)", json_schema_extra=TEXT_OR_TEXTS_SCHEMA)
    model: str | None = Field(None, description="the served model's name (GET /v1/models) or a documented alias")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: a list of numbers; base64: little-endian float32 bytes, base64-encoded")
    dimensions: int | None = Field(None, ge=1, description="only the model's full size is accepted")
    user: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape; every error of the server's non-``/v2`` routes takes it."""

    error: ErrorBody


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


def load_json(body: bytes) -> Any:
    """The request body parsed by orjson, or a 400 saying why not. Stricter than ``json``:
    NaN, Infinity, numbers that overflow a double, lone surrogates and nesting deeper than
    1,024 are all refused; and about 5.6x faster (benchmarks/bench_json.py: a 224 x 224 image
    as JSON)."""
    try:
        return orjson_module().loads(body)
    except (ValueError, RecursionError) as err:
        raise Reject(400, f"request body is not valid JSON: {str(err)[:200] or type(err).__name__}") from None


def parse_texts(body: bytes, config: Any, payload: Any = None) -> tuple[EmbeddingsRequest, list[str]]:
    """The validated request and its texts, or :class:`Reject` (400/413) saying what is
    wrong (``payload``: the body already read as JSON). Pure; the ``model`` it names is
    the caller's to check (:meth:`OpenAIRoutes.pick`)."""
    if len(body) > config.max_body_bytes:
        raise Reject(413, f"request body is {len(body)} bytes; the limit is {config.max_body_bytes}")
    if payload is None:
        payload = load_json(body)
    if not isinstance(payload, dict) or "input" not in payload:
        raise Reject(400, 'request body must be a JSON object with "input": a string or a list of strings')
    try:
        request = EmbeddingsRequest.model_validate(payload)
    except ValidationError as err:
        where, first = first_error(err)
        param = str(first["loc"][0]) if first["loc"] else None
        if param == "input":
            message = '"input" must be a string or a list of strings (token arrays are not accepted)'
        else:
            message = f'"{where}": {first["msg"]} (got {first.get("input")!r:.80})'
        raise Reject(400, message, param=param) from None
    texts = [request.input] if isinstance(request.input, str) else list(request.input)
    if not texts:
        raise Reject(400, '"input" is empty; send at least one string', param="input")
    if len(texts) > config.max_texts:
        raise Reject(413, f'"input" holds {len(texts)} texts; the limit is {config.max_texts} per request', param="input")
    no_blank(texts, "input")
    for i, t in enumerate(texts):
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate such as "\ud800" (orjson refuses it earlier)
            raise Reject(400, f'"input"[{i}] is not valid Unicode (a lone surrogate); send UTF-8 text', param="input") from None
    return request, texts


def encode_embedding(vector: Any, fmt: str) -> Any:
    """One embedding as OpenAI sends it: float32 numbers (a float32 array, which
    :func:`json_response_class` writes as a JSON list, each number the shortest decimal
    that reads back as the same float32), or base64 of little-endian float32."""
    import base64

    import numpy as np

    if fmt == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return np.asarray(vector, dtype=np.float32)


def json_response_class() -> Any:
    """A JSONResponse written by orjson: numpy arrays as lists, float32 numbers as the
    shortest decimal that reads back exactly (half the bytes of float64's 17 digits), at
    about a tenth of the json module's time for a 384-float embedding."""
    from fastapi.responses import JSONResponse

    orjson = orjson_module()

    class OrjsonResponse(JSONResponse):
        def render(self, content: Any) -> bytes:
            body: bytes = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
            return body

    return OrjsonResponse


class OpenAIRoutes:
    """``GET /v1/models`` (every model served) and ``POST /v1/embeddings``, which picks its
    embedder by the body's ``model``: a served name, or an alias of the default one."""

    def __init__(self, embedders: dict[str, SentenceEmbedder], config: ServeConfig, service: Service) -> None:
        self.config, self.service = config, service
        self.by_name = {name: OpenAIEmbeddings(e, config, service, name=name) for name, e in embedders.items()}
        self.aliases = {a: config.model_name for a in config.model_aliases if config.model_name in embedders}

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "bucketwise"}
                                           for name in self.service.names]}

    def pick(self, name: Any) -> OpenAIEmbeddings:
        """The embedder ``name`` (a served name or alias), or with none named the default:
        the server's model name, or its one embedder (:func:`pick_model`)."""
        return self.by_name[pick_model(name, of_task=self.by_name, served=self.service.names, task="feature-extraction",
                                       route="/v1/embeddings", default=self.config.model_name, aliases=self.aliases)]

    async def embeddings(self, request: Request) -> dict[str, Any]:
        self.service.check_content_type(request, ("application/json",))
        body = await self.service.read_body(request, self.config.max_body_bytes)
        payload = load_json(body)
        target = self.pick(payload.get("model") if isinstance(payload, dict) else None)
        return await target.embeddings(body, payload)


class OpenAIEmbeddings:
    """OpenAI embeddings with one :class:`SentenceEmbedder` and its batcher."""

    def __init__(self, embedder: SentenceEmbedder, config: ServeConfig, service: Service, *,
                 name: str | None = None) -> None:
        self.embedder, self.config, self.service = embedder, config, service
        self.name = name or config.model_name
        self._tokenizer_lock = threading.Lock()
        self.size: int | None = None  # the embeddings' length, once an answer has shown it

    def embedding_size(self) -> int | None:
        """The length of this model's embeddings: learned from the first answer, or from
        one probe text once the model can serve (None while it cannot yet)."""
        if self.size is None and self.embedder.model.can_serve:
            import numpy as np

            with self._tokenizer_lock:
                self.size = int(np.asarray(self.embedder.embed(["probe"])).shape[-1])
        return self.size

    async def embeddings(self, body: bytes, payload: Any = None) -> dict[str, Any]:
        req, texts = parse_texts(body, self.config, payload)
        if self.size is not None:  # refused before anything is computed, once the size is known
            self._check_dimensions(req.dimensions, self.size)
        encoded, outs = await self._embed(texts)
        vectors = [o["sentence_embedding"] for o in outs]
        self.size = len(vectors[0])
        self._check_dimensions(req.dimensions, self.size)
        check_finite(vectors, "input")
        self.service.metrics.texts.inc(len(texts))
        tokens = sum(len(ids) for ids, _ in encoded)
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": encode_embedding(v, req.encoding_format)}
                     for i, v in enumerate(vectors)],
            "model": self.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _tokenize(self, texts: list[str]) -> Any:
        # One at a time: a fast tokenizer changes its truncation state per call, and two
        # threads in it at once fail ("Already borrowed").
        with self._tokenizer_lock:
            return self.embedder.tokenize(texts)

    @staticmethod
    def _check_dimensions(dims: int | None, size: int) -> None:
        # Truncating an embedding is only meaningful for models trained for it (Matryoshka);
        # none served here declares that, so only the full size is accepted.
        if dims is not None and dims != size:
            raise Reject(400, f'"dimensions" {dims} is not supported by this model: its embeddings have {size} '
                         f"dimensions and it is not trained to be truncated; omit it, or send {size}",
                         param="dimensions")

    async def _embed(self, texts: list[str]) -> tuple[list[Any], list[dict[str, Any]]]:
        embedder = self.embedder
        self.service.batcher(self.name)  # 503 while starting, before tokenizing
        try:
            # Tokenizing a long text takes a while: off the event loop, so /healthz still answers.
            encoded = await asyncio.to_thread(self._tokenize, texts)
            embedder.admit(encoded)  # the router refuses what no bucket holds, up front
        except BucketOverflowError as err:
            raise Reject(400, f'"input": {err}', reason="too_long", param="input") from None
        except InputError as err:
            raise Reject(400, str(err), param="input") from None
        rows = embedder.rows(encoded)
        try:
            # The batcher is taken here, with no await before submitting: a plan swapped in
            # while the text was tokenized is the one it runs on.
            outs = await self.service.batcher(self.name).submit_many(rows, validated=True)  # all or nothing
        except QueueFullError as err:
            raise self.service.busy(err) from None
        return encoded, list(outs)
