"""Backends: turn (model, spec, bucket) into an artifact that runs at that fixed shape."""

from .base import (
    Artifact,
    Backend,
    CacheableBackend,
    backend_names,
    get_backend,
    is_available,
    register_backend,
)

__all__ = [
    "Artifact",
    "Backend",
    "CacheableBackend",
    "backend_names",
    "get_backend",
    "is_available",
    "register_backend",
]
