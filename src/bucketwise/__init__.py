"""bucketwise: run variable-shape inputs on fixed-shape compilers.

Compile a model once per bucket shape; at inference time pad each input up to the
smallest bucket that holds it, run that bucket's artifact, and strip the padding from the
outputs. Importing this package imports no ML framework; backends load theirs lazily.
"""

from .backends.base import backend_names, get_backend, register_backend
from .errors import (
    BackendError,
    BucketOverflowError,
    BucketwiseError,
    InputError,
    MemoryBudgetError,
    MissingDependencyError,
    ParityError,
    PlanError,
    SpecError,
)
from .parity import ParityReport, check_parity
from .runtime.cache import ArtifactCache, LazyModel
from .runtime.model import BucketBuild, BucketedModel, BucketStats, CompileReport
from .shapes import Bucket, CostModel, Plan, TableCost, VolumeCost, covers, route
from .spec import InputSpec, ModelSpec, OutputSpec, pad, unpad

__version__ = "0.1.0"

__all__ = [
    "ArtifactCache",
    "Bucket",
    "BucketBuild",
    "BucketedModel",
    "BucketStats",
    "CompileReport",
    "LazyModel",
    "CostModel",
    "InputSpec",
    "ModelSpec",
    "OutputSpec",
    "ParityReport",
    "Plan",
    "TableCost",
    "VolumeCost",
    "backend_names",
    "check_parity",
    "covers",
    "get_backend",
    "pad",
    "register_backend",
    "route",
    "unpad",
    "BackendError",
    "BucketOverflowError",
    "BucketwiseError",
    "InputError",
    "MemoryBudgetError",
    "MissingDependencyError",
    "ParityError",
    "PlanError",
    "SpecError",
    "__version__",
]
