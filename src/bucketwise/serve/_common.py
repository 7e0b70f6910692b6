"""What the serving routes share: the rejection every error path raises."""

from __future__ import annotations

from typing import Any

__all__ = ["Reject", "REJECTION_REASONS", "first_error"]

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
