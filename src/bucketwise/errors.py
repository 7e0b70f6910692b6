"""The errors bucketwise raises, all under one root.

::

    BucketwiseError
     ├── InputError (ValueError)            a model call got inputs that do not match the spec
     │    └── BucketOverflowError           an input is larger than every bucket of the plan
     ├── PlanError (ValueError)             a plan or bucket is malformed (also bad plan JSON)
     │    └── MemoryBudgetError             a plan's artifacts do not fit the memory budget
     ├── SpecError (ValueError)             a model spec is malformed
     ├── BackendError (RuntimeError)        a backend failed to compile or run an artifact
     │    └── MissingDependencyError (ImportError)
     │                                      an optional package is not installed; names the extra
     └── ParityError (AssertionError)       bucketed outputs differ from unpadded eager outputs

Every message names the offending input or value, says what is allowed, and gives the fix.
"""

from __future__ import annotations

__all__ = [
    "BucketwiseError",
    "InputError",
    "BucketOverflowError",
    "PlanError",
    "MemoryBudgetError",
    "SpecError",
    "BackendError",
    "MissingDependencyError",
    "ParityError",
]


class BucketwiseError(Exception):
    """Root of every error bucketwise raises on purpose."""


class InputError(BucketwiseError, ValueError):
    """Inputs to a model call do not match its spec (names, rank, dtype, sizes, values)."""


class BucketOverflowError(InputError):
    """An input shape is larger than every bucket of the plan and the overflow policy is "error"."""


class PlanError(BucketwiseError, ValueError):
    """A plan or bucket is malformed."""


class MemoryBudgetError(PlanError):
    """The artifacts of a plan need more memory than the budget allows."""


class SpecError(BucketwiseError, ValueError):
    """A model spec is malformed."""


class BackendError(BucketwiseError, RuntimeError):
    """A backend failed to compile or run an artifact."""


class MissingDependencyError(BackendError, ImportError):
    """An optional dependency is missing; the message names the extra that installs it."""


class ParityError(BucketwiseError, AssertionError):
    """Bucketed outputs differ from the unpadded reference by more than the tolerance."""
