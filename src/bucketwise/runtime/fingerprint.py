"""What identifies a model and a host for the artifact cache: fingerprints.

A model's fingerprint covers its weights, its graph and the spec it runs under; the host's
identity covers the CPU that compiled code is specialised for.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._optional import is_torch_module
from ..errors import BackendError
from ..spec import ModelSpec

__all__ = ["LazyModel", "cpu_name", "digest", "fingerprint", "fingerprint_files", "host_id", "sha256_file", "spec_identity"]


def cpu_name() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""


def host_id() -> str:
    """The machine as compiled code sees it: OS, architecture and CPU model."""
    return f"{platform.system()}-{platform.machine()}-{cpu_name()}".strip("-")


@dataclass(frozen=True)
class LazyModel:
    """A model known by its fingerprint and loaded only when something must be compiled.

    With a warm cache nothing is compiled, so a model given this way is never loaded: the
    start skips the framework's weight loading as well as the compile.

    Args:
        load: returns the model (e.g. a ``torch.nn.Module``); called at most once.
        fingerprint: identifies the weights and graph, e.g. :func:`fingerprint_files` of
            the model folder plus what wraps it.
        name: shown by ``bucketwise inspect``.
    """

    load: Callable[[], Any]
    fingerprint: str
    name: str = ""

    def __post_init__(self) -> None:
        if not callable(self.load):
            raise TypeError(f"LazyModel.load must be callable, got {type(self.load).__name__}")
        if not isinstance(self.fingerprint, str) or not self.fingerprint:
            raise TypeError("LazyModel.fingerprint must be a non-empty string")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """``BUCKETWISE_CACHE``, else ``$XDG_CACHE_HOME/bucketwise``, else ``~/.cache/bucketwise``.

    Read at call time, never at import.
    """
    env = os.environ.get("BUCKETWISE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "bucketwise"


_MEMO_NAME = "file-hashes.json"
_memo_lock = threading.Lock()


def sha256_file_remembered(path: Path) -> str:
    """:func:`sha256_file`, remembered across processes in the cache folder, keyed by the
    file's device, inode, size, mtime and ctime: a start that finds the model's files
    unchanged does not read 90 MB again. (ctime changes on every write or metadata change
    and cannot be set back by user tools, so an edited file is always re-hashed.) Without a
    writable cache folder it just hashes."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    memo_file = default_cache_dir() / _MEMO_NAME
    with _memo_lock:
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, ValueError):
            memo = {}
        if isinstance(memo, dict) and isinstance(memo.get(key), str):
            return str(memo[key])
        digest_ = sha256_file(path)
        memo = {k: v for k, v in (memo.items() if isinstance(memo, dict) else []) if not k.startswith(f"{path}|")}
        memo[key] = digest_
        try:
            memo_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo_file.with_name(f".{_MEMO_NAME}.{os.getpid()}.{threading.get_ident()}")
            tmp.write_text(json.dumps(memo))
            os.replace(tmp, memo_file)
        except OSError:
            pass
        return digest_


def fingerprint_files(paths: Path | str | Iterable[Path | str], *, extra: Any = None) -> str:
    """SHA-256 over files' relative names and contents (a folder counts as all its files),
    plus ``extra`` (anything JSON can write: what wraps the weights, versions ...)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    h = hashlib.sha256()
    for base in map(Path, paths):
        files = sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else [base]
        if not files:
            raise BackendError(f"cannot fingerprint {str(base)!r}: no files there")
        for f in files:
            rel = f.relative_to(base) if base.is_dir() else Path(f.name)
            h.update(f"{rel.as_posix()}\0{sha256_file_remembered(f)}\n".encode())
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _module_fingerprint(module: Any) -> str:
    import torch

    h = hashlib.sha256()
    # The architecture: class and printed structure (layers and their hyperparameters).
    h.update(f"{type(module).__module__}.{type(module).__qualname__}\n{module!r}\n".encode())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def spec_identity(spec: ModelSpec) -> dict[str, Any]:
    """The parts of a spec a compiled artifact depends on (not pad values: those are
    applied outside the artifact, so changing one must not invalidate the cache)."""
    return {
        "inputs": [[s.name, list(s.shape), s.dtype] for s in spec.inputs],
        "outputs": [[o.name, list(o.shape)] for o in spec.outputs],
    }


def fingerprint(model: Any, spec: ModelSpec) -> str:
    """Identify a model for the cache: its weights, its graph and the spec it runs under.

    - :class:`LazyModel`: its own fingerprint.
    - a path to an ``.onnx`` file: the file's bytes (weights and graph both live there).
    - a ``torch.nn.Module``: class, printed architecture and every state tensor's bytes.
    - anything with a ``cache_fingerprint()`` method (a
      :class:`~bucketwise.backends.jax.JaxModel`): what it returns.

    Anything else (a plain function) cannot be fingerprinted: wrap it in a
    :class:`LazyModel` with a fingerprint you choose.
    """
    if isinstance(model, LazyModel):
        base = model.fingerprint
    elif isinstance(model, (str, Path)) and Path(model).suffix == ".onnx" and Path(model).is_file():
        base = fingerprint_files(model)
    elif callable(getattr(model, "cache_fingerprint", None)):
        base = str(model.cache_fingerprint())
    else:
        if not is_torch_module(model):
            raise BackendError(
                f"cannot fingerprint a {type(model).__name__} for the artifact cache; pass a "
                "torch.nn.Module, an .onnx path or a JaxModel, or wrap the model in "
                "LazyModel(load=..., fingerprint='...'), or run without a cache"
            )
        base = _module_fingerprint(model)
    return digest({"model": base, "spec": spec_identity(spec)})


def digest(identity: Any) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
