"""Running compiled buckets: the bucketed model (route → pad → run → unpad)."""

from .model import OVERFLOW_POLICIES, BucketedModel, BucketStats

__all__ = ["BucketedModel", "BucketStats", "OVERFLOW_POLICIES"]
