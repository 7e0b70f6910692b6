"""The errors bucketwise raises, all under one root, and the one warning it issues.

::

    BucketwiseError
     ├── ConfigError (ValueError)           an option, plan or spec is invalid: fix the setup
     │    ├── PlanError                     a plan or bucket is malformed (also bad plan JSON)
     │    │    └── MemoryBudgetError        a plan's artifacts do not fit the memory budget
     │    ├── SpecError                     a model spec is malformed
     │    └── PackingUnsupportedError       a model's architecture cannot run packed: run it unpacked
     ├── InputError (ValueError)            a call got inputs that do not match the spec
     │    └── BucketOverflowError           an input is larger than every bucket of the plan
     ├── NotCompiledError (RuntimeError)    a bucket was called before it was compiled
     ├── QueueFullError                     the batcher holds all it may; retry (HTTP 503)
     ├── BackendError (RuntimeError)        a backend failed to export, compile or run
     │    └── MissingDependencyError (ImportError)
     │                                      an optional package is not installed; names the extra
     └── ParityError (AssertionError)       bucketed outputs differ from unpadded eager outputs

    CacheWarning (UserWarning)              a cache entry was unusable and is being rebuilt

Every message names the offending input or value, says what is allowed, and gives the fix.
The categories tell a caller what to do: a ``ConfigError`` is fixed in code or settings
before anything runs; an ``InputError`` is the caller's request (a server answers 4xx); a
``QueueFullError`` is transient (503 and retry); a ``BackendError`` is the runtime's.
"""

from __future__ import annotations

__all__ = [
    "BucketwiseError",
    "ConfigError",
    "PlanError",
    "MemoryBudgetError",
    "SpecError",
    "PackingUnsupportedError",
    "InputError",
    "BucketOverflowError",
    "NotCompiledError",
    "QueueFullError",
    "BackendError",
    "MissingDependencyError",
    "ParityError",
    "CacheWarning",
]


class BucketwiseError(Exception):
    """Root of every error bucketwise raises on purpose."""


class ConfigError(BucketwiseError, ValueError):
    """An option, a plan or a spec is invalid; nothing ran. Fix the setup and retry."""


class PlanError(ConfigError):
    """A plan or bucket is malformed."""


class MemoryBudgetError(PlanError):
    """The artifacts of a plan need more memory than the budget allows."""


class SpecError(ConfigError):
    """A model spec is malformed."""


class PackingUnsupportedError(ConfigError):
    """A model cannot run in packed buckets (its architecture, pooling or modules); the
    message names what packs. Run it unpacked."""


class InputError(BucketwiseError, ValueError):
    """Inputs to a model call do not match its spec (names, rank, dtype, sizes, values)."""


class BucketOverflowError(InputError):
    """An input shape is larger than every bucket of the plan and the overflow policy is "error"."""


class NotCompiledError(BucketwiseError, RuntimeError):
    """A call reached a bucket that is not compiled: call ``.compile()`` first."""


class QueueFullError(BucketwiseError):
    """The batcher holds as many rows as it may; retry later (HTTP 503 with Retry-After)."""


class BackendError(BucketwiseError, RuntimeError):
    """A backend failed to export, compile or run an artifact."""


class MissingDependencyError(BackendError, ImportError):
    """An optional dependency is missing; the message names the extra that installs it."""


class ParityError(BucketwiseError, AssertionError):
    """Bucketed outputs differ from the unpadded reference by more than the tolerance."""


class CacheWarning(UserWarning):
    """A cache entry was unusable (corrupt, truncated, unreadable) and is being rebuilt."""
