"""Backends: turn (model, spec, bucket) into an artifact that runs at that fixed shape."""

from .base import Artifact, Backend, backend_names, get_backend, is_available, register_backend, require

__all__ = [
    "Artifact",
    "Backend",
    "backend_names",
    "get_backend",
    "is_available",
    "register_backend",
    "require",
]
