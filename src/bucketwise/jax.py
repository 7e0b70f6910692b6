"""``bucket_jit``: ``jax.jit`` that compiles once per bucket instead of once per shape.

``jax.jit`` compiles a new executable for every distinct input shape. Fed text of natural
lengths, that is one compile per length. ``bucket_jit`` wraps the same function with a
:class:`~bucketwise.ModelSpec` and a :class:`~bucketwise.Plan`: each call is padded up
to the smallest bucket that holds it, runs that bucket's executable, and comes back with
the padding cropped off::

    import bucketwise.jax as bwj

    def encode(params, input_ids, attention_mask):
        ...
        return {"last_hidden_state": h, "sentence_embedding": e}

    fast = bwj.bucket_jit(encode, spec=spec, plan=plan)
    fast.compile(params)                        # optional: every bucket ahead of time
    out = fast(params, input_ids=ids, attention_mask=mask)

As with ``jax.jit``, the first call at a new bucket compiles it; :meth:`BucketedJit.compile`
does it ahead of time (``fast.compiles`` counts them). ``params`` is an ordinary argument:
new values of the same shapes (a training step) reuse the executables. jax arrays stay on
their device; NumPy inputs are padded on the host. For serving, caching executables on
disk and batching, use ``BucketedModel(JaxModel(encode, params), spec, plan,
backend="jax")``.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax

from .backends.base import Artifact
from .backends.jax import JaxArtifact, JaxModel, input_structs
from .errors import ConfigError
from .plans import Plan
from .router import OverflowPolicy, Router
from .runtime.runner import Runner
from .runtime.stats import BucketStats
from .shapes import Bucket
from .spec import ModelSpec

__all__ = ["bucket_jit", "BucketedJit", "JaxModel", "placement"]

_PARAMS: contextvars.ContextVar[Any] = contextvars.ContextVar("bucketwise_jax_params")


def bucket_jit(fn: Callable[..., Any], *, spec: ModelSpec, plan: Plan, overflow: OverflowPolicy = "error",
               compiler_options: Mapping[str, Any] | None = None) -> BucketedJit:
    """``fn(params, **inputs)``, compiled once per bucket of ``plan``.

    Args:
        fn: a function of the params (any pytree) and the spec's inputs, by keyword,
            returning one array, a tuple in the order of the spec's outputs, or a dict by
            output name.
        spec: the inputs' axes and pad values, the outputs' axes to crop.
        plan: the buckets (e.g. from :func:`bucketwise.plan`).
        overflow: a shape larger than every bucket: ``"error"``, ``"truncate"`` or
            ``"fallback"`` (``jax.jit`` at the exact shape).
        compiler_options: XLA options passed to ``Lowered.compile``.
    """
    return BucketedJit(fn, spec=spec, plan=plan, overflow=overflow, compiler_options=compiler_options)


class BucketedJit:
    """What :func:`bucket_jit` returns. Call it as ``f(params, **inputs)``."""

    def __init__(self, fn: Callable[..., Any], *, spec: ModelSpec, plan: Plan, overflow: OverflowPolicy = "error",
                 compiler_options: Mapping[str, Any] | None = None) -> None:
        if not callable(fn):
            raise ConfigError(f"bucket_jit: fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.spec = spec
        self.plan = plan
        self.compiler_options = dict(compiler_options or {})
        self._apply = lambda params, inputs: fn(params, **inputs)
        self._lock = threading.Lock()
        # (bucket, params' shapes, the devices they are on) -> executable
        self._executables: dict[tuple[Bucket, Any, tuple[tuple[str, str, int], ...]], Any] = {}
        self.compiles = 0
        self.runner = Runner(spec, Router(plan, overflow=overflow), _Source(self), self._eager)

    @property
    def stats(self) -> BucketStats:
        """Bucket hits, padding waste and overflows since this function was made."""
        return self.runner.stats

    def __call__(self, params: Any, /, **inputs: Any) -> dict[str, Any]:
        token = _PARAMS.set(params)
        try:
            return self.runner.run(inputs)
        finally:
            _PARAMS.reset(token)

    def lower(self, params: Any, bucket: Bucket) -> Any:
        """``jax.jit(fn).lower(...)`` at ``bucket``'s shapes: the ``Lowered`` to inspect."""
        return jax.jit(self._apply).lower(params, input_structs(self.spec, bucket))

    def compile(self, params: Any, buckets: Iterable[Bucket] | None = None) -> BucketedJit:
        """Compile every bucket of the plan (or ``buckets``) for params like ``params`` now,
        instead of at each bucket's first call. Returns ``self``."""
        for bucket in self.plan.buckets if buckets is None else buckets:
            self.executable(bucket, params)
        return self

    def executable(self, bucket: Bucket, params: Any) -> Any:
        """The compiled executable of ``bucket`` for params shaped like ``params``."""
        key = (bucket, _abstract(params), placement(params))
        with self._lock:
            if key not in self._executables:
                self._executables[key] = self.lower(params, bucket).compile(self.compiler_options or None)
                self.compiles += 1
            return self._executables[key]

    def _eager(self) -> Any:
        return JaxModel(functools.partial(self.fn, _PARAMS.get()))  # jax.jit at the exact shape


class _Source:
    """The runner's artifacts: each bucket's executable, bound to the params of the call."""

    def __init__(self, owner: BucketedJit) -> None:
        self.owner = owner

    @property
    def built(self) -> frozenset[Bucket]:
        return frozenset(self.owner.plan.buckets)  # any bucket compiles on its first call

    def artifact(self, bucket: Bucket) -> Artifact | None:
        params = _PARAMS.get()
        spec = self.owner.spec
        return JaxArtifact(bucket, self.owner.executable(bucket, params), params, spec.input_names, spec.output_names)


def placement(params: Any) -> tuple[tuple[str, str, int], ...]:
    """Where an executable lowered for ``params`` runs: ``(platform, device_kind, id)`` of
    each device their leaves are on (jax's default device for host arrays and for no
    params). An executable is compiled for one device kind, so the same params moved to
    another device (a CPU copy, another GPU model) need their own."""
    devices: set[Any] = set()
    for leaf in jax.tree.leaves(params):
        if isinstance(leaf, jax.Array):
            devices.update(leaf.sharding.device_set)
    if not devices or any(not isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(params)):
        devices.add(_default_device())
    return tuple(sorted((d.platform, d.device_kind, d.id) for d in devices))


def _default_device() -> Any:
    default = getattr(jax.config, "jax_default_device", None)  # a config flag (typed stubs lack it)
    if isinstance(default, str):  # a platform name: its first device
        return jax.devices(default)[0]
    return default if default is not None else jax.devices()[0]


def _abstract(params: Any) -> Any:
    """What an executable depends on in the params: their structure, shapes and dtypes."""
    leaves, tree = jax.tree.flatten(params)
    return tree, tuple((tuple(getattr(x, "shape", ())), str(getattr(x, "dtype", type(x)))) for x in leaves)
