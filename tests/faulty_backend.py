"""A test double of a faulty compiler: the eager backend, registered under a name, with each
artifact's run wrapped so that it changes what goes in or comes out. The parity probes must
refuse what it builds."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def faulty_eager(name: str, wrap: Callable[[Callable[[Any], Any]], Callable[[Any], Any]]) -> Iterator[str]:
    """Register backend ``name``: eager, each artifact's ``run`` replaced by ``wrap(run)``;
    unregistered on exit."""
    from bucketwise.backends import base
    from bucketwise.backends.eager import EagerBackend

    class Faulty(EagerBackend):
        def compile(self, model, spec, bucket):
            artifact = super().compile(model, spec, bucket)
            artifact.run = wrap(artifact.run)
            return artifact

    Faulty.name = name
    base.register_backend(name, Faulty)
    try:
        yield name
    finally:
        base._REGISTRY.pop(name)


@contextmanager
def faulty_jax(wrap: Callable[[Callable[[Any], Any]], Callable[[Any], Any]]) -> Iterator[str]:
    """The ``jax`` backend replaced by one whose artifacts' ``run`` is ``wrap(run)`` (under
    its own name, so that heads load the JAX model for it); the real one back on exit."""
    from bucketwise.backends import base
    from bucketwise.backends.jax import JaxBackend

    class Faulty(JaxBackend):
        def compile(self, model, spec, bucket):
            artifact = super().compile(model, spec, bucket)
            artifact.run = wrap(artifact.run)
            return artifact

    real = base._REGISTRY["jax"]
    base.register_backend("jax", Faulty, replace=True)
    try:
        yield "jax"
    finally:
        base._REGISTRY["jax"] = real
