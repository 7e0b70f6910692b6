"""What the serving routes share: the rejection every error path raises."""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping, Sequence
from typing import Any

__all__ = ["NON_BLANK", "TEXT_SCHEMA", "TEXT_OR_TEXTS_SCHEMA", "Reject", "REJECTION_REASONS", "check_finite", "first_error",
           "no_blank", "orjson_module", "pick_model"]

# A character that is not white space as str.isspace() says, which is how the server tells a
# blank text (ECMA's \S, which JSON Schema's patterns use, counts \x1c-\x1f and \x85 as text).
NON_BLANK = "[^\\t\\n\\u000b\\f\\r\\u001c-\\u001f \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
# A text with a non-space character; one of them, or a list of at least one.
TEXT_SCHEMA: dict[str, Any] = {"type": "string", "minLength": 1, "pattern": NON_BLANK}
TEXT_OR_TEXTS_SCHEMA: dict[str, Any] = {"anyOf": [TEXT_SCHEMA, {"type": "array", "minItems": 1, "items": TEXT_SCHEMA}]}

REJECTION_REASONS = {400: None, 401: "auth", 408: "timeout", 413: "too_large", 415: "content_type",
                     429: "rate", 503: "queue_full"}


class Reject(Exception):
    """A request answered with an error status; the server keeps serving.

    ``kind``, ``param`` and ``code`` fill OpenAI's error shape; ``reason`` labels the
    rejection in ``bucketwise_rejections_total`` (default: by status).
    """

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None, reason: str | None = None,
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers
        self.reason = reason or REJECTION_REASONS.get(status)
        self.param, self.code = param, code


def first_error(err: Any) -> tuple[str, dict[str, Any]]:
    """Where a pydantic ``ValidationError`` failed first (``"inputs.0.shape"``, or
    ``"body"``), and pydantic's record of it."""
    first = err.errors()[0]
    return ".".join(str(p) for p in first["loc"]) or "body", first


def pick_model(name: Any, *, of_task: Collection[str], served: Collection[str], task: str, route: str,
               default: str | None = None, aliases: Mapping[str, str] | None = None) -> str:
    """The served name that answers ``route``: the body's ``model`` (a name of ``of_task``,
    the models that run ``task``, or one of its ``aliases``); with none named, ``default``
    when it runs the task, else the one model of the task. Every route picks here, so a
    wrong name gets the same answer everywhere: 404 naming what is served, or what runs
    the task where the name runs another."""
    aliases = aliases or {}
    if name is None:
        if default in of_task:
            return default  # type: ignore[return-value]
        if len(of_task) == 1:
            return next(iter(of_task))
        raise Reject(400, f'{route} serves {len(of_task)} {task} models here ({", ".join(map(repr, sorted(of_task)))}); '
                          'name one in "model"', param="model")
    if not isinstance(name, str):
        raise Reject(400, f'"model" must be a string naming a served model, got {name!r:.80}', param="model")
    name = aliases.get(name, name)
    if name in of_task:
        return name
    if name in served:
        raise Reject(404, f"model {name!r} does not run {task}, which {route} needs; models of that task: "
                          f"{', '.join(map(repr, sorted(of_task))) or 'none'}", param="model", code="model_not_found",
                     reason="model")
    raise Reject(404, f"model {name!r} is not served here; served: {', '.join(map(repr, sorted(served))) or 'none'}"
                 + (f" (also accepted: {', '.join(map(repr, sorted(aliases)))})" if aliases else ""),
                 param="model", code="model_not_found", reason="model")


def no_blank(texts: Sequence[str], what: str) -> None:
    """Refuse (400) a text with no non-space character: ``what`` names the field, and the
    message the first blank one (``"input"[2]``) where the field holds several."""
    for i, text in enumerate(texts):
        if not text.strip():
            where = f'"{what}"' if len(texts) == 1 else f'"{what}"[{i}]'
            raise Reject(400, f"{where} is empty; every text needs at least one non-space character", param=what)


def check_finite(rows: Any, what: str) -> None:
    """Refuse (500) a model output with NaN or infinity in any row (the first axis): wrong
    output is never sent, and JSON has no number for it. ``what`` names the rows in the
    message, e.g. ``"input"``."""
    import numpy as np

    arr = np.asarray(rows)
    if not np.issubdtype(arr.dtype, np.floating):
        return
    finite = np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
    if not finite.all():
        bad = [int(i) for i in np.flatnonzero(~finite)]
        raise Reject(500, f"the model returned NaN or infinite values for {what} {bad[:10]}; they are not sent. "
                     "Check the model (its export, its backend, the precision it runs at)",
                     "server_error", reason="non_finite")


@functools.cache
def orjson_module() -> Any:
    """The orjson module, which reads every request body and writes every JSON response
    (float32 numbers in their shortest round-trip form), or an error naming the extra."""
    from .._optional import require

    return require("orjson", "serve", purpose="the server's JSON requests and responses")
