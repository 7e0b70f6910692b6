"""Optional dependencies in one place: import on demand, name the extra when missing.

Nothing here imports an ML framework at import time. ``is_torch_module`` and
``is_torch_tensor`` (and ``is_jax_array``) look at ``sys.modules``: an object can only be
a torch (jax) object if torch (jax) is already loaded.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from .errors import MissingDependencyError

__all__ = ["require", "is_importable", "is_torch_module", "is_torch_tensor", "is_jax_array"]


def require(module: str, extra: str, *, purpose: str | None = None) -> Any:
    """Import an optional dependency, or raise an error that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        why = f" for {purpose}" if purpose else ""
        raise MissingDependencyError(
            f"{module} is not installed{why}: pip install 'bucketwise[{extra}]'"
        ) from err


def is_importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def is_torch_module(model: Any) -> bool:
    """True for a ``torch.nn.Module``; never imports torch."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def is_torch_tensor(value: Any) -> bool:
    """True for a ``torch.Tensor``; never imports torch."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def is_jax_array(value: Any) -> bool:
    """True for a ``jax.Array``; never imports jax."""
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(value, getattr(jax, "Array", ()))
