"""Serving: an HTTP app (FastAPI) over the batcher, with Prometheus metrics."""

from .app import ServeConfig, Service, create_app

__all__ = ["ServeConfig", "Service", "create_app"]
