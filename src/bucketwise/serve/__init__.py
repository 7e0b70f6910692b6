"""Serving: an HTTP app (FastAPI) over the batcher, with Prometheus metrics."""

from .app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
