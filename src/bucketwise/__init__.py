"""bucketwise: run variable-shape inputs on fixed-shape compilers.

Compile a model once per bucket shape; at inference time pad each input up to the
smallest bucket that holds it, run that bucket's artifact, and strip the padding from the
outputs. Importing this package imports no ML framework; backends load theirs lazily.

The surface follows the data flow: observe shapes and :func:`plan` buckets (with a
:func:`report`), describe the model (:class:`ModelSpec`), build and run it
(:class:`BucketedModel`, which joins a builder and a runner over one :class:`Router`),
batch and serve. The layers are drawn in ``docs/architecture.md``.
"""

from ._version import __version__
from .backends.base import Artifact, Backend, CacheableBackend, backend_names, get_backend, register_backend
from .costs import CostModel, PolynomialCost, TableCost, VolumeCost, fit_cost
from .errors import (
    BackendError,
    BucketOverflowError,
    BucketwiseError,
    CacheWarning,
    ConfigError,
    InputError,
    MemoryBudgetError,
    MissingDependencyError,
    NotCompiledError,
    ParityError,
    PlanError,
    QueueFullError,
    SpecError,
)
from .padding import pad, unpad
from .parity import ParityReport, check_parity
from .planning import plan, report
from .plans import Plan
from .router import Route, Router, route
from .runtime.cache import ArtifactCache, LazyModel
from .runtime.model import BucketedModel
from .runtime.reports import BucketBuild, CompileReport
from .runtime.stats import BucketStats
from .shapes import Bucket, covers
from .spec import InputSpec, ModelSpec, OutputSpec

__all__ = [
    # plan the buckets
    "Bucket",
    "Plan",
    "plan",
    "report",
    "CostModel",
    "VolumeCost",
    "TableCost",
    "PolynomialCost",
    "fit_cost",
    # describe the model
    "InputSpec",
    "ModelSpec",
    "OutputSpec",
    "pad",
    "unpad",
    # route, build and run
    "Router",
    "Route",
    "route",
    "covers",
    "BucketedModel",
    "BucketStats",
    "BucketBuild",
    "CompileReport",
    "ArtifactCache",
    "LazyModel",
    "check_parity",
    "ParityReport",
    # backends
    "Artifact",
    "Backend",
    "CacheableBackend",
    "backend_names",
    "get_backend",
    "register_backend",
    # errors and warnings
    "BucketwiseError",
    "ConfigError",
    "PlanError",
    "MemoryBudgetError",
    "SpecError",
    "InputError",
    "BucketOverflowError",
    "NotCompiledError",
    "QueueFullError",
    "BackendError",
    "MissingDependencyError",
    "ParityError",
    "CacheWarning",
    "__version__",
]
